//! Reading the metadata log as it lies in the target VLUN: the superblock copies, the chain of
//! metadata blocks (each from its first copy or its ditto copy), the replay of its records
//! into the snapshot table and the preservation index, and the rules that hold between the
//! copies they describe.
//!
//! One walker serves both readers of the log. Opening a volume stops at the first problem
//! ([`FirstProblem`]); `check` collects every problem and goes on (its own [`Findings`]). So a
//! rule of `docs/format.md` is written once, and what `check` calls damage is exactly what
//! open refuses.
//!
//! This module only reads: rewriting a damaged copy from its twin is the caller's decision
//! (open for writing does it at once; `check --repair` does it after reporting).

use crate::error::{Device, Error, Result};
use crate::format::{self, MetaBlock, Record, Superblock, BLOCK_SIZE};
use crate::metadata::{Entry, Index, SnapshotMeta, SnapshotTable};
use crate::names::validate_name;
use crate::units::{ChunkIndex, Geometry, SnapshotSeq, TargetSlot};
use crate::vlun::Vlun;

/// What a walk does with a problem it finds.
pub(crate) trait Findings {
    /// Whether to read both copies of every metadata block (a check), or the ditto copy only
    /// when the first copy is damaged (an open).
    fn thorough(&self) -> bool;

    /// A problem, always [`Error::Corrupt`] with its location: `Err` ends the walk with it,
    /// `Ok` goes on.
    fn problem(&mut self, e: Error) -> Result<()>;
}

/// How an open reads the log: the first problem is the error.
pub(crate) struct FirstProblem;

impl Findings for FirstProblem {
    fn thorough(&self) -> bool {
        false
    }

    fn problem(&mut self, e: Error) -> Result<()> {
        Err(e)
    }
}

/// The location of a superblock copy in problems.
pub(crate) fn superblock_location(off: u64) -> String {
    format!("superblock copy at {off:#x}")
}

/// The location of a metadata block in problems.
pub(crate) fn block_location(off: u64) -> String {
    format!("metadata block at {off:#x}")
}

/// The location of a record in problems.
fn record_location(block: u64, i: usize) -> String {
    format!("metadata block at {block:#x} record {i}")
}

/// Reads the 4 KiB block at `off` of `dev` (`device`, for the error), as `op`.
pub(crate) fn read_block(
    dev: &dyn Vlun,
    device: Device,
    op: &'static str,
    off: u64,
) -> Result<[u8; BLOCK_SIZE]> {
    let mut b = [0u8; BLOCK_SIZE];
    dev.read_at(&mut b, off)
        .map_err(|e| Error::io(op, device, off, e))?;
    Ok(b)
}

pub(crate) fn target_len(target: &dyn Vlun) -> Result<u64> {
    target
        .len()
        .map_err(|e| Error::io("size", Device::Target, 0, e))
}

/// Both superblock copies, each decoded or with the damage found in it, by position.
pub(crate) fn read_superblocks(target: &dyn Vlun) -> Result<[(u64, Result<Superblock>); 2]> {
    let copy = |g: u64| -> Result<(u64, Result<Superblock>)> {
        let off = format::superblock_offset(g);
        let b = read_block(target, Device::Target, "read superblock", off)?;
        Ok((off, Superblock::decode(&b, off)))
    };
    Ok([copy(0)?, copy(1)?])
}

/// The copy open uses: the valid one with the higher generation.
pub(crate) fn current_superblock(copies: &[(u64, Result<Superblock>); 2]) -> Option<&Superblock> {
    copies
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .max_by_key(|sb| sb.generation)
}

