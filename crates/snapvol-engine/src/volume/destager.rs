//! The destage executor (claims 14–16): performs the plans of [`crate::destage`] in the order
//! that keeps I1 and I2, and the background thread that runs it. It decides nothing about what
//! to preserve (the plan does) and never appends to the journal (the journal writer does).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::{DirtyChunk, Pick};
use crate::destage::{self, SourceWrite};
use crate::error::{Device, Error, Result};
use crate::metadata::Entry;
use crate::units::{TargetSlot, BLOCK};
use crate::vlun::AlignedBuf;

use super::space::device_code;
use super::{Inner, MetaState};

/// Largest batch the destager takes at once.
const MAX_BATCH: u64 = 32 << 20;

impl Inner {
    pub(super) fn destager_loop(self: Arc<Self>) {
        loop {
            self.wake.wait(Duration::from_millis(100));
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
        // Writes that skipped the journal (write mode throughput) were just written to the
        // source: the head's move syncs it only if the journal held something, and a clean
        // close marked on an unsynced source would lose them to a power loss.
        self.sync_unjournaled()?;
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
        self.destage_batch_of(None)
    }

    /// [`Inner::destage_batch`] of the chunks holding writes that skipped the journal in
    /// flush generation `unjournaled_upto` or an older one (write mode throughput), when
    /// given; otherwise of any dirty chunks, lowest first.
    pub(super) fn destage_batch_of(&self, unjournaled_upto: Option<u64>) -> Result<usize> {
        let started = Instant::now();
        match self.destage_batch_inner(unjournaled_upto) {
            Ok(0) => {
                self.out_of_space.store(0, Ordering::SeqCst);
                Ok(0)
            }
            Ok(n) => {
                self.out_of_space.store(0, Ordering::SeqCst);
                let s = &self.stats;
                let took = started.elapsed();
                s.destage_duration.observe(took);
                self.pacer.observe(n as u64 * self.geo.chunk(), took);
                s.destage_batches.fetch_add(1, Ordering::Relaxed);
                s.destaged_chunks.fetch_add(n as u64, Ordering::Relaxed);
                // After the batch's figures: a compaction is not destaging. Its error (not a
                // full file system: that only defers it) has failed the volume already.
                self.maybe_compact()?;
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

    fn destage_batch_inner(&self, unjournaled_upto: Option<u64>) -> Result<usize> {
        let mut scratch = self.destage_lock.lock();
        self.check_writable()?;
        // A snapshot whose journal record is not durable yet must not be named by a
        // preservation (recovery would find a copy for a snapshot it does not know): writes
        // of its epoch wait. Journaled writes of that epoch wait anyway (their records follow
        // the snapshot's), writes that skipped the journal wait here.
        let below = self
            .pending
            .lock()
            .iter()
            .filter(|p| !p.durable)
            .map(|p| crate::units::Epoch::of(p.meta.seq))
            .min()
            .unwrap_or(crate::units::Epoch::LIVE);
        let batch = self.cache.collect(
            MAX_BATCH,
            Pick {
                below,
                unjournaled_upto,
            },
        );
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
            // Every byte of it is written (read or composed) before it is used. A chunk with
            // one copy that needs the source (the common case) has its original read straight
            // into that copy's place, and the cached versions the copy holds laid over it; a
            // chunk with several has its original read once into a buffer of its own, after
            // the copies, and each copy composed from it.
            let originals: Vec<Original> = plans
                .iter()
                .scan((0usize, 0usize), |(next, shared), plan| {
                    let o = if !plan.needs_source {
                        Original::NotNeeded
                    } else if plan.preserve.len() == 1 {
                        Original::InPlace(*next)
                    } else {
                        *shared += 1;
                        Original::Shared(*shared - 1)
                    };
                    *next += plan.preserve.len();
                    Some(o)
                })
                .collect();
            let shared = originals
                .iter()
                .filter(|o| matches!(o, Original::Shared(_)))
                .count();
            let area_len = copies as usize * chunk;
            let need = area_len + shared * chunk;
            scratch.ensure(need);
            let (area, sources) = scratch[..need].split_at_mut(area_len);
            // Every original the batch needs, read at once (a network VLUN keeps them all in
            // flight).
            {
                let mut copies_at: Vec<Option<&mut [u8]>> =
                    area.chunks_mut(chunk).map(Some).collect();
                let mut sources_at: Vec<Option<&mut [u8]>> =
                    sources.chunks_mut(chunk).map(Some).collect();
                let mut reads: Vec<(u64, &mut [u8])> = batch
                    .iter()
                    .zip(&originals)
                    .filter_map(|(d, o)| {
                        let buf = match *o {
                            Original::NotNeeded => return None,
                            Original::InPlace(i) => copies_at[i].take(),
                            Original::Shared(i) => sources_at[i].take(),
                        };
                        Some((
                            self.source_offset(d.chunk),
                            buf.expect("one read per buffer"),
                        ))
                    })
                    .collect();
                let first = reads.first().map_or(0, |r| r.0);
                self.source
                    .read_many(&mut reads)
                    .map_err(|e| Error::io("read originals", Device::Source, first, e))?;
            }
            let mut next = 0;
            for ((d, plan), original) in batch.iter().zip(&plans).zip(&originals) {
                let src = match *original {
                    Original::Shared(i) => Some(&sources[i * chunk..(i + 1) * chunk]),
                    _ => None,
                };
                for pres in &plan.preserve {
                    let slot = slots.next().expect("allocated one slot per copy");
                    let buf = &mut area[next * chunk..(next + 1) * chunk];
                    if matches!(original, Original::InPlace(_)) {
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
            // The copies, a write per run of consecutive slots, all at once.
            let mut writes = Vec::with_capacity(runs.len());
            let mut at = 0;
            for &(first, n) in &runs {
                let len = n as usize * chunk;
                writes.push((self.slot_offset(first), &area[at..at + len]));
                at += len;
            }
            let first = self.slot_offset(runs[0].0);
            // Cold data: past the page cache where the target allows (the scratch buffer is
            // aligned for it); the target sync of the commit makes it durable either way.
            self.target
                .write_cold(&writes)
                .map_err(|e| Error::io("write preserved chunks", Device::Target, first, e))?;
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

        // New data to the source (claims 21, 23), then the dirty designations cleared. A
        // failure leaves every chunk of the batch dirty: the next batch writes them again.
        // The scratch buffer serves the copies, then the composed source writes; an unusually
        // large one is given back once both are done.
        let written = self.write_source(&batch, nblocks, &mut scratch);
        if scratch.len() > 2 * MAX_BATCH as usize {
            *scratch = AlignedBuf::default();
        }
        written?;
        // Counted before the versions leave the cache: a FLUSH that finds them gone then
        // knows the source holds data not yet synced.
        if batch
            .iter()
            .any(|d| d.versions.iter().any(|v| v.unjournaled != u64::MAX))
        {
            self.source_written.fetch_add(1, Ordering::SeqCst);
        }
        let mut batch = batch;
        for d in &mut batch {
            self.cache.retire(d);
        }
        self.start_source_writeback(&batch);
        Ok(batch.len())
    }

    /// Starts the writeback of what a batch wrote to the source, one call per run of
    /// consecutive chunks (a batch is in chunk order): the disk then writes while the next
    /// batch is planned and copied, instead of all at the next source sync (a FLUSH in write
    /// mode throughput, a journal head move), which would stall for the whole backlog. Only a
    /// hint: an error changes nothing and is not reported.
    fn start_source_writeback(&self, batch: &[DirtyChunk]) {
        let mut run: Option<(u64, u64)> = None;
        let chunks = batch.iter().map(|d| d.chunk.0).chain([u64::MAX]);
        for c in chunks {
            match run {
                Some((first, n)) if c == first + n => run = Some((first, n + 1)),
                _ => {
                    if let Some((first, n)) = run {
                        let off = self.source_offset(crate::units::ChunkIndex(first));
                        let _ = self.source.start_writeback(off, n * self.geo.chunk());
                    }
                    run = Some((c, 1));
                }
            }
        }
    }

    /// Writes the newest image of each dirty chunk to the source: its whole buffer, its dirty
    /// blocks composed in `compose` (runs of them), or a hole for a chunk that reads as zero.
    /// The writes go to the source all at once, in flight together on a network VLUN.
    fn write_source(
        &self,
        batch: &[DirtyChunk],
        nblocks: usize,
        compose: &mut AlignedBuf,
    ) -> Result<()> {
        self.check_held()?;
        let bs = BLOCK as usize;
        let plans: Vec<_> = batch
            .iter()
            .map(|d| destage::source_write(&d.versions, nblocks))
            .collect();
        let composed: usize = plans
            .iter()
            .map(|p| match p {
                SourceWrite::Runs(runs) => runs.iter().map(|&(_, n)| n * bs).sum(),
                _ => 0,
            })
            .sum();
        compose.ensure(composed);
        let mut free = &mut compose[..composed];
        let mut writes: Vec<(u64, &[u8])> = Vec::with_capacity(batch.len());
        for (d, plan) in batch.iter().zip(plans) {
            let off = self.source_offset(d.chunk);
            match plan {
                SourceWrite::Zero => {
                    self.source
                        .punch_zero(off, self.geo.chunk())
                        .map_err(|e| Error::io_or_full("write", Device::Source, off, e))?;
                    // Its blocks are gone: a later write must find room for them again.
                    self.forget_source_room(d.chunk);
                }
                SourceWrite::Whole(bytes) => writes.push((off, bytes)),
                SourceWrite::Runs(runs) => {
                    for (b, count) in runs {
                        let (piece, rest) = std::mem::take(&mut free).split_at_mut(count * bs);
                        free = rest;
                        destage::compose(&d.versions, None, b, piece);
                        writes.push((off + (b * bs) as u64, piece));
                    }
                }
            }
        }
        let first = writes.first().map_or(0, |w| w.0);
        self.source
            .write_many(&writes)
            .map_err(|e| Error::io_or_full("write", Device::Source, first, e))
    }
}

/// Where a chunk's original (the source's content of it) is read to for its preserved copies.
#[derive(Debug, Clone, Copy)]
enum Original {
    /// Every copy is composed from cached versions alone.
    NotNeeded,
    /// Into copy `i` of the batch's area, its only copy.
    InPlace(usize),
    /// Into source buffer `i`, which several copies are composed from.
    Shared(usize),
}
