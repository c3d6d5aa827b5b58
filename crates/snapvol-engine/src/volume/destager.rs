//! The destage executor (claims 14–16): performs the plans of [`crate::destage`] in the order
//! that keeps I1 and I2, and the background thread that runs it. It decides nothing about what
//! to preserve (the plan does) and never appends to the journal (the journal writer does).
//!
//! A batch runs in two halves. The first takes the chunks, plans them and allocates the
//! copies' slots ([`Inner::prepare`]), then reads the originals and writes the copies
//! ([`Inner::copy`]); nothing of it is durable or visible yet, and [`Inner::abandon`] gives it
//! all back. The second ([`Inner::finish`]) commits the pointers to the copies, then writes the
//! new data to the source and retires the chunks from the cache. In write mode throughput a run
//! of batches ([`Inner::destage_while`]) overlaps them: batch *k* + 1's copies are written while
//! batch *k* commits, so that the disk has the next batch's copies to write while the commit's
//! syncs wait, instead of idling between the two. The batches take disjoint chunks (a batch's
//! collection leaves the chunks of the one under way alone), so their order on the source does
//! not matter, and their commits stay in order: each half runs one batch at a time. (Atomic
//! mode runs the halves in turn: see `destage_while`.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use crate::cache::{DirtyChunk, Pick};
use crate::destage::{self, SourceWrite};
use crate::error::{Device, Error, Result};
use crate::metadata::Entry;
use crate::units::{ChunkIndex, TargetSlot, BLOCK};
use crate::vlun::AlignedBuf;

use super::space::device_code;
use super::{Inner, MetaState};

/// Largest batch the destager takes at once: 32 MiB, or a quarter of a smaller cache (so that
/// one batch can be under way while the next is prepared and the cache still takes writes).
const MAX_BATCH: u64 = 32 << 20;

/// Serializes destaging with snapshot deletion and checks (which must find no batch between
/// planning and commit), and keeps the buffers batches gather their copies in from batch to
/// batch (no fresh zeroed pages each time): one per batch in flight.
#[derive(Debug, Default)]
pub(super) struct DestageLock {
    scratch: Mutex<Vec<AlignedBuf>>,
    /// Threads waiting in [`DestageLock::lock`]: a run of batches prepares no further one and
    /// lets them in.
    waiting: AtomicUsize,
}

impl DestageLock {
    /// Takes the lock, as one who wants it between batches: a run of batches under way ends
    /// at its next batch and hands the lock over.
    pub(super) fn lock(&self) -> MutexGuard<'_, Vec<AlignedBuf>> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let guard = self.scratch.lock();
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    /// Whether someone waits in [`DestageLock::lock`].
    fn wanted(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }
}

/// How a run of batches waits for the destage lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Turn {
    /// The destager's own rounds: after whoever holds it or asks for it.
    Background,
    /// Someone who needs the chunks destaged now (a FLUSH, a full journal, recovery, a
    /// close): a background run under way hands the lock over between two batches.
    Asked,
}

