//! Target space: what the target can hold, and the slots promised to cached writes whose
//! originals are not yet preserved.

use std::sync::atomic::Ordering;

use crate::error::{Error, Result};

use super::{Inner, MetaState, META_HEADROOM};

impl Inner {
    fn capacity_slots(&self) -> u64 {
        let chunk = self.geo.chunk();
        match self.target_cap {
            Some(cap) => cap.saturating_sub(self.data_start) / chunk,
            None => {
                let len = self.target.len().unwrap_or(0);
                let room = self.target.growth_room().unwrap_or(u64::MAX / 2);
                len.saturating_add(room).saturating_sub(self.data_start) / chunk
            }
        }
    }

    /// Promises `n` target slots to cached writes, or fails with ENOSPC.
    pub(super) fn reserve(&self, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let prev = self.reserved.fetch_add(n, Ordering::SeqCst);
        let used = self.slots_used.load(Ordering::SeqCst);
        let want = used + prev + n + self.meta_headroom();
        if want <= self.capacity_hint.load(Ordering::Relaxed) {
            return Ok(());
        }
        let cap = self.capacity_slots();
        // A fixed capacity is exact; free space on a file system is looked at again once half
        // of what was free has been promised.
        let hint = match self.target_cap {
            Some(_) => cap,
            None => want + cap.saturating_sub(want) / 2,
        };
        self.capacity_hint.store(hint, Ordering::Relaxed);
        if want > cap {
            self.reserved.fetch_sub(n, Ordering::SeqCst);
            return Err(Error::NoSpace {
                detail: format!(
                    "{} of {cap} chunk slots used or promised, {n} more needed",
                    want - n
                ),
            });
        }
        Ok(())
    }

    /// Returns `n` promised slots that will not be needed.
    pub(super) fn unreserve(&self, n: u64) {
        if n > 0 {
            self.reserved.fetch_sub(n, Ordering::SeqCst);
        }
    }

    /// Slots data reservations leave free for metadata: room to compact the log (which then
    /// frees the old chain) and to append after that, and the slots held back so that a
    /// snapshot can always be deleted on a full target.
    pub(super) fn check_room(&self, extra: u64) -> Result<()> {
        let used = self.slots_used.load(Ordering::SeqCst) + self.reserved.load(Ordering::SeqCst);
        let want = used + self.meta_headroom() + extra;
        let cap = self.capacity_slots();
        if want > cap {
            return Err(Error::NoSpace {
                detail: format!("{used} of {cap} chunk slots used or promised"),
            });
        }
        Ok(())
    }

    fn meta_headroom(&self) -> u64 {
        let live = self.live_meta_slots(self.table.load().len());
        META_HEADROOM + live + 2
    }

    /// Slots neither in use nor promised to cached writes.
    pub(super) fn free_slots(&self, meta: &MetaState) -> u64 {
        self.capacity_slots()
            .saturating_sub(meta.alloc.used() + self.reserved.load(Ordering::SeqCst))
    }
}
