//! [`CrashVlun`], the in-memory device with a volatile write cache: its live image, its
//! durable image and the unsynced operations in between, and its `Vlun` calls.
//!
//! It must not decide by itself which call fails (every counted call asks the controller's
//! `admit` first; whether a write finds room is `space.rs`'s to say), nor say what a crash
//! leaves (`power.rs`) or corrupt bytes (`flip.rs`).

use std::fmt;
use std::io;
use std::sync::Arc;

use parking_lot::RwLock;

use super::media::{capture, Pending};
use super::space::FS_BLOCK;
use super::{invalid, FaultController, IoOp};
use crate::vlun::Vlun;

pub(super) struct Images {
    pub(super) live: Vec<u8>,
    pub(super) durable: Vec<u8>,
    pub(super) pending: Vec<Pending>,
    /// Which [`FS_BLOCK`]s have space behind them, as a file system's allocated blocks: written
    /// or reserved, and not punched or discarded since. Past its end: none.
    pub(super) backed: Vec<bool>,
}

/// An in-memory VLUN with a volatile write cache, attached to a [`FaultController`].
///
/// Reads see the live image; [`CrashVlun::crash_image`] tells what a power loss would leave.
/// Invariant: the durable image with every unsynced operation applied in order is the live
/// image.
pub struct CrashVlun {
    controller: Arc<FaultController>,
    fixed: Option<usize>,
    pub(super) images: RwLock<Images>,
}

impl fmt::Debug for CrashVlun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let im = self.images.read();
        f.debug_struct("CrashVlun")
            .field("live_len", &im.live.len())
            .field("durable_len", &im.durable.len())
            .field("unsynced", &im.pending.len())
            .field("fixed", &self.fixed)
            .finish_non_exhaustive()
    }
}

impl CrashVlun {
    /// A device holding `bytes`; `backed` says whether they have space behind them.
    fn with_image(
        controller: &Arc<FaultController>,
        bytes: Vec<u8>,
        fixed: bool,
        backed: bool,
    ) -> Self {
        Self {
            controller: Arc::clone(controller),
            fixed: fixed.then_some(bytes.len()),
            images: RwLock::new(Images {
                backed: vec![backed; bytes.len().div_ceil(FS_BLOCK)],
                live: bytes.clone(),
                durable: bytes,
                pending: Vec::new(),
            }),
        }
    }

    /// A growable device of `len` zero bytes, all durable (like `MemVlun::new`): a sparse file,
    /// none of whose blocks has space behind it until written or reserved.
    ///
    /// # Panics
    /// If `len` does not fit in memory's address range.
    pub fn new(controller: &Arc<FaultController>, len: u64) -> Self {
        let len = usize::try_from(len).expect("CrashVlun length fits in usize");
        Self::with_image(controller, vec![0; len], false, false)
    }

    /// A device of `len` zero bytes that cannot grow, like a block device (`MemVlun::fixed`).
    ///
    /// # Panics
    /// If `len` does not fit in memory's address range.
    pub fn fixed(controller: &Arc<FaultController>, len: u64) -> Self {
        let len = usize::try_from(len).expect("CrashVlun length fits in usize");
        Self::with_image(controller, vec![0; len], true, true)
    }

    /// A growable device whose durable content is `bytes`: the restart after a crash. Every
    /// block of it counts as having space behind it.
    pub fn from_image(controller: &Arc<FaultController>, bytes: Vec<u8>) -> Self {
        Self::with_image(controller, bytes, false, true)
    }

    /// A fixed-size device whose durable content is `bytes`.
    pub fn from_image_fixed(controller: &Arc<FaultController>, bytes: Vec<u8>) -> Self {
        Self::with_image(controller, bytes, true, true)
    }

    /// Zeroes what `[start, end)` covers of the image, as an unsynced operation, and on a
    /// growable device takes the space of its whole blocks away (a hole).
    fn zero(&self, im: &mut Images, start: usize, end: usize) {
        let end = end.min(im.live.len());
        if start >= end {
            return;
        }
        im.live[start..end].fill(0);
        if self.fixed.is_none() {
            im.unback(start, end);
        }
        let segs = capture(&im.live, start, end, true);
        im.pending.push(Pending::Sectors(segs));
    }

    /// The controller this device reports to.
    pub fn controller(&self) -> &Arc<FaultController> {
        &self.controller
    }

    /// A copy of what reads return now.
    pub fn live_image(&self) -> Vec<u8> {
        self.images.read().live.clone()
    }

    /// A copy of what the last successful sync made durable.
    pub fn durable_image(&self) -> Vec<u8> {
        self.images.read().durable.clone()
    }

