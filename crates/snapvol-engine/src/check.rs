//! `check`: verifies a volume's devices against `docs/format.md` without opening the volume,
//! and repairs what the format lets it derive.
//!
//! What is verified, each failure reported as one [`Problem`] with its location (a structure
//! and a byte offset in hex), never as a panic, whatever the bytes:
//!
//! - both superblock copies (magic, checksum, version, "generation matches its position",
//!   geometry), which one is current (the valid copy with the higher generation, as open picks
//!   it), and that the two agree on geometry and volume id;
//! - the metadata chain from the current copy's `meta_head`: each block's magic, checksum,
//!   volume id, strictly consecutive sequence numbers, and pointers that are block positions
//!   in the data area;
//! - every record: snapshot sequence numbers increasing, no duplicate live name, a delete names
//!   a live snapshot, a preserve record lies inside the volume and the target;
//! - the per-snapshot bitmaps and logs: for every chunk the live copies cover disjoint snapshot
//!   ranges (no snapshot has two pointers for one chunk);
//! - the derived allocator: no slot referenced by two live copies, no live copy in a slot of
//!   the metadata chain;
//! - the cache journal: a valid header of this volume whose ring the device holds, a head
//!   inside the ring, and records from the head that lie inside the volume, with epochs and
//!   sequence numbers a volume reaches (a torn tail is the journal's normal end).
//!
//! Repair: a bad superblock copy is rewritten from the good one, with the next generation (the
//! copy a generation lives in is fixed by its parity, so the same generation cannot go in the
//! other slot). Everything else the format holds once: bitmaps, logs and the allocator are
//! derived from the metadata log on open, so there is nothing derived to rebuild, and a damaged
//! log block or journal header cannot be reconstructed.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::error::{Device, Error, Result};
use crate::format::{self, MetaBlock, Record, Superblock, BLOCK_SIZE};
use crate::journal::{self, JournalHead, JournalHeader, RING_OFFSET, SECTOR};
use crate::paths::VolumePaths;
use crate::units::Geometry;
use crate::vlun::{FileVlun, Vlun};

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Where: a structure and its byte offset in hex, e.g. `superblock copy at 0x1000` or
    /// `metadata block at 0x20000 record 3`.
    pub location: String,
    /// What is wrong.
    pub detail: String,
    /// Whether `check --repair` can fix it.
    pub repairable: bool,
}

/// Figures about what was checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSummary {
    /// Live snapshots.
    pub snapshots: usize,
    /// Preserved chunk copies some live snapshot reads.
    pub preserved_chunks: u64,
    /// Blocks in the metadata chain.
    pub metadata_blocks: u64,
    /// Records in the metadata chain.
    pub metadata_records: u64,
    /// Records in the cache journal waiting to be replayed.
    pub journal_records: u64,
    /// Generation of the current superblock copy (0 if neither copy is valid).
    pub superblock_generation: u64,
    /// Byte offset of the current superblock copy; `None` if neither copy is valid.
    pub current_superblock: Option<u64>,
    /// One past the highest target slot in use (data or metadata).
    pub high_water_slots: u64,
    /// Free slots below the high-water mark (holes the allocator reuses): information, not a
    /// problem.
    pub free_slots_below_high_water: u64,
    /// Preserved copies read back and checked against their checksums (`--data`).
    #[serde(default)]
    pub data_chunks_verified: u64,
}

/// The outcome of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Everything found wrong (after repair, if one was asked for: what is still wrong).
    pub problems: Vec<Problem>,
    /// What a repair did.
    pub repaired: Vec<String>,
    /// With repair: the problems it could not fix, as `location: detail`.
    pub not_repaired: Vec<String>,
    /// Things worth knowing that are not problems: a damaged last journal append, which
    /// cannot be told from one a crash cut short (open drops it).
    #[serde(default)]
    pub warnings: Vec<Problem>,
    /// Figures.
    pub summary: CheckSummary,
}

