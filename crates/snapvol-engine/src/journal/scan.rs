//! Reading the ring from the head: what replay applies, where the journal ends, and damage.
//!
//! Replay follows the chain of records from the head: each must carry the next sequence
//! number, the volume's id and a matching checksum. Where the chain breaks, the journal either
//! ends — an append cut short by a crash, or simply nothing more written — or a record was
//! damaged after it was written. The two are told apart by what lies after the break:
//!
//! - an **intact record of a later append** (one whose append's first record comes after the
//!   break) proves that the broken record's append was synced — an append starts only after
//!   the one before it returned from its sync — so the records there were acknowledged:
//!   **corruption**. Replay refuses it ([`Damage::later_appends_follow`]); salvage applies every
//!   intact record and names the lost ones;
//! - otherwise the break is the end of the journal. If the record there still has the
//!   expected sequence number but fails its checksum, it is the last append, torn by a crash
//!   or damaged after a FLUSH: no byte in the ring can tell which, so it is dropped and
//!   reported ([`Damage`] with `later_appends_follow == false`).
//!
//! Looking for later appends reads the rest of the ring (once, after a crash): a volume
//! closed cleanly has nothing after its head, and its superblock says so, so its open reads
//! nothing more.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;

use super::record::{
    decode_header, header_crc_ok, record_size, Header, KIND_SNAPSHOT, KIND_WRAP, KIND_WRITE,
    KIND_ZERO,
};
use super::{jerr, JournalHead, JournalRecord, Request, RECORD_HEADER, RING_OFFSET, SECTOR};
use crate::error::{Error, Result};
use crate::format::MAX_SEQ;
use crate::vlun::Vlun;

/// What to do past damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Stop at the first break (what open does; it refuses damage that later appends follow).
    Replay,
    /// Go on past damaged records with the intact records of later appends (what a salvage
    /// does).
    Salvage,
    /// The journal of an open volume, appended to while it is read (`Volume::check`): read up
    /// to where appends have got to and stop at the first break, without searching the rest of
    /// the ring. A record being written there looks torn, and records appended while the ring
    /// is searched would look like later appends around damage.
    Live,
}

/// What replay finds in the ring from a head.
#[derive(Debug)]
pub struct Scan {
    /// The live records with their ring positions, oldest first.
    pub records: Vec<(u64, JournalRecord)>,
    /// Where replay stopped: the position and sequence number the next record would have.
    pub end: JournalHead,
    /// Ring bytes the live records (and wrap records) take.
    pub used: u64,
    /// Damaged records, if any.
    pub damage: Option<Damage>,
}

/// Damaged records found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Ring position of the first damaged record and the sequence number it should carry.
    pub at: JournalHead,
    /// Whether intact records of later appends follow the damage: then it is corruption of
    /// records that were acknowledged. Otherwise it is the journal's last append.
    pub later_appends_follow: bool,
    /// The records lost, oldest first: with [`Mode::Salvage`] every record the intact ones
    /// skipped; otherwise the damaged record the chain broke at.
    pub lost: Vec<LostRecord>,
}

/// A record replay cannot apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRecord {
    /// Its sequence number.
    pub seq: u64,
    /// Its ring position, when known.
    pub pos: Option<u64>,
    /// What its header says it held, when the header can still be read.
    pub held: Option<Held>,
}

/// What a lost record held, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// A write of `len` bytes at `offset`.
    Write {
        /// Volume byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Zeroing (write-zeroes, trim) of `len` bytes at `offset`.
    Zero {
        /// Volume byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The creation of snapshot `seq`.
    Snapshot {
        /// Its sequence number.
        seq: u64,
    },
    /// A wrap record (no data).
    Wrap,
}

impl Held {
    fn of(h: &Header) -> Self {
        match h.kind {
            KIND_WRITE => Held::Write {
                offset: h.offset,
                len: h.len,
            },
            KIND_ZERO => Held::Zero {
                offset: h.offset,
                len: h.len,
            },
            KIND_SNAPSHOT => Held::Snapshot { seq: h.epoch },
            _ => Held::Wrap,
        }
    }
}

/// One step of the chain.
enum Step {
    /// An intact record, its size in the ring.
    Record(JournalRecord, u64),
    /// An intact wrap record: the chain goes on at ring position 0.
    Wrap,
    /// No intact record with the expected sequence number here.
    Break(Broken),
}

/// What lies where the chain broke.
#[derive(Debug, Clone, Copy)]
enum Broken {
    /// Nothing that is the expected record: a stale record of an earlier lap of the ring, or
    /// bytes never written.
    Nothing,
    /// The expected record, damaged: its header still reads (and says what it held), or is
    /// itself damaged but still this volume's and not from an earlier lap.
    Damaged(Option<Header>),
}

struct Ring<'a> {
    dev: &'a dyn Vlun,
    volume_id: &'a [u8; 16],
    ring_len: u64,
    /// The part of the ring read last: records are scanned in order, so reading ahead turns
    /// two device reads per record into one per [`READ_AHEAD`] bytes (on a network device,
    /// each read is a round trip).
    window: RefCell<Window>,
}

