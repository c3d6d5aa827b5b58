//! Target space: what the target can hold, and the slots promised to cached writes whose
//! originals are not yet preserved. Accounting only: it hands out no slot (the allocator does,
//! in a destage batch) and writes no data.

use std::sync::atomic::Ordering;

use crate::error::{Device, Error, Result};
use crate::units::{ChunkIndex, TargetSlot};

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
            let free = cap.saturating_sub(want - n);
            return Err(self.no_room("preserving originals for snapshots", n, free));
        }
        Ok(())
    }

    /// Returns `n` promised slots that will not be needed.
    pub(super) fn unreserve(&self, n: u64) {
        if n > 0 {
            self.reserved.fetch_sub(n, Ordering::SeqCst);
        }
    }

    /// Fails with ENOSPC unless `extra` more slots, beyond what is used and promised, fit.
    pub(super) fn check_room(&self, extra: u64) -> Result<()> {
        let used = self.slots_used.load(Ordering::SeqCst)
            + self.reserved.load(Ordering::SeqCst)
            + self.meta_headroom();
        let cap = self.capacity_slots();
        if used + extra > cap {
            return Err(self.no_room("creating a snapshot", extra, cap.saturating_sub(used)));
        }
        Ok(())
    }

    /// The error for `n` slots that do not fit when `free` are left: past a fixed capacity
    /// the store is full ([`Error::NoSpace`]); without a cap the limit is the target file
    /// system's free space, and it says so ([`Error::DeviceFull`]), which costs the request
    /// and not the volume.
    pub(super) fn no_room(&self, what: &str, n: u64, free: u64) -> Error {
        match self.target_cap {
            Some(_) => Error::NoSpace {
                detail: format!(
                    "{what} needs {n} more chunk slots; {free} of {} are free",
                    self.capacity_slots()
                ),
            },
            None => Error::DeviceFull {
                device: Device::Target,
                detail: format!(
                    "{what} needs {n} more chunks; the file system has room for {free}"
                ),
            },
        }
    }

    /// Slots data reservations leave free for metadata: room to compact the log (which then
    /// frees the old chain) and to append after that, and the slots held back so that a
    /// snapshot can always be deleted on a full target.
    fn meta_headroom(&self) -> u64 {
        let live = self.live_meta_slots(self.table.load().len());
        META_HEADROOM + live + 2
    }

    /// Slots neither in use nor promised to cached writes.
    pub(super) fn free_slots(&self, meta: &MetaState) -> u64 {
        self.capacity_slots()
            .saturating_sub(meta.alloc.used() + self.reserved.load(Ordering::SeqCst))
    }

    /// Makes sure the source has blocks for every chunk of `[offset, offset + len)` before a
    /// write there is accepted, so that destaging it cannot run out of space: on a sparse
    /// source file a full file system then refuses the write (ENOSPC, nothing changed) rather
    /// than the destage of a write already acknowledged. One bit per chunk remembers the
    /// chunks known to have their blocks, so this costs a call only the first time.
    pub(super) fn ensure_source_room(&self, offset: u64, len: u64) -> Result<()> {
        for p in self.geo.split(offset, len) {
            let (word, bit) = ((p.chunk.0 / 64) as usize, 1u64 << (p.chunk.0 % 64));
            if self.source_room[word].load(Ordering::Relaxed) & bit != 0 {
                continue;
            }
            let at = self.source_offset(p.chunk);
            self.source
                .reserve_space(at, self.geo.chunk())
                .map_err(|e| Error::io_or_full("make room for a write", Device::Source, at, e))?;
            self.source_room[word].fetch_or(bit, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Gives the space of free slots back to the file system, a run of them at a time.
    pub(super) fn discard_slots(&self, slots: &[TargetSlot]) {
        let mut sorted: Vec<u64> = slots.iter().map(|s| s.0).collect();
        sorted.sort_unstable();
        let mut i = 0;
        while i < sorted.len() {
            let mut n = 1;
            while i + n < sorted.len() && sorted[i + n] == sorted[i] + n as u64 {
                n += 1;
            }
            let off = self.slot_offset(TargetSlot(sorted[i]));
            if let Err(e) = self.target.discard(off, n as u64 * self.geo.chunk()) {
                tracing::debug!(volume = %self.name, offset = off, error = %e, "could not give freed slots back");
            }
            i += n;
        }
    }

    /// Forgets that chunk `c` has its blocks on the source (its hole was just punched).
    pub(super) fn forget_source_room(&self, c: ChunkIndex) {
        let (word, bit) = ((c.0 / 64) as usize, 1u64 << (c.0 % 64));
        self.source_room[word].fetch_and(!bit, Ordering::Relaxed);
    }
}

/// A device as `Inner::out_of_space` keeps it (0: none).
pub(super) fn device_code(d: Device) -> u8 {
    match d {
        Device::Source => 1,
        Device::Target => 2,
        Device::Journal => 3,
        Device::Other => 4,
    }
}

/// The device [`device_code`] gave `code`, if any.
pub(super) fn device_of(code: u8) -> Option<Device> {
    match code {
        1 => Some(Device::Source),
        2 => Some(Device::Target),
        3 => Some(Device::Journal),
        4 => Some(Device::Other),
        _ => None,
    }
}
