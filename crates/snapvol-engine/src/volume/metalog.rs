//! The metadata log of an open volume: loading it at open (through the walker in
//! [`crate::chain`], which `check` uses too), appending records, and the two-copy superblock
//! write. Compaction is `compaction`'s. Reading rules live in `chain`, not here.

use std::sync::atomic::Ordering;

use crate::chain::{self, BlockPlace, FirstProblem};
use crate::error::{Device, Error, Result};
use crate::format::{
    self, MetaBlock, Record, Superblock, BLOCK_SIZE, MAX_CREATE_LEN, META_PAYLOAD,
};
use crate::metadata::{Allocator, Index, SnapshotMeta, SnapshotTable};
use crate::units::{ChunkIndex, SnapshotSeq, TargetSlot};
use crate::vlun::Vlun;

use super::{create_record, Inner, MetaState, META_HEADROOM};

/// What `load` finds in a target VLUN.
pub(super) struct Loaded {
    pub(super) sb: Superblock,
    pub(super) index: Index,
    pub(super) table: SnapshotTable,
    pub(super) alloc: Allocator,
    pub(super) chain_slots: Vec<TargetSlot>,
    pub(super) next_block: Option<BlockPlace>,
    /// Damaged copies of metadata blocks the load read around (and, opened for writing,
    /// rewrote from the good copy).
    pub(super) ditto_repairs: Vec<String>,
    pub(super) chain_records: u64,
    /// Highest snapshot sequence number the log refers to: no new snapshot may take it.
    pub(super) last_seq: u64,
    /// Highest snapshot sequence number whose creation the log holds (or held, before the
    /// snapshot was deleted): journal snapshot records above it are still to apply.
    pub(super) created_seq: u64,
}

/// Loads the metadata with the walker `check` uses, stopping at the first problem: the
/// superblock, the chain (a damaged block copy is read around, and rewritten from its ditto
/// copy when `repair`), the table, the index and the allocator.
pub(super) fn load(target: &dyn Vlun, repair: bool) -> Result<Loaded> {
    let sb = chain::read_superblock(target)?;
    let walked = chain::walk_chain(target, &sb, &mut FirstProblem)?;
    let mut ditto_repairs = Vec::new();
    for d in &walked.damaged {
        let mut note = format!(
            "metadata block at {:#x} is damaged ({}); its ditto copy at {:#x} is whole",
            d.at, d.damage, d.twin
        );
        if repair {
            target
                .write_at(&d.bytes[..], d.at)
                .and_then(|()| target.sync())
                .map_err(|e| Error::io("rewrite metadata", Device::Target, d.at, e))?;
            note.push_str(" and was written over it");
        }
        ditto_repairs.push(note);
    }
    let target_len = chain::target_len(target)?;
    let replay = chain::replay(&walked, &sb, target_len, &mut FirstProblem)?;
    let chain_slots = walked.slots(&sb);
    let used = chain::verify_copies(&replay, &chain_slots, &sb, &mut FirstProblem)?;
    let alloc = Allocator::from_used(used);
    let chunk = u64::from(sb.chunk_size);
    let next_block = walked.blocks.last().and_then(|c| {
        let next = c.place.at + BLOCK_SIZE as u64;
        ((next - sb.data_start) % chunk != 0).then_some(BlockPlace {
            at: next,
            copy: c.place.copy + BLOCK_SIZE as u64,
        })
    });
    Ok(Loaded {
        sb,
        index: replay.index,
        table: replay.table,
        alloc,
        chain_slots,
        next_block,
        ditto_repairs,
        chain_records: replay.records,
        last_seq: replay.last_seq,
        created_seq: replay.created_seq,
    })
}

/// Where a commit puts the creations of the snapshots still pending (durable in the journal,
/// not yet in the log): they must come before any record that names them, and after every
/// creation of an older snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PendingGo {
    /// Before the commit's records: a destage batch's preservations may name them.
    First,
    /// After them: the records are a compaction's tail, commits made earlier, which may
    /// themselves create snapshots (older ones) and name no pending one.
    Last,
}

impl Inner {
    /// Appends records to the metadata log and makes them part of the volume (see
    /// [`Inner::commit_raw`]); the caller checkpoints once its RAM state includes them.
    pub(super) fn commit_locked(&self, meta: &mut MetaState, records: Vec<Record>) -> Result<()> {
        let may_use_reserve = matches!(records.as_slice(), [Record::SnapshotDelete { .. }]);
        let n = records.len() as u64;
        self.commit_raw(meta, records, may_use_reserve)?;
        meta.chain_records += n;
        Ok(())
    }

    /// New slots `records` would take after the chain head.
    fn slots_for(&self, meta: &MetaState, records: &[Record]) -> u64 {
        let blocks = MetaBlock::pack(records, 0).len();
        // Every block twice: its slot and its ditto copy's.
        2 * self.pairs_for(meta, blocks) as u64
    }