impl CheckReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What a check does besides reading the metadata and the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// Repair what has a good copy (and, on files, salvage a damaged journal).
    pub repair: bool,
    /// Also read every preserved copy and verify its checksum: reads all of the snapshot
    /// store's data, so it takes as long as reading the target.
    pub data: bool,
    /// The volume is open and its journal being appended to (`Volume::check`): the journal
    /// is read up to its current end, and not searched past it for damage, since appends that
    /// land during the check would look like records of later appends.
    pub journal_in_use: bool,
}

/// Checks a volume's devices without changing them (unless `repair`). Never panics on any
/// bytes; an error means a device could not be read (or, with `repair`, written).
pub fn check(
    source: &dyn Vlun,
    target: &dyn Vlun,
    journal: &dyn Vlun,
    repair: bool,
) -> Result<CheckReport> {
    check_with(
        source,
        target,
        journal,
        CheckOptions {
            repair,
            ..CheckOptions::default()
        },
    )
}

/// [`check`] with every option.
pub fn check_with(
    source: &dyn Vlun,
    target: &dyn Vlun,
    journal: &dyn Vlun,
    opts: CheckOptions,
) -> Result<CheckReport> {
    let repair = opts.repair;
    let first = scan(source, target, journal, opts)?;
    if !repair {
        return Ok(first.report);
    }
    let mut repaired = Vec::new();
    if let Some(fix) = &first.superblock_fix {
        let good_off = format::superblock_offset(fix.good.generation);
        let mut sb = fix.good.clone();
        // The next generation lives in the other slot; past u64::MAX, the previous one does.
        sb.generation = match fix.good.generation.checked_add(1) {
            Some(g) => g,
            None => fix.good.generation - 1,
        };
        let off = format::superblock_offset(sb.generation);
        target
            .write_at(&sb.encode(), off)
            .map_err(|e| Error::io("write superblock", Device::Target, off, e))?;
        target
            .sync()
            .map_err(|e| Error::io("sync", Device::Target, off, e))?;
        repaired.push(format!(
            "superblock copy at {off:#x}: rewritten from the copy at {good_off:#x} \
             (generation {}) as generation {}",
            fix.good.generation, sb.generation
        ));
    }
    for fix in &first.ditto_fixes {
        target
            .write_at(&fix.bytes, fix.at)
            .and_then(|()| target.sync())
            .map_err(|e| Error::io("rewrite metadata", Device::Target, fix.at, e))?;
        repaired.push(format!(
            "metadata block at {:#x}: rewritten from its ditto copy",
            fix.at
        ));
    }
    let mut report = if repaired.is_empty() {
        first.report
    } else {
        scan(source, target, journal, opts)?.report
    };
    report.repaired = repaired;
    report.not_repaired = report
        .problems
        .iter()
        .map(|p| format!("{}: {}", p.location, p.detail))
        .collect();
    Ok(report)
}

