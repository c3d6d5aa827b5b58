//! Destage planning: pure decisions about what a batch must preserve and write (claims 14–16,
//! 21–24). No I/O here; `volume` performs what the plan says, in the order that keeps I1/I2.

use crate::cache::{BlockMask, Version};
use crate::format::{Record, MAX_PRESERVE_RUN};
use crate::metadata::SnapshotTable;
use crate::units::{ChunkIndex, Epoch, SnapshotSeq, TargetSlot, BLOCK};

/// One preserved copy a batch must make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preservation {
    /// Which image: the source's content with the first `image` versions applied over it
    /// (0 = the source as it is).
    pub image: usize,
    /// Oldest snapshot sequence number the copy serves.
    pub lo: u64,
    /// Newest snapshot sequence number the copy serves.
    pub hi: u64,
}

/// What destaging one dirty chunk takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPlan {
    /// The chunk.
    pub chunk: ChunkIndex,
    /// Copies to preserve, oldest image first.
    pub preserve: Vec<Preservation>,
    /// Whether the source's current content of the chunk must be read (a preserved image is
    /// not entirely covered by cached versions).
    pub needs_source: bool,
}

/// Plans one chunk: "search the bitmaps" for the snapshots that need an original (claims 14,
/// 15). Image *i* (the source with versions `0..i` applied) is what snapshots taken after the
/// epoch of version *i − 1* (after the watermark, for the source image) and no later than the
/// epoch of version *i* see; it is preserved once, for all of them, if any of them is live.
pub fn plan_chunk(
    chunk: ChunkIndex,
    versions: &[Version],
    watermark: Epoch,
    table: &SnapshotTable,
    nblocks: usize,
) -> ChunkPlan {
    let mut plan = ChunkPlan {
        chunk,
        preserve: Vec::new(),
        needs_source: false,
    };
    let mut boundary = watermark;
    let mut union = BlockMask::default();
    for (i, v) in versions.iter().enumerate() {
        if v.epoch > boundary {
            if table.any_alive(boundary, v.epoch) {
                // The snapshots taken after the boundary's epoch, up to the version's.
                plan.preserve.push(Preservation {
                    image: i,
                    lo: boundary.0 + 1,
                    hi: v.epoch.0,
                });
                if !union.is_full(nblocks) {
                    plan.needs_source = true;
                }
            }
            boundary = v.epoch;
        }
        union = union.union(v.valid);
    }
    plan
}

/// Writes blocks `first..` of a chunk's image into `out`: for each block, the newest of
/// `versions` that holds it, else the source content `source` (the whole chunk). Image *i* of
/// a plan is `compose(&versions[..i], source, 0, out)`.
pub fn compose(versions: &[Version], source: Option<&[u8]>, first: usize, out: &mut [u8]) {
    fill(versions, first, out, |at, dst| match source {
        Some(s) => dst.copy_from_slice(&s[at..at + dst.len()]),
        None => unreachable!("the source is read whenever a block is in no version"),
    });
}

/// Turns `out`, which holds a whole chunk as the source has it, into the image of `versions`
/// over it: every block one of them holds is copied in, the newest. The same image as
/// [`compose`] with that source, without copying the source a second time.
pub fn overlay(versions: &[Version], out: &mut [u8]) {
    if !versions.is_empty() {
        fill(versions, 0, out, |_, _| {});
    }
}

/// For each block of `out` (blocks `first..` of a chunk): the newest version holding it,
/// else `rest(byte offset in the chunk, block)`.
fn fill(
    versions: &[Version],
    first: usize,
    out: &mut [u8],
    mut rest: impl FnMut(usize, &mut [u8]),
) {
    let bs = BLOCK as usize;
    for (i, dst) in out.chunks_mut(bs).enumerate() {
        let at = (first + i) * bs;
        match versions.iter().rev().find(|v| v.valid.get(first + i)) {
            Some(v) => v.data.copy_to(at, dst),
            None => rest(at, dst),
        }
    }
}

/// How the newest image of a chunk reaches the source.
#[derive(Debug, PartialEq, Eq)]
pub enum SourceWrite<'a> {
    /// The whole chunk reads as zero: punch it.
    Zero,
    /// The whole chunk, straight from one version's buffer.
    Whole(&'a [u8]),
    /// Runs of blocks `(first block, count)` composed from several versions.
    Runs(Vec<(usize, usize)>),
}

/// Decides how to write the final image of a chunk to the source with the fewest copies.
pub fn source_write(versions: &[Version], nblocks: usize) -> SourceWrite<'_> {
    let newest = versions.last().expect("a dirty chunk has a version");
    if newest.valid.is_full(nblocks) {
        return match newest.data.bytes(nblocks * BLOCK as usize) {
            None => SourceWrite::Zero,
            Some(d) => SourceWrite::Whole(d),
        };
    }
    let mut union = BlockMask::default();
    for v in versions {
        union = union.union(v.valid);
    }
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for b in 0..nblocks {
        if union.get(b) {
            match runs.last_mut() {
                Some((s, n)) if *s + *n == b => *n += 1,
                _ => runs.push((b, 1)),
            }
        }
    }
    SourceWrite::Runs(runs)
}

/// A preserved copy a batch placed: chunk `chunk`'s image for snapshots `lo..=hi`, written to
/// `slot`, with the CRC-32C of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The chunk.
    pub chunk: ChunkIndex,
    /// Where its copy is.
    pub slot: TargetSlot,
    /// Oldest snapshot sequence number reading it.
    pub lo: u64,
    /// Newest snapshot sequence number reading it.
    pub hi: u64,
    /// CRC-32C of the copy.
    pub crc: u32,
}