/// Bytes of the ring read ahead by a scan.
const READ_AHEAD: u64 = 4 << 20;

#[derive(Default)]
struct Window {
    /// Ring position of `bytes[0]`.
    start: u64,
    bytes: Vec<u8>,
}

fn record_loc(pos: u64) -> String {
    format!("journal record at {:#x}", RING_OFFSET + pos)
}

impl Ring<'_> {
    /// Reads `buf.len()` bytes of the ring at `pos`, through the read-ahead window.
    fn read(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        let mut w = self.window.borrow_mut();
        let held = pos >= w.start && pos + len <= w.start + w.bytes.len() as u64;
        if !held {
            if len >= READ_AHEAD {
                return self.dev.read_at(buf, RING_OFFSET + pos);
            }
            let ahead = READ_AHEAD.min(self.ring_len.saturating_sub(pos)).max(len);
            w.bytes.resize(ahead as usize, 0);
            if let Err(e) = self.dev.read_at(&mut w.bytes, RING_OFFSET + pos) {
                w.bytes.clear();
                return Err(e);
            }
            w.start = pos;
        }
        let at = (pos - w.start) as usize;
        buf.copy_from_slice(&w.bytes[at..at + buf.len()]);
        Ok(())
    }

    /// Reads the record at `pos`, which should carry sequence number `seq`.
    fn step(&self, pos: u64, seq: u64) -> Result<Step> {
        let mut hdr = [0u8; RECORD_HEADER];
        self.read(&mut hdr, pos)
            .map_err(|e| jerr("read journal", RING_OFFSET + pos, e))?;
        let h = match decode_header(&hdr, self.volume_id) {
            Some(h) if h.seq == seq => h,
            _ => {
                // This volume's record magic and id, and a sequence number not from an earlier
                // lap (those are below the expected one): the expected record, its header
                // damaged. Anything else is the end of the written ring.
                let mine =
                    hdr[0..4] == *super::record::RECORD_MAGIC && hdr[48..56] == self.volume_id[..8];
                let seq_at = u64::from_le_bytes(hdr[8..16].try_into().expect("8 bytes"));
                return Ok(Step::Break(if mine && seq_at >= seq {
                    Broken::Damaged(None)
                } else {
                    Broken::Nothing
                }));
            }
        };
        let damaged = Step::Break(Broken::Damaged(Some(h)));
        if h.kind == KIND_WRAP {
            return Ok(if header_crc_ok(&hdr, &[], h.crc) {
                Step::Wrap
            } else {
                damaged
            });
        }
        let size = record_size(u64::from(h.data_len));
        if pos.checked_add(size).is_none_or(|end| end > self.ring_len) {
            return Ok(damaged);
        }
        let mut data = vec![0u8; h.data_len as usize];
        self.read(&mut data, pos + RECORD_HEADER as u64)
            .map_err(|e| jerr("read journal", RING_OFFSET + pos, e))?;
        if !header_crc_ok(&hdr, &data, h.crc) {
            return Ok(damaged);
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
                Err(_) => return Ok(damaged),
            },
            kind => Request::Write {
                epoch: h.epoch,
                offset: h.offset,
                len: h.len,
                data: (kind == KIND_WRITE).then(|| Arc::from(data)),
            },
        };
        Ok(Step::Record(
            JournalRecord {
                seq: h.seq,
                request,
            },
            size,
        ))
    }

    /// Every record header in the ring, outside `[from_head, to)` of the chain already read
    /// (so from `to` round to `from_head`), whose sequence number lies in `(after, after +
    /// the records the ring can hold]`, with its position and whether it is intact. Reads the
    /// rest of the ring once, a MiB at a time.
    fn sweep(&self, to: u64, from_head: u64, after: u64) -> Result<Vec<(u64, Header, bool)>> {
        let most = after.saturating_add(self.ring_len / SECTOR);
        let mut found = Vec::new();
        let mut pos = to;
        let mut buf = vec![0u8; 1 << 20];
        let mut covered = 0;
        let region = (from_head + self.ring_len - to) % self.ring_len;
        let region = if region == 0 { self.ring_len } else { region };
        while covered < region {
            let n = (buf.len() as u64)
                .min(self.ring_len - pos)
                .min(region - covered);
            let piece = &mut buf[..n as usize];
            self.dev
                .read_at(piece, RING_OFFSET + pos)
                .map_err(|e| jerr("read journal", RING_OFFSET + pos, e))?;
            let mut straddling = [0u8; RECORD_HEADER];
            for at in (0..n as usize).step_by(SECTOR as usize) {
                let bytes = match piece.get(at..at + RECORD_HEADER) {
                    Some(b) => b,
                    None => {
                        // A header across the end of this read: read it whole.
                        let off = RING_OFFSET + pos + at as u64;
                        self.dev
                            .read_at(&mut straddling, off)
                            .map_err(|e| jerr("read journal", off, e))?;
                        &straddling[..]
                    }
                };
                let Some(h) = decode_header(bytes, self.volume_id) else {
                    continue;
                };
                if h.seq <= after || h.seq > most {
                    continue;
                }
                let p = pos + at as u64;
                let intact = matches!(self.step(p, h.seq)?, Step::Record(..) | Step::Wrap);
                found.push((p, h, intact));
            }
            covered += n;
            pos = (pos + n) % self.ring_len;
        }
        found.sort_by_key(|(_, h, _)| h.seq);
        Ok(found)
    }
}