/// Reads the newest valid superblock copy; with neither valid, the first one's damage.
pub(crate) fn read_superblock(target: &dyn Vlun) -> Result<Superblock> {
    let copies = read_superblocks(target)?;
    if let Some(sb) = current_superblock(&copies) {
        for (_, r) in &copies {
            if let Err(e) = r {
                tracing::warn!(error = %e, "one superblock copy is unusable; using the other");
            }
        }
        return Ok(sb.clone());
    }
    match copies {
        [(_, Err(e)), _] | [_, (_, Err(e))] => Err(e),
        [(_, Ok(_)), (_, Ok(_))] => unreachable!("a valid copy is the current one"),
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

/// A block of the metadata chain and where it is.
#[derive(Debug)]
pub(crate) struct ChainBlock {
    pub(crate) place: BlockPlace,
    pub(crate) block: MetaBlock,
}

/// A copy of a metadata block that is damaged while its twin is whole: what a repair writes
/// over it.
#[derive(Debug)]
pub(crate) struct DamagedCopy {
    /// Where the damaged copy is.
    pub(crate) at: u64,
    /// Where its whole twin is.
    pub(crate) twin: u64,
    /// The twin's bytes.
    pub(crate) bytes: Box<[u8; BLOCK_SIZE]>,
    /// What is wrong with the damaged copy ([`Error::Corrupt`]).
    pub(crate) damage: Error,
}

/// The metadata chain, oldest block first.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    pub(crate) blocks: Vec<ChainBlock>,
    /// Copies read around because their twin is whole.
    pub(crate) damaged: Vec<DamagedCopy>,
    /// Whether the walk reached the first block (a problem can cut it short).
    pub(crate) complete: bool,
}

impl Chain {
    /// The slots the chain's blocks (both copies) lie in, sorted.
    pub(crate) fn slots(&self, sb: &Superblock) -> Vec<TargetSlot> {
        let chunk = u64::from(sb.chunk_size);
        let mut slots: Vec<TargetSlot> = self
            .blocks
            .iter()
            .flat_map(|b| [b.place.at, b.place.copy])
            .map(|off| TargetSlot((off - sb.data_start) / chunk))
            .collect();
        slots.sort_unstable();
        slots.dedup();
        slots
    }
}

/// Whether `off` is a metadata block position inside the target: the problem if not.
fn block_position_problem(off: u64, sb: &Superblock, target_len: u64) -> Option<String> {
    if off < sb.data_start || (off - sb.data_start) % BLOCK_SIZE as u64 != 0 {
        return Some(format!(
            "{off:#x} is not a metadata block position (4 KiB aligned at or after the data \
             area at {:#x})",
            sb.data_start
        ));
    }
    // A block is written before any pointer to it, so the target holds it; reading past the
    // end would read zeroes at best, and near u64::MAX the offset arithmetic overflows.
    match off.checked_add(BLOCK_SIZE as u64) {
        Some(end) if end <= target_len => None,
        _ => Some(format!(
            "{off:#x} lies beyond the end of the target VLUN ({target_len:#x} bytes)"
        )),
    }
}

/// Walks the metadata chain backwards from the superblock's head: every pointer a block
/// position inside the target, every block from a copy that is whole (its checksum, this
/// volume, the sequence number its pointer expects), sequence numbers strictly decreasing to 1.
pub(crate) fn walk_chain(
    target: &dyn Vlun,
    sb: &Superblock,
    f: &mut dyn Findings,
) -> Result<Chain> {
    let target_len = target_len(target)?;
    let mut chain = Chain::default();
    let mut place = BlockPlace {
        at: sb.meta_head,
        copy: sb.meta_head_copy,
    };
    let mut expect_seq = sb.meta_head_seq;
    // Where the pointer being followed was read, for the problem that names it.
    let mut pointer_at = superblock_location(format::superblock_offset(sb.generation));
    let mut pointer_name = "meta_head";
    let complete = loop {
        if place.at == 0 {
            break true;
        }
        let bad_position = [place.at, place.copy]
            .into_iter()
            .find_map(|o| block_position_problem(o, sb, target_len));
        if let Some(why) = bad_position {
            f.problem(Error::corrupt(pointer_at, format!("{pointer_name} {why}")))?;
            break false;
        }
        // Each copy on its own: whole, or its damage with its location.
        let decode = |at: u64| -> Result<([u8; BLOCK_SIZE], Result<MetaBlock>)> {
            let b = read_block(target, Device::Target, "read metadata", at)?;
            let blk = MetaBlock::decode(&b, at, &sb.volume_id).and_then(|blk| {
                if blk.seq == expect_seq {
                    Ok(blk)
                } else {
                    Err(Error::corrupt(
                        block_location(at),
                        format!(
                            "sequence number {} where {expect_seq} was expected (named by the \
                             {pointer_name} of {pointer_at})",
                            blk.seq
                        ),
                    ))
                }
            });
            Ok((b, blk))
        };
        let mut whole: Option<(u64, [u8; BLOCK_SIZE], MetaBlock)> = None;
        let mut damaged: Vec<(u64, Error)> = Vec::new();
        for at in [place.at, place.copy] {
            if whole.is_some() && !f.thorough() {
                break;
            }
            match decode(at)? {
                (b, Ok(blk)) => {
                    if whole.is_none() {
                        whole = Some((at, b, blk));
                    }
                }
                (_, Err(e)) => damaged.push((at, e)),
            }
        }
        let Some((twin, bytes, blk)) = whole else {
            for (_, e) in damaged {
                f.problem(e)?;
            }
            break false;
        };
        for (at, damage) in damaged {
            chain.damaged.push(DamagedCopy {
                at,
                twin,
                bytes: Box::new(bytes),
                damage,
            });
        }
        pointer_at = block_location(place.at);
        pointer_name = "prev pointer";
        if blk.seq == 0 {
            f.problem(Error::corrupt(
                block_location(place.at),
                "sequence number 0 (metadata blocks are numbered from 1)",
            ))?;
            break false;
        }
        let prev = BlockPlace {
            at: blk.prev,
            copy: blk.prev_copy,
        };
        // Sequence numbers strictly decrease along the chain, from 1 up, so it cannot loop
        // and no block comes before block 1.
        let first = blk.seq == 1;
        chain.blocks.push(ChainBlock { place, block: blk });
        if first && prev.at != 0 {
            f.problem(Error::corrupt(
                block_location(place.at),
                format!(
                    "block 1 names a previous block at {:#x}; no block comes before sequence \
                     number 1",
                    prev.at
                ),
            ))?;
            break false;
        }
        place = prev;
        expect_seq -= 1;
    };
    chain.blocks.reverse();
    chain.complete = complete;
    Ok(chain)
}

/// Where a preserve record put its copies, to name the record in a problem about one of them.
#[derive(Debug, Clone, Copy)]
struct Span {
    chunk: u64,
    slot: u64,
    count: u64,
    block: u64,
    record: usize,
}

/// What the records of a chain describe.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// The live snapshots.
    pub(crate) table: SnapshotTable,
    /// Every preserved copy a live snapshot reads.
    pub(crate) index: Index,
    /// Records read.
    pub(crate) records: u64,
    /// Highest snapshot sequence number the log refers to (from `last`): no new snapshot may
    /// take it.
    pub(crate) last_seq: u64,
    /// Highest snapshot sequence number whose creation the log holds or held (from `last`):
    /// journal snapshot records above it are still to apply.
    pub(crate) created_seq: u64,
    /// Preserve records in log order.
    spans: Vec<Span>,
}