/// Turns placed preservations into log records, merging runs of consecutive chunks in
/// consecutive slots that serve the same snapshots into one record (of at most
/// [`MAX_PRESERVE_RUN`] copies, so that it fits a metadata block).
pub fn records(placed: &[Placed]) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for p in placed {
        if let Some(Record::Preserve {
            chunk: c0,
            slot: s0,
            lo: l0,
            hi: h0,
            crcs,
        }) = out.last_mut()
        {
            let n = crcs.len() as u64;
            if c0.0 + n == p.chunk.0
                && s0.0 + n == p.slot.0
                && l0.0 == p.lo
                && h0.0 == p.hi
                && crcs.len() < MAX_PRESERVE_RUN
            {
                crcs.push(p.crc);
                continue;
            }
        }
        out.push(Record::Preserve {
            chunk: p.chunk,
            slot: p.slot,
            lo: SnapshotSeq(p.lo),
            hi: SnapshotSeq(p.hi),
            crcs: vec![p.crc],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Spares, VersionData};
    use crate::metadata::tests::table;
    use std::sync::Arc;

    fn version(epoch: Epoch, fill: u8, valid: BlockMask) -> Version {
        let mut buf = Spares::new(16384, 16384).take();
        buf.fill(fill);
        Version {
            epoch,
            data: VersionData::Bytes(Arc::new(buf)),
            valid,
            id: 1,
            frozen: false,
            journal_pending: 0,
            journal_gen: 0,
            reserved: false,
            unjournaled: u64::MAX,
        }
    }

    #[test]
    fn k_snapshots_between_two_writes_share_one_preservation() {
        // Snapshots 1..=64 taken back to back, then a write in epoch 64.
        let t = table(&(1..=64).collect::<Vec<_>>());
        let v = [version(Epoch(64), 1, BlockMask::full(4))];
        let p = plan_chunk(ChunkIndex(0), &v, Epoch(0), &t, 4);
        assert_eq!(
            p.preserve,
            vec![Preservation {
                image: 0,
                lo: 1,
                hi: 64
            }]
        );
        assert!(p.needs_source);
    }

    #[test]
    fn nothing_is_preserved_for_snapshots_that_already_hold_their_original() {
        let t = table(&[1, 2]);
        let v = [version(Epoch(2), 1, BlockMask::full(4))];
        assert!(plan_chunk(ChunkIndex(0), &v, Epoch(2), &t, 4)
            .preserve
            .is_empty());
    }

    #[test]
    fn a_version_kept_apart_is_preserved_for_the_snapshot_taken_after_it() {
        // Write in epoch 0, snapshot 1, write in epoch 1: snapshot 1 needs version 0's image,
        // which covers every block, so the source is not read.
        let t = table(&[1]);
        let v = [
            version(Epoch(0), 1, BlockMask::full(4)),
            version(Epoch(1), 2, BlockMask::full(4)),
        ];
        let p = plan_chunk(ChunkIndex(0), &v, Epoch(0), &t, 4);
        assert_eq!(
            p.preserve,
            vec![Preservation {
                image: 1,
                lo: 1,
                hi: 1
            }]
        );
        assert!(!p.needs_source);
        let mut out = vec![0; 16384];
        compose(&v[..1], None, 0, &mut out);
        assert!(out.iter().all(|&b| b == 1));
    }

    #[test]
    fn deleted_snapshots_need_no_preservation() {
        let t = table(&[3]);
        let v = [
            version(Epoch(2), 1, BlockMask::full(4)),
            version(Epoch(5), 2, BlockMask::full(4)),
        ];
        let p = plan_chunk(ChunkIndex(0), &v, Epoch(0), &t, 4);
        assert_eq!(
            p.preserve,
            vec![Preservation {
                image: 1,
                lo: 3,
                hi: 5
            }]
        );
    }

    #[test]
    fn partial_versions_compose_over_the_source_and_write_only_their_blocks() {
        let mut m = BlockMask::default();
        m.set(1);
        let v = [version(Epoch(0), 7, m)];
        let src = vec![9u8; 16384];
        let mut out = vec![0; 16384];
        compose(&v[..1], Some(&src), 0, &mut out);
        assert!(out[..4096].iter().all(|&b| b == 9));
        assert!(out[4096..8192].iter().all(|&b| b == 7));
        assert_eq!(source_write(&v, 4), SourceWrite::Runs(vec![(1, 1)]));
    }

    #[test]
    fn records_merge_sequential_runs_only_and_keep_each_copys_checksum() {
        let at = |chunk, slot, lo, crc| Placed {
            chunk: ChunkIndex(chunk),
            slot: TargetSlot(slot),
            lo,
            hi: 4,
            crc,
        };
        let placed = [
            at(10, 0, 1, 7),
            at(11, 1, 1, 8),
            at(12, 2, 2, 9),
            at(14, 3, 2, 10),
        ];
        let r = records(&placed);
        assert_eq!(r.len(), 3);
        assert!(matches!(&r[0], Record::Preserve { crcs, .. } if crcs == &[7, 8]));
    }

    #[test]
    fn a_run_longer_than_a_block_holds_is_split_into_records_that_each_fit() {
        let placed: Vec<Placed> = (0..2 * MAX_PRESERVE_RUN as u64 + 5)
            .map(|i| Placed {
                chunk: ChunkIndex(i),
                slot: TargetSlot(i),
                lo: 1,
                hi: 1,
                crc: i as u32,
            })
            .collect();
        let r = records(&placed);
        assert_eq!(r.len(), 3);
        for rec in &r {
            assert!(rec.encoded_len() <= crate::format::META_PAYLOAD);
        }
    }
}
