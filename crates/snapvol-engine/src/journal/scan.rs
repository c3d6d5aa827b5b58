//! Reading the ring from the head: what replay applies, and where the journal ends.

use std::sync::Arc;

use super::record::{
    decode_header, header_crc_ok, record_size, KIND_SNAPSHOT, KIND_WRAP, KIND_WRITE,
};
use super::{jerr, JournalHead, JournalRecord, Request, RECORD_HEADER, RING_OFFSET};
use crate::error::{Error, Result};
use crate::format::MAX_SEQ;
use crate::vlun::Vlun;

/// What replay finds in the ring from a head.
#[derive(Debug)]
pub struct Scan {
    /// The live records with their ring positions, oldest first.
    pub records: Vec<(u64, JournalRecord)>,
    /// Where replay stopped: the position and sequence number the next record would have.
    pub end: JournalHead,
    /// Ring bytes the live records (and wrap records) take.
    pub used: u64,
}

/// Reads every live record from `head` — each with the right magic, volume id, the next
/// sequence number, a matching checksum, and inside the ring — stopping at the first that is
/// not (a torn or never-written tail, or a stale record of an earlier life). A sealed record
/// that says something impossible (an epoch above [`MAX_SEQ`], the last sequence number there
/// is) is corruption, reported with its location. Never panics.
pub fn scan(
    dev: &dyn Vlun,
    volume_id: &[u8; 16],
    ring_len: u64,
    head: JournalHead,
) -> Result<Scan> {
    if RING_OFFSET.checked_add(ring_len).is_none() {
        return Err(Error::corrupt(
            "journal header at 0x0",
            format!("a ring of {ring_len:#x} bytes does not fit a device"),
        ));
    }
    let record_loc = |pos: u64| format!("journal record at {:#x}", RING_OFFSET + pos);
    // The sequence number the record after `seq` (at `pos`) would carry.
    let after = |seq: u64, pos: u64| {
        seq.checked_add(1).ok_or_else(|| {
            Error::corrupt(
                record_loc(pos),
                format!("sequence number {seq} leaves none for the record after it"),
            )
        })
    };
    let mut records = Vec::new();
    let mut pos = head.pos;
    let mut seq = head.seq;
    let mut used = 0u64;
    let mut hdr = [0u8; RECORD_HEADER];
    while used < ring_len && pos < ring_len {
        dev.read_at(&mut hdr, RING_OFFSET + pos)
            .map_err(|e| jerr("read journal", RING_OFFSET + pos, e))?;
        let Some(h) = decode_header(&hdr, volume_id) else {
            break;
        };
        if h.seq != seq {
            break;
        }
        if h.kind == KIND_WRAP {
            if !header_crc_ok(&hdr, &[], h.crc) {
                break;
            }
            seq = after(seq, pos)?;
            used += ring_len - pos;
            pos = 0;
            continue;
        }
        let size = record_size(u64::from(h.data_len));
        if pos.checked_add(size).is_none_or(|end| end > ring_len) {
            break;
        }
        let mut data = vec![0u8; h.data_len as usize];
        dev.read_at(&mut data, RING_OFFSET + pos + RECORD_HEADER as u64)
            .map_err(|e| jerr("read journal", RING_OFFSET + pos, e))?;
        if !header_crc_ok(&hdr, &data, h.crc) {
            break;
        }
        if h.epoch > MAX_SEQ {
            // Sealed, so not a torn write; the engine counts on from the largest epoch it
            // replays (the next snapshot is that + 1), so it must not take this one.
            let what = if h.kind == KIND_SNAPSHOT {
                "snapshot sequence number"
            } else {
                "epoch"
            };
            return Err(Error::corrupt(
                record_loc(pos),
                format!(
                    "{what} {} of record {} is beyond any a volume reaches (at most {MAX_SEQ})",
                    h.epoch, h.seq
                ),
            ));
        }
        let request = match h.kind {
            KIND_SNAPSHOT => match String::from_utf8(data) {
                Ok(name) => Request::Snapshot {
                    seq: h.epoch,
                    created_ms: h.offset,
                    name,
                },
                // Sealed by its checksum yet not a name: not something this engine wrote.
                Err(_) => break,
            },
            kind => Request::Write {
                epoch: h.epoch,
                offset: h.offset,
                len: h.len,
                data: (kind == KIND_WRITE).then(|| Arc::from(data)),
            },
        };
        records.push((
            pos,
            JournalRecord {
                seq: h.seq,
                request,
            },
        ));
        seq = after(seq, pos)?;
        used += size;
        pos = (pos + size) % ring_len;
    }
    Ok(Scan {
        records,
        end: JournalHead { pos, seq },
        used,
    })
}
