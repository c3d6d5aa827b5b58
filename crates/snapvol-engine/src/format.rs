//! On-disk structures of the target VLUN and their checksums; nothing else.
//!
//! This module mirrors `docs/format.md`. Every multi-byte integer is little-endian, written
//! and read by explicit calls. Every block carries a CRC-32C of everything before it, and
//! every decoder returns an error (never panics) on any input.
//!
//! ```text
//! target VLUN
//! 0x0000  superblock copy 0 (4 KiB)   written when generation is even
//! 0x1000  superblock copy 1 (4 KiB)   written when generation is odd
//! data_start = round_up(8 KiB, chunk size)
//!         slot 0, slot 1, ...           chunk-sized slots: preserved chunks or metadata
//! ```

use crate::error::{Error, Result};
use crate::units::{ChunkIndex, SnapshotSeq, TargetSlot, WriteMode};

/// Size of a superblock copy and of a metadata block.
pub const BLOCK_SIZE: usize = 4096;
/// Largest generation, sequence number or epoch a valid structure holds: 2^63 - 1.
///
/// Counting one a nanosecond, a volume needs 292 years to get there, so a larger value is
/// corruption, and a counter that starts at a valid value has 2^63 steps of room before it
/// could overflow: the engine counts on from these values with plain `+ 1`.
pub const MAX_SEQ: u64 = u64::MAX >> 1;
/// Current format version.
pub const FORMAT_VERSION: u32 = 2;

const SB_MAGIC: &[u8; 8] = b"SNAPVOLT";
const MB_MAGIC: &[u8; 8] = b"SVMETA\x00\x02";
const CRC_OFFSET: usize = BLOCK_SIZE - 4;

/// Byte offset of the superblock copy for `generation`.
pub fn superblock_offset(generation: u64) -> u64 {
    (generation % 2) * BLOCK_SIZE as u64
}

/// First byte of the data area for a chunk size: the superblocks, rounded up to a chunk.
pub fn data_start(chunk_size: u32) -> u64 {
    (2 * BLOCK_SIZE as u64).next_multiple_of(u64::from(chunk_size))
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn seal(block: &mut [u8; BLOCK_SIZE]) {
    let crc = crc32c::crc32c(&block[..CRC_OFFSET]);
    put_u32(block, CRC_OFFSET, crc);
}

fn crc_ok(block: &[u8; BLOCK_SIZE]) -> bool {
    crc32c::crc32c(&block[..CRC_OFFSET]) == get_u32(block, CRC_OFFSET)
}

/// The superblock: the root of everything in the target VLUN.
///
/// ```text
/// off  len  field
///   0    8  magic "SNAPVOLT"
///   8    4  format version
///  12    4  flags: bit 0 = closed cleanly (the journal holds nothing after its head);
///           bit 1 = write mode throughput (requests of a chunk or more skip the journal);
///           the other bits 0
///  16    8  generation: +1 on every write; selects the copy (generation % 2)
///  24    8  volume size in bytes
///  32    4  chunk size in bytes
///  36    4  reserved (0)
///  40    8  target size cap in bytes (0 = unlimited)
///  48    8  data_start
///  56    8  meta_head: byte offset of the newest metadata block (0 = none)
///  64    8  meta_head_seq: its sequence number
///  72    8  last_snapshot_seq: highest snapshot sequence number ever committed
///  80   16  volume id
///  96    8  creation time, seconds since the Unix epoch
/// 104    8  journal head: ring position of the first live journal record
/// 112    8  journal head seq: that record's sequence number
/// 120    8  meta_head_copy: byte offset of the ditto copy of the newest metadata block
/// 128    8  rollback_to: sequence number of the snapshot the live volume is being rolled
///           back to (0 = none); an open finishes the rollback
/// 136 3956  zero
/// 4092   4  CRC-32C of bytes 0..4092
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Bumped on every superblock write.
    pub generation: u64,
    /// Volume size in bytes.
    pub volume_size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Target size cap; 0 = unlimited.
    pub target_cap: u64,
    /// First byte of the data area.
    pub data_start: u64,
    /// Byte offset of the newest metadata block; 0 = none.
    pub meta_head: u64,
    /// Byte offset of that block's ditto copy; 0 = none.
    pub meta_head_copy: u64,
    /// Sequence number of that block.
    pub meta_head_seq: u64,
    /// Highest snapshot sequence number ever committed.
    pub last_snapshot_seq: u64,
    /// Random identity of the volume, repeated in every metadata block.
    pub volume_id: [u8; 16],
    /// Creation time (Unix seconds).
    pub created: u64,
    /// Ring position of the first live cache-journal record.
    pub journal_head: u64,
    /// Sequence number the record there must carry.
    pub journal_head_seq: u64,
    /// The volume was closed cleanly: the journal holds nothing after its head, so replay
    /// need not look past a break for records of later appends (`journal::scan`).
    pub clean: bool,
    /// A rollback of the live volume to this snapshot is under way (0 = none): it was
    /// recorded before the rollback's first write and is cleared after its last one is
    /// durable. An open for writing finishes it; an open for reading reads the live volume
    /// as this snapshot, which is what it is about to become.
    pub rollback_to: u64,
    /// How write requests are made durable (`create --write-mode`).
    pub write_mode: WriteMode,
}