/// Checks the volume whose devices are at `paths`: opened read-only, unless `repair`. A
/// repair rewrites a damaged superblock copy from the good one (the target opened for
/// writing), then, if the cache journal holds damaged records that later appends follow,
/// salvages it: the volume is opened replaying every intact record and closed (so the
/// journal is empty and everything consistent), and each lost record is listed in
/// `repaired` with what it held.
pub fn check_paths(name: &str, paths: &VolumePaths, opts: CheckOptions) -> Result<CheckReport> {
    // Opened read-only, so a check cannot change a byte even by mistake.
    let ro = |p: &std::path::Path| FileVlun::open_read_only(p).map_err(|e| Error::file(p, e));
    let source = ro(&paths.source)?;
    let journal = ro(&paths.journal)?;
    if !opts.repair {
        let target = ro(&paths.target)?;
        return check_with(&source, &target, &journal, opts);
    }
    let target = FileVlun::open(&paths.target).map_err(|e| Error::file(&paths.target, e))?;
    let mut report = check_with(&source, &target, &journal, opts)?;
    let salvageable = report
        .problems
        .iter()
        .any(|p| p.repairable && p.location.starts_with("journal record"));
    if !salvageable {
        return Ok(report);
    }
    drop((source, target, journal));
    let options = crate::VolumeOptions {
        background_destage: false,
        ..Default::default()
    };
    let (volume, lost) = crate::Volume::open_salvaging_on(name, paths.open()?, options)?;
    volume.close()?;
    let mut repaired = std::mem::take(&mut report.repaired);
    repaired.push(format!(
        "cache journal: replayed every intact record; {} damaged record{} lost",
        lost.len(),
        if lost.len() == 1 { "" } else { "s" }
    ));
    for l in &lost {
        let at = l
            .pos
            .map_or(String::new(), |pos| format!(" at {:#x}", RING_OFFSET + pos));
        repaired.push(format!(
            "lost journal record {}{at}: {}",
            l.seq,
            describe_held(l.held)
        ));
    }
    let (source, target, journal) = (ro(&paths.source)?, ro(&paths.target)?, ro(&paths.journal)?);
    let mut after = check_with(
        &source,
        &target,
        &journal,
        CheckOptions {
            repair: false,
            ..opts
        },
    )?;
    after.repaired = repaired;
    after.not_repaired = after
        .problems
        .iter()
        .map(|p| format!("{}: {}", p.location, p.detail))
        .collect();
    Ok(after)
}

/// What one pass finds, and the superblock rewrite that would fix a bad copy.
struct Scan {
    report: CheckReport,
    superblock_fix: Option<SuperblockFix>,
    /// Damaged metadata block copies with a whole ditto copy.
    ditto_fixes: Vec<DittoFix>,
}

/// Rewrite the other slot from `good`.
struct SuperblockFix {
    good: Superblock,
}

/// Collects problems.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, location: impl Into<String>, detail: impl Into<String>, repairable: bool) {
        self.0.push(Problem {
            location: location.into(),
            detail: detail.into(),
            repairable,
        });
    }

    /// Adds a decoder's `Corrupt` error as a problem; any other error is returned.
    fn add_corrupt(&mut self, e: Error, repairable: bool) -> Result<()> {
        match e {
            Error::Corrupt { location, detail } => {
                // "record N: ..." in a block's detail belongs to the location.
                match split_record(&detail) {
                    Some((n, rest)) => {
                        self.add(format!("{location} record {n}"), rest, repairable);
                    }
                    None => self.add(location, detail, repairable),
                }
                Ok(())
            }
            e => Err(e),
        }
    }
}

/// Splits `"record 3: invalid snapshot name"` into `(3, "invalid snapshot name")`.
fn split_record(detail: &str) -> Option<(usize, &str)> {
    let rest = detail.strip_prefix("record ")?;
    let (n, rest) = rest.split_once(": ")?;
    Some((n.parse().ok()?, rest))
}

fn sb_loc(off: u64) -> String {
    format!("superblock copy at {off:#x}")
}

fn block_loc(off: u64) -> String {
    format!("metadata block at {off:#x}")
}

fn record_loc(off: u64, i: usize) -> String {
    format!("metadata block at {off:#x} record {i}")
}

fn read_block(dev: &dyn Vlun, device: Device, off: u64) -> Result<[u8; BLOCK_SIZE]> {
    let mut b = [0u8; BLOCK_SIZE];
    dev.read_at(&mut b, off)
        .map_err(|e| Error::io("read", device, off, e))?;
    Ok(b)
}

fn target_len(target: &dyn Vlun) -> Result<u64> {
    target
        .len()
        .map_err(|e| Error::io("size", Device::Target, 0, e))
}

