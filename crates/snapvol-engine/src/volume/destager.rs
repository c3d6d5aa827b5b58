//! The destage executor (claims 14–16): performs the plans of [`crate::destage`] in the order
//! that keeps I1 and I2, and the background thread that runs it. It decides nothing about what
//! to preserve (the plan does) and never appends to the journal (the journal writer does).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::DirtyChunk;
use crate::destage::{self, SourceWrite};
use crate::error::{Device, Error, Result};
use crate::metadata::Entry;
use crate::units::{TargetSlot, BLOCK};

use super::space::device_code;
use super::{Inner, MetaState};

/// Largest batch the destager takes at once.
const MAX_BATCH: u64 = 32 << 20;

impl Inner {
    pub(super) fn destager_loop(self: Arc<Self>) {
        loop {
            {
                let mut w = self.wake_lock.lock();
                if !*w {
                    self.wake.wait_for(&mut w, Duration::from_millis(100));
                }
                *w = false;
            }
            if self.shutdown.load(Ordering::SeqCst) {
                return;
            }
            if self.failed.get().is_some() || self.cache.dirty_chunks() == 0 {
                continue;
            }
            // Paused for want of space (`fail` passes over that): the next round, in 100 ms,
            // tries again.
            if let Err(e) = self.destage_round() {
                self.fail(&e);
            }
        }
    }

    /// Journals what is staged, destages in batches while the cache is more than lightly
    /// used (everything, when `all`), then frees the journal space whose data is now on the
    /// source.
    pub(super) fn destage_round(&self) -> Result<()> {
        self.journal_flush()?;
        loop {
            let n = self.destage_batch()?;
            if n == 0 || self.shutdown.load(Ordering::SeqCst) {
                break;
            }
            if self.cache.dirty_bytes() < self.cache.limit() / 8 {
                break;
            }
        }
        if self.background_destage {
            // The journal writer moves the head: its source sync then never holds up a batch.
            self.poke_journal();
            Ok(())
        } else {
            self.reclaim_journal(false)
        }
    }

    /// Destages everything and empties the journal: what a clean close leaves is a source VLUN
    /// that is the volume, usable without snapvol.
    pub(super) fn drain(&self) -> Result<()> {
        self.journal_flush()?;
        while self.destage_batch()? > 0 {}
        self.reclaim_journal(true)?;
        self.target
            .sync()
            .map_err(|e| Error::io("sync", Device::Target, 0, e))
    }