/// Superblock flag: closed cleanly.
const SB_CLEAN: u32 = 1;
/// Superblock flag: write mode throughput.
const SB_THROUGHPUT: u32 = 2;

/// The first byte of `b[range]` that is not zero: reserved bytes are written as zero and
/// checked on read, so a later format can give them a meaning that this build refuses rather
/// than ignores.
pub(crate) fn nonzero(b: &[u8], range: std::ops::Range<usize>) -> Option<usize> {
    let start = range.start;
    b[range].iter().position(|&x| x != 0).map(|i| start + i)
}

/// What a decoder says of a reserved byte that is not zero.
pub(crate) fn reserved_not_zero(at: usize) -> String {
    format!("reserved byte {at} is not zero (written by a later format?)")
}

impl Superblock {
    /// Encodes into a sealed block.
    pub fn encode(&self) -> [u8; BLOCK_SIZE] {
        let mut b = [0u8; BLOCK_SIZE];
        b[0..8].copy_from_slice(SB_MAGIC);
        put_u32(&mut b, 8, FORMAT_VERSION);
        let mut flags = if self.clean { SB_CLEAN } else { 0 };
        if self.write_mode == WriteMode::Throughput {
            flags |= SB_THROUGHPUT;
        }
        put_u32(&mut b, 12, flags);
        put_u64(&mut b, 16, self.generation);
        put_u64(&mut b, 24, self.volume_size);
        put_u32(&mut b, 32, self.chunk_size);
        put_u64(&mut b, 40, self.target_cap);
        put_u64(&mut b, 48, self.data_start);
        put_u64(&mut b, 56, self.meta_head);
        put_u64(&mut b, 64, self.meta_head_seq);
        put_u64(&mut b, 72, self.last_snapshot_seq);
        b[80..96].copy_from_slice(&self.volume_id);
        put_u64(&mut b, 96, self.created);
        put_u64(&mut b, 104, self.journal_head);
        put_u64(&mut b, 112, self.journal_head_seq);
        put_u64(&mut b, 120, self.meta_head_copy);
        put_u64(&mut b, 128, self.rollback_to);
        seal(&mut b);
        b
    }

