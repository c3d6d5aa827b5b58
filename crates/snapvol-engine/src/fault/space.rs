//! Space: a full file system armed on the controller ([`FaultController::fill_up`]), and
//! which blocks of a [`CrashVlun`](super::CrashVlun) have space behind them, the way a file
//! system's allocated blocks do.
//!
//! It must not change the bytes of an image: it only says where a write would need space
//! that is not there; the device refuses the write (`crash_vlun.rs`).

use super::crash_vlun::Images;
use super::FaultController;

impl FaultController {
    /// Fills the file system up: from now on, until [`FaultController::free_space`],
    /// `reserve_space` fails with `ENOSPC`, and so does a write to a [`CrashVlun`] that
    /// touches a block with no space behind it (past its end, never written or reserved, or
    /// punched or discarded since); writes into blocks it holds go on, as on a full file
    /// system (its allocated blocks are still there to overwrite).
    ///
    /// [`CrashVlun`]: super::CrashVlun
    pub fn fill_up(&self) {
        self.state.lock().full = true;
    }

    /// Whether [`FaultController::fill_up`] is in force.
    pub fn is_full(&self) -> bool {
        self.state.lock().full
    }

    /// Frees space again after [`FaultController::fill_up`].
    pub fn free_space(&self) {
        self.state.lock().full = false;
    }
}

/// The unit in which a [`CrashVlun`] tracks which of its bytes have space behind them.
///
/// [`CrashVlun`]: super::CrashVlun
pub(super) const FS_BLOCK: usize = 4096;

impl Images {
    /// Whether writing `[start, end)` needs space the device does not hold yet.
    pub(super) fn needs_space(&self, start: usize, end: usize) -> bool {
        (start / FS_BLOCK..end.div_ceil(FS_BLOCK))
            .any(|b| !self.backed.get(b).copied().unwrap_or(false))
    }

    /// Gives `[start, end)` space (every block it touches).
    pub(super) fn back(&mut self, start: usize, end: usize) {
        let blocks = start / FS_BLOCK..end.div_ceil(FS_BLOCK);
        if self.backed.len() < blocks.end {
            self.backed.resize(blocks.end, false);
        }
        self.backed[blocks].fill(true);
    }

    /// Takes the space of the blocks wholly inside `[start, end)` away (a hole).
    pub(super) fn unback(&mut self, start: usize, end: usize) {
        let blocks = start.div_ceil(FS_BLOCK)..(end / FS_BLOCK).min(self.backed.len());
        if blocks.start < blocks.end {
            self.backed[blocks].fill(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::super::{read, CrashVlun};
    use super::*;
    use crate::vlun::Vlun;

    #[test]
    fn a_full_file_system_refuses_writes_only_where_no_space_is_held() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 64 << 10);
        v.write_at(&[1; 4096], 0)
            .expect("write while there is space");
        v.reserve_space(16 << 10, 8 << 10).expect("reserve");
        ctl.fill_up();
        let enospc =
            |r: io::Result<()>| r.expect_err("refused").raw_os_error() == Some(libc::ENOSPC);
        v.write_at(&[2; 4096], 0)
            .expect("overwrite a written block");
        v.write_at(&[3; 8192], 16 << 10)
            .expect("write where space was reserved");
        assert!(
            enospc(v.write_at(&[4; 512], 8 << 10)),
            "a hole of the sparse file"
        );
        assert!(enospc(v.write_at(&[4; 512], 64 << 10)), "growing the file");
        assert!(enospc(v.reserve_space(32 << 10, 4096)), "reserving more");
        v.discard(16 << 10, 4096).expect("discard");
        assert!(enospc(v.write_at(&[5; 512], 16 << 10)), "a discarded block");
        v.write_at(&[5; 512], 20 << 10)
            .expect("the reserved block next to it");
        assert_eq!(
            read(&v, 8 << 10, 4).expect("read"),
            [0; 4],
            "refused writes changed nothing"
        );
        ctl.free_space();
        v.write_at(&[6; 512], 64 << 10).expect("space is back");
    }
}