impl Replay {
    /// The location of the record that put copy `e` of chunk `c`, and its order in the log.
    fn record_of(&self, c: ChunkIndex, e: &Entry) -> (usize, String) {
        self.spans
            .iter()
            .enumerate()
            .rev()
            .find(|(_, s)| {
                e.slot.0 >= s.slot
                    && e.slot.0 - s.slot < s.count
                    && s.chunk + (e.slot.0 - s.slot) == c.0
            })
            .map_or((0, "metadata log".to_owned()), |(i, s)| {
                (i, record_location(s.block, s.record))
            })
    }

    /// The live snapshots that read a copy shared by `lo..=hi`, by name.
    pub(crate) fn readers(&self, lo: u64, hi: u64) -> Vec<String> {
        self.table
            .range(lo, hi)
            .iter()
            .map(|m| m.name.clone())
            .collect()
    }
}

/// Replays the records of `chain`: what each says on its own (a valid snapshot name, sequence
/// numbers increasing, no duplicate live name, a delete of a live snapshot, a preserve record
/// inside the volume and the target), then what they build: the snapshot table, and the index
/// of the copies live snapshots read. `last` is the highest snapshot sequence number the
/// superblock records.
pub(crate) fn replay(
    chain: &Chain,
    sb: &Superblock,
    target_len: u64,
    f: &mut dyn Findings,
) -> Result<Replay> {
    let geo = Geometry::new(sb.volume_size, sb.chunk_size)?;
    let chunk = geo.chunk();
    // A pointer becomes durable only after the copy it points to (I2), so every slot a record
    // names lies inside the target as well as under its cap. This also bounds the index
    // insertions a record's count drives by what the target really holds.
    let (slot_limit, limit_name) = match sb.target_cap {
        cap if cap != 0 && cap <= target_len => (cap, "the target size cap"),
        _ => (target_len, "the end of the target VLUN"),
    };
    let mut r = Replay {
        last_seq: sb.last_snapshot_seq,
        created_seq: sb.last_snapshot_seq,
        ..Replay::default()
    };
    // Sequence numbers of snapshots created, live or deleted since: a new one goes above.
    let mut max_created = 0u64;
    for b in &chain.blocks {
        let off = b.place.at;
        for (i, rec) in b.block.records.iter().enumerate() {
            r.records += 1;
            let problem = |detail: String| Error::corrupt(record_location(off, i), detail);
            match rec {
                Record::SnapshotCreate {
                    seq,
                    created_ms,
                    name,
                } => {
                    if let Err(e) = validate_name(name) {
                        f.problem(problem(e.to_string()))?;
                    }
                    if seq.0 <= max_created {
                        f.problem(problem(format!(
                            "snapshot '{name}' has sequence number {}, not above the \
                             {max_created} of an earlier snapshot",
                            seq.0
                        )))?;
                    } else if let Some(other) = r.table.by_name(name) {
                        f.problem(problem(format!(
                            "snapshot name '{name}' (sequence number {}) is already taken by \
                             live snapshot {}",
                            seq.0, other.seq.0
                        )))?;
                    } else {
                        r.table.push(SnapshotMeta {
                            seq: *seq,
                            name: name.clone(),
                            created: std::time::UNIX_EPOCH
                                + std::time::Duration::from_millis(*created_ms),
                        });
                    }
                    max_created = max_created.max(seq.0);
                    r.last_seq = r.last_seq.max(seq.0);
                    r.created_seq = r.created_seq.max(seq.0);
                }
                Record::SnapshotDelete { seq } => {
                    if r.table.remove(*seq).is_none() {
                        f.problem(problem(format!(
                            "deletes snapshot sequence number {}, which does not exist",
                            seq.0
                        )))?;
                    }
                }
                Record::Preserve {
                    chunk: c,
                    slot,
                    lo,
                    hi,
                    crcs,
                } => {
                    let n = crcs.len() as u64;
                    let mut ok = true;
                    if lo.0 == 0 || lo > hi || n == 0 {
                        f.problem(problem(format!(
                            "empty preserve record (count {n}, snapshots {}..={})",
                            lo.0, hi.0
                        )))?;
                        ok = false;
                    }
                    if c.0.checked_add(n).is_none_or(|end| end > geo.chunks()) {
                        f.problem(problem(format!(
                            "chunks {}..{} lie beyond the volume ({} chunks)",
                            c.0,
                            c.0.saturating_add(n),
                            geo.chunks()
                        )))?;
                        ok = false;
                    }
                    let slot_end = slot
                        .0
                        .checked_add(n)
                        .and_then(|e| e.checked_mul(chunk))
                        .and_then(|b| b.checked_add(sb.data_start));
                    if slot_end.is_none_or(|end| end > slot_limit) {
                        f.problem(problem(format!(
                            "slots {}..{} lie beyond {limit_name} ({slot_limit:#x} bytes)",
                            slot.0,
                            slot.0.saturating_add(n)
                        )))?;
                        ok = false;
                    }
                    if !ok {
                        continue;
                    }
                    r.last_seq = r.last_seq.max(hi.0);
                    r.spans.push(Span {
                        chunk: c.0,
                        slot: slot.0,
                        count: n,
                        block: off,
                        record: i,
                    });
                    for (k, &crc) in (0u64..).zip(crcs) {
                        r.index.insert(
                            ChunkIndex(c.0 + k),
                            Entry {
                                lo: lo.0,
                                hi: hi.0,
                                slot: TargetSlot(slot.0 + k),
                                crc,
                            },
                        );
                    }
                }
            }
        }
    }
    // A rollback under way restores a live snapshot (its creation is committed before the
    // superblock names it, and it cannot be deleted until the rollback ends).
    if sb.rollback_to != 0 && !r.table.is_alive(SnapshotSeq(sb.rollback_to)) {
        f.problem(Error::corrupt(
            superblock_location(format::superblock_offset(sb.generation)),
            format!(
                "a rollback to snapshot sequence number {} is under way, but no live snapshot \
                 has that number",
                sb.rollback_to
            ),
        ))?;
    }
    // Copies no live snapshot reads (their snapshot was deleted, or never committed before a
    // crash) are dropped here: the allocator is derived from what the logs still reference.
    r.index.remove_unreferenced(&r.table);
    Ok(r)
}