    /// Decodes and validates one copy read from `offset`.
    pub fn decode(b: &[u8; BLOCK_SIZE], offset: u64) -> Result<Self> {
        let loc = || format!("superblock copy at {offset:#x}");
        if &b[0..8] != SB_MAGIC {
            return Err(Error::corrupt(
                loc(),
                "bad magic (not a snapvol target VLUN?)",
            ));
        }
        if !crc_ok(b) {
            return Err(Error::corrupt(loc(), "checksum mismatch"));
        }
        let version = get_u32(b, 8);
        if version == 1 {
            return Err(Error::corrupt(
                loc(),
                "format 1, written by snapvol before 0.2, which this build does not read: \
                 export its volumes with that build and import them into a new volume \
                 (docs/format.md, \"Version log\")",
            ));
        }
        if version != FORMAT_VERSION {
            return Err(Error::corrupt(
                loc(),
                format!(
                    "format version {version} is not supported (this build reads {FORMAT_VERSION})"
                ),
            ));
        }
        let sb = Superblock {
            generation: get_u64(b, 16),
            volume_size: get_u64(b, 24),
            chunk_size: get_u32(b, 32),
            target_cap: get_u64(b, 40),
            data_start: get_u64(b, 48),
            meta_head: get_u64(b, 56),
            meta_head_copy: get_u64(b, 120),
            meta_head_seq: get_u64(b, 64),
            last_snapshot_seq: get_u64(b, 72),
            volume_id: b[80..96].try_into().expect("16 bytes"),
            created: get_u64(b, 96),
            journal_head: get_u64(b, 104),
            journal_head_seq: get_u64(b, 112),
            clean: get_u32(b, 12) & SB_CLEAN != 0,
            rollback_to: get_u64(b, 128),
            write_mode: if get_u32(b, 12) & SB_THROUGHPUT != 0 {
                WriteMode::Throughput
            } else {
                WriteMode::Atomic
            },
        };
        if get_u32(b, 12) & !(SB_CLEAN | SB_THROUGHPUT) != 0 {
            return Err(Error::corrupt(loc(), "unknown flags set"));
        }
        if let Some(at) = nonzero(b, 36..40).or_else(|| nonzero(b, 136..BLOCK_SIZE - 4)) {
            return Err(Error::corrupt(loc(), reserved_not_zero(at)));
        }
        if superblock_offset(sb.generation) != offset {
            return Err(Error::corrupt(
                loc(),
                format!("generation {} belongs in the other copy", sb.generation),
            ));
        }
        if crate::units::Geometry::new(sb.volume_size, sb.chunk_size).is_err()
            || sb.data_start != data_start(sb.chunk_size)
        {
            return Err(Error::corrupt(loc(), "impossible geometry"));
        }
        if sb.rollback_to > sb.last_snapshot_seq {
            return Err(Error::corrupt(
                loc(),
                format!(
                    "a rollback to snapshot sequence number {}, above the highest ever taken ({})",
                    sb.rollback_to, sb.last_snapshot_seq
                ),
            ));
        }
        for (field, value) in [
            ("generation", sb.generation),
            ("meta_head_seq", sb.meta_head_seq),
            ("last_snapshot_seq", sb.last_snapshot_seq),
            ("journal head seq", sb.journal_head_seq),
        ] {
            if value > MAX_SEQ {
                return Err(Error::corrupt(
                    loc(),
                    format!("{field} {value} is beyond any a volume reaches (at most {MAX_SEQ})"),
                ));
            }
        }
        Ok(sb)
    }
}

/// One record of the metadata log.
///
/// The pointer logs and bitmaps of all snapshots are kept as one shared log of `Preserve`
/// records: a record is an entry in the pointer log of *every* snapshot whose sequence number
/// lies in `lo..=hi`, and sets bit `c` of each of their bitmaps (claims 1, 13). Writing it once
/// is what keeps the cost of a preservation independent of the number of snapshots sharing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A snapshot was taken.
    SnapshotCreate {
        /// Its sequence number.
        seq: SnapshotSeq,
        /// Creation time in milliseconds since the Unix epoch.
        created_ms: u64,
        /// Its name (1..=128 bytes of `[A-Za-z0-9._-]`).
        name: String,
    },
    /// A snapshot was deleted.
    SnapshotDelete {
        /// Its sequence number.
        seq: SnapshotSeq,
    },
    /// Chunks `chunk .. chunk + n` were preserved in slots `slot .. slot + n`, for the
    /// snapshots with sequence numbers `lo..=hi`, where `n` is the number of checksums: the
    /// CRC-32C of each copy, verified on every read of it.
    Preserve {
        /// First chunk.
        chunk: ChunkIndex,
        /// First slot.
        slot: TargetSlot,
        /// Oldest snapshot sequence number sharing the copies.
        lo: SnapshotSeq,
        /// Newest snapshot sequence number sharing the copies.
        hi: SnapshotSeq,
        /// CRC-32C of each copy, in chunk order (1..=[`MAX_PRESERVE_RUN`] of them).
        crcs: Vec<u32>,
    },
}

const TAG_CREATE: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_PRESERVE: u8 = 3;

/// Largest encoded `SnapshotCreate` (a 128-byte name).
pub const MAX_CREATE_LEN: usize = 1 + 8 + 8 + 1 + 128;
/// Encoded length of a `Preserve` record before its checksums.
const PRESERVE_FIXED: usize = 1 + 8 + 4 + 8 + 8 + 8;
/// Most copies one `Preserve` record covers: as many checksums as fill a metadata block.
pub const MAX_PRESERVE_RUN: usize = (META_PAYLOAD - PRESERVE_FIXED) / 4;
/// Smallest encoded record: a `SnapshotDelete`.
const MIN_RECORD_LEN: usize = 1 + 8;

