//! The metadata log: reading the chain at open, appending records, compaction, and the
//! two-copy superblock write.

use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use crate::destage::{self};
use crate::error::{Device, Error, Result};
use crate::format::{
    self, MetaBlock, Record, Superblock, BLOCK_SIZE, MAX_CREATE_LEN, META_PAYLOAD,
};
use crate::metadata::{Allocator, Entry, Index, SnapshotMeta, SnapshotTable};
use crate::units::{ChunkIndex, Geometry, SnapshotSeq, TargetSlot};
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

/// Reads the newest valid superblock copy.
pub(crate) fn read_superblock(target: &dyn Vlun) -> Result<Superblock> {
    let mut best: Option<Superblock> = None;
    let mut errors = Vec::new();
    for g in 0..2u64 {
        let off = format::superblock_offset(g);
        let mut b = [0u8; BLOCK_SIZE];
        target
            .read_at(&mut b, off)
            .map_err(|e| Error::io("read superblock", Device::Target, off, e))?;
        match Superblock::decode(&b, off) {
            Ok(sb) => {
                if best.as_ref().is_none_or(|x| sb.generation > x.generation) {
                    best = Some(sb);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    match best {
        Some(sb) => {
            for e in errors {
                tracing::warn!(error = %e, "one superblock copy is unusable; using the other");
            }
            Ok(sb)
        }
        None => Err(errors.remove(0)),
    }
}

/// Where a metadata block and its ditto copy are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockPlace {
    /// Byte offset of the block.
    pub(crate) at: u64,
    /// Byte offset of its ditto copy.
    pub(crate) copy: u64,
}

/// A block of the metadata chain, where it is, and a copy found damaged (and repaired when the
/// chain was read for writing).
#[derive(Debug)]
pub(crate) struct ChainBlock {
    pub(crate) place: BlockPlace,
    pub(crate) block: MetaBlock,
}

/// Reads one metadata block that should carry `seq`: its first copy, or, if that one is
/// damaged, its ditto copy, which then (`repair`) is written over the damaged one. Returns the
/// block and, if a copy was damaged, what was found (and done).
fn read_block_pair(
    target: &dyn Vlun,
    place: BlockPlace,
    seq: u64,
    volume_id: &[u8; 16],
    repair: bool,
) -> Result<(MetaBlock, Option<String>)> {
    let read = |off: u64| -> Result<([u8; BLOCK_SIZE], Result<MetaBlock>)> {
        let mut b = [0u8; BLOCK_SIZE];
        target
            .read_at(&mut b, off)
            .map_err(|e| Error::io("read metadata", Device::Target, off, e))?;
        let decoded = MetaBlock::decode(&b, off, volume_id).and_then(|blk| {
            if blk.seq == seq {
                Ok(blk)
            } else {
                Err(Error::corrupt(
                    format!("metadata block at {off:#x}"),
                    format!("sequence {} where {seq} was expected", blk.seq),
                ))
            }
        });
        Ok((b, decoded))
    };
    let (_, first) = read(place.at)?;
    let first_err = match first {
        Ok(blk) => return Ok((blk, None)),
        Err(e) => e,
    };
    let (bytes, second) = read(place.copy)?;
    // Both copies damaged: the first one's damage is the one to report.
    let Ok(blk) = second else {
        return Err(first_err);
    };
    let mut note = format!(
        "metadata block at {:#x} is damaged ({first_err}); its ditto copy at {:#x} is whole",
        place.at, place.copy
    );
    if repair {
        target
            .write_at(&bytes, place.at)
            .and_then(|()| target.sync())
            .map_err(|e| Error::io("rewrite metadata", Device::Target, place.at, e))?;
        note.push_str(" and was written over it");
    }
    Ok((blk, Some(note)))
}

/// Reads the metadata chain backwards from the superblock's head, each block from its first
/// copy or its ditto copy; returns the blocks oldest first with where they are, and what was
/// found damaged (rewritten from the good copy when `repair`).
pub(crate) fn read_chain(
    target: &dyn Vlun,
    sb: &Superblock,
    repair: bool,
) -> Result<(Vec<ChainBlock>, Vec<String>)> {
    let target_len = target
        .len()
        .map_err(|e| Error::io("size", Device::Target, 0, e))?;
    let mut chain = Vec::new();
    let mut repairs = Vec::new();
    let mut place = BlockPlace {
        at: sb.meta_head,
        copy: sb.meta_head_copy,
    };
    let mut expect_seq = sb.meta_head_seq;
    // Where the pointer being followed was read, for the error that names it.
    let mut pointer_at = format!(
        "superblock copy at {:#x}",
        format::superblock_offset(sb.generation)
    );
    let mut pointer_name = "meta_head";
    while place.at != 0 {
        for off in [place.at, place.copy] {
            if off < sb.data_start || (off - sb.data_start) % BLOCK_SIZE as u64 != 0 {
                return Err(Error::corrupt(
                    pointer_at,
                    format!("{pointer_name} {off:#x} is not a metadata block position"),
                ));
            }
            // A block is written before any pointer to it, so the target holds it; reading
            // past the end would read zeroes at best, and near u64::MAX the offset arithmetic
            // of the read overflows.
            if off
                .checked_add(BLOCK_SIZE as u64)
                .is_none_or(|end| end > target_len)
            {
                return Err(Error::corrupt(
                    pointer_at,
                    format!(
                        "{pointer_name} {off:#x} lies beyond the end of the target VLUN \
                         ({target_len:#x} bytes)"
                    ),
                ));
            }
        }
        let (blk, damaged) = read_block_pair(target, place, expect_seq, &sb.volume_id, repair)?;
        repairs.extend(damaged);
        pointer_at = format!("metadata block at {:#x}", place.at);
        pointer_name = "prev pointer";
        let prev = BlockPlace {
            at: blk.prev,
            copy: blk.prev_copy,
        };
        if prev.at != 0 {
            // Sequence numbers strictly decrease along the chain, from 1 up, so it cannot loop
            // and no block comes before block 1.
            expect_seq = match blk.seq.checked_sub(1) {
                Some(prev_seq) if prev_seq > 0 => prev_seq,
                _ => {
                    return Err(Error::corrupt(
                        pointer_at,
                        format!(
                            "block {} names a previous block at {:#x}; none comes before \
                             sequence number 1",
                            blk.seq, prev.at
                        ),
                    ))
                }
            };
        }
        chain.push(ChainBlock { place, block: blk });
        place = prev;
    }
    chain.reverse();
    Ok((chain, repairs))
}

/// Loads the metadata: the superblock, the chain (damaged block copies are read around, and
/// rewritten from their ditto copy when `repair`), the table, the index and the allocator.
pub(super) fn load(target: &dyn Vlun, repair: bool) -> Result<Loaded> {
    let sb = read_superblock(target)?;
    let (chain, ditto_repairs) = read_chain(target, &sb, repair)?;
    let chunk = u64::from(sb.chunk_size);
    let geo = Geometry::new(sb.volume_size, sb.chunk_size)?;
    // A pointer becomes durable only after the copy it points to (I2), so every slot a record
    // names lies inside the target as well as under its cap. This also bounds the index
    // insertions a record's count drives by what the target really holds.
    let target_len = target
        .len()
        .map_err(|e| Error::io("size", Device::Target, 0, e))?;
    let (slot_limit, limit_name) = match sb.target_cap {
        cap if cap != 0 && cap < target_len => (cap, "the target size cap"),
        _ => (target_len, "the end of the target VLUN"),
    };
    let max_slots = slot_limit.saturating_sub(sb.data_start) / chunk;
    let index = Index::default();
    let mut table = SnapshotTable::default();
    let mut last_seq = sb.last_snapshot_seq;
    let mut created_seq = sb.last_snapshot_seq;
    let mut chain_records = 0;
    for ChainBlock { place, block: blk } in &chain {
        let off = place.at;
        for r in &blk.records {
            chain_records += 1;
            match r {
                Record::SnapshotCreate {
                    seq,
                    created_ms,
                    name,
                } => {
                    if !table.can_append(*seq, name) {
                        return Err(Error::corrupt(
                            format!("metadata block at {off:#x}"),
                            format!("snapshot {name} {seq} out of order or duplicated"),
                        ));
                    }
                    last_seq = last_seq.max(seq.0);
                    created_seq = created_seq.max(seq.0);
                    table.push(SnapshotMeta {
                        seq: *seq,
                        name: name.clone(),
                        created: UNIX_EPOCH + Duration::from_millis(*created_ms),
                    });
                }
                Record::SnapshotDelete { seq } => {
                    table.remove(*seq);
                }
                Record::Preserve {
                    chunk: c,
                    slot,
                    lo,
                    hi,
                    crcs,
                } => {
                    let count = crcs.len();
                    let end = c.0.checked_add(count as u64);
                    if end.is_none_or(|e| e > geo.chunks()) {
                        return Err(Error::corrupt(
                            format!("metadata block at {off:#x}"),
                            format!("preserve record for {c} x{count} lies beyond the volume"),
                        ));
                    }
                    if slot
                        .0
                        .checked_add(count as u64)
                        .is_none_or(|e| e > max_slots)
                    {
                        return Err(Error::corrupt(
                            format!("metadata block at {off:#x}"),
                            format!(
                                "{slot} x{count} lies beyond {limit_name} ({slot_limit:#x} bytes)"
                            ),
                        ));
                    }
                    last_seq = last_seq.max(hi.0);
                    for (i, &crc) in (0u64..).zip(crcs) {
                        index.insert(
                            ChunkIndex(c.0 + i),
                            Entry {
                                lo: lo.0,
                                hi: hi.0,
                                slot: TargetSlot(slot.0 + i),
                                crc,
                            },
                        );
                    }
                }
            }
        }
    }
    // Copies no live snapshot reads (their snapshot was deleted, or never committed before a
    // crash) are dropped here: the allocator is derived from what the logs still reference.
    index.remove_unreferenced(&table);
    let mut used = Vec::new();
    index.for_each(|_, e| used.push(e.slot.0));
    let mut chain_slots: Vec<TargetSlot> = chain
        .iter()
        .flat_map(|c| [c.place.at, c.place.copy])
        .map(|off| TargetSlot((off - sb.data_start) / chunk))
        .collect();
    chain_slots.sort_unstable();
    chain_slots.dedup();
    used.extend(chain_slots.iter().map(|s| s.0));
    let n = used.len();
    let alloc = Allocator::from_used(used);
    if alloc.used() as usize != n {
        return Err(Error::corrupt(
            "metadata log",
            "two live pointers (or a pointer and a metadata block) share a target slot",
        ));
    }
    let next_block = chain.last().and_then(|c| {
        let next = c.place.at + BLOCK_SIZE as u64;
        ((next - sb.data_start) % chunk != 0).then_some(BlockPlace {
            at: next,
            copy: c.place.copy + BLOCK_SIZE as u64,
        })
    });
    Ok(Loaded {
        sb,
        index,
        table,
        alloc,
        chain_slots,
        next_block,
        ditto_repairs,
        chain_records,
        last_seq,
        created_seq,
    })
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

    /// Rewrites the metadata log as a fresh chain holding only what is live, once the chain
    /// has grown well past that, and frees the old chain's slots.
    pub(super) fn maybe_checkpoint(&self, meta: &mut MetaState) -> Result<()> {
        let live = self.index.len() as u64 + meta.committed.len() as u64;
        let live_slots = self.live_meta_slots(meta.committed.len());
        let by_records =
            meta.chain_records >= self.compact_after_records && meta.chain_records >= 4 * live;
        // Both counts include the ditto copies: twice the blocks of a single-copy log.
        let by_slots = meta.chain_slots.len() as u64 >= 8 + 2 * live_slots;
        if by_records || by_slots {
            self.compact(meta)?;
        }
        Ok(())
    }

    /// Rewrites the durable state as a fresh chain and frees the old one. Returns `false`
    /// (changing nothing) when the target has no room for the new chain.
    fn compact(&self, meta: &mut MetaState) -> Result<bool> {
        let live_slots = self.live_meta_slots(meta.committed.len());
        if live_slots + 1 > self.free_slots(meta) {
            return Ok(false);
        }
        let mut records: Vec<Record> = meta.committed.iter().map(create_record).collect();
        let entries = self.index.sorted();
        let placed: Vec<_> = entries
            .iter()
            .map(|(c, e)| destage::Placed {
                chunk: *c,
                slot: e.slot,
                lo: e.lo,
                hi: e.hi,
                crc: e.crc,
            })
            .collect();
        records.extend(destage::records(&placed));
        let old_slots = std::mem::take(&mut meta.chain_slots);
        let old_head = (meta.next_block, meta.sb.meta_head, meta.sb.meta_head_copy);
        meta.next_block = None;
        meta.sb.meta_head = 0;
        meta.sb.meta_head_copy = 0;
        let n = records.len() as u64;
        match self.write_chain(meta, records) {
            Ok(()) => {}
            // A full file system refused the new chain before anything was written: the old
            // one stands, in RAM as on disk.
            Err(e @ Error::DeviceFull { .. }) => {
                meta.chain_slots = old_slots;
                (meta.next_block, meta.sb.meta_head, meta.sb.meta_head_copy) = old_head;
                return Err(e);
            }
            // Any other failure has failed the volume (write_chain does); RAM no longer matters.
            Err(e) => return Err(e),
        }
        meta.chain_records = n;
        for s in old_slots {
            meta.alloc.free(s);
            // Nothing points there any more: give the space back (best effort).
            let _ = self.target.discard(self.slot_offset(s), self.geo.chunk());
        }
        self.slots_used.store(meta.alloc.used(), Ordering::SeqCst);
        tracing::debug!(volume = %self.name, records = n, "metadata log compacted");
        Ok(true)
    }

    /// New slots `records` would take after the chain head.
    fn slots_for(&self, meta: &MetaState, records: &[Record]) -> u64 {
        let blocks = MetaBlock::pack(records, 0).len() as u64;
        let per_slot = self.geo.chunk() / BLOCK_SIZE as u64;
        let room_in_slot = meta.next_block.map_or(0, |next| {
            (self.geo.chunk() - (next.at - self.data_start) % self.geo.chunk()) / BLOCK_SIZE as u64
        });
        // Every block twice: its slot and its ditto copy's.
        2 * blocks.saturating_sub(room_in_slot).div_ceil(per_slot)
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
        if !fits(meta) && (!self.compact(meta)? || !fits(meta)) {
            let (need, free) = (self.slots_for(meta, &records), self.free_slots(meta));
            return Err(self.no_room("the metadata log", need + reserve, free));
        }
        self.write_chain(meta, records)
    }

    /// Writes `records` as new blocks after the chain head, syncs, then points the superblock
    /// (the copy its new generation selects) at the new head and syncs again. The caller made
    /// sure there is room.
    pub(super) fn write_chain(&self, meta: &mut MetaState, mut records: Vec<Record>) -> Result<()> {
        // Snapshots still pending go first (after the creations a checkpoint rewrites: their
        // sequence numbers are higher), ahead of any record that may name them. The durable
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
        let at = records
            .iter()
            .take_while(|r| matches!(r, Record::SnapshotCreate { .. }))
            .count();
        records.splice(at..at, created.iter().map(create_record));
        let blocks = if records.is_empty() && meta.sb.meta_head != 0 {
            Vec::new()
        } else {
            MetaBlock::pack(&records, meta.sb.meta_head_seq + 1)
        };
        // The fresh slots the blocks need, with the file system's space for them, before
        // anything is written: a full file system refuses the commit and changes nothing.
        let mut fresh = self.fresh_metadata_slots(meta, blocks.len())?.into_iter();
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
                let next = place.at + BLOCK_SIZE as u64;
                meta.next_block =
                    ((next - self.data_start) % self.geo.chunk() != 0).then_some(BlockPlace {
                        at: next,
                        copy: place.copy + BLOCK_SIZE as u64,
                    });
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
        Ok(())
    }

    /// The fresh slot pairs `blocks` new metadata blocks need after the room left in the
    /// current pair, allocated and with the file system's space for them. All or nothing:
    /// an error gives back what it took.
    fn fresh_metadata_slots(&self, meta: &mut MetaState, blocks: usize) -> Result<Vec<BlockPlace>> {
        let per_slot = (self.geo.chunk() / BLOCK_SIZE as u64) as usize;
        let room = meta.next_block.map_or(0, |next| {
            ((self.geo.chunk() - (next.at - self.data_start) % self.geo.chunk())
                / BLOCK_SIZE as u64) as usize
        });
        let pairs = blocks.saturating_sub(room).div_ceil(per_slot);
        let mut fresh: Vec<BlockPlace> = Vec::with_capacity(pairs);
        for _ in 0..pairs {
            match self.metadata_slots(meta) {
                Ok(place) => fresh.push(place),
                Err(e) => {
                    for place in fresh {
                        for off in [place.at, place.copy] {
                            let slot = TargetSlot((off - self.data_start) / self.geo.chunk());
                            meta.alloc.free(slot);
                            meta.chain_slots.retain(|&s| s != slot);
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(fresh)
    }

    /// Two fresh slots, one for metadata blocks and one for their ditto copies: damage to
    /// one slot never takes both copies of a block.
    fn metadata_slots(&self, meta: &mut MetaState) -> Result<BlockPlace> {
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
        meta.chain_slots.push(first);
        meta.chain_slots.push(second);
        Ok(BlockPlace {
            at: self.slot_offset(first),
            copy: self.slot_offset(second),
        })
    }

    /// Writes `meta.sb` to both copies in turn: the next generation into the copy that holds
    /// the older one, sync, then the generation after it into the other copy, sync. A crash
    /// tears at most the copy being written while the other holds a whole state, and at rest
    /// both copies hold the newest state, so a copy damaged later never makes an open fall
    /// back to stale metadata. `last_seq` is the highest snapshot creation the log now holds.
    fn write_superblock(&self, meta: &mut MetaState, last_seq: u64) -> Result<()> {
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
