//! Injected I/O errors: one-shot `EIO` (or any errno) armed on the controller
//! ([`FaultController::fail_at`], [`OpFilter`]), and [`FaultyVlun`], which attaches any other
//! VLUN to a controller so that its calls are counted and fail as armed.
//!
//! It must not keep images or simulate what a crash leaves (that is `power.rs` with a
//! [`CrashVlun`](super::CrashVlun)); a failed call has no effect on the device.

use std::io;
use std::sync::Arc;

use super::{FaultController, IoOp};
use crate::vlun::Vlun;

/// Which I/O calls an index given to [`FaultController::fail_at`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpFilter {
    /// Every I/O call: the index is the global one, as in [`FaultController::crash_at`].
    Any,
    /// `read_at` only.
    Reads,
    /// Calls that change the image: `write_at`, `punch_zero` and `set_len`.
    Writes,
    /// Calls that need space on the device: `write_at`, `set_len` and `reserve_space` (where a
    /// file system that is full says `ENOSPC`).
    NeedSpace,
    /// `sync` only.
    Syncs,
    /// One kind of call only.
    Only(IoOp),
}

impl OpFilter {
    /// Whether this filter counts `op`.
    pub fn matches(self, op: IoOp) -> bool {
        match self {
            OpFilter::Any => true,
            OpFilter::Reads => op == IoOp::Read,
            OpFilter::Writes => matches!(op, IoOp::Write | IoOp::PunchZero | IoOp::SetLen),
            OpFilter::NeedSpace => {
                matches!(op, IoOp::Write | IoOp::SetLen | IoOp::ReserveSpace)
            }
            OpFilter::Syncs => op == IoOp::Sync,
            OpFilter::Only(only) => op == only,
        }
    }
}

impl FaultController {
    /// Arms one `EIO`: the `index`-th call (0-based, counted since the controller was made)
    /// among those `filter` counts fails once with `EIO` and no effect; later calls proceed.
    /// An index already passed never fires. Several fail points may be armed at once.
    pub fn fail_at(&self, index: u64, filter: OpFilter) {
        self.fail_at_with(index, filter, libc::EIO);
    }

    /// As [`FaultController::fail_at`], with the error number `errno` (`ENOSPC`, say).
    pub fn fail_at_with(&self, index: u64, filter: OpFilter, errno: i32) {
        self.state.lock().fail_points.push((index, filter, errno));
    }

    /// `EIO` errors injected so far by [`FaultController::fail_at`].
    pub fn faults_injected(&self) -> u64 {
        self.state.lock().injected
    }
}

/// Any VLUN attached to a [`FaultController`]: its calls are counted and fail as armed, with
/// no effect on the inner VLUN. It keeps no crash image; use [`CrashVlun`] for that.
///
/// [`CrashVlun`]: super::CrashVlun
#[derive(Debug)]
pub struct FaultyVlun<V> {
    controller: Arc<FaultController>,
    inner: V,
}

impl<V: Vlun> FaultyVlun<V> {
    /// Attaches `inner` to `controller`.
    pub fn new(controller: &Arc<FaultController>, inner: V) -> Self {
        Self {
            controller: Arc::clone(controller),
            inner,
        }
    }

    /// The wrapped VLUN, for inspection without counting.
    pub fn inner(&self) -> &V {
        &self.inner
    }

    /// Detaches the wrapped VLUN.
    pub fn into_inner(self) -> V {
        self.inner
    }
}

impl<V: Vlun> Vlun for FaultyVlun<V> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.controller.admit(IoOp::Read)?;
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.controller.admit(IoOp::Write)?;
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.controller.admit(IoOp::Sync)?;
        self.inner.sync()
    }
    fn len(&self) -> io::Result<u64> {
        self.controller.check_alive()?;
        self.inner.len()
    }
    fn growable(&self) -> bool {
        self.inner.growable()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.controller.admit(IoOp::SetLen)?;
        self.inner.set_len(len)
    }
    /// One counted call, whatever the inner VLUN does to carry it out.
    fn punch_zero(&self, offset: u64, len: u64) -> io::Result<()> {
        self.controller.admit(IoOp::PunchZero)?;
        self.inner.punch_zero(offset, len)
    }
    fn growth_room(&self) -> Option<u64> {
        self.inner.growth_room()
    }
    /// One counted call; fails with `ENOSPC` while the controller says the space is full.
    fn reserve_space(&self, offset: u64, len: u64) -> io::Result<()> {
        self.controller.admit(IoOp::ReserveSpace)?;
        self.inner.reserve_space(offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.controller.check_alive()?;
        self.inner.discard(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{read, CrashMode, CrashVlun};
    use super::*;

    #[test]
    fn fail_at_injects_exactly_one_eio() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 0);
        // The second write (write index 1) fails; reads and syncs do not count towards it.
        ctl.fail_at(1, OpFilter::Writes);
        v.write_at(b"aaaa", 0).expect("write 0");
        read(&v, 0, 4).expect("reads are not counted");
        v.sync().expect("syncs are not counted");
        let err = v.write_at(b"bbbb", 0).expect_err("write 1 fails");
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        assert_eq!(v.live_image(), b"aaaa", "the failed write had no effect");
        assert_eq!(v.unsynced_count(), 0);
        v.write_at(b"cccc", 0).expect("write 2 proceeds");
        v.sync().expect("sync");
        assert_eq!(v.durable_image(), b"cccc");
        assert_eq!(ctl.faults_injected(), 1);
        assert!(!ctl.crashed());

        // A failed sync leaves the writes before it unsynced.
        ctl.fail_at(ctl.op_count(OpFilter::Syncs), OpFilter::Syncs);
        v.write_at(b"dddd", 0).expect("write");
        let err = v.sync().expect_err("sync fails");
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        assert_eq!(v.crash_image(CrashMode::DropAll, 0), b"cccc");
        v.sync().expect("the next sync works");
        assert_eq!(v.crash_image(CrashMode::DropAll, 0), b"dddd");
        assert_eq!(ctl.faults_injected(), 2);

        // Unfiltered indices are the global ones.
        ctl.fail_at(ctl.io_count() + 1, OpFilter::Any);
        read(&v, 0, 1).expect("this one");
        assert!(read(&v, 0, 1).is_err_and(|e| e.raw_os_error() == Some(libc::EIO)));
        read(&v, 0, 1).expect("and after");
        assert_eq!(ctl.faults_injected(), 3);
    }
}