/// A snapshot sequence number as a record may hold it: 1..=[`MAX_SEQ`].
fn snapshot_seq(seq: u64) -> std::result::Result<SnapshotSeq, &'static str> {
    match seq {
        0 => Err("snapshot sequence number 0"),
        1..=MAX_SEQ => Ok(SnapshotSeq(seq)),
        _ => Err("snapshot sequence number beyond any a volume reaches"),
    }
}

impl Record {
    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Record::SnapshotCreate { name, .. } => 1 + 8 + 8 + 1 + name.len(),
            Record::SnapshotDelete { .. } => 1 + 8,
            Record::Preserve { crcs, .. } => PRESERVE_FIXED + 4 * crcs.len(),
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Record::SnapshotCreate {
                seq,
                created_ms,
                name,
            } => {
                out.push(TAG_CREATE);
                out.extend_from_slice(&seq.0.to_le_bytes());
                out.extend_from_slice(&created_ms.to_le_bytes());
                out.push(name.len() as u8);
                out.extend_from_slice(name.as_bytes());
            }
            Record::SnapshotDelete { seq } => {
                out.push(TAG_DELETE);
                out.extend_from_slice(&seq.0.to_le_bytes());
            }
            Record::Preserve {
                chunk,
                slot,
                lo,
                hi,
                crcs,
            } => {
                out.push(TAG_PRESERVE);
                out.extend_from_slice(&chunk.0.to_le_bytes());
                out.extend_from_slice(&(crcs.len() as u32).to_le_bytes());
                out.extend_from_slice(&slot.0.to_le_bytes());
                out.extend_from_slice(&lo.0.to_le_bytes());
                out.extend_from_slice(&hi.0.to_le_bytes());
                for crc in crcs {
                    out.extend_from_slice(&crc.to_le_bytes());
                }
            }
        }
    }

    /// Decodes one record from the front of `b`; returns it and its length.
    fn decode(b: &[u8]) -> std::result::Result<(Record, usize), &'static str> {
        let need = |n: usize| {
            if b.len() < n {
                Err("truncated record")
            } else {
                Ok(())
            }
        };
        need(1)?;
        match b[0] {
            TAG_CREATE => {
                need(18)?;
                let name_len = b[17] as usize;
                need(18 + name_len)?;
                let name = std::str::from_utf8(&b[18..18 + name_len])
                    .map_err(|_| "snapshot name is not UTF-8")?;
                if crate::names::validate_name(name).is_err() {
                    return Err("invalid snapshot name");
                }
                Ok((
                    Record::SnapshotCreate {
                        seq: snapshot_seq(get_u64(b, 1))?,
                        created_ms: get_u64(b, 9),
                        name: name.to_owned(),
                    },
                    18 + name_len,
                ))
            }
            TAG_DELETE => {
                need(9)?;
                let seq = get_u64(b, 1);
                if seq > MAX_SEQ {
                    return Err("deletes a snapshot sequence number beyond any a volume reaches");
                }
                Ok((
                    Record::SnapshotDelete {
                        seq: SnapshotSeq(seq),
                    },
                    9,
                ))
            }
            TAG_PRESERVE => {
                need(PRESERVE_FIXED)?;
                let count = get_u32(b, 9) as usize;
                if count == 0 || count > MAX_PRESERVE_RUN {
                    return Err("preserve record of no copies, or more than a block holds");
                }
                let len = PRESERVE_FIXED + 4 * count;
                need(len)?;
                let (lo, hi) = (get_u64(b, 21), get_u64(b, 29));
                if lo == 0 || lo > hi {
                    return Err("empty preserve record");
                }
                if hi > MAX_SEQ {
                    return Err(
                        "shared up to a snapshot sequence number beyond any a volume reaches",
                    );
                }
                let crcs = (0..count)
                    .map(|i| get_u32(b, PRESERVE_FIXED + 4 * i))
                    .collect();
                Ok((
                    Record::Preserve {
                        chunk: ChunkIndex(get_u64(b, 1)),
                        slot: TargetSlot(get_u64(b, 13)),
                        lo: SnapshotSeq(lo),
                        hi: SnapshotSeq(hi),
                        crcs,
                    },
                    len,
                ))
            }
            _ => Err("unknown record tag"),
        }
    }
}