    /// Operations (writes, punches, length changes) since the last successful sync.
    pub fn unsynced_count(&self) -> usize {
        self.images.read().pending.len()
    }
}

/// `[offset, offset + len)` as in-memory indices, or `InvalidInput`.
fn range(offset: u64, len: usize) -> io::Result<(usize, usize)> {
    let start = usize::try_from(offset).map_err(|_| invalid("offset out of range"))?;
    let end = start
        .checked_add(len)
        .ok_or_else(|| invalid("offset + length overflows"))?;
    Ok((start, end))
}

impl Vlun for CrashVlun {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let im = self.images.read();
        self.controller.admit(IoOp::Read)?;
        let (start, end) = range(offset, buf.len())?;
        let have = end.min(im.live.len()).saturating_sub(start);
        if have > 0 {
            buf[..have].copy_from_slice(&im.live[start..start + have]);
        }
        buf[have..].fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut im = self.images.write();
        self.controller.admit(IoOp::Write)?;
        let (start, end) = range(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        // Growing a fixed device, or writing where no space is held on a full file system,
        // is refused before anything changes.
        if self.fixed.is_some_and(|len| end > len)
            || self.controller.is_full() && im.needs_space(start, end)
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if end > im.live.len() {
            im.live.resize(end, 0);
        }
        if self.fixed.is_none() {
            im.back(start, end);
        }
        im.live[start..end].copy_from_slice(buf);
        let segs = capture(&im.live, start, end, false);
        im.pending.push(Pending::Sectors(segs));
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut im = self.images.write();
        self.controller.admit(IoOp::Sync)?;
        let Images {
            durable, pending, ..
        } = &mut *im;
        for op in pending.drain(..) {
            op.apply(durable, None);
        }
        debug_assert!(
            im.durable == im.live,
            "replaying unsynced ops rebuilds the live image"
        );
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.controller.check_alive()?;
        Ok(self.images.read().live.len() as u64)
    }

    fn growable(&self) -> bool {
        self.fixed.is_none()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut im = self.images.write();
        self.controller.admit(IoOp::SetLen)?;
        if self.fixed.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "fixed-size VLUN",
            ));
        }
        let len = usize::try_from(len).map_err(|_| invalid("length out of range"))?;
        im.live.resize(len, 0);
        let blocks = im.backed.len().min(len.div_ceil(FS_BLOCK));
        im.backed.truncate(blocks);
        im.pending.push(Pending::SetLen(len));
        Ok(())
    }

    /// Zeroes the range. Like hole punching on a regular file (`FALLOC_FL_KEEP_SIZE`) it never
    /// grows a growable device; on a fixed one, like writing zeroes to a block device, a range
    /// past the end fails with `ENOSPC`.
    fn punch_zero(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut im = self.images.write();
        self.controller.admit(IoOp::PunchZero)?;
        let len = usize::try_from(len).map_err(|_| invalid("length out of range"))?;
        let (start, end) = range(offset, len)?;
        if self.fixed.is_some() && end > im.live.len() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.zero(&mut im, start, end);
        Ok(())
    }

    /// A counted call that fails as armed, or with `ENOSPC` while the controller says the
    /// space is full; otherwise later writes to the range (of a growable device) need no
    /// more space, as after `fallocate(KEEP_SIZE)`.
    fn reserve_space(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut im = self.images.write();
        self.controller.admit(IoOp::ReserveSpace)?;
        let len = usize::try_from(len).map_err(|_| invalid("length out of range"))?;
        let (start, end) = range(offset, len)?;
        if self.fixed.is_none() {
            im.back(start, end);
        }
        Ok(())
    }

    /// Zeroes the range (what it then reads is up to the device; zeroes are one such
    /// answer) and, on a growable device, takes the space of its whole blocks away, as a
    /// hole punched in a file.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut im = self.images.write();
        self.controller.check_alive()?;
        let len = usize::try_from(len).map_err(|_| invalid("length out of range"))?;
        let (start, end) = range(offset, len)?;
        self.zero(&mut im, start, end);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_vlun_cannot_grow() {
        let ctl = FaultController::new();
        let v = CrashVlun::fixed(&ctl, 1024);
        assert!(!v.growable());
        let err = v.write_at(&[1; 8], 1020).expect_err("past the end");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert!(v.set_len(2048).is_err());
        assert!(v.punch_zero(1000, 100).is_err());
        assert_eq!(
            v.live_image(),
            vec![0; 1024],
            "failed calls changed nothing"
        );
        assert_eq!(v.len().expect("len"), 1024);

        let g = CrashVlun::new(&ctl, 1024);
        g.punch_zero(1000, 100)
            .expect("a punch past the end is clamped");
        assert_eq!(g.len().expect("len"), 1024, "and does not grow the device");
    }
}