/// A destage batch before its commit: taken, planned and its copies' slots allocated
/// ([`Inner::prepare`]), then its copies written ([`Inner::copy`]). Nothing of it is durable or
/// visible; [`Inner::abandon`] gives it all back.
struct Prepared {
    batch: Vec<DirtyChunk>,
    /// What each chunk of the batch preserves.
    plans: Vec<destage::ChunkPlan>,
    /// How many copies that is.
    copies: u64,
    /// The copies written, in slot order (empty until they are).
    placed: Vec<destage::Placed>,
    /// The runs of slots allocated for them.
    runs: Vec<(TargetSlot, u64)>,
    /// Target slots the batch's writes had reserved: allocations now if it preserves anything.
    held: u64,
    /// Cache bytes the batch frees when it retires.
    bytes: u64,
    /// The buffer the copies were gathered in (from the pool); the source writes compose in
    /// it next.
    scratch: AlignedBuf,
    started: Instant,
}

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
        let light = self.cache.limit() / 8;
        self.destage_while(Turn::Background, None, |in_flight| {
            !self.shutdown.load(Ordering::SeqCst)
                && self.cache.dirty_bytes().saturating_sub(in_flight) >= light
        })?;
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
        self.destage_dirty()?;
        self.reclaim_journal(true)?;
        // Writes that skipped the journal (write mode throughput) were just written to the
        // source: the head's move syncs it only if the journal held something, and a clean
        // close marked on an unsynced source would lose them to a power loss.
        self.sync_unjournaled()?;
        self.target
            .sync()
            .map_err(|e| Error::io("sync", Device::Target, 0, e))
    }

    /// Destages every dirty chunk that may be destaged, in batches (claims 14–16): each
    /// preserves originals once each for every snapshot that needs them, commits the
    /// pointers, then writes the new data to the source and clears the dirty designations.
    ///
    /// A file system that runs out of space costs the batch, not the volume: before anything
    /// is committed nothing of the batch counts (its slots go back), after the commit the
    /// chunks already written are retired, and the rest stay dirty for the next batch, which
    /// redoes them (the writes are idempotent; the originals are preserved already). The error
    /// is [`Error::DeviceFull`]; the volume stays writable and destaging resumes once space is
    /// freed.
    pub(super) fn destage_dirty(&self) -> Result<()> {
        self.destage_while(Turn::Asked, None, |_| true)
    }

    /// Destages batches for as long as `go_on(bytes the batch under way frees)` says and dirty
    /// chunks are left, each batch's copies written while the one before commits: of the
    /// chunks holding writes that skipped the journal in flush generation `unjournaled_upto`
    /// or an older one (write mode throughput), when given, otherwise of any dirty chunks,
    /// lowest first. Someone waiting for the destage lock gets it between two batches (none
    /// prepared), and the run then goes on. An error ends the run; a batch prepared meanwhile
    /// is given back.
    pub(super) fn destage_while(
        &self,
        turn: Turn,
        unjournaled_upto: Option<u64>,
        go_on: impl Fn(u64) -> bool,
    ) -> Result<()> {
        loop {
            let mut scratch = match turn {
                Turn::Asked => self.destage_lock.lock(),
                Turn::Background => self.destage_lock.scratch.lock(),
            };
            let mut next: Option<Prepared> = None;
            // When the last batch retired: the cache drains a batch per interval between
            // retirements, which is shorter than a batch's own time when two overlap.
            let mut last_done: Option<Instant> = None;
            let handing_over = loop {
                // A volume failed meanwhile (or whose lock was lost) destages nothing more.
                if let Err(e) = self.check_writable() {
                    if let Some(p) = next.take() {
                        self.abandon(p, &mut scratch);
                    }
                    return Err(e);
                }
                let current = match next.take() {
                    Some(p) => p,
                    None => match self.prepare(&[], unjournaled_upto) {
                        Ok(Some(p)) => self
                            .copy_or_abandon(p, &mut scratch)
                            .map_err(|e| self.batch_failed(e))?,
                        Ok(None) => {
                            // Nothing to destage: nothing waits for space either.
                            self.out_of_space.store(0, Ordering::SeqCst);
                            break false;
                        }
                        Err(e) => return Err(self.batch_failed(e)),
                    },
                };
                let more = go_on(current.bytes) && !self.destage_lock.wanted();
                // The next batch is taken and its slots allocated before this one commits
                // (the commit holds the metadata lock throughout its syncs). Only in write mode
                // throughput, where a FLUSH waits for destaging: in atomic mode a FLUSH, a FUA
                // write or a snapshot waits for a journal sync instead, and copies always in
                // the disk's queue put every such sync behind them (W5's snapshot p99 under
                // load doubled) for no throughput (atomic mode writes every byte three times
                // and was at the disk's ceiling already). And without the background destager
                // every I/O stays on the caller's thread, in an order that depends only on the
                // calls made: one batch after the other.
                let overlapping = more
                    && self.background_destage
                    && self.write_mode == crate::units::WriteMode::Throughput;
                let prepared = if overlapping {
                    let busy: Vec<ChunkIndex> = current.batch.iter().map(|d| d.chunk).collect();
                    self.prepare(&busy, unjournaled_upto)
                } else {
                    Ok(None)
                };
                let started = current.started;
                let (done, buf, prepared) =
                    self.overlap(current, prepared, overlapping, &mut scratch);
                scratch.push(buf);
                let now = Instant::now();
                let took = now - started;
                let interval = last_done.map_or(took, |l| (now - l).min(took));
                last_done = Some(now);
                if overlapping && matches!(prepared, Ok(Some(_))) {
                    self.stats
                        .destage_overlapped
                        .fetch_add(1, Ordering::Relaxed);
                }
                let prepared = match done
                    .map_err(|e| self.batch_failed(e))
                    .and_then(|n| self.batch_done(n, took, interval))
                {
                    Ok(()) => prepared,
                    Err(e) => {
                        if let Ok(Some(p)) = prepared {
                            self.abandon(p, &mut scratch);
                        }
                        return Err(e);
                    }
                };
                match prepared {
                    Ok(Some(p)) => next = Some(p),
                    // Nothing but the chunks under way was left: look again now they retired.
                    Ok(None) if more => {}
                    Ok(None) => break self.destage_lock.wanted(),
                    Err(e) => return Err(self.batch_failed(e)),
                }
            };
            if !handing_over {
                return Ok(());
            }
            MutexGuard::unlock_fair(scratch);
        }
    }

    /// Finishes `current` on a thread of its own while this one writes the copies of `next`
    /// (when there is one, and `parallel`); otherwise, or without a thread, one after the
    /// other. Returns what finishing `current` returned, and `next` ready to finish (or given
    /// back if its copies failed).
    fn overlap(
        &self,
        current: Prepared,
        next: Result<Option<Prepared>>,
        parallel: bool,
        pool: &mut Vec<AlignedBuf>,
    ) -> (Result<usize>, AlignedBuf, Result<Option<Prepared>>) {
        // Taken by whichever thread finishes it (a spawn that fails leaves it here).
        let handed = Mutex::new(Some(current));
        let finish = || {
            let p = handed.lock().take().expect("one batch, finished once");
            self.finish(p)
        };
        let copied = |pool: &mut Vec<AlignedBuf>| match next {
            Ok(Some(p)) => self.copy_or_abandon(p, pool).map(Some),
            other => other,
        };
        std::thread::scope(|s| {
            let commit = parallel
                .then(|| {
                    std::thread::Builder::new()
                        .name("snapvol-commit".into())
                        .spawn_scoped(s, finish)
                        .inspect_err(|e| tracing::debug!(volume = %self.name, error = %e, "no thread for a batch's commit: one batch after the other"))
                        .ok()
                })
                .flatten();
            match commit {
                Some(commit) => {
                    let next = copied(pool);
                    let (done, buf) = commit
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p));
                    (done, buf, next)
                }
                None => {
                    let (done, buf) = finish();
                    (done, buf, copied(pool))
                }
            }
        })
    }

    /// The accounting of a batch that destaged `n` chunks: it `took` that long, and the cache
    /// drained it in `interval` (shorter when it overlapped the batch before).
    fn batch_done(&self, n: usize, took: Duration, interval: Duration) -> Result<()> {
        self.out_of_space.store(0, Ordering::SeqCst);
        let s = &self.stats;
        s.destage_duration.observe(took);
        self.pacer.observe(n as u64 * self.geo.chunk(), interval);
        s.destage_batches.fetch_add(1, Ordering::Relaxed);
        s.destaged_chunks.fetch_add(n as u64, Ordering::Relaxed);
        // After the batch's figures: a compaction is not destaging. Its error (not a full file
        // system: that only defers it) has failed the volume already.
        self.maybe_compact()
    }

    /// The accounting of a batch that failed with `e`, returned: a full file system pauses
    /// destaging until space is freed, any other error fails the volume.
    fn batch_failed(&self, e: Error) -> Error {
        match e {
            Error::DeviceFull { device, .. } => {
                if self
                    .out_of_space
                    .swap(device_code(device), Ordering::SeqCst)
                    == 0
                {
                    tracing::warn!(volume = %self.name, error = %e, "destaging paused: no space left; it resumes once space is freed");
                }
            }
            _ => self.fail(&e),
        }
        e
    }

    /// The start of a batch: takes up to [`MAX_BATCH`] (or a quarter of the cache) of dirty
    /// chunks not in `busy` (of those holding writes that skipped the journal in flush
    /// generation `unjournaled_upto` or older, when given), plans what each must preserve and
    /// allocates the copies' slots. `None`: nothing to destage.
    fn prepare(
        &self,
        busy: &[ChunkIndex],
        unjournaled_upto: Option<u64>,
    ) -> Result<Option<Prepared>> {
        let started = Instant::now();
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
            MAX_BATCH.min(self.cache.limit() / 4),
            Pick {
                below,
                unjournaled_upto,
            },
            busy,
        );
        if batch.is_empty() {
            return Ok(None);
        }
        let table = self.table.load_full();
        let nblocks = self.geo.blocks_per_chunk();
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
        let mut held: u64 = batch
            .iter()
            .flat_map(|d| &d.versions)
            .map(|v| u64::from(v.reserved))
            .sum();
        let bytes = batch.iter().map(|d| self.cache.cost_of(d)).sum();
        let mut runs = Vec::new();
        if copies > 0 {
            // Destage the originals to the next free target locations, sequentially. The
            // reservations the batch's writes took become these allocations now, so no slot
            // is ever counted twice.
            //
            // Landing reserved a slot for every image a live snapshot needed then, and a batch
            // can only need fewer (snapshots deleted since): more would be a bug in that
            // argument, and must still fit.
            if copies > held {
                tracing::warn!(volume = %self.name, copies, held, "a destage batch needs more target slots than its writes reserved");
                self.reserve(copies - held)?;
                held = copies;
            }
            let mut meta = self.meta.lock();
            runs = meta.alloc.allocate(copies).ok_or_else(|| Error::NoSpace {
                detail: format!("the target cannot hold {copies} more preserved chunks"),
            })?;
            // The file system's space for the copies, before anything is written: a full one
            // gives the slots back and the batch waits (nothing happened).
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
        }
        Ok(Some(Prepared {
            batch,
            plans,
            copies,
            placed: Vec::with_capacity(copies as usize),
            runs,
            held,
            bytes,
            scratch: AlignedBuf::default(),
            started,
        }))
    }

    /// The rest of a batch's first half: reads the originals its copies need, composes the
    /// copies in a buffer from `pool` and writes them to their slots. Nothing is committed: a
    /// crash from here leaves the slots free, as [`Inner::abandon`] does.
    fn copy(&self, prepared: &mut Prepared, pool: &mut Vec<AlignedBuf>) -> Result<()> {
        let mut scratch = pool.pop().unwrap_or_default();
        let copied = self.copy_into(prepared, &mut scratch);
        prepared.scratch = scratch;
        copied
    }

    /// [`Inner::copy`], in `scratch`.
    fn copy_into(&self, prepared: &mut Prepared, scratch: &mut AlignedBuf) -> Result<()> {
        let copies = prepared.copies;
        if copies == 0 {
            return Ok(());
        }
        let (batch, plans, runs) = (&prepared.batch, &prepared.plans, &prepared.runs);
        let chunk = self.geo.chunk_size as usize;
        let mut slots = runs
            .iter()
            .flat_map(|&(s, n)| (0..n).map(move |i| TargetSlot(s.0 + i)));
        // Copy i goes to the i-th allocated slot: one buffer, cut into the runs below. Every
        // byte of it is written (read or composed) before it is used. A chunk with one copy
        // that needs the source (the common case) has its original read straight into that
        // copy's place, and the cached versions the copy holds laid over it; a chunk with
        // several has its original read once into a buffer of its own, after the copies, and
        // each copy composed from it.
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
            let mut copies_at: Vec<Option<&mut [u8]>> = area.chunks_mut(chunk).map(Some).collect();
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
        let mut placed = Vec::with_capacity(copies as usize);
        for ((d, plan), original) in batch.iter().zip(plans).zip(&originals) {
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
        for &(first, n) in runs {
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
        prepared.placed = placed;
        Ok(())
    }

    /// [`Inner::copy`]; on failure the batch is given back ([`Inner::abandon`]).
    fn copy_or_abandon(
        &self,
        mut prepared: Prepared,
        pool: &mut Vec<AlignedBuf>,
    ) -> Result<Prepared> {
        match self.copy(&mut prepared, pool) {
            Ok(()) => Ok(prepared),
            Err(e) => {
                self.abandon(prepared, pool);
                Err(e)
            }
        }
    }

    /// Gives back what a prepared batch took (its slots, its writes' reservations) without
    /// committing it: its copies, if written, are left in free slots, as a crash would leave
    /// them, and its chunks stay dirty for a later batch.
    fn abandon(&self, prepared: Prepared, pool: &mut Vec<AlignedBuf>) {
        if prepared.copies > 0 {
            self.undo(&mut self.meta.lock(), &prepared);
        }
        pool.push(prepared.scratch);
    }

    /// Frees the slots of a prepared batch that preserves something, and gives its writes
    /// their reservations back.
    fn undo(&self, meta: &mut MetaState, prepared: &Prepared) {
        for &(f, n) in &prepared.runs {
            (0..n).for_each(|i| meta.alloc.free(TargetSlot(f.0 + i)));
        }
        self.slots_used.store(meta.alloc.used(), Ordering::SeqCst);
        self.stats
            .preserving
            .fetch_sub(prepared.copies, Ordering::SeqCst);
        self.reserved.fetch_add(prepared.held, Ordering::SeqCst);
    }

    /// The second half of a batch: every affected snapshot's log and bitmap pointed at the
    /// copies (the commit), then the new data written to the source (claims 21, 23) and the
    /// dirty designations cleared. Returns the number of chunks destaged, and the batch's
    /// buffer.
    fn finish(&self, prepared: Prepared) -> (Result<usize>, AlignedBuf) {
        if let Err(e) = self.commit_batch(&prepared) {
            return (Err(e), prepared.scratch);
        }
        let Prepared {
            batch, mut scratch, ..
        } = prepared;
        let done = self.write_back(batch, &mut scratch);
        // An unusually large buffer is given back once the batch is done with it.
        if scratch.len() > 2 * MAX_BATCH as usize {
            scratch = AlignedBuf::default();
        }
        (done, scratch)
    }

    /// Commits the pointers to a prepared batch's copies (nothing to commit if it preserves
    /// nothing), and turns its writes' reservations into the copies' allocations.
    fn commit_batch(&self, prepared: &Prepared) -> Result<()> {
        let copies = prepared.copies;
        debug_assert_eq!(prepared.placed.len() as u64, copies, "copies written");
        if copies == 0 {
            // Nothing to preserve: what the batch's writes reserved is not needed.
            self.unreserve(prepared.held);
        } else {
            let records = destage::records(&prepared.placed);
            let mut meta = self.meta.lock();
            if let Err(e) = self.commit_locked(&mut meta, records) {
                // A full file system refuses the metadata before anything is written; any
                // other failure has failed the volume.
                if matches!(e, Error::DeviceFull { .. }) {
                    self.undo(&mut meta, prepared);
                }
                return Err(e);
            }
            for p in &prepared.placed {
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
            self.stats.copies_made.fetch_add(copies, Ordering::Relaxed);
        }
        // The batch's reservations are allocations now, or not needed.
        prepared
            .batch
            .iter()
            .for_each(|d| self.cache.consume_reservations(d));
        Ok(())
    }

    /// Writes a committed batch's new data to the source, then clears the dirty designations.
    /// A failure leaves every chunk of the batch dirty: the next batch writes them again.
    fn write_back(&self, mut batch: Vec<DirtyChunk>, scratch: &mut AlignedBuf) -> Result<usize> {
        self.write_source(&batch, self.geo.blocks_per_chunk(), scratch)?;
        // Counted before the versions leave the cache: a FLUSH that finds them gone then
        // knows the source holds data not yet synced.
        if batch
            .iter()
            .any(|d| d.versions.iter().any(|v| v.unjournaled != u64::MAX))
        {
            self.source_written.fetch_add(1, Ordering::SeqCst);
        }
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
