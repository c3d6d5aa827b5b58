//! The metadata log's part of a check: the chain (both copies of every block), its records,
//! the bitmaps and logs they describe and the allocator, through the walker open uses
//! ([`crate::chain`]) with every problem collected; with `--data`, every live preserved copy
//! read back against its checksum. Reads only; repairs are `check_with`'s.

use crate::chain::{self, Findings};
use crate::error::{Device, Error, Result};
use crate::format::{Superblock, BLOCK_SIZE};

use super::{CheckSummary, Problems};

/// A damaged copy of a metadata block whose ditto copy is whole: what a repair writes there.
pub(super) struct DittoFix {
    pub(super) at: u64,
    pub(super) bytes: Box<[u8; BLOCK_SIZE]>,
}

/// Check reads both copies of every block and goes on after each problem.
impl Findings for Problems {
    fn thorough(&self) -> bool {
        true
    }

    fn problem(&mut self, e: Error) -> Result<()> {
        self.add_corrupt(e, false)
    }
}

/// The metadata chain, its records, the bitmaps/logs they describe and the allocator; with
/// `data`, every live preserved copy against its checksum. Damaged block copies whose ditto
/// copy is whole go to `fixes`.
pub(super) fn check_metadata(
    target: &dyn crate::vlun::Vlun,
    sb: &Superblock,
    data: bool,
    p: &mut Problems,
    summary: &mut CheckSummary,
    fixes: &mut Vec<DittoFix>,
) -> Result<()> {
    let walked = chain::walk_chain(target, sb, p)?;
    for d in walked.damaged.iter() {
        if let Error::Corrupt { location, detail } = &d.damage {
            p.add(
                location.clone(),
                format!(
                    "{detail}; its ditto copy at {:#x} is whole (--repair rewrites it)",
                    d.twin
                ),
                true,
            );
        }
    }
    fixes.extend(walked.damaged.iter().map(|d| DittoFix {
        at: d.at,
        bytes: d.bytes.clone(),
    }));
    summary.metadata_blocks = walked.blocks.len() as u64;

    let replay = chain::replay(&walked, sb, chain::target_len(target)?, p)?;
    summary.metadata_records = replay.records;
    if !walked.complete {
        // The older records are missing: the snapshot table, the bitmaps and the allocator
        // cannot be derived, and checking them would only report the gap again.
        return Ok(());
    }
    summary.snapshots = replay.table.len();
    summary.preserved_chunks = replay.index.len() as u64;
    let used = chain::verify_copies(&replay, &walked.slots(sb), sb, p)?;

    if data {
        // Every live copy read back, in slot order, and checked against its checksum.
        let chunk = u64::from(sb.chunk_size);
        let mut copies = Vec::with_capacity(replay.index.len());
        replay.index.for_each(|c, e| copies.push((c, *e)));
        copies.sort_by_key(|(_, e)| e.slot.0);
        let mut buf = vec![0u8; chunk as usize];
        for (c, e) in copies {
            let off = sb.data_start + e.slot.0 * chunk;
            target
                .read_at(&mut buf, off)
                .map_err(|err| Error::io("read preserved chunk", Device::Target, off, err))?;
            summary.data_chunks_verified += 1;
            if crc32c::crc32c(&buf) != e.crc {
                let readers = replay.readers(e.lo, e.hi);
                let one = readers.len() == 1;
                p.add(
                    format!(
                        "preserved copy of chunk {} in slot {} at {off:#x}",
                        c.0, e.slot.0
                    ),
                    format!(
                        "checksum mismatch: the copy is damaged; snapshot{} {} read{} it there \
                         (reads of it fail with EIO)",
                        if one { "" } else { "s" },
                        readers.join(", "),
                        if one { "s" } else { "" },
                    ),
                    false,
                );
            }
        }
    }
    let high_water = used.last().map_or(0, |s| s + 1);
    summary.high_water_slots = high_water;
    summary.free_slots_below_high_water = high_water - used.len() as u64;
    Ok(())
}
