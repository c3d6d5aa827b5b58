//! Reading and crafting the on-disk structures with the public decoders: the current
//! superblock, the metadata chain and its ditto copies, appended blocks of chosen records, the
//! live preserved copies, and journal records.

use std::collections::BTreeMap;

use snapvol_engine::format::{self, MetaBlock, Record, Superblock, BLOCK_SIZE};
use snapvol_engine::vlun::Vlun;

use crate::volume::Images;
use crate::CHUNK;

fn block_of(target: &[u8], off: u64) -> [u8; BLOCK_SIZE] {
    let at = off as usize;
    target[at..at + BLOCK_SIZE].try_into().expect("a block")
}

/// The current superblock, as open picks it.
pub(crate) fn current_superblock(target: &[u8]) -> Superblock {
    (0..2u64)
        .filter_map(|g| {
            let off = format::superblock_offset(g);
            Superblock::decode(&block_of(target, off), off).ok()
        })
        .max_by_key(|sb| sb.generation)
        .expect("a valid superblock")
}

/// The offsets of the ditto copies of the metadata chain's blocks, in chain order: walking
/// `meta_head_copy` and `prev_copy`.
pub(crate) fn copies_of(target: &[u8]) -> Vec<u64> {
    let (sb, chain) = layout_of(target);
    let mut copies: Vec<u64> = chain.iter().skip(1).map(|(_, b)| b.prev_copy).collect();
    copies.push(sb.meta_head_copy);
    copies
}

/// The current superblock (as open picks it) and the offsets of the metadata chain's blocks,
/// found by walking `meta_head` and `prev` with the public decoders.
pub(crate) fn layout_of(target: &[u8]) -> (Superblock, Vec<(u64, MetaBlock)>) {
    let block = |off: u64| block_of(target, off);
    let sb = current_superblock(target);
    let mut chain = Vec::new();
    let mut off = sb.meta_head;
    while off != 0 {
        let blk = MetaBlock::decode(&block(off), off, &sb.volume_id).expect("a valid block");
        let prev = blk.prev;
        chain.push((off, blk));
        off = prev;
    }
    chain.reverse();
    (sb, chain)
}

/// Appends a block holding `records` to the chain (in a new slot at the end of the target)
/// and points a new superblock generation at it. Returns the block's offset.
pub(crate) fn append_block(t: &dyn Vlun, records: Vec<Record>) -> u64 {
    let mut raw = vec![0u8; t.len().expect("len") as usize];
    t.read_at(&mut raw, 0).expect("read");
    let (mut sb, _) = layout_of(&raw);
    let off = (t.len().expect("len")).next_multiple_of(CHUNK);
    let copy = off + CHUNK;
    let mut blk = MetaBlock::pack(&records, sb.meta_head_seq + 1).remove(0);
    blk.prev = sb.meta_head;
    blk.prev_copy = sb.meta_head_copy;
    for at in [off, copy] {
        t.write_at(&blk.encode(&sb.volume_id), at).expect("write");
    }
    sb.meta_head = off;
    sb.meta_head_copy = copy;
    sb.meta_head_seq = blk.seq;
    sb.generation += 1;
    t.write_at(&sb.encode(), format::superblock_offset(sb.generation))
        .expect("write");
    off
}

/// A preserved copy: (chunk, lo, hi, slot).
type CopyTuple = (u64, u64, u64, u64);

/// Live copies of the pristine volume (of preserve records some live snapshot reads), and the
/// live snapshot sequence numbers.
pub(crate) fn live_copies(img: &Images) -> (Vec<CopyTuple>, Vec<u64>) {
    let (_, chain) = layout_of(&img.target);
    let mut live = BTreeMap::new();
    let mut copies = Vec::new();
    for (_, b) in &chain {
        for r in &b.records {
            match r {
                Record::SnapshotCreate { seq, .. } => {
                    live.insert(seq.0, ());
                }
                Record::SnapshotDelete { seq } => {
                    live.remove(&seq.0);
                }
                Record::Preserve {
                    chunk,
                    slot,
                    lo,
                    hi,
                    crcs,
                } => {
                    let count = crcs.len() as u32;
                    for k in 0..u64::from(count) {
                        copies.push((chunk.0 + k, lo.0, hi.0, slot.0 + k));
                    }
                }
            }
        }
    }
    let seqs: Vec<u64> = live.keys().copied().collect();
    copies.retain(|&(_, lo, hi, _)| seqs.iter().any(|s| (lo..=hi).contains(s)));
    (copies, seqs)
}

/// Encodes a zeroing journal record the way `journal.rs` documents it.
pub(crate) fn zero_record(seq: u64, offset: u64, len: u64, volume_id: &[u8; 16]) -> [u8; 64] {
    zero_record_in_epoch(seq, 0, offset, len, volume_id)
}

/// A zeroing journal record issued in `epoch`.
pub(crate) fn zero_record_in_epoch(
    seq: u64,
    epoch: u64,
    offset: u64,
    len: u64,
    volume_id: &[u8; 16],
) -> [u8; 64] {
    let mut h = [0u8; 64];
    h[0..4].copy_from_slice(b"SVJR");
    h[4] = 2;
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&epoch.to_le_bytes());
    h[24..32].copy_from_slice(&offset.to_le_bytes());
    h[32..40].copy_from_slice(&len.to_le_bytes());
    h[48..56].copy_from_slice(&volume_id[..8]);
    let crc = crc32c_of(&h[..56]);
    h[56..60].copy_from_slice(&crc.to_le_bytes());
    h
}

/// CRC-32C (Castagnoli), bitwise: the test does not lean on the engine's checksum code.
fn crc32c_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
