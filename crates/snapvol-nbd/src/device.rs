//! The one narrow door between the NBD server and storage: [`BlockDevice`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::proto::{Errno, NBD_STATE_HOLE, NBD_STATE_ZERO};
use crate::transmission::frame::Command;

/// A failed device operation: the NBD error value the client receives, and a message for
/// the log and for the client's error chunk (when structured replies are in use).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{errno}: {message}")]
pub struct DevError {
    /// What the client is told.
    pub errno: Errno,
    /// Human-readable context (operation, offset, cause).
    pub message: String,
}

impl DevError {
    /// An error with a message.
    pub fn new(errno: Errno, message: impl Into<String>) -> Self {
        DevError {
            errno,
            message: message.into(),
        }
    }

    /// `EPERM`: the operation is not allowed (e.g. writing a read-only export).
    pub fn permission(message: impl Into<String>) -> Self {
        DevError::new(Errno::EPERM, message)
    }

    /// `EIO`: the storage failed.
    pub fn io(message: impl Into<String>) -> Self {
        DevError::new(Errno::EIO, message)
    }

    /// `EINVAL`: a bad argument, such as a range past the end.
    pub fn invalid(message: impl Into<String>) -> Self {
        DevError::new(Errno::EINVAL, message)
    }

    /// `ENOSPC`: no space left to complete a write.
    pub fn no_space(message: impl Into<String>) -> Self {
        DevError::new(Errno::ENOSPC, message)
    }

    /// `ENOTSUP`: the operation is not supported.
    pub fn unsupported(message: impl Into<String>) -> Self {
        DevError::new(Errno::ENOTSUP, message)
    }
}

impl From<std::io::Error> for DevError {
    /// Maps an I/O error to the nearest NBD error value (proto.md "Error values": quota
    /// and file-size errors count as `ENOSPC`); anything unrecognised is `EIO`.
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let errno = match e.kind() {
            K::StorageFull | K::FileTooLarge | K::QuotaExceeded => Errno::ENOSPC,
            K::PermissionDenied | K::ReadOnlyFilesystem => Errno::EPERM,
            K::InvalidInput => Errno::EINVAL,
            K::OutOfMemory => Errno::ENOMEM,
            K::Unsupported => Errno::ENOTSUP,
            _ => Errno::EIO,
        };
        DevError::new(errno, e.to_string())
    }
}

/// One block-status descriptor: `length` bytes that share `flags`.
///
/// For `base:allocation` the flags are [`NBD_STATE_HOLE`] and [`NBD_STATE_ZERO`]; for a
/// `qemu:dirty-bitmap:*` context, [`crate::proto::NBD_STATE_DIRTY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Length in bytes; the server drops descriptors of length 0.
    pub length: u32,
    /// Context-defined status flags.
    pub flags: u32,
}

impl Extent {
    /// A descriptor.
    pub fn new(length: u32, flags: u32) -> Self {
        Extent { length, flags }
    }
}

/// A request the server has answered, as [`BlockDevice::replied`] is told of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestDone {
    /// What the client asked for.
    pub command: Command,
    /// The request's length field: bytes read, written, trimmed or zeroed (for a flush, 0).
    pub length: u32,
    /// The error the client was answered with; `None` for success. Includes the errors the
    /// server answers without calling the device (`EINVAL` for a range past the end, `EPERM`
    /// for a write to a read-only export).
    pub error: Option<Errno>,
    /// From the moment the request (with its payload) was read to the moment its reply was
    /// ready to send.
    pub elapsed: Duration,
}

/// Storage that the NBD server can serve.
///
/// The server checks every request before calling the device: offsets and lengths are in
/// range (`offset + len <= size()`), writes never reach a device whose [`read_only`] is true,
/// and READ/WRITE buffers are at most [`crate::proto::MAX_PAYLOAD`] bytes. Several requests
/// may be in flight at once from several threads, on one or many connections.
///
/// Durability contract (proto.md "Ordering of messages and writes"): when [`flush`] returns
/// `Ok`, every write, trim and write-zeroes that returned `Ok` before the flush started is on
/// stable storage; a write called with `fua = true` is on stable storage when it returns.
///
/// [`read_only`]: BlockDevice::read_only
/// [`flush`]: BlockDevice::flush
pub trait BlockDevice: Send + Sync {
    /// Size in bytes; fixed for the life of a connection.
    fn size(&self) -> u64;

