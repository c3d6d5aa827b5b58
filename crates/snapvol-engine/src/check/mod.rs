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
//! Repair ([`check_with`] with `repair`): a bad superblock copy is rewritten from the good one,
//! with the next generation (the copy a generation lives in is fixed by its parity, so the same
//! generation cannot go in the other slot); a damaged copy of a metadata block is rewritten from
//! its whole ditto copy. Bitmaps, logs and the allocator are derived from the metadata log on
//! open, so there is nothing derived to rebuild. A journal with damaged records that later
//! appends follow is salvaged by opening the volume (`Store::check_with`): this module reads
//! devices and never opens a volume, so nothing above it is imported here.

mod journal;
mod metadata;

use serde::{Deserialize, Serialize};

use crate::chain::{self, superblock_location as sb_loc};
use crate::error::{Device, Error, Result};
use crate::format::{self, Superblock};
use crate::units::Geometry;
use crate::vlun::Vlun;

use journal::{check_journal_header, check_journal_records};
use metadata::{check_metadata, DittoFix};

pub use journal::describe_held;

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

    /// The report of the pass after a repair: what was repaired, and every problem that is
    /// left as not repaired.
    pub(crate) fn after_repair(mut self, repaired: Vec<String>) -> Self {
        self.repaired = repaired;
        self.not_repaired = self
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.location, p.detail))
            .collect();
        self
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
            .write_at(&fix.bytes[..], fix.at)
            .and_then(|()| target.sync())
            .map_err(|e| Error::io("rewrite metadata", Device::Target, fix.at, e))?;
        repaired.push(format!(
            "metadata block at {:#x}: rewritten from its ditto copy",
            fix.at
        ));
    }
    let report = if repaired.is_empty() {
        first.report
    } else {
        scan(source, target, journal, opts)?.report
    };
    Ok(report.after_repair(repaired))
}

/// What one pass finds, and the superblock rewrite that would fix a bad copy.
struct Scan {
    report: CheckReport,
    superblock_fix: Option<SuperblockFix>,
    /// Damaged metadata block copies with a whole ditto copy.
    ditto_fixes: Vec<DittoFix>,
}

impl Scan {
    /// A pass that could not go on past the superblock.
    fn cut_short(p: Problems, summary: CheckSummary, fix: Option<SuperblockFix>) -> Self {
        Scan {
            report: CheckReport {
                problems: p.0,
                summary,
                ..Default::default()
            },
            superblock_fix: fix,
            ditto_fixes: Vec::new(),
        }
    }
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
        return Ok(Scan::cut_short(p, summary, superblock_fix));
    };
    let cur_off = format::superblock_offset(sb.generation);
    summary.superblock_generation = sb.generation;
    summary.current_superblock = Some(cur_off);
    // `decode` accepted the geometry, so this cannot fail; be safe anyway.
    let geo = match Geometry::new(sb.volume_size, sb.chunk_size) {
        Ok(g) => g,
        Err(e) => {
            p.add(sb_loc(cur_off), e.to_string(), false);
            return Ok(Scan::cut_short(p, summary, superblock_fix));
        }
    };

    check_source(source, &geo, &mut p)?;
    let mut ditto_fixes = Vec::new();
    check_metadata(
        target,
        &sb,
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
    let copies = chain::read_superblocks(target)?;
    let current = chain::current_superblock(&copies).cloned();
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

#[cfg(test)]
mod tests {
    use super::journal::JOURNAL_HEADER_LOC;
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
