//! A journal record's header: its bytes, and nothing else (see the layout in `mod.rs`). No
//! I/O, and no decision about where a record goes in the ring.

use super::{Request, RECORD_HEADER, SECTOR};

pub(super) const RECORD_MAGIC: &[u8; 4] = b"SVJR";
pub(super) const KIND_WRITE: u8 = 1;
pub(super) const KIND_ZERO: u8 = 2;
pub(super) const KIND_WRAP: u8 = 3;
pub(super) const KIND_SNAPSHOT: u8 = 4;
/// Longest snapshot name a record holds (names are at most 128 bytes).
pub(super) const MAX_NAME: u32 = 255;

pub(super) fn record_size(data_len: u64) -> u64 {
    (RECORD_HEADER as u64 + data_len).next_multiple_of(SECTOR)
}

/// The header of record `seq` holding `r` (`None`: a wrap record), the `index`-th record of
/// its append.
pub(super) fn encode_header(
    seq: u64,
    r: Option<&Request>,
    volume_id: &[u8; 16],
    index: u32,
) -> [u8; 64] {
    let (kind, a, b, len) = match r {
        None => (KIND_WRAP, 0, 0, 0),
        Some(Request::Write {
            epoch,
            offset,
            len,
            data,
        }) => (
            if data.is_some() {
                KIND_WRITE
            } else {
                KIND_ZERO
            },
            *epoch,
            *offset,
            *len,
        ),
        Some(Request::Snapshot {
            seq, created_ms, ..
        }) => (KIND_SNAPSHOT, *seq, *created_ms, 0),
    };
    let data = r.map_or(&[][..], Request::payload);
    let mut h = [0u8; RECORD_HEADER];
    h[0..4].copy_from_slice(RECORD_MAGIC);
    h[4] = kind;
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&a.to_le_bytes());
    h[24..32].copy_from_slice(&b.to_le_bytes());
    h[32..40].copy_from_slice(&len.to_le_bytes());
    h[40..44].copy_from_slice(&(data.len() as u32).to_le_bytes());
    h[44..48].copy_from_slice(&index.to_le_bytes());
    h[48..56].copy_from_slice(&volume_id[..8]);
    let mut crc = crc32c::crc32c(&h[..56]);
    crc = crc32c::crc32c_append(crc, data);
    h[56..60].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What a header says, before its data is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub(super) kind: u8,
    pub(super) seq: u64,
    pub(super) epoch: u64,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) data_len: u32,
    /// Its place in its append (0: the append's first record).
    pub(super) index: u32,
    pub(super) crc: u32,
}

impl Header {
    /// Sequence number of the first record of this record's append.
    pub(super) fn append_first(&self) -> u64 {
        self.seq.saturating_sub(u64::from(self.index))
    }
}

/// Parses a record header; `None` if it is not one (end of the journal). Never panics.
pub fn decode_header(h: &[u8], volume_id: &[u8; 16]) -> Option<Header> {
    if h.len() < RECORD_HEADER || &h[0..4] != RECORD_MAGIC || h[48..56] != volume_id[..8] {
        return None;
    }
    // Reserved bytes are written as zero and checked on read.
    if h[5..8] != [0; 3] || h[60..64] != [0; 4] {
        return None;
    }
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    let hdr = Header {
        kind: h[4],
        seq: u64_at(8),
        epoch: u64_at(16),
        offset: u64_at(24),
        len: u64_at(32),
        data_len: u32::from_le_bytes(h[40..44].try_into().expect("4 bytes")),
        index: u32::from_le_bytes(h[44..48].try_into().expect("4 bytes")),
        crc: u32::from_le_bytes(h[56..60].try_into().expect("4 bytes")),
    };
    let ok = match hdr.kind {
        KIND_WRITE => u64::from(hdr.data_len) == hdr.len && hdr.len > 0,
        KIND_ZERO => hdr.data_len == 0 && hdr.len > 0,
        // A wrap record carries no request: its epoch, offset and length are zero.
        KIND_WRAP => hdr.data_len == 0 && hdr.epoch == 0 && hdr.offset == 0 && hdr.len == 0,
        KIND_SNAPSHOT => hdr.len == 0 && (1..=MAX_NAME).contains(&hdr.data_len),
        _ => false,
    };
    (ok && u64::from(hdr.index) <= hdr.seq).then_some(hdr)
}

pub(super) fn header_crc_ok(h: &[u8], data: &[u8], crc: u32) -> bool {
    crc32c::crc32c_append(crc32c::crc32c(&h[..56]), data) == crc
}
