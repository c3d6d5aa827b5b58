//! Compaction of the metadata log: rewriting it as a fresh chain that holds only what is live
//! (the snapshots' creations and one record per run of preserved copies), pointing the
//! superblock at that chain, and freeing the old one.
//!
//! A compaction's cost is in proportion to the whole index, so it must not hold up what
//! costs in proportion to one request: destage batches, snapshot creation and deletion. It
//! runs in three steps, and only the short ones hold the metadata lock:
//!
//! 1. **Capture** (under the lock): the live creations and the index's copies, which are
//!    exactly what the chain describes at that point (the index changes only under the lock,
//!    together with the commit that describes the change). From then on every commit keeps
//!    the records it appends to the live chain in the compaction's *tail*.
//! 2. **Write** (without the lock): the captured records are sorted, packed into blocks
//!    numbered from 1, placed in fresh slot pairs (taken under the lock), written with their
//!    ditto copies and synced. Nothing durable points at them: a crash leaves the old chain
//!    the volume's, and an open finds their slots free.
//! 3. **Switch** (under the lock): the tail is appended to the fresh chain, the target synced
//!    and the superblock pointed at the fresh chain's head, in the order of any commit
//!    ([`Inner::write_chain`]); only then are the old chain's slots freed. Replaying the fresh
//!    chain gives what replaying the old one gives: the capture is the state the old chain's
//!    records up to that point replay to, and the tail is the rest of them, in order.
//!
//! With the background destager the steps run on a thread of their own (`compact-<volume>`),
//! woken when a commit finds the log grown enough; without it, in the thread that committed,
//! once it has let go of its locks. A commit that finds no room for its records compacts at
//! once under the lock instead (the same steps, back to back), cancelling a compaction under
//! way: its slots go back only once its writes are done ([`Inner::compact_write`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::chain::BlockPlace;
use crate::destage;
use crate::error::{Device, Error, Result};
use crate::format::{MetaBlock, Record, BLOCK_SIZE};
use crate::metadata::Entry;
use crate::units::{ChunkIndex, TargetSlot};

use super::metalog::PendingGo;
use super::{create_record, Inner, MetaState};

/// A compaction between its capture and its switch.
#[derive(Debug)]
pub(super) struct Compaction {
    /// Tells this compaction from a later one (a cancelled one finds another id in place).
    id: u64,
    /// Records appended to the live chain since the capture, in order.
    pub(super) tail: Vec<Record>,
    /// The fresh chain's slots, once taken.
    slots: Vec<TargetSlot>,
}

/// What the capture took: the records of the live snapshots' creations, and the copies.
struct Capture {
    id: u64,
    creates: Vec<Record>,
    copies: Vec<(ChunkIndex, Entry)>,
}

/// The fresh chain's blocks, numbered from 1 and linked, and where each goes.
struct FreshChain {
    blocks: Vec<(BlockPlace, MetaBlock)>,
    records: u64,
}

impl Inner {
    /// The compactor thread: waits to be woken (or 1 s), and compacts when the log has grown
    /// enough. A compaction it starts runs to its end (a failed volume ends it early).
    pub(super) fn compactor_loop(self: Arc<Self>) {
        loop {
            self.compact_wake.wait(Duration::from_secs(1));
            if self.shutdown.load(Ordering::SeqCst) {
                return;
            }
            if self.failed.get().is_some() || !self.compaction_due(&self.meta.lock()) {
                continue;
            }
            // An I/O error has failed the volume already; a full file system waits for the
            // next commit's wake (or the next second).
            if let Err(e) = self.compact_beside() {
                tracing::debug!(volume = %self.name, error = %e, "metadata log compaction did not complete");
            }
        }
    }

    /// Whether the log has grown well past what is live: by records (at least
    /// `compact_after_records`, and four times the live ones) or by slots.
    pub(super) fn compaction_due(&self, meta: &MetaState) -> bool {
        if meta.compaction.is_some() {
            return false;
        }
        let live = self.index.len() as u64 + meta.committed.len() as u64;
        let live_slots = self.live_meta_slots(meta.committed.len());
        let by_records =
            meta.chain_records >= self.compact_after_records && meta.chain_records >= 4 * live;
        // Both counts include the ditto copies: twice the blocks of a single-copy log.
        let by_slots = meta.chain_slots.len() as u64 >= 8 + 2 * live_slots;
        by_records || by_slots
    }