    /// One destage batch (claims 14–16): preserve originals once each for every snapshot that
    /// needs them, commit the pointers, then write the new data to the source and clear the
    /// dirty designations. Returns the number of chunks destaged.
    ///
    /// A file system that runs out of space costs the batch, not the volume: before anything
    /// is committed nothing of the batch counts (its slots go back), after the commit the
    /// chunks already written are retired, and the rest stay dirty for the next batch, which
    /// redoes them (the writes are idempotent; the originals are preserved already). The error
    /// is [`Error::DeviceFull`]; the volume stays writable and destaging resumes once space is
    /// freed.
    pub(super) fn destage_batch(&self) -> Result<usize> {
        match self.destage_batch_inner() {
            Ok(n) => {
                self.out_of_space.store(0, Ordering::SeqCst);
                Ok(n)
            }
            Err(e @ Error::DeviceFull { device, .. }) => {
                if self
                    .out_of_space
                    .swap(device_code(device), Ordering::SeqCst)
                    == 0
                {
                    tracing::warn!(volume = %self.name, error = %e, "destaging paused: no space left; it resumes once space is freed");
                }
                Err(e)
            }
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    fn destage_batch_inner(&self) -> Result<usize> {
        let mut scratch = self.destage_lock.lock();
        self.check_writable()?;
        let batch = self.cache.collect(MAX_BATCH);
        if batch.is_empty() {
            return Ok(0);
        }
        let table = self.table.load_full();
        let nblocks = self.geo.blocks_per_chunk();
        let chunk = self.geo.chunk_size as usize;

        // Plan (pure): which images each chunk must preserve, for which snapshots.
        let plans: Vec<_> = batch
            .iter()
            .map(|d| {
                destage::plan_chunk(
                    d.chunk,
                    &d.versions,
                    self.index.watermark(d.chunk),
                    &table,
                    nblocks,
                )
            })
            .collect();
        let copies: u64 = plans.iter().map(|p| p.preserve.len() as u64).sum();

        let mut placed = Vec::with_capacity(copies as usize);
        if copies > 0 {
            // Destage the originals to the next free target locations, sequentially.
            // The reservations the batch's writes took become these allocations now, so no
            // slot is ever counted twice.
            let mut held: u64 = batch
                .iter()
                .flat_map(|d| &d.versions)
                .map(|v| u64::from(v.reserved))
                .sum();
            // Landing reserved a slot for every image a live snapshot needed then, and a
            // batch can only need fewer (snapshots deleted since): more would be a bug in that
            // argument, and must still fit.
            if copies > held {
                tracing::warn!(volume = %self.name, copies, held, "a destage batch needs more target slots than its writes reserved");
                self.reserve(copies - held)?;
                held = copies;
            }
            let runs = {
                let mut meta = self.meta.lock();
                let runs = meta.alloc.allocate(copies).ok_or_else(|| Error::NoSpace {
                    detail: format!("the target cannot hold {copies} more preserved chunks"),
                })?;
                // The file system's space for the copies, before anything is written: a full
                // one gives the slots back and the batch waits (nothing happened).
                for &(first, n) in &runs {
                    let off = self.slot_offset(first);
                    if let Err(e) = self.target.reserve_space(off, n * self.geo.chunk()) {
                        for &(f, n) in &runs {
                            (0..n).for_each(|i| meta.alloc.free(TargetSlot(f.0 + i)));
                        }
                        return Err(Error::io_or_full(
                            "make room for preserved chunks",
                            Device::Target,
                            off,
                            e,
                        ));
                    }
                }
                self.slots_used.store(meta.alloc.used(), Ordering::SeqCst);
                self.stats.preserving.fetch_add(copies, Ordering::SeqCst);
                self.unreserve(held);
                runs
            };
            // Until the commit below, the batch can still be undone: its slots freed, its
            // writes' reservations back.
            let undo = |meta: &mut MetaState| {
                for &(f, n) in &runs {
                    (0..n).for_each(|i| meta.alloc.free(TargetSlot(f.0 + i)));
                }
                self.slots_used.store(meta.alloc.used(), Ordering::SeqCst);
                self.stats.preserving.fetch_sub(copies, Ordering::SeqCst);
                self.reserved.fetch_add(held, Ordering::SeqCst);
            };
            let mut slots = runs
                .iter()
                .flat_map(|&(s, n)| (0..n).map(move |i| TargetSlot(s.0 + i)));
            // Copy i goes to the i-th allocated slot: one buffer, cut into the runs below.
            // Every byte of it is written (read or composed) before it is used.
            let area_len = copies as usize * chunk;
            if scratch.len() < area_len {
                scratch.resize(area_len, 0);
            }
            let area = &mut scratch[..area_len];
            let mut source_buf = Vec::new();
            let mut next = 0;
            for (d, plan) in batch.iter().zip(&plans) {
                if plan.preserve.is_empty() {
                    continue;
                }
                let off = self.source_offset(d.chunk);
                let read_error = |e| Error::io("read original", Device::Source, off, e);
                // One copy that needs the source (the common case): read the original straight
                // into its place and lay the cached versions it holds over it.
                let in_place = plan.needs_source && plan.preserve.len() == 1;
                let src = if plan.needs_source && !in_place {
                    source_buf.resize(chunk, 0);
                    self.source
                        .read_at(&mut source_buf, off)
                        .map_err(read_error)?;
                    Some(&source_buf[..])
                } else {
                    None
                };
                for pres in &plan.preserve {
                    let slot = slots.next().expect("allocated one slot per copy");
                    let buf = &mut area[next * chunk..(next + 1) * chunk];
                    if in_place {
                        self.source.read_at(buf, off).map_err(read_error)?;
                        destage::overlay(&d.versions[..pres.image], buf);
                    } else {
                        destage::compose(&d.versions[..pres.image], src, 0, buf);
                    }
                    placed.push(destage::Placed {
                        chunk: d.chunk,
                        slot,
                        lo: pres.lo,
                        hi: pres.hi,
                        crc: crc32c::crc32c(buf),
                    });
                    next += 1;
                }
            }
            let mut at = 0;
            for &(first, n) in &runs {
                let len = n as usize * chunk;
                let off = self.slot_offset(first);
                self.target
                    .write_at(&area[at..at + len], off)
                    .map_err(|e| Error::io("write preserved chunks", Device::Target, off, e))?;
                at += len;
            }
            if scratch.len() > 2 * MAX_BATCH as usize {
                *scratch = Vec::new();
            }
            // Every affected snapshot's log and bitmap now point at the copies: commit.
            let records = destage::records(&placed);
            let mut meta = self.meta.lock();
            if let Err(e) = self.commit_locked(&mut meta, records) {
                // A full file system refuses the metadata before anything is written; any
                // other failure has failed the volume.
                if matches!(e, Error::DeviceFull { .. }) {
                    undo(&mut meta);
                }
                return Err(e);
            }
            for p in &placed {
                self.index.insert(
                    p.chunk,
                    Entry {
                        lo: p.lo,
                        hi: p.hi,
                        slot: p.slot,
                        crc: p.crc,
                    },
                );
            }
            self.stats.preserving.fetch_sub(copies, Ordering::SeqCst);
            drop(meta);
            // The batch's reservations are allocations now.
            batch
                .iter()
                .for_each(|d| self.cache.consume_reservations(d));
            self.stats.copies_made.fetch_add(copies, Ordering::Relaxed);
            let mut meta = self.meta.lock();
            self.maybe_checkpoint(&mut meta)?;
        } else {
            // Nothing to preserve: what the batch's writes reserved is not needed.
            let held: u64 = batch
                .iter()
                .flat_map(|d| &d.versions)
                .map(|v| u64::from(v.reserved))
                .sum();
            self.unreserve(held);
            batch
                .iter()
                .for_each(|d| self.cache.consume_reservations(d));
        }

        // New data to the source (claims 21, 23), then the dirty designations cleared. A full
        // file system stops it at a chunk: those before it are done, the rest wait.
        let mut compose_buf = vec![0u8; chunk];
        for (written, d) in batch.iter().enumerate() {
            if let Err(e) = self.write_source(d, nblocks, &mut compose_buf) {
                for done in &batch[..written] {
                    self.cache.retire(done);
                }
                return Err(e);
            }
        }
        for d in &batch {
            self.cache.retire(d);
        }
        Ok(batch.len())
    }

    /// Writes the newest image of a dirty chunk to the source: its whole buffer, its dirty
    /// blocks, or a hole for a chunk that reads as zero.
    fn write_source(&self, d: &DirtyChunk, nblocks: usize, compose_buf: &mut [u8]) -> Result<()> {
        self.check_held()?;
        let off = self.source_offset(d.chunk);
        let io = |at: u64| move |e| Error::io_or_full("write", Device::Source, at, e);
        match destage::source_write(&d.versions, nblocks) {
            SourceWrite::Zero => {
                self.source
                    .punch_zero(off, self.geo.chunk())
                    .map_err(io(off))?;
                // Its blocks are gone: a later write must find room for them again.
                self.forget_source_room(d.chunk);
            }
            SourceWrite::Whole(bytes) => self.source.write_at(bytes, off).map_err(io(off))?,
            SourceWrite::Runs(runs) => {
                let n = d.versions.len();
                for (b, count) in runs {
                    let bs = BLOCK as usize;
                    let piece = &mut compose_buf[..count * bs];
                    destage::compose(&d.versions[..n], None, b, piece);
                    let at = off + (b * bs) as u64;
                    self.source.write_at(piece, at).map_err(io(at))?;
                }
            }
        }
        Ok(())
    }
}