/// A metadata block: a sealed 4 KiB page of records in the metadata log. Every block is
/// written twice, byte for byte, in two different slots of the target (ditto copies): a
/// reader that finds one copy damaged reads the other, and the damaged one is rewritten.
///
/// ```text
/// off  len  field
///   0    8  magic "SVMETA\0\x02"
///   8    8  seq: metadata block sequence number, +1 per block over the volume's life
///  16    8  prev: byte offset of the previous block of the chain (0 = first block)
///  24    8  prev_copy: byte offset of that block's ditto copy (0 = first block)
///  32    8  first 8 bytes of the volume id
///  40    2  record count
///  42    2  payload length in bytes
///  44 4048  payload: records, back to back
/// 4092   4  CRC-32C of bytes 0..4092
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaBlock {
    /// Sequence number.
    pub seq: u64,
    /// Byte offset of the previous block; 0 for the first block of a chain.
    pub prev: u64,
    /// Byte offset of the previous block's ditto copy; 0 for the first block of a chain.
    pub prev_copy: u64,
    /// The records.
    pub records: Vec<Record>,
}

/// Where a metadata block's payload starts.
const META_HEADER: usize = 44;
/// Bytes of record payload one metadata block can hold.
pub const META_PAYLOAD: usize = CRC_OFFSET - META_HEADER;

impl MetaBlock {
    /// Packs `records` into as few blocks as they need, in order. Block *i* gets sequence
    /// number `first_seq + i`; `prev` links are filled in by the writer that places them.
    pub fn pack(records: &[Record], first_seq: u64) -> Vec<MetaBlock> {
        let mut blocks = Vec::new();
        let mut cur = Vec::new();
        let mut used = 0;
        for r in records {
            if used + r.encoded_len() > META_PAYLOAD {
                blocks.push(std::mem::take(&mut cur));
                used = 0;
            }
            used += r.encoded_len();
            cur.push(r.clone());
        }
        if !cur.is_empty() || blocks.is_empty() {
            blocks.push(cur);
        }
        blocks
            .into_iter()
            .enumerate()
            .map(|(i, records)| MetaBlock {
                seq: first_seq + i as u64,
                prev: 0,
                prev_copy: 0,
                records,
            })
            .collect()
    }

    /// Encodes into a sealed block.
    pub fn encode(&self, volume_id: &[u8; 16]) -> [u8; BLOCK_SIZE] {
        let mut b = [0u8; BLOCK_SIZE];
        b[0..8].copy_from_slice(MB_MAGIC);
        put_u64(&mut b, 8, self.seq);
        put_u64(&mut b, 16, self.prev);
        put_u64(&mut b, 24, self.prev_copy);
        b[32..40].copy_from_slice(&volume_id[..8]);
        let mut payload = Vec::with_capacity(META_PAYLOAD);
        for r in &self.records {
            r.encode_into(&mut payload);
        }
        assert!(
            payload.len() <= META_PAYLOAD,
            "records overflow a metadata block"
        );
        put_u16(&mut b, 40, self.records.len() as u16);
        put_u16(&mut b, 42, payload.len() as u16);
        b[META_HEADER..META_HEADER + payload.len()].copy_from_slice(&payload);
        seal(&mut b);
        b
    }

    /// Decodes and validates a block read from `offset`.
    pub fn decode(b: &[u8; BLOCK_SIZE], offset: u64, volume_id: &[u8; 16]) -> Result<Self> {
        let loc = || format!("metadata block at {offset:#x}");
        if &b[0..8] != MB_MAGIC {
            return Err(Error::corrupt(loc(), "bad magic"));
        }
        if !crc_ok(b) {
            return Err(Error::corrupt(loc(), "checksum mismatch"));
        }
        if b[32..40] != volume_id[..8] {
            return Err(Error::corrupt(loc(), "block belongs to another volume"));
        }
        let count = get_u16(b, 40) as usize;
        let len = get_u16(b, 42) as usize;
        if len > META_PAYLOAD {
            return Err(Error::corrupt(loc(), "payload length out of range"));
        }
        // Checked before `with_capacity` reserves room for that many records.
        if count > len / MIN_RECORD_LEN {
            return Err(Error::corrupt(
                loc(),
                format!("record count {count} does not fit {len} bytes of payload"),
            ));
        }
        if let Some(at) = nonzero(b, META_HEADER + len..BLOCK_SIZE - 4) {
            return Err(Error::corrupt(loc(), reserved_not_zero(at)));
        }
        let mut payload = &b[META_HEADER..META_HEADER + len];
        let mut records = Vec::with_capacity(count);
        while !payload.is_empty() {
            let (r, n) = Record::decode(payload)
                .map_err(|e| Error::corrupt(loc(), format!("record {}: {e}", records.len())))?;
            records.push(r);
            payload = &payload[n..];
        }
        if records.len() != count {
            return Err(Error::corrupt(loc(), "record count mismatch"));
        }
        Ok(MetaBlock {
            seq: get_u64(b, 8),
            prev: get_u64(b, 16),
            prev_copy: get_u64(b, 24),
            records,
        })
    }
}