    /// Called after a commit, with no lock held: compacts the log if it has grown enough —
    /// on the compactor thread with the background destager, here without it. A compaction
    /// that a full file system stops is tried again after a later commit; any other error
    /// has failed the volume and is returned, as the commit's caller's to see.
    pub(super) fn maybe_compact(&self) -> Result<()> {
        if !self.compaction_due(&self.meta.lock()) {
            return Ok(());
        }
        if self.background_destage {
            self.poke_compactor();
            return Ok(());
        }
        match self.compact_beside() {
            Ok(_) => Ok(()),
            Err(e @ Error::DeviceFull { .. }) => {
                tracing::debug!(volume = %self.name, error = %e, "metadata log compaction waits for space");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Compacts the log while commits go on (the module's three steps). Returns `false`
    /// (changing nothing) when it did not happen: not due, no room for the fresh chain, or
    /// cancelled by a commit that compacted under the lock meanwhile.
    pub(super) fn compact_beside(&self) -> Result<bool> {
        let started = Instant::now();
        let capture = {
            let mut meta = self.meta.lock();
            if !self.compaction_due(&meta) {
                return Ok(false);
            }
            match self.capture(&mut meta)? {
                Some(c) => c,
                None => return Ok(false),
            }
        };
        let id = capture.id;
        let mut fresh = build(capture);
        {
            let mut meta = self.meta.lock();
            if !is_current(&meta, id) {
                return Ok(false);
            }
            if let Err(e) = self.place(&mut meta, &mut fresh) {
                meta.compaction = None;
                return Err(e);
            }
            // From here its writes go ahead unless a commit that compacts under the lock
            // cancels it first (`cancel_compaction`).
            *self.compact_write.lock() = id;
        }
        {
            let allowed = self.compact_write.lock();
            if *allowed != id {
                return Ok(false);
            }
            self.write_fresh(&fresh).inspect_err(|e| self.fail(e))?;
        }
        let mut meta = self.meta.lock();
        if !is_current(&meta, id) {
            return Ok(false);
        }
        self.switch(&mut meta, fresh)?;
        self.stats.compaction_duration.observe(started.elapsed());
        Ok(true)
    }

    /// Compacts the log at once, holding the metadata lock throughout: for a commit that
    /// finds no room for its records. A compaction under way is cancelled first (its slots
    /// are what may be missing). Returns `false` (changing nothing) when the target has no
    /// room for the fresh chain.
    pub(super) fn compact_locked(&self, meta: &mut MetaState) -> Result<bool> {
        let started = Instant::now();
        self.cancel_compaction(meta);
        let Some(capture) = self.capture(meta)? else {
            return Ok(false);
        };
        let mut fresh = build(capture);
        if let Err(e) = self.place(meta, &mut fresh) {
            meta.compaction = None;
            return Err(e);
        }
        self.write_fresh(&fresh).inspect_err(|e| self.fail(e))?;
        self.switch(meta, fresh)?;
        self.stats.compaction_duration.observe(started.elapsed());
        Ok(true)
    }

    /// Step 1: the live state as records, and the compaction that keeps the tail from now
    /// on. `None` when the target has no room for a fresh chain.
    fn capture(&self, meta: &mut MetaState) -> Result<Option<Capture>> {
        self.check_writable()?;
        let live_slots = self.live_meta_slots(meta.committed.len());
        if live_slots + 1 > self.free_slots(meta) {
            return Ok(None);
        }
        let id = self.compact_ids.fetch_add(1, Ordering::Relaxed) + 1;
        let creates = meta.committed.iter().map(create_record).collect();
        // Unsorted: the sort is step 2's, outside the lock.
        let mut copies = Vec::with_capacity(self.index.len());
        self.index.for_each(|c, e| copies.push((c, *e)));
        meta.compaction = Some(Compaction {
            id,
            tail: Vec::new(),
            slots: Vec::new(),
        });
        Ok(Some(Capture {
            id,
            creates,
            copies,
        }))
    }

    /// Step 2, under the lock: fresh slot pairs for the blocks, with the file system's space
    /// for them, recorded in the compaction (a cancel frees them). On an error nothing is
    /// taken.
    fn place(&self, meta: &mut MetaState, fresh: &mut FreshChain) -> Result<()> {
        let per_slot = (self.geo.chunk() / BLOCK_SIZE as u64) as usize;
        let pairs = self.fresh_metadata_slots(meta, fresh.blocks.len().div_ceil(per_slot))?;
        let mut prev = BlockPlace { at: 0, copy: 0 };
        for (i, (place, blk)) in fresh.blocks.iter_mut().enumerate() {
            let pair = pairs[i / per_slot].0;
            let within = (i % per_slot * BLOCK_SIZE) as u64;
            *place = BlockPlace {
                at: pair.at + within,
                copy: pair.copy + within,
            };
            blk.prev = prev.at;
            blk.prev_copy = prev.copy;
            prev = *place;
        }
        let c = meta
            .compaction
            .as_mut()
            .expect("placing a compaction that was captured");
        c.slots = pairs.iter().flat_map(|&(_, slots)| slots).collect();
        Ok(())
    }

    /// Step 2, without the lock: the fresh chain's blocks and their ditto copies, a write per
    /// slot for each, then a sync.
    fn write_fresh(&self, fresh: &FreshChain) -> Result<()> {
        self.check_writable()?;
        let per_slot = (self.geo.chunk() / BLOCK_SIZE as u64) as usize;
        for run in fresh.blocks.chunks(per_slot) {
            let mut bytes = Vec::with_capacity(run.len() * BLOCK_SIZE);
            for (_, blk) in run {
                bytes.extend_from_slice(&blk.encode(&self.volume_id));
            }
            for off in [run[0].0.at, run[0].0.copy] {
                self.target
                    .write_at(&bytes, off)
                    .map_err(|e| Error::io("write metadata", Device::Target, off, e))?;
            }
        }
        self.target
            .sync()
            .map_err(|e| Error::io("sync", Device::Target, 0, e))
    }

    /// Step 3: the tail after the fresh chain, the superblock pointed at it, the old chain's
    /// slots freed. A full file system refusing the tail's slots leaves the old chain the
    /// volume's, in RAM as on disk, and frees the fresh one's.
    fn switch(&self, meta: &mut MetaState, fresh: FreshChain) -> Result<()> {
        let c = meta
            .compaction
            .take()
            .expect("switching to a compaction that was captured");
        let (last, last_blk) = fresh.blocks.last().expect("a fresh chain has a block");
        let old_slots = std::mem::replace(&mut meta.chain_slots, c.slots);
        let old = (
            meta.next_block,
            meta.sb.meta_head,
            meta.sb.meta_head_copy,
            meta.sb.meta_head_seq,
            meta.chain_records,
        );
        meta.next_block = self.block_after(*last);
        meta.sb.meta_head = last.at;
        meta.sb.meta_head_copy = last.copy;
        meta.sb.meta_head_seq = last_blk.seq;
        meta.chain_records = fresh.records + c.tail.len() as u64;
        let tail = c.tail.len();
        // Snapshots taken since the tail's last commit are newer than any it created.
        match self.write_chain_with(meta, c.tail, PendingGo::Last) {
            Ok(()) => {}
            Err(e @ Error::DeviceFull { .. }) => {
                let fresh_slots = std::mem::replace(&mut meta.chain_slots, old_slots);
                (
                    meta.next_block,
                    meta.sb.meta_head,
                    meta.sb.meta_head_copy,
                    meta.sb.meta_head_seq,
                    meta.chain_records,
                ) = old;
                self.free_metadata_slots(meta, &fresh_slots);
                return Err(e);
            }
            // Any other failure has failed the volume (write_chain does).
            Err(e) => return Err(e),
        }
        self.free_metadata_slots(meta, &old_slots);
        self.stats.compactions.fetch_add(1, Ordering::Relaxed);
        self.stats
            .compaction_tail_records
            .fetch_add(tail as u64, Ordering::Relaxed);
        tracing::debug!(volume = %self.name, records = meta.chain_records, tail, "metadata log compacted");
        Ok(())
    }

    /// Cancels a compaction under way (its slots go back once its writes, if started, are
    /// done: nothing points at them).
    fn cancel_compaction(&self, meta: &mut MetaState) {
        *self.compact_write.lock() = 0;
        if let Some(c) = meta.compaction.take() {
            self.free_metadata_slots(meta, &c.slots);
        }
    }

    /// Gives back slots no metadata chain the superblock names holds any more.
    fn free_metadata_slots(&self, meta: &mut MetaState, slots: &[TargetSlot]) {
        for &s in slots {
            meta.alloc.free(s);
        }
        self.slots_used.store(meta.alloc.used(), Ordering::SeqCst);
        // Best effort: give their space back to the file system.
        self.discard_slots(slots);
    }
}

/// Whether compaction `id` is still the one under way.
fn is_current(meta: &MetaState, id: u64) -> bool {
    meta.compaction.as_ref().is_some_and(|c| c.id == id)
}

/// Step 2, pure: the captured state as records (creations first, then the copies sorted by
/// chunk, one record per run), packed into blocks numbered from 1.
fn build(capture: Capture) -> FreshChain {
    let Capture {
        creates,
        mut copies,
        ..
    } = capture;
    copies.sort_unstable_by_key(|(c, e)| (c.0, e.hi));
    let placed: Vec<_> = copies
        .iter()
        .map(|(c, e)| destage::Placed {
            chunk: *c,
            slot: e.slot,
            lo: e.lo,
            hi: e.hi,
            crc: e.crc,
        })
        .collect();
    let mut records = creates;
    records.extend(destage::records(&placed));
    let unplaced = BlockPlace { at: 0, copy: 0 };
    FreshChain {
        records: records.len() as u64,
        blocks: MetaBlock::pack(&records, 1)
            .into_iter()
            .map(|b| (unplaced, b))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::units::Geometry;
    use crate::vlun::MemVlun;
    use crate::{Layout, Vluns, Volume, VolumeOptions};

    const CHUNK: u32 = 4096;

    fn options() -> VolumeOptions {
        VolumeOptions {
            cache_size: 64 * u64::from(CHUNK),
            // Nothing compacts on its own: the test drives the steps.
            compact_after_records: u64::MAX,
            background_destage: false,
        }
    }

    /// What broke (found by the model test, once): a commit made while a compaction was under
    /// way put a snapshot's creation after other records of the tail, and at the switch the
    /// creation of a snapshot taken later (durable in the journal, not yet in the log) went
    /// in front of the whole tail, so the fresh log named snapshot 3 before snapshot 2 and
    /// the next open refused it ("not above the 3 of an earlier snapshot").
    #[test]
    fn a_snapshot_taken_while_the_log_compacts_is_created_after_the_tail_at_the_switch() {
        let devs: [Arc<MemVlun>; 3] = [
            Arc::new(MemVlun::new(64 * u64::from(CHUNK))),
            Arc::new(MemVlun::new(0)),
            Arc::new(MemVlun::new(0)),
        ];
        let vluns = || Vluns {
            source: Box::new(Arc::clone(&devs[0])),
            target: Box::new(Arc::clone(&devs[1])),
            journal: Box::new(Arc::clone(&devs[2])),
        };
        let layout = Layout::new(Geometry::new(64 * u64::from(CHUNK), CHUNK).unwrap());
        let vol = Volume::create_on("v", vluns(), layout, options()).unwrap();
        let chunk = CHUNK as usize;
        vol.write(0, &vec![1; 4 * chunk]).unwrap();
        vol.snapshot_create("a").unwrap();
        vol.write(0, &vec![2; chunk]).unwrap();
        vol.destage_all().unwrap();

        let inner = &vol.inner;
        let capture = inner.capture(&mut inner.meta.lock()).unwrap().unwrap();
        let id = capture.id;
        let mut fresh = build(capture);
        // Meanwhile: a commit without a creation, then one whose records start with the
        // creation of "b", then "c" taken (durable in the journal only).
        vol.write(chunk as u64, &vec![3; chunk]).unwrap();
        vol.destage_all().unwrap();
        vol.snapshot_create("b").unwrap();
        vol.write(2 * chunk as u64, &vec![4; chunk]).unwrap();
        vol.destage_all().unwrap();
        vol.snapshot_create("c").unwrap();
        {
            let mut meta = inner.meta.lock();
            let tail = &meta.compaction.as_ref().unwrap().tail;
            assert!(
                matches!(tail.first(), Some(Record::Preserve { .. })),
                "the tail starts with a record other than a creation: {tail:?}"
            );
            assert!(is_current(&meta, id));
            inner.place(&mut meta, &mut fresh).unwrap();
        }
        inner.write_fresh(&fresh).unwrap();
        inner.switch(&mut inner.meta.lock(), fresh).unwrap();
        vol.write(3 * chunk as u64, &vec![5; chunk]).unwrap();
        vol.close().unwrap();

        let vol = Volume::open_on("v", vluns(), options()).expect("the fresh log replays");
        let names: Vec<_> = vol.snapshots().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let read = |snap: &str| {
            let seq = vol.snapshot(snap).unwrap().seq;
            let mut buf = vec![0; 4 * chunk];
            vol.read_snapshot(seq, 0, &mut buf).unwrap();
            buf.chunks(chunk).map(|c| c[0]).collect::<Vec<_>>()
        };
        assert_eq!(read("a"), [1, 1, 1, 1]);
        assert_eq!(read("b"), [2, 3, 1, 1]);
        assert_eq!(read("c"), [2, 3, 4, 1]);
        vol.close().unwrap();
    }
}