/// The rules between the copies of a complete replay: for every chunk the live copies cover
/// disjoint snapshot ranges (no snapshot has two pointers for one chunk), and no slot holds
/// two live copies, or a live copy and a block of the chain. Returns every slot in use
/// (copies and chain), sorted: what the allocator is derived from.
pub(crate) fn verify_copies(
    replay: &Replay,
    chain_slots: &[TargetSlot],
    sb: &Superblock,
    f: &mut dyn Findings,
) -> Result<Vec<u64>> {
    // Disjoint ranges: copies of a chunk are sorted by `hi`, so two overlap exactly when two
    // neighbours do. The problem goes to the later record.
    let mut overlaps = Vec::new();
    replay.index.for_each_chunk(|c, copies| {
        for w in copies.windows(2) {
            if w[1].lo <= w[0].hi {
                overlaps.push((c, w[0], w[1]));
            }
        }
    });
    for (c, a, b) in overlaps {
        let both = replay.table.range(b.lo.max(a.lo), a.hi.min(b.hi));
        let who = if both.is_empty() {
            "no live snapshot, but the ranges must be disjoint".to_owned()
        } else {
            format!(
                "snapshot{} {} would have two pointers (bitmap bit set twice)",
                if both.len() == 1 { "" } else { "s" },
                both.iter()
                    .map(|m| format!("{} ({})", m.seq.0, m.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let (a, b) = ordered(replay, c, a, c, b);
        f.problem(Error::corrupt(
            b.2.clone(),
            format!(
                "chunk {} preserved for snapshots {}..={} in slot {} overlaps its copy for \
                 {}..={} in slot {} ({}): {who}",
                c.0, b.1.lo, b.1.hi, b.1.slot.0, a.1.lo, a.1.hi, a.1.slot.0, a.2
            ),
        ))?;
    }

    // One copy per slot, and none in the chain's slots.
    let mut used: Vec<u64> = Vec::with_capacity(replay.index.len() + chain_slots.len());
    replay.index.for_each(|_, e| used.push(e.slot.0));
    used.sort_unstable();
    let shared: Vec<u64> = used
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    let in_chain: Vec<u64> = chain_slots
        .iter()
        .map(|s| s.0)
        .filter(|s| used.binary_search(s).is_ok())
        .collect();
    if !shared.is_empty() || !in_chain.is_empty() {
        let mut holders: Vec<(ChunkIndex, Entry)> = Vec::new();
        replay.index.for_each(|c, e| {
            if shared.contains(&e.slot.0) || in_chain.contains(&e.slot.0) {
                holders.push((c, *e));
            }
        });
        holders.sort_by_key(|(c, e)| (e.slot.0, replay.record_of(*c, e).0, c.0, e.lo));
        for w in holders.windows(2) {
            let ((ca, a), (cb, b)) = (w[0], w[1]);
            if a.slot != b.slot {
                continue;
            }
            let (a, b) = ordered(replay, ca, a, cb, b);
            f.problem(Error::corrupt(
                b.2.clone(),
                format!(
                    "slot {} holds chunk {} for snapshots {}..={}, but {} puts chunk {} for \
                     snapshots {}..={} there too",
                    b.1.slot.0, b.0 .0, b.1.lo, b.1.hi, a.2, a.0 .0, a.1.lo, a.1.hi
                ),
            ))?;
        }
        for (c, e) in holders.iter().filter(|(_, e)| in_chain.contains(&e.slot.0)) {
            let off = sb.data_start + e.slot.0 * u64::from(sb.chunk_size);
            f.problem(Error::corrupt(
                replay.record_of(*c, e).1,
                format!(
                    "chunk {} for snapshots {}..={} is in slot {} (at {off:#x}), which holds \
                     blocks of the metadata chain",
                    c.0, e.lo, e.hi, e.slot.0
                ),
            ))?;
        }
    }
    used.extend(chain_slots.iter().map(|s| s.0));
    used.sort_unstable();
    used.dedup();
    Ok(used)
}

/// Two copies with their records' locations, the earlier record first.
type Located = (ChunkIndex, Entry, String);

fn ordered(
    replay: &Replay,
    ca: ChunkIndex,
    a: Entry,
    cb: ChunkIndex,
    b: Entry,
) -> (Located, Located) {
    let (ia, la) = replay.record_of(ca, &a);
    let (ib, lb) = replay.record_of(cb, &b);
    if ia <= ib {
        ((ca, a, la), (cb, b, lb))
    } else {
        ((cb, b, lb), (ca, a, la))
    }
}