/// Parses any bytes as a superblock or a metadata block; for the fuzzer. Never panics.
pub fn fuzz_decode(data: &[u8]) {
    let mut b = [0u8; BLOCK_SIZE];
    let n = data.len().min(BLOCK_SIZE);
    b[..n].copy_from_slice(&data[..n]);
    let _ = Superblock::decode(&b, 0);
    let _ = MetaBlock::decode(&b, 0x1000, &[0; 16]);
    // Also run the record decoder on unsealed input so the fuzzer reaches it.
    let mut payload = data;
    while let Ok((_, used)) = Record::decode(payload) {
        payload = &payload[used..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            generation: 7,
            volume_size: 1 << 30,
            chunk_size: 65536,
            target_cap: 0,
            data_start: data_start(65536),
            meta_head: 0x20000,
            meta_head_copy: 0x30000,
            meta_head_seq: 3,
            last_snapshot_seq: 9,
            volume_id: [5; 16],
            created: 1_700_000_000,
            journal_head: 0x2000,
            journal_head_seq: 17,
            clean: true,
            rollback_to: 4,
            write_mode: WriteMode::Throughput,
        }
    }

    #[test]
    fn superblock_round_trips_and_lives_in_the_copy_its_generation_selects() {
        let s = sb();
        let b = s.encode();
        assert_eq!(Superblock::decode(&b, superblock_offset(7)).unwrap(), s);
        assert!(Superblock::decode(&b, superblock_offset(8)).is_err());
    }

    #[test]
    fn every_flipped_byte_of_a_superblock_is_detected() {
        let b = sb().encode();
        for i in 0..BLOCK_SIZE {
            let mut c = b;
            c[i] ^= 0x40;
            assert!(
                Superblock::decode(&c, 4096).is_err(),
                "flip at byte {i} not detected"
            );
        }
    }

    /// Reserved bytes are written as zero and checked on read: a validly sealed block with one
    /// set is refused, not read with the byte ignored.
    #[test]
    fn a_sealed_block_with_a_reserved_byte_set_is_refused() {
        let refused = |e: Error| matches!(&e, Error::Corrupt { detail, .. } if detail.contains("reserved byte"));
        let good = sb().encode();
        for at in [36, 39, 136, 2048, BLOCK_SIZE - 5] {
            let mut b = good;
            b[at] = 1;
            seal(&mut b);
            let e = Superblock::decode(&b, superblock_offset(7)).unwrap_err();
            assert!(refused(e), "superblock byte {at}");
        }
        let id = [3; 16];
        let blk = MetaBlock::pack(
            &[Record::SnapshotDelete {
                seq: SnapshotSeq(4),
            }],
            1,
        )
        .remove(0);
        let good = blk.encode(&id);
        MetaBlock::decode(&good, 0, &id).expect("the block as written");
        let len = blk.records[0].encoded_len();
        for at in [META_HEADER + len, 3000, BLOCK_SIZE - 5] {
            let mut b = good;
            b[at] = 1;
            seal(&mut b);
            let e = MetaBlock::decode(&b, 0, &id).unwrap_err();
            assert!(refused(e), "metadata block byte {at}");
        }
    }

    #[test]
    fn worst_case_records_fit_a_block() {
        let r = Record::SnapshotCreate {
            seq: SnapshotSeq(u64::MAX),
            created_ms: u64::MAX,
            name: "n".repeat(128),
        };
        assert_eq!(r.encoded_len(), MAX_CREATE_LEN);
        const { assert!(META_PAYLOAD >= 16 * MAX_CREATE_LEN) };
        let run = Record::Preserve {
            chunk: ChunkIndex(u64::MAX),
            slot: TargetSlot(u64::MAX),
            lo: SnapshotSeq(1),
            hi: SnapshotSeq(MAX_SEQ),
            crcs: vec![u32::MAX; MAX_PRESERVE_RUN],
        };
        assert!(run.encoded_len() <= META_PAYLOAD);
        let blocks = MetaBlock::pack(std::slice::from_ref(&run), 1);
        assert_eq!(blocks.len(), 1);
        let b = blocks[0].encode(&[1; 16]);
        assert_eq!(MetaBlock::decode(&b, 0, &[1; 16]).unwrap().records, [run]);
    }

    #[test]
    fn metadata_blocks_round_trip_and_split_when_full() {
        let mut records = Vec::new();
        for i in 0..300u64 {
            records.push(Record::Preserve {
                chunk: ChunkIndex(i * 3),
                slot: TargetSlot(i),
                lo: SnapshotSeq(1),
                hi: SnapshotSeq(4),
                crcs: vec![i as u32, !(i as u32)],
            });
            if i % 50 == 0 {
                records.push(Record::SnapshotCreate {
                    seq: SnapshotSeq(i + 1),
                    created_ms: i,
                    name: format!("s{i}"),
                });
                records.push(Record::SnapshotDelete {
                    seq: SnapshotSeq(i),
                });
            }
        }
        let blocks = MetaBlock::pack(&records, 10);
        assert!(blocks.len() > 1);
        let id = [9u8; 16];
        let mut back = Vec::new();
        for (i, mut blk) in blocks.into_iter().enumerate() {
            blk.prev = i as u64 * 4096;
            let enc = blk.encode(&id);
            let dec = MetaBlock::decode(&enc, 0, &id).unwrap();
            assert_eq!(dec, blk);
            back.extend(dec.records);
        }
        assert_eq!(back, records);
    }

    #[test]
    fn every_flipped_byte_of_a_metadata_block_is_detected() {
        let id = [1u8; 16];
        let blk = MetaBlock::pack(
            &[Record::SnapshotCreate {
                seq: SnapshotSeq(1),
                created_ms: 5,
                name: "monday".into(),
            }],
            1,
        )
        .remove(0);
        let b = blk.encode(&id);
        for i in 0..BLOCK_SIZE {
            let mut c = b;
            c[i] ^= 0x01;
            assert!(
                MetaBlock::decode(&c, 0, &id).is_err(),
                "flip at byte {i} not detected"
            );
        }
    }

    /// What broke (issue 9, defect 5): decode reserved room for as many records as the block's
    /// count field said (up to 65535, about 3 MiB) before it had decoded one.
    #[test]
    fn a_record_count_the_payload_cannot_hold_is_refused_before_room_is_reserved() {
        let id = [1u8; 16];
        let blk = MetaBlock::pack(
            &[Record::SnapshotDelete {
                seq: SnapshotSeq(3),
            }],
            1,
        )
        .remove(0);
        let mut b = blk.encode(&id);
        put_u16(&mut b, 40, u16::MAX);
        seal(&mut b);
        let e = MetaBlock::decode(&b, 0x2000, &id).unwrap_err();
        assert!(e.to_string().contains("record count 65535"), "{e}");
    }

    #[test]
    fn superblock_counters_above_max_seq_are_refused() {
        for (field, set) in [
            (
                "generation",
                (|s, v| s.generation = v) as fn(&mut Superblock, u64),
            ),
            ("meta_head_seq", |s, v| s.meta_head_seq = v),
            ("last_snapshot_seq", |s, v| s.last_snapshot_seq = v),
            ("journal head seq", |s, v| s.journal_head_seq = v),
        ] {
            let mut s = sb();
            // An odd generation keeps the copy at 0x1000.
            set(&mut s, MAX_SEQ);
            s.generation |= 1;
            let off = superblock_offset(s.generation);
            assert!(Superblock::decode(&s.encode(), off).is_ok(), "{field}");
            set(&mut s, MAX_SEQ + 2);
            s.generation |= 1;
            let e = Superblock::decode(&s.encode(), off).unwrap_err();
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn decoders_survive_garbage() {
        for seed in 0..200u32 {
            let data: Vec<u8> = (0..600u32)
                .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 7919) >> 13) as u8)
                .collect();
            fuzz_decode(&data);
        }
    }
}