/// One pass over the devices.
fn scan(
    source: &dyn Vlun,
    target: &dyn Vlun,
    journal: &dyn Vlun,
    opts: CheckOptions,
) -> Result<Scan> {
    let mut p = Problems::default();
    let mut summary = CheckSummary::default();

    let (current, superblock_fix) = check_superblocks(target, &mut p)?;
    let Some(sb) = current else {
        // Without a valid superblock nothing else can be located; the journal header can
        // still be looked at.
        check_journal_header(journal, None, &mut p)?;
        return Ok(Scan {
            report: CheckReport {
                problems: p.0,
                summary,
                ..Default::default()
            },
            superblock_fix,
            ditto_fixes: Vec::new(),
        });
    };
    let cur_off = format::superblock_offset(sb.generation);
    summary.superblock_generation = sb.generation;
    summary.current_superblock = Some(cur_off);
    // `decode` accepted the geometry, so this cannot fail; be safe anyway.
    let geo = match Geometry::new(sb.volume_size, sb.chunk_size) {
        Ok(g) => g,
        Err(e) => {
            p.add(sb_loc(cur_off), e.to_string(), false);
            return Ok(Scan {
                report: CheckReport {
                    problems: p.0,
                    summary,
                    ..Default::default()
                },
                superblock_fix,
                ditto_fixes: Vec::new(),
            });
        }
    };

    check_source(source, &geo, &mut p)?;
    let mut ditto_fixes = Vec::new();
    check_metadata(
        target,
        &sb,
        &geo,
        opts.data,
        &mut p,
        &mut summary,
        &mut ditto_fixes,
    )?;
    let mut warnings = Vec::new();
    if let Some(ring_len) = check_journal_header(journal, Some(&sb), &mut p)? {
        summary.journal_records = check_journal_records(
            journal,
            &sb,
            &geo,
            ring_len,
            opts.journal_in_use,
            &mut p,
            &mut warnings,
        )?;
    }
    Ok(Scan {
        report: CheckReport {
            problems: p.0,
            summary,
            warnings,
            ..Default::default()
        },
        superblock_fix,
        ditto_fixes,
    })
}

/// Both superblock copies. Returns the current one (as open picks it) and, when exactly one
/// copy is bad and the other is good, the fix.
fn check_superblocks(
    target: &dyn Vlun,
    p: &mut Problems,
) -> Result<(Option<Superblock>, Option<SuperblockFix>)> {
    let mut copies: Vec<(u64, std::result::Result<Superblock, Error>)> = Vec::new();
    for g in 0..2u64 {
        let off = format::superblock_offset(g);
        let b = read_block(target, Device::Target, off)?;
        copies.push((off, Superblock::decode(&b, off)));
    }
    let current = copies
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .max_by_key(|sb| sb.generation)
        .cloned();
    let mut bad_copy = false;
    for (off, r) in copies {
        match r {
            Err(e) => {
                bad_copy = true;
                p.add_corrupt(e, current.is_some())?;
            }
            Ok(sb) => {
                let Some(cur) = &current else { continue };
                if sb.generation == cur.generation {
                    continue;
                }
                let cur_off = format::superblock_offset(cur.generation);
                let mut differ = Vec::new();
                if sb.volume_id != cur.volume_id {
                    differ.push("volume id".to_owned());
                }
                let fields = [
                    ("volume size", sb.volume_size, cur.volume_size),
                    (
                        "chunk size",
                        u64::from(sb.chunk_size),
                        u64::from(cur.chunk_size),
                    ),
                    ("target size cap", sb.target_cap, cur.target_cap),
                    ("data start", sb.data_start, cur.data_start),
                    ("creation time", sb.created, cur.created),
                ];
                for (name, a, b) in fields {
                    if a != b {
                        differ.push(format!("{name} {a} (current copy: {b})"));
                    }
                }
                if !differ.is_empty() {
                    bad_copy = true;
                    p.add(
                        sb_loc(off),
                        format!(
                            "disagrees with the current copy at {cur_off:#x} (generation {}): {}",
                            cur.generation,
                            differ.join(", ")
                        ),
                        true,
                    );
                }
            }
        }
    }
    let fix = match (&current, bad_copy) {
        (Some(good), true) => Some(SuperblockFix { good: good.clone() }),
        _ => None,
    };
    Ok((current, fix))
}

