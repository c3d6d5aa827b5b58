//! The cache journal's part of a check: its header (this volume's, a ring the device holds)
//! and its records from the superblock's head, replayed as open would without applying
//! anything. Reads only; a salvage is the store's decision (`Store::check_with`).

use crate::error::{Device, Error, Result};
use crate::format::{self, Superblock};
use crate::journal::{self, JournalHead, JournalHeader, RING_OFFSET, SECTOR};
use crate::units::Geometry;
use crate::vlun::Vlun;

use super::{sb_loc, Problem, Problems};
use crate::chain::read_block;

pub(super) const JOURNAL_HEADER_LOC: &str = "journal header at 0x0";

/// The journal header; returns the ring length when it is usable for replay.
pub(super) fn check_journal_header(
    journal: &dyn Vlun,
    sb: Option<&Superblock>,
    p: &mut Problems,
) -> Result<Option<u64>> {
    let b = read_block(journal, Device::Journal, "read", 0)?;
    let header = match JournalHeader::decode(&b) {
        Ok(h) => h,
        Err(e) => {
            p.add_corrupt(e, false)?;
            return Ok(None);
        }
    };
    let Some(sb) = sb else { return Ok(None) };
    if header.volume_id != sb.volume_id {
        p.add(
            JOURNAL_HEADER_LOC,
            "the journal belongs to another volume (its volume id differs from the superblock's)",
            false,
        );
        return Ok(None);
    }
    let len = journal
        .len()
        .map_err(|e| Error::io("size", Device::Journal, 0, e))?;
    let need = RING_OFFSET.saturating_add(header.ring_len);
    if len < need {
        p.add(
            JOURNAL_HEADER_LOC,
            format!(
                "the ring needs {need:#x} bytes of journal device; it holds {len:#x} (truncated?)"
            ),
            false,
        );
        // Open refuses such a ring, and its records are not worth reading: the header's length
        // is all that bounds them.
        return Ok(None);
    }
    Ok(Some(header.ring_len))
}

/// Replays the journal from the superblock's head as open would, without applying anything;
/// returns the number of records. A damaged record that intact records of later appends
/// follow is a problem (acknowledged writes; `--repair` salvages the rest), each lost record
/// with its location and what it held; a damaged last append is a warning.
pub(super) fn check_journal_records(
    journal: &dyn Vlun,
    sb: &Superblock,
    geo: &Geometry,
    ring_len: u64,
    in_use: bool,
    p: &mut Problems,
    warnings: &mut Vec<Problem>,
) -> Result<u64> {
    let cur_off = format::superblock_offset(sb.generation);
    if sb.journal_head >= ring_len || sb.journal_head % SECTOR != 0 {
        p.add(
            sb_loc(cur_off),
            format!(
                "journal head {:#x} lies outside the ring ({ring_len:#x} bytes, records at multiples of {SECTOR})",
                sb.journal_head
            ),
            false,
        );
        return Ok(0);
    }
    let head = JournalHead {
        pos: sb.journal_head,
        seq: sb.journal_head_seq,
    };
    let scan = match journal::scan(
        journal,
        &sb.volume_id,
        ring_len,
        head,
        sb.clean,
        // An open volume's journal ends where appends have got to.
        if in_use {
            journal::Mode::Live
        } else {
            journal::Mode::Salvage
        },
    ) {
        Ok(scan) => scan,
        Err(e) => {
            // A sealed record that says something impossible: open refuses it, check reports it.
            p.add_corrupt(e, false)?;
            return Ok(0);
        }
    };
    if let Some(d) = &scan.damage {
        for lost in &d.lost {
            let location = match lost.pos {
                Some(pos) => format!("journal record at {:#x}", RING_OFFSET + pos),
                None => format!("journal record {}", lost.seq),
            };
            let held = describe_held(lost.held);
            if d.later_appends_follow {
                p.add(
                    location,
                    format!(
                        "record {} is damaged and intact records of later appends follow it, so \
                         it was acknowledged: {held} is lost (open refuses the volume; --repair \
                         replays every intact record)",
                        lost.seq
                    ),
                    true,
                );
            } else {
                warnings.push(Problem {
                    location,
                    detail: format!(
                        "record {} ends the journal damaged: an append cut short by a crash, or \
                         damage after it was flushed (no byte tells which); open drops {held}",
                        lost.seq
                    ),
                    repairable: false,
                });
            }
        }
    }
    for (pos, r) in &scan.records {
        let journal::Request::Write { offset, len, .. } = r.request else {
            continue;
        };
        if geo.check_range(offset, len).is_err() {
            p.add(
                format!("journal record at {:#x}", RING_OFFSET + pos),
                format!(
                    "record {} writes {len:#x} bytes at {offset:#x}, beyond the end of the volume ({:#x} bytes)",
                    r.seq, geo.size
                ),
                false,
            );
        }
    }
    Ok(scan.records.len() as u64)
}

/// What a lost journal record held, in words.
pub fn describe_held(held: Option<journal::Held>) -> String {
    match held {
        Some(journal::Held::Write { offset, len }) => {
            format!("its write of {len:#x} bytes at {offset:#x}")
        }
        Some(journal::Held::Zero { offset, len }) => {
            format!("its zeroing of {len:#x} bytes at {offset:#x}")
        }
        Some(journal::Held::Snapshot { seq }) => format!("its creation of snapshot {seq}"),
        Some(journal::Held::Wrap) => "nothing (a wrap record)".to_owned(),
        None => "a request its damaged header no longer names".to_owned(),
    }
}