/// Reads every live record from `head` (see the module documentation for where the journal
/// ends and what counts as damage). `closed_cleanly` says the superblock found the journal
/// empty at the last close, so nothing after the head needs looking for. A sealed record
/// that says something impossible (an epoch above [`MAX_SEQ`], the last sequence number there
/// is) is corruption, reported with its location. Never panics.
pub fn scan(
    dev: &dyn Vlun,
    volume_id: &[u8; 16],
    ring_len: u64,
    head: JournalHead,
    closed_cleanly: bool,
    mode: Mode,
) -> Result<Scan> {
    if RING_OFFSET.checked_add(ring_len).is_none() {
        return Err(Error::corrupt(
            "journal header at 0x0",
            format!("a ring of {ring_len:#x} bytes does not fit a device"),
        ));
    }
    // The sequence number the record after `seq` (at `pos`) would carry.
    let after = |seq: u64, pos: u64| {
        seq.checked_add(1).ok_or_else(|| {
            Error::corrupt(
                record_loc(pos),
                format!("sequence number {seq} leaves none for the record after it"),
            )
        })
    };
    let ring = Ring {
        dev,
        volume_id,
        ring_len,
        window: RefCell::default(),
    };
    let mut records = Vec::new();
    let mut damage: Option<Damage> = None;
    let mut pos = head.pos;
    let mut seq = head.seq;
    let mut used = 0u64;
    while used < ring_len && pos < ring_len {
        let broken = match ring.step(pos, seq)? {
            Step::Record(r, size) => {
                records.push((pos, r));
                seq = after(seq, pos)?;
                used += size;
                pos = (pos + size) % ring_len;
                continue;
            }
            Step::Wrap => {
                seq = after(seq, pos)?;
                used += ring_len - pos;
                pos = 0;
                continue;
            }
            Step::Break(h) => h,
        };
        if mode == Mode::Live {
            break;
        }
        if closed_cleanly && records.is_empty() && damage.is_none() {
            break;
        }
        // The chain broke: look for intact records after the break.
        let found = ring.sweep(pos, head.pos, seq.saturating_sub(1))?;
        let later = found
            .iter()
            .find(|(_, h, intact)| *intact && h.append_first() > seq);
        let first_lost = LostRecord {
            seq,
            pos: Some(pos),
            held: match broken {
                Broken::Damaged(Some(h)) => Some(Held::of(&h)),
                _ => None,
            },
        };
        let Some(&(resume_pos, resume, _)) = later else {
            // Nothing later was synced: this is the end of the journal. A record that still
            // says it is the one expected is the last append, torn or damaged: report it.
            if matches!(broken, Broken::Damaged(_)) && damage.is_none() {
                damage = Some(Damage {
                    at: JournalHead { pos, seq },
                    later_appends_follow: false,
                    lost: vec![first_lost],
                });
            }
            break;
        };
        let d = damage.get_or_insert_with(|| Damage {
            at: JournalHead { pos, seq },
            later_appends_follow: true,
            lost: Vec::new(),
        });
        d.later_appends_follow = true;
        if mode == Mode::Replay {
            d.lost.push(first_lost);
            break;
        }
        // Salvage: every record between the break and the later append that is intact was
        // acknowledged with its append; apply it; the others are lost.
        let between: Vec<_> = found
            .iter()
            .filter(|(_, h, _)| h.seq < resume.seq)
            .collect();
        for s in seq..resume.seq {
            match between.iter().find(|(_, h, _)| h.seq == s) {
                Some(&&(p, _, true)) => {
                    if let Step::Record(r, _) = ring.step(p, s)? {
                        records.push((p, r));
                    }
                }
                Some(&&(p, h, false)) => d.lost.push(LostRecord {
                    seq: s,
                    pos: Some(p),
                    held: Some(Held::of(&h)),
                }),
                None if s == seq => d.lost.push(first_lost.clone()),
                None => d.lost.push(LostRecord {
                    seq: s,
                    pos: None,
                    held: None,
                }),
            }
        }
        // The space from the break to the later append is the lost records'.
        used += (resume_pos + ring_len - pos) % ring_len;
        pos = resume_pos;
        seq = resume.seq;
    }
    Ok(Scan {
        records,
        end: JournalHead { pos, seq },
        used,
        damage,
    })
}