fn check_source(source: &dyn Vlun, geo: &Geometry, p: &mut Problems) -> Result<()> {
    let len = source
        .len()
        .map_err(|e| Error::io("size", Device::Source, 0, e))?;
    // A growing file reads as zero past its end, as open accepts; a fixed device must hold it.
    if len < geo.size && !source.growable() {
        p.add(
            "source VLUN",
            format!(
                "holds {len:#x} bytes, less than the volume size {:#x}",
                geo.size
            ),
            false,
        );
    }
    Ok(())
}

/// Whether `off` is a metadata block position inside the target.
fn block_position_problem(off: u64, sb: &Superblock, target_len: u64) -> Option<String> {
    if off < sb.data_start || (off - sb.data_start) % BLOCK_SIZE as u64 != 0 {
        return Some(format!(
            "{off:#x} is not a metadata block position (4 KiB aligned at or after the data \
             area at {:#x})",
            sb.data_start
        ));
    }
    match off.checked_add(BLOCK_SIZE as u64) {
        Some(end) if end <= target_len => None,
        _ => Some(format!(
            "{off:#x} lies beyond the end of the target VLUN ({target_len:#x} bytes)"
        )),
    }
}

/// One preserved copy of one chunk, as a record put it.
#[derive(Clone, Copy)]
struct Preserved {
    chunk: u64,
    lo: u64,
    hi: u64,
    slot: u64,
    crc: u32,
    /// Index into the record locations.
    rec: usize,
}

/// A damaged copy of a metadata block whose ditto copy is whole: what a repair writes there.
struct DittoFix {
    at: u64,
    bytes: [u8; BLOCK_SIZE],
}

