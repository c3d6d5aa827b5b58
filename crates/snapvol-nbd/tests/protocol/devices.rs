//! Block devices for the tests: one that counts the calls reaching it, one that fails (or
//! panics) on chosen operations, one that answers block status with nothing, and one whose
//! requests wait at a gate the test opens.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use snapvol_nbd::{BlockDevice, DevError, Extent, MemDevice, RequestDone};

/// A device that counts the calls that reach it.
pub(crate) struct Counting {
    pub(crate) inner: MemDevice,
    pub(crate) calls: AtomicU64,
}

impl Counting {
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

impl BlockDevice for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        self.count();
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DevError> {
        self.count();
        self.inner.write(offset, data, fua)
    }
    fn flush(&self) -> Result<(), DevError> {
        self.inner.flush()
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DevError> {
        self.count();
        self.inner.trim(offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), DevError> {
        self.count();
        self.inner.write_zeroes(offset, len, fua)
    }
    fn cache(&self, offset: u64, len: u64) -> Result<(), DevError> {
        self.count();
        self.inner.cache(offset, len)
    }
    fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, DevError> {
        self.count();
        self.inner.block_status(offset, len)
    }
}

/// A memory device (read-only as asked) that keeps what [`BlockDevice::replied`] was told.
pub(crate) struct Recording {
    pub(crate) inner: MemDevice,
    pub(crate) done: Mutex<Vec<RequestDone>>,
}

impl BlockDevice for Recording {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DevError> {
        self.inner.write(offset, data, fua)
    }
    fn flush(&self) -> Result<(), DevError> {
        // Slow enough to show in `elapsed`.
        std::thread::sleep(Duration::from_millis(20));
        self.inner.flush()
    }
    fn replied(&self, done: &RequestDone) {
        // Slow too, so that a server that sent the reply before telling the device would let
        // the client see its reply before the request was counted.
        std::thread::sleep(Duration::from_millis(5));
        self.done.lock().unwrap().push(*done);
    }
}

/// Fails with a fixed error, or panics, on chosen operations.
pub(crate) struct FailingDevice {
    pub(crate) inner: MemDevice,
}

impl BlockDevice for FailingDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        match offset {
            0 => Err(DevError::io("media error at 0x0")),
            4096 => panic!("a bug in the device"),
            _ => self.inner.read(offset, buf),
        }
    }
    fn write(&self, _: u64, _: &[u8], _: bool) -> Result<(), DevError> {
        Err(DevError::no_space("the snapshot store is full"))
    }
    fn flush(&self) -> Result<(), DevError> {
        Err(DevError::io("flush failed"))
    }
}

/// A zero-filled read-only device offering `qemu:dirty-bitmap:s1`, that answers every
/// block-status request, in every context, with no descriptor at all.
pub(crate) struct Silent {
    pub(crate) size: u64,
}

impl BlockDevice for Silent {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read(&self, _: u64, buf: &mut [u8]) -> Result<(), DevError> {
        buf.fill(0);
        Ok(())
    }
    fn write(&self, _: u64, _: &[u8], _: bool) -> Result<(), DevError> {
        Err(DevError::permission("read-only"))
    }
    fn flush(&self) -> Result<(), DevError> {
        Ok(())
    }
    fn block_status(&self, _: u64, _: u32) -> Result<Vec<Extent>, DevError> {
        Ok(Vec::new())
    }
    fn meta_contexts(&self) -> Vec<String> {
        vec!["qemu:dirty-bitmap:s1".into()]
    }
    fn context_block_status(&self, _: &str, _: u64, _: u32) -> Result<Vec<Extent>, DevError> {
        Ok(Vec::new())
    }
}

/// A device whose reads and writes at chosen offsets wait until released, and that tells
/// the test when such a request has arrived and when the device was flushed.
pub(crate) struct GatedDevice {
    pub(crate) inner: MemDevice,
    gate_offset: u64,
    gate: Mutex<Gate>,
    cv: std::sync::Condvar,
}

#[derive(Default)]
struct Gate {
    open: bool,
    entered: bool,
    flushes: u64,
}

impl GatedDevice {
    pub(crate) fn new(size: usize, gate_offset: u64) -> Self {
        GatedDevice {
            inner: MemDevice::new(size),
            gate_offset,
            gate: Mutex::new(Gate::default()),
            cv: std::sync::Condvar::new(),
        }
    }
    pub(crate) fn release(&self) {
        self.gate.lock().unwrap().open = true;
        self.cv.notify_all();
    }
    /// Waits (at most 20 s, else fails the test) until `cond` holds.
    fn wait(&self, what: &str, cond: impl Fn(&Gate) -> bool) {
        let gate = self.gate.lock().unwrap();
        let (_gate, timeout) = self
            .cv
            .wait_timeout_while(gate, Duration::from_secs(20), |g| !cond(g))
            .unwrap();
        assert!(!timeout.timed_out(), "{what}");
    }
    fn wait_gate(&self, offset: u64) {
        if offset != self.gate_offset {
            return;
        }
        self.gate.lock().unwrap().entered = true;
        self.cv.notify_all();
        self.wait("the gate was never released", |g| g.open);
    }
    /// Waits until a request at the gated offset is in the device.
    pub(crate) fn wait_entered(&self) {
        self.wait("the request never arrived", |g| g.entered);
    }
    /// Waits until the device has been flushed.
    pub(crate) fn wait_flushed(&self) {
        self.wait("the device was never flushed", |g| g.flushes > 0);
    }
}

impl BlockDevice for GatedDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        self.wait_gate(offset);
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DevError> {
        self.wait_gate(offset);
        self.inner.write(offset, data, fua)
    }
    fn flush(&self) -> Result<(), DevError> {
        self.inner.flush()?;
        self.gate.lock().unwrap().flushes += 1;
        self.cv.notify_all();
        Ok(())
    }
}