    /// Fresh slot pairs `blocks` new blocks take after the room left in the chain head's pair.
    fn pairs_for(&self, meta: &MetaState, blocks: usize) -> usize {
        let per_slot = (self.geo.chunk() / BLOCK_SIZE as u64) as usize;
        let room = meta.next_block.map_or(0, |next| {
            ((self.geo.chunk() - (next.at - self.data_start) % self.geo.chunk())
                / BLOCK_SIZE as u64) as usize
        });
        blocks.saturating_sub(room).div_ceil(per_slot)
    }

    /// Appends records to the metadata log and makes them part of the volume (see
    /// [`Inner::write_chain`]), compacting the log first if that is what makes room. Only a
    /// snapshot deletion (`may_use_reserve`) may take the slots held back for it. Fails with
    /// ENOSPC, changing nothing, if the target cannot hold the records.
    fn commit_raw(
        &self,
        meta: &mut MetaState,
        records: Vec<Record>,
        may_use_reserve: bool,
    ) -> Result<()> {
        let reserve = if may_use_reserve { 0 } else { META_HEADROOM };
        let fits =
            |meta: &MetaState| self.slots_for(meta, &records) + reserve <= self.free_slots(meta);
        if !fits(meta) && (!self.compact_locked(meta)? || !fits(meta)) {
            let (need, free) = (self.slots_for(meta, &records), self.free_slots(meta));
            return Err(self.no_room("the metadata log", need + reserve, free));
        }
        self.write_chain(meta, records)
    }

    /// Writes `records` as new blocks after the chain head, syncs, then points the superblock
    /// (the copy its new generation selects) at the new head and syncs again. The caller made
    /// sure there is room.
    pub(super) fn write_chain(&self, meta: &mut MetaState, records: Vec<Record>) -> Result<()> {
        self.write_chain_with(meta, records, PendingGo::First)
    }

    /// [`Inner::write_chain`], with the creations of pending snapshots where `pending` says.
    pub(super) fn write_chain_with(
        &self,
        meta: &mut MetaState,
        mut records: Vec<Record>,
        pending: PendingGo,
    ) -> Result<()> {
        // A holder that lost its lock writes no metadata: another host may own the volume.
        self.check_held()?;
        // A commit that failed left RAM out of step with the disk (the pending snapshots it
        // took, a journal head already set) and failed the volume under this lock: a call
        // that passed its own check before then must not write that RAM to the superblock.
        self.check_writable()?;
        // Snapshots still pending go in too, where `pending` says (`PendingGo`). The durable
        // prefix of the pending list only grows meanwhile (we hold the metadata lock), so the
        // same ones are taken off it below.
        let created: Vec<SnapshotMeta> = {
            let pending = self.pending.lock();
            pending
                .iter()
                .take_while(|p| p.durable)
                .map(|p| p.meta.clone())
                .collect()
        };
        let last_seq = created.last().map_or(0, |s| s.seq.0);
        let at = match pending {
            PendingGo::First => 0,
            PendingGo::Last => records.len(),
        };
        records.splice(at..at, created.iter().map(create_record));
        let blocks = if records.is_empty() && meta.sb.meta_head != 0 {
            Vec::new()
        } else {
            MetaBlock::pack(&records, meta.sb.meta_head_seq + 1)
        };
        // The fresh slots the blocks need after the room left in the current pair, with the
        // file system's space for them, before anything is written: a full file system
        // refuses the commit and changes nothing.
        let pairs = self.fresh_metadata_slots(meta, self.pairs_for(meta, blocks.len()))?;
        meta.chain_slots
            .extend(pairs.iter().flat_map(|&(_, slots)| slots));
        let mut fresh = pairs.into_iter().map(|(place, _)| place);
        self.pending.lock().drain(..created.len());
        meta.chain_records += created.len() as u64;
        let r = (|| {
            let wrote = !blocks.is_empty();
            for mut blk in blocks {
                let place = match meta.next_block {
                    Some(place) => place,
                    None => fresh
                        .next()
                        .expect("a fresh slot pair for every slot the blocks fill"),
                };
                blk.prev = meta.sb.meta_head;
                blk.prev_copy = meta.sb.meta_head_copy;
                // Both copies, byte for byte; one sync below covers them.
                let bytes = blk.encode(&self.volume_id);
                for off in [place.at, place.copy] {
                    self.target
                        .write_at(&bytes, off)
                        .map_err(|e| Error::io("write metadata", Device::Target, off, e))?;
                }
                meta.sb.meta_head = place.at;
                meta.sb.meta_head_copy = place.copy;
                meta.sb.meta_head_seq = blk.seq;
                meta.next_block = self.block_after(place);
            }
            self.slots_used.store(meta.alloc.used(), Ordering::SeqCst);
            if wrote {
                self.target
                    .sync()
                    .map_err(|e| Error::io("sync", Device::Target, 0, e))?;
            }
            self.write_superblock(meta, last_seq)
        })();
        // A failure leaves RAM and disk out of step: stop writing.
        r.inspect_err(|e| self.fail(e))?;
        for s in created {
            meta.committed.push(s);
        }
        // A compaction under way writes these after the fresh chain it is building.
        if let Some(c) = meta.compaction.as_mut() {
            c.tail.extend(records);
        }
        Ok(())
    }