/// The metadata chain (both copies of every block), its records, the bitmaps/logs they
/// describe and the allocator; with `data`, every live preserved copy against its checksum.
/// Damaged block copies whose ditto copy is whole go to `fixes`.
fn check_metadata(
    target: &dyn Vlun,
    sb: &Superblock,
    geo: &Geometry,
    data: bool,
    p: &mut Problems,
    summary: &mut CheckSummary,
    fixes: &mut Vec<DittoFix>,
) -> Result<()> {
    let tlen = target_len(target)?;
    let cur_off = format::superblock_offset(sb.generation);
    let chunk = geo.chunk();

    // Walk the chain backwards from the head, reading both copies of every block.
    let mut chain: Vec<(u64, MetaBlock)> = Vec::new();
    let mut chain_offsets: Vec<u64> = Vec::new();
    let mut complete = true;
    let (mut off, mut copy) = (sb.meta_head, sb.meta_head_copy);
    let mut expect_seq = sb.meta_head_seq;
    let mut pointer_at = sb_loc(cur_off);
    let mut pointer_name = "meta_head";
    while off != 0 {
        let bad_position = [off, copy]
            .into_iter()
            .find_map(|o| block_position_problem(o, sb, tlen));
        if let Some(why) = bad_position {
            p.add(pointer_at, format!("{pointer_name} {why}"), false);
            complete = false;
            break;
        }
        // Each copy on its own: whole (its checksum, this volume, the expected sequence
        // number), or a problem with its location.
        let mut whole: Vec<(u64, [u8; BLOCK_SIZE], MetaBlock)> = Vec::new();
        let mut damaged: Vec<(u64, Error)> = Vec::new();
        for at in [off, copy] {
            let b = read_block(target, Device::Target, at)?;
            match MetaBlock::decode(&b, at, &sb.volume_id) {
                Ok(blk) if blk.seq == expect_seq => whole.push((at, b, blk)),
                Ok(blk) => damaged.push((
                    at,
                    Error::corrupt(
                        block_loc(at),
                        format!(
                            "sequence number {} where {expect_seq} was expected (named by the {pointer_name} of {pointer_at})",
                            blk.seq
                        ),
                    ),
                )),
                Err(e) => damaged.push((at, e)),
            }
        }
        let good = whole.first().map(|(at, b, _)| (*at, *b));
        for (at, e) in damaged {
            if let (Some((from, bytes)), Error::Corrupt { location, detail }) = (good, &e) {
                p.add(
                    location.clone(),
                    format!(
                        "{detail}; its ditto copy at {from:#x} is whole (--repair rewrites it)"
                    ),
                    true,
                );
                fixes.push(DittoFix { at, bytes });
            } else {
                p.add_corrupt(e, false)?;
            }
        }
        let Some((_, _, blk)) = whole.into_iter().next() else {
            complete = false;
            break;
        };
        chain_offsets.extend([off, copy]);
        if blk.seq == 0 {
            p.add(
                block_loc(off),
                "sequence number 0 (metadata blocks are numbered from 1)",
                false,
            );
            complete = false;
            break;
        }
        if blk.seq == 1 && blk.prev != 0 {
            p.add(
                block_loc(off),
                format!(
                    "block {} names a previous block at {:#x}; no block comes before sequence number 1",
                    blk.seq, blk.prev
                ),
                false,
            );
            complete = false;
            chain.push((off, blk));
            break;
        }
        pointer_at = block_loc(off);
        pointer_name = "prev pointer";
        let prev = (blk.prev, blk.prev_copy);
        chain.push((off, blk));
        (off, copy) = prev;
        expect_seq = expect_seq.saturating_sub(1);
    }
    chain.reverse();
    summary.metadata_blocks = chain.len() as u64;

    // Records: what each one says on its own, then the replay.
    let slot_limit = if sb.target_cap != 0 {
        sb.target_cap.min(tlen)
    } else {
        tlen
    };
    let mut locations: Vec<String> = Vec::new();
    let mut copies: Vec<Preserved> = Vec::new();
    // Live snapshots by seq: name and the record that created it.
    let mut live: std::collections::BTreeMap<u64, String> = std::collections::BTreeMap::new();
    let mut names: HashMap<String, u64> = HashMap::new();
    let mut max_seq = 0u64;
    let mut records = 0u64;
    for (off, blk) in &chain {
        for (i, r) in blk.records.iter().enumerate() {
            records += 1;
            let loc = record_loc(*off, i);
            match r {
                Record::SnapshotCreate { seq, name, .. } => {
                    if let Err(e) = crate::names::validate_name(name) {
                        p.add(&loc, e.to_string(), false);
                    }
                    if seq.0 <= max_seq {
                        p.add(
                            &loc,
                            format!(
                                "snapshot '{name}' has sequence number {}, not above the {max_seq} of an earlier snapshot",
                                seq.0
                            ),
                            false,
                        );
                    } else if let Some(other) = names.get(name) {
                        p.add(
                            &loc,
                            format!(
                                "snapshot name '{name}' (sequence number {}) is already taken by live snapshot {other}",
                                seq.0
                            ),
                            false,
                        );
                    } else {
                        live.insert(seq.0, name.clone());
                        names.insert(name.clone(), seq.0);
                    }
                    max_seq = max_seq.max(seq.0);
                }
                Record::SnapshotDelete { seq } => match live.remove(&seq.0) {
                    Some(name) => {
                        names.remove(&name);
                    }
                    None => p.add(
                        &loc,
                        format!(
                            "deletes snapshot sequence number {}, which does not exist",
                            seq.0
                        ),
                        false,
                    ),
                },
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
                        p.add(
                            &loc,
                            format!(
                                "empty preserve record (count {n}, snapshots {}..={})",
                                lo.0, hi.0
                            ),
                            false,
                        );
                        ok = false;
                    }
                    if c.0.checked_add(n).is_none_or(|end| end > geo.chunks()) {
                        p.add(
                            &loc,
                            format!(
                                "chunks {}..{} lie beyond the volume ({} chunks)",
                                c.0,
                                c.0.saturating_add(n),
                                geo.chunks()
                            ),
                            false,
                        );
                        ok = false;
                    }
                    let slot_end = slot
                        .0
                        .checked_add(n)
                        .and_then(|e| e.checked_mul(chunk))
                        .and_then(|b| b.checked_add(sb.data_start));
                    if slot_end.is_none_or(|end| end > slot_limit) {
                        let what = if sb.target_cap != 0 && slot_limit == sb.target_cap {
                            "the target size cap"
                        } else {
                            "the end of the target VLUN"
                        };
                        p.add(
                            &loc,
                            format!(
                                "slots {}..{} lie beyond {what} ({slot_limit:#x} bytes)",
                                slot.0,
                                slot.0.saturating_add(n)
                            ),
                            false,
                        );
                        ok = false;
                    }
                    if ok {
                        let rec = locations.len();
                        locations.push(loc);
                        for (k, &crc) in (0u64..).zip(crcs) {
                            copies.push(Preserved {
                                chunk: c.0 + k,
                                lo: lo.0,
                                hi: hi.0,
                                slot: slot.0 + k,
                                crc,
                                rec,
                            });
                        }
                    }
                }
            }
        }
    }
    summary.metadata_records = records;
    if !complete {
        // The older records are missing: the snapshot table, the bitmaps and the allocator
        // cannot be derived, and checking them would only report the gap again.
        return Ok(());
    }
    summary.snapshots = live.len();

    // Bitmaps and logs: the copies some live snapshot reads, per chunk, in disjoint ranges.
    let live_seqs: Vec<u64> = live.keys().copied().collect();
    let alive_in = |lo: u64, hi: u64| -> &[u64] {
        let a = live_seqs.partition_point(|&s| s < lo);
        let b = live_seqs.partition_point(|&s| s <= hi);
        &live_seqs[a..b.max(a)]
    };
    copies.retain(|c| !alive_in(c.lo, c.hi).is_empty());
    summary.preserved_chunks = copies.len() as u64;
    copies.sort_by_key(|c| (c.chunk, c.lo, c.hi));
    for w in copies.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.chunk == b.chunk && b.lo <= a.hi {
            let both = alive_in(b.lo, a.hi.min(b.hi));
            let who = if both.is_empty() {
                "no live snapshot, but the ranges must be disjoint".to_owned()
            } else {
                format!(
                    "snapshot{} {} would have two pointers (bitmap bit set twice)",
                    if both.len() == 1 { "" } else { "s" },
                    both.iter()
                        .map(|s| format!("{s} ({})", live.get(s).map_or("?", String::as_str)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            p.add(
                &locations[b.rec],
                format!(
                    "chunk {} preserved for snapshots {}..={} in slot {} overlaps its copy for {}..={} in slot {} ({}): {who}",
                    b.chunk, b.lo, b.hi, b.slot, a.lo, a.hi, a.slot, locations[a.rec]
                ),
                false,
            );
        }
    }

    // The allocator: every slot holds one live copy, or blocks of the chain, or nothing.
    let chain_slots: BTreeSet<u64> = chain_offsets
        .iter()
        .map(|off| (off - sb.data_start) / chunk)
        .collect();
    copies.sort_by_key(|c| (c.slot, c.chunk, c.lo));
    for w in copies.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.slot == b.slot {
            p.add(
                &locations[b.rec],
                format!(
                    "slot {} holds chunk {} for snapshots {}..={}, but {} puts chunk {} for snapshots {}..={} there too",
                    b.slot, b.chunk, b.lo, b.hi, locations[a.rec], a.chunk, a.lo, a.hi
                ),
                false,
            );
        }
    }
    for c in &copies {
        if chain_slots.contains(&c.slot) {
            let off = sb.data_start + c.slot * chunk;
            p.add(
                &locations[c.rec],
                format!(
                    "chunk {} for snapshots {}..={} is in slot {} (at {off:#x}), which holds blocks of the metadata chain",
                    c.chunk, c.lo, c.hi, c.slot
                ),
                false,
            );
        }
    }
    if data {
        // Every live copy read back and checked against its checksum.
        let mut buf = vec![0u8; chunk as usize];
        for c in &copies {
            let off = sb.data_start + c.slot * chunk;
            target
                .read_at(&mut buf, off)
                .map_err(|e| Error::io("read preserved chunk", Device::Target, off, e))?;
            summary.data_chunks_verified += 1;
            if crc32c::crc32c(&buf) != c.crc {
                let readers: Vec<String> = alive_in(c.lo, c.hi)
                    .iter()
                    .map(|s| live.get(s).map_or_else(|| s.to_string(), Clone::clone))
                    .collect();
                p.add(
                    format!(
                        "preserved copy of chunk {} in slot {} at {off:#x}",
                        c.chunk, c.slot
                    ),
                    format!(
                        "checksum mismatch: the copy is damaged; snapshot{} {} read{} it there \
                         (reads of it fail with EIO)",
                        if readers.len() == 1 { "" } else { "s" },
                        readers.join(", "),
                        if readers.len() == 1 { "s" } else { "" },
                    ),
                    false,
                );
            }
        }
    }
    let mut used: BTreeSet<u64> = copies.iter().map(|c| c.slot).collect();
    used.extend(chain_slots.iter().copied());
    let high_water = used.last().map_or(0, |s| s + 1);
    summary.high_water_slots = high_water;
    summary.free_slots_below_high_water = high_water - used.len() as u64;
    Ok(())
}

const JOURNAL_HEADER_LOC: &str = "journal header at 0x0";

/// The journal header; returns the ring length when it is usable for replay.
fn check_journal_header(
    journal: &dyn Vlun,
    sb: Option<&Superblock>,
    p: &mut Problems,
) -> Result<Option<u64>> {
    let b = read_block(journal, Device::Journal, 0)?;
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
fn check_journal_records(
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
        // An open volume's journal ends where appends have got to.
        sb.clean || in_use,
        journal::Mode::Salvage,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_numbers_move_from_the_detail_into_the_location() {
        assert_eq!(
            split_record("record 3: invalid snapshot name"),
            Some((3, "invalid snapshot name"))
        );
        assert_eq!(split_record("checksum mismatch"), None);
        let mut p = Problems::default();
        p.add_corrupt(
            Error::corrupt("metadata block at 0x2000", "record 12: unknown record tag"),
            false,
        )
        .expect("a corrupt error is a problem");
        assert_eq!(p.0[0].location, "metadata block at 0x2000 record 12");
        assert_eq!(p.0[0].detail, "unknown record tag");
    }

    #[test]
    fn a_blank_target_is_reported_not_panicked_on() {
        let t = crate::vlun::MemVlun::new(0);
        let s = crate::vlun::MemVlun::new(0);
        let j = crate::vlun::MemVlun::new(0);
        let r = check(&s, &t, &j, true).expect("check runs");
        assert!(!r.is_clean());
        assert!(r
            .problems
            .iter()
            .any(|p| p.location == "superblock copy at 0x0"));
        assert!(r
            .problems
            .iter()
            .any(|p| p.location == "superblock copy at 0x1000"));
        assert!(r.problems.iter().any(|p| p.location == JOURNAL_HEADER_LOC));
        assert!(r.repaired.is_empty());
        assert_eq!(r.not_repaired.len(), r.problems.len());
    }
}