    /// True when the export must refuse writes (the server answers them with `EPERM`).
    fn read_only(&self) -> bool {
        false
    }

    /// Fills `buf` with the bytes at `offset`: every byte of it, or fails. (The server reuses
    /// a worker's read buffer from request to request, so a byte left unwritten would send
    /// the client bytes of an earlier read.)
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError>;

    /// Writes `data` at `offset`; with `fua`, durably before returning.
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DevError>;

    /// [`BlockDevice::write`] of a payload the server read into a shared buffer: a device that
    /// keeps the bytes (a cache) may keep a reference to the buffer instead of copying it. The
    /// default writes it as a slice.
    fn write_shared(&self, offset: u64, data: &Arc<[u8]>, fua: bool) -> Result<(), DevError> {
        self.write(offset, data, fua)
    }

    /// Makes every completed write durable (see the trait's durability contract).
    fn flush(&self) -> Result<(), DevError>;

    /// Hints that `len` bytes at `offset` are no longer needed. The contents of the range
    /// are unspecified afterwards. The default does nothing, which the spec allows.
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DevError> {
        let _ = (offset, len, fua);
        Ok(())
    }

    /// Makes `len` bytes at `offset` read as zeroes. The default writes zero buffers of at
    /// most 1 MiB and flushes afterwards when `fua` is set.
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), DevError> {
        const STEP: u64 = 1 << 20;
        let zeroes = vec![0u8; STEP.min(len) as usize];
        let mut done = 0u64;
        while done < len {
            let n = STEP.min(len - done) as usize;
            self.write(offset + done, &zeroes[..n], false)?;
            done += n as u64;
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// True when [`write_zeroes`](BlockDevice::write_zeroes) is faster than writing zero
    /// buffers. Only then does the server advertise `NBD_FLAG_SEND_FAST_ZERO`; requests
    /// with `NBD_CMD_FLAG_FAST_ZERO` are then passed to `write_zeroes`, which may still
    /// fail one with `ENOTSUP` quickly, without changing the export.
    fn fast_zero(&self) -> bool {
        false
    }

    /// Hints that the range will be read soon (`NBD_CMD_CACHE`). The default does nothing.
    fn cache(&self, offset: u64, len: u64) -> Result<(), DevError> {
        let _ = (offset, len);
        Ok(())
    }

    /// `base:allocation` status of the range: consecutive descriptors starting at `offset`.
    /// Returning less than `len` is allowed (the client asks again for the rest); so is
    /// returning more, which the server trims. The default reports everything as allocated
    /// data, which is always correct.
    fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, DevError> {
        let _ = offset;
        Ok(vec![Extent::new(len, 0)])
    }

    /// Extension point: the metadata contexts this export offers besides `base:allocation`,
    /// such as `qemu:dirty-bitmap:SNAP`. Each name must be `namespace:leaf`.
    fn meta_contexts(&self) -> Vec<String> {
        Vec::new()
    }

    /// Block status of the range in one of the contexts named by
    /// [`meta_contexts`](BlockDevice::meta_contexts), with the same rules as
    /// [`block_status`](BlockDevice::block_status).
    fn context_block_status(
        &self,
        context: &str,
        offset: u64,
        len: u32,
    ) -> Result<Vec<Extent>, DevError> {
        let _ = (offset, len);
        Err(DevError::invalid(format!(
            "no metadata context {context:?}"
        )))
    }

    /// True when a FLUSH (or FUA write) on one connection makes the writes of every
    /// connection to this device durable — a cache shared by all connections, or none.
    /// Then the server advertises `NBD_FLAG_CAN_MULTI_CONN`.
    fn multi_conn_safe(&self) -> bool {
        true
    }

    /// Called once per transmission request when its reply is ready, just before it is sent,
    /// on the thread that performed it: for counting requests, bytes, errors and latency. A
    /// client that has its reply therefore finds the request already counted. It must
    /// be cheap (it is on every request's path) and must not block. The default does nothing.
    fn replied(&self, done: &RequestDone) {
        let _ = done;
    }
}

/// A device held in memory: for tests, examples and fuzzing.
///
/// `block_status` reports 4 KiB blocks that are all zero as `HOLE | ZERO`, so clients see a
/// sparse map. Counters tell tests how many flushes and writes arrived.
#[derive(Debug)]
pub struct MemDevice {
    data: RwLock<Vec<u8>>,
    read_only: bool,
    fast_zero: bool,
    contexts: Vec<String>,
    flushes: AtomicU64,
    writes: AtomicU64,
}

const MEM_BLOCK: u64 = 4096;

impl MemDevice {
    /// A writable device of `size` zero bytes.
    pub fn new(size: usize) -> Self {
        MemDevice::from_vec(vec![0; size])
    }

    /// A writable device holding `data`.
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemDevice {
            data: RwLock::new(data),
            read_only: false,
            fast_zero: false,
            contexts: Vec::new(),
            flushes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    /// Makes the device read-only (or writable again).
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Declares zeroing fast, so the server advertises `NBD_FLAG_SEND_FAST_ZERO`.
    pub fn with_fast_zero(mut self, fast: bool) -> Self {
        self.fast_zero = fast;
        self
    }

    /// Offers extra metadata contexts; each reports the whole device with flags 0.
    pub fn with_meta_contexts(mut self, contexts: Vec<String>) -> Self {
        self.contexts = contexts;
        self
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().clone()
    }

    /// How many times [`BlockDevice::flush`] was called.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    /// How many writes, trims and write-zeroes succeeded.
    pub fn write_count(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    fn range(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>, DevError> {
        let size = self.data.read().len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(DevError::invalid(format!(
                "range {offset:#x}+{len:#x} is past the end ({size:#x})"
            ))),
        }
    }

    fn check_writable(&self) -> Result<(), DevError> {
        if self.read_only {
            Err(DevError::permission("the device is read-only"))
        } else {
            Ok(())
        }
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.data.read().len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        let r = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data.read()[r]);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), DevError> {
        self.check_writable()?;
        let r = self.range(offset, data.len() as u64)?;
        self.data.write()[r].copy_from_slice(data);
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn flush(&self) -> Result<(), DevError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DevError> {
        // Trimmed memory reads as zeroes, which the spec allows (contents are unspecified).
        self.write_zeroes(offset, len, fua)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> Result<(), DevError> {
        self.check_writable()?;
        let r = self.range(offset, len)?;
        self.data.write()[r].fill(0);
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn fast_zero(&self) -> bool {
        self.fast_zero
    }

    fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, DevError> {
        let r = self.range(offset, u64::from(len))?;
        let data = self.data.read();
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = r.start as u64;
        let end = r.end as u64;
        while pos < end {
            // Blocks are aligned to the device, so a query of any offset sees the same map.
            let block_end = ((pos / MEM_BLOCK + 1) * MEM_BLOCK).min(end);
            let zero = data[pos as usize..block_end as usize]
                .iter()
                .all(|&b| b == 0);
            let flags = if zero {
                NBD_STATE_HOLE | NBD_STATE_ZERO
            } else {
                0
            };
            let n = (block_end - pos) as u32;
            match out.last_mut() {
                Some(last) if last.flags == flags => last.length += n,
                _ => out.push(Extent::new(n, flags)),
            }
            pos = block_end;
        }
        Ok(out)
    }

    fn meta_contexts(&self) -> Vec<String> {
        self.contexts.clone()
    }

    fn context_block_status(
        &self,
        context: &str,
        offset: u64,
        len: u32,
    ) -> Result<Vec<Extent>, DevError> {
        if !self.contexts.iter().any(|c| c == context) {
            return Err(DevError::invalid(format!(
                "no metadata context {context:?}"
            )));
        }
        self.range(offset, u64::from(len))?;
        Ok(vec![Extent::new(len, 0)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_device_reports_zero_blocks_as_holes_and_written_blocks_as_data() {
        let dev = MemDevice::new(16 * 4096);
        dev.write(4096 + 10, &[1], false).unwrap();
        let map = dev.block_status(0, 16 * 4096).unwrap();
        assert_eq!(
            map,
            vec![
                Extent::new(4096, NBD_STATE_HOLE | NBD_STATE_ZERO),
                Extent::new(4096, 0),
                Extent::new(14 * 4096, NBD_STATE_HOLE | NBD_STATE_ZERO),
            ]
        );
        // An unaligned query splits at device-aligned block boundaries.
        let map = dev.block_status(100, 8192).unwrap();
        assert_eq!(
            map,
            vec![
                Extent::new(3996, NBD_STATE_HOLE | NBD_STATE_ZERO),
                Extent::new(4096, 0),
                Extent::new(100, NBD_STATE_HOLE | NBD_STATE_ZERO),
            ]
        );
    }

    #[test]
    fn mem_device_refuses_writes_when_read_only_and_ranges_past_the_end() {
        let dev = MemDevice::new(100).with_read_only(true);
        assert_eq!(dev.write(0, &[1], false).unwrap_err().errno, Errno::EPERM);
        assert_eq!(
            dev.write_zeroes(0, 1, false).unwrap_err().errno,
            Errno::EPERM
        );
        let mut buf = [0u8; 2];
        assert_eq!(dev.read(99, &mut buf).unwrap_err().errno, Errno::EINVAL);
        assert_eq!(
            dev.read(u64::MAX, &mut buf).unwrap_err().errno,
            Errno::EINVAL
        );
    }

    #[test]
    fn default_write_zeroes_writes_zero_buffers_and_flushes_on_fua() {
        struct Plain(MemDevice);
        impl BlockDevice for Plain {
            fn size(&self) -> u64 {
                self.0.size()
            }
            fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
                self.0.read(offset, buf)
            }
            fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DevError> {
                self.0.write(offset, data, fua)
            }
            fn flush(&self) -> Result<(), DevError> {
                self.0.flush()
            }
        }
        let dev = Plain(MemDevice::from_vec(vec![7; 3 << 20]));
        dev.write_zeroes(1, (2 << 20) + 5, true).unwrap();
        let data = dev.0.contents();
        assert_eq!(data[0], 7);
        assert!(data[1..(2 << 20) + 6].iter().all(|&b| b == 0));
        assert_eq!(data[(2 << 20) + 6], 7);
        assert_eq!(dev.0.flush_count(), 1);
        assert_eq!(dev.block_status(0, 10).unwrap(), vec![Extent::new(10, 0)]);
        assert!(dev.meta_contexts().is_empty());
        assert!(dev.context_block_status("x:y", 0, 1).is_err());
        assert!(dev.multi_conn_safe() && !dev.fast_zero() && !dev.read_only());
        dev.trim(0, 1, true).unwrap();
        dev.cache(0, 1).unwrap();
    }

    #[test]
    fn io_errors_map_to_the_nearest_nbd_error() {
        use std::io::{Error, ErrorKind};
        let cases = [
            (ErrorKind::StorageFull, Errno::ENOSPC),
            (ErrorKind::FileTooLarge, Errno::ENOSPC),
            (ErrorKind::PermissionDenied, Errno::EPERM),
            (ErrorKind::InvalidInput, Errno::EINVAL),
            (ErrorKind::Unsupported, Errno::ENOTSUP),
            (ErrorKind::OutOfMemory, Errno::ENOMEM),
            (ErrorKind::Other, Errno::EIO),
        ];
        for (kind, errno) in cases {
            assert_eq!(DevError::from(Error::from(kind)).errno, errno, "{kind:?}");
        }
    }
}