    /// Where the block after the one at `place` goes: the next block position of the same
    /// slot pair, if the slot has room.
    pub(super) fn block_after(&self, place: BlockPlace) -> Option<BlockPlace> {
        let next = place.at + BLOCK_SIZE as u64;
        ((next - self.data_start) % self.geo.chunk() != 0).then_some(BlockPlace {
            at: next,
            copy: place.copy + BLOCK_SIZE as u64,
        })
    }

    /// `pairs` fresh slot pairs for metadata blocks, each with where its first block goes,
    /// allocated and with the file system's space for them. All or nothing: an error gives
    /// back what it took. The caller records the slots as a chain's.
    pub(super) fn fresh_metadata_slots(
        &self,
        meta: &mut MetaState,
        pairs: usize,
    ) -> Result<Vec<(BlockPlace, [TargetSlot; 2])>> {
        let mut fresh: Vec<(BlockPlace, [TargetSlot; 2])> = Vec::with_capacity(pairs);
        for _ in 0..pairs {
            match self.metadata_slots(meta) {
                Ok(pair) => fresh.push(pair),
                Err(e) => {
                    for s in fresh.iter().flat_map(|&(_, slots)| slots) {
                        meta.alloc.free(s);
                    }
                    return Err(e);
                }
            }
        }
        Ok(fresh)
    }

    /// Two fresh slots, one for metadata blocks and one for their ditto copies: damage to
    /// one slot never takes both copies of a block.
    fn metadata_slots(&self, meta: &mut MetaState) -> Result<(BlockPlace, [TargetSlot; 2])> {
        let none_left = || Error::NoSpace {
            detail: "the target has no slot left for the metadata log".into(),
        };
        let first = meta.alloc.allocate(1).ok_or_else(none_left)?[0].0;
        let second = match meta.alloc.allocate(1) {
            Some(runs) => runs[0].0,
            None => {
                meta.alloc.free(first);
                return Err(none_left());
            }
        };
        for slot in [first, second] {
            let off = self.slot_offset(slot);
            if let Err(e) = self.target.reserve_space(off, self.geo.chunk()) {
                meta.alloc.free(first);
                meta.alloc.free(second);
                return Err(Error::io_or_full(
                    "make room for the metadata log",
                    Device::Target,
                    off,
                    e,
                ));
            }
        }
        let place = BlockPlace {
            at: self.slot_offset(first),
            copy: self.slot_offset(second),
        };
        Ok((place, [first, second]))
    }

    /// Writes `meta.sb` to both copies in turn: the next generation into the copy that holds
    /// the older one, sync, then the generation after it into the other copy, sync. A crash
    /// tears at most the copy being written while the other holds a whole state, and at rest
    /// both copies hold the newest state, so a copy damaged later never makes an open fall
    /// back to stale metadata. `last_seq` is the highest snapshot creation the log now holds.
    pub(super) fn write_superblock(&self, meta: &mut MetaState, last_seq: u64) -> Result<()> {
        self.check_held()?;
        let mut sb = meta.sb.clone();
        sb.last_snapshot_seq = sb.last_snapshot_seq.max(last_seq);
        for _ in 0..2 {
            sb.generation += 1;
            let off = format::superblock_offset(sb.generation);
            self.target
                .write_at(&sb.encode(), off)
                .map_err(|e| Error::io("write superblock", Device::Target, off, e))?;
            self.target
                .sync()
                .map_err(|e| Error::io("sync", Device::Target, off, e))?;
        }
        meta.sb = sb;
        Ok(())
    }

    /// Records in the superblock that the volume was closed cleanly (after `drain`: the
    /// journal holds nothing after its head), so the next open need not look past the end of
    /// the journal for records of later appends.
    pub(super) fn mark_closed_cleanly(&self) -> Result<()> {
        let mut meta = self.meta.lock();
        meta.sb.clean = true;
        self.write_superblock(&mut meta, 0)
    }

    /// Slots a fresh copy of the live metadata (a checkpoint) would take.
    pub(super) fn live_meta_slots(&self, snapshots: usize) -> u64 {
        // A copy alone in its record takes a whole Preserve record; that is the worst case.
        let per_copy = Record::Preserve {
            chunk: ChunkIndex(0),
            slot: TargetSlot(0),
            lo: SnapshotSeq(1),
            hi: SnapshotSeq(1),
            crcs: vec![0],
        }
        .encoded_len() as u64;
        let bytes = self.index.len() as u64 * per_copy + snapshots as u64 * MAX_CREATE_LEN as u64;
        let per_slot = self.geo.chunk() / BLOCK_SIZE as u64 * META_PAYLOAD as u64;
        // Every block twice (ditto copies).
        2 * bytes.div_ceil(per_slot).max(1)
    }
}
