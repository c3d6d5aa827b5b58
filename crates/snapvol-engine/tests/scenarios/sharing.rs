//! Sharing (scenario 1): one preserved copy per overwritten chunk, however many snapshots need
//! it; and reclamation (scenario 2): deleting snapshots gives their space back, and it is reused.

use std::collections::{BTreeSet, VecDeque};

use snapvol_engine::units::SnapshotSeq;
use snapvol_engine::{Volume, VolumeOptions};

use crate::common::{
    assert_bytes_eq, assert_volume, opts, pattern, read_live, read_snapshot, Fixture, Rng, KIB, MIB,
};

// ---------------------------------------------------------------------------------------------
// 1. Sharing: one preserved copy per overwritten chunk, however many snapshots need it.
// ---------------------------------------------------------------------------------------------

/// Checks what K snapshots and one full overwrite must leave: D bytes preserved, small
/// metadata, the right accounting, and every snapshot reading the original.
fn assert_one_shared_copy(
    vol: &Volume,
    seqs: &[SnapshotSeq],
    original: &[u8],
    overwritten: &[u8],
    when: &str,
) {
    let d = vol.size();
    let k = seqs.len();
    let info = vol.info();
    assert_eq!(
        info.target_used_bytes, d,
        "{k} snapshots and one overwrite of {d} bytes must preserve {d} bytes, not {k} x {d} ({when})"
    );
    assert!(
        info.metadata_bytes < d / 16 + 64 * KIB,
        "metadata of {k} snapshots sharing {d} preserved bytes takes {} bytes ({when})",
        info.metadata_bytes
    );
    assert_eq!(
        info.preserved_chunks,
        d / u64::from(info.chunk_size),
        "{when}"
    );
    assert_eq!(info.snapshots.len(), k, "{when}");
    for (s, &seq) in info.snapshots.iter().zip(seqs) {
        assert_eq!(s.seq, seq, "{when}");
        if k == 1 {
            assert_eq!(
                (s.exclusive_bytes, s.shared_bytes),
                (d, 0),
                "a lone snapshot holds its copies exclusively ({when})"
            );
        } else {
            assert_eq!(
                (s.exclusive_bytes, s.shared_bytes),
                (0, d),
                "snapshot {} shares every copy with the {} others ({when})",
                s.name,
                k - 1
            );
        }
    }
    assert_bytes_eq(
        &read_live(vol),
        overwritten,
        0,
        &format!("live volume {when}"),
    );
    for &seq in seqs {
        assert_bytes_eq(
            &read_snapshot(vol, seq),
            original,
            0,
            &format!("snapshot {seq} {when}"),
        );
    }
}

fn k_snapshots_then_one_full_overwrite(k: usize) {
    const D: u64 = 8 * MIB;
    const CHUNK: u64 = 64 * KIB;
    let fx = Fixture::new();
    let vol = fx.create("vol", D, CHUNK, None, opts(32 * MIB));
    let original = pattern(1, 0, D);
    vol.write(0, &original).unwrap();
    vol.destage_all().unwrap();

    let seqs: Vec<SnapshotSeq> = (0..k)
        .map(|i| vol.snapshot_create(&format!("s{i}")).unwrap().seq)
        .collect();
    assert_eq!(
        vol.info().target_used_bytes,
        0,
        "taking snapshots copies nothing"
    );

    let overwritten = pattern(2, 0, D);
    for (i, piece) in overwritten.chunks(MIB as usize).enumerate() {
        vol.write(i as u64 * MIB, piece).unwrap();
    }
    vol.destage_all().unwrap();
    assert_eq!(
        vol.info().copies_since_open,
        D / CHUNK,
        "each overwritten chunk is copied once, not once per snapshot"
    );
    assert_one_shared_copy(&vol, &seqs, &original, &overwritten, "after the overwrite");
    vol.close().unwrap();

    let vol = fx.open("vol", opts(32 * MIB));
    assert_one_shared_copy(&vol, &seqs, &original, &overwritten, "after reopening");
    vol.close().unwrap();
}

#[test]
fn one_snapshot_holds_the_preserved_copy_of_an_overwrite_exclusively() {
    k_snapshots_then_one_full_overwrite(1);
}

#[test]
fn four_snapshots_share_one_preserved_copy_of_an_overwrite() {
    k_snapshots_then_one_full_overwrite(4);
}

#[test]
fn sixty_four_snapshots_share_one_preserved_copy_of_an_overwrite() {
    k_snapshots_then_one_full_overwrite(64);
}

// ---------------------------------------------------------------------------------------------
// 2. Reclamation: deleting snapshots gives their space back, and it is reused.
// ---------------------------------------------------------------------------------------------

/// Which preserved copies the live snapshots need, from the history of writes alone.
///
/// Snapshot `s` needs a copy of chunk `c` once `c` was written in an epoch `>= s`; the copy
/// it reads is the image superseded by the first such write, so two snapshots share a copy
/// exactly when they map to the same first write.
struct CopyOracle {
    /// Per chunk: the epochs in which it was written, ascending.
    writes: Vec<Vec<u64>>,
}

impl CopyOracle {
    fn new(chunks: u64) -> Self {
        Self {
            writes: vec![Vec::new(); chunks as usize],
        }
    }

    fn written(&mut self, chunk: u64, epoch: u64) {
        let w = &mut self.writes[chunk as usize];
        if w.last() != Some(&epoch) {
            w.push(epoch);
        }
    }

    /// Per live snapshot (in the order of `alive`): bytes of copies only it reads, and bytes
    /// of copies it shares with other live snapshots.
    fn accounting(&self, alive: &[u64], chunk: u64) -> Vec<(u64, u64)> {
        let mut out = vec![(0, 0); alive.len()];
        for w in &self.writes {
            let mut readers: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
            for (i, &s) in alive.iter().enumerate() {
                if let Some(&e) = w.iter().find(|&&e| e >= s) {
                    readers.entry(e).or_default().push(i);
                }
            }
            for group in readers.values() {
                for &i in group {
                    if group.len() == 1 {
                        out[i].0 += chunk;
                    } else {
                        out[i].1 += chunk;
                    }
                }
            }
        }
        out
    }

    /// Number of distinct preserved copies the snapshots `alive` need.
    fn copies(&self, alive: &[u64]) -> u64 {
        self.writes
            .iter()
            .map(|w| {
                alive
                    .iter()
                    .filter_map(|&s| w.iter().find(|&&e| e >= s))
                    .collect::<BTreeSet<_>>()
                    .len() as u64
            })
            .sum()
    }
}

#[test]
fn deleted_snapshots_give_their_space_back_and_the_target_stops_growing() {
    const SIZE: u64 = 16 * MIB;
    const CHUNK: u64 = 16 * KIB;
    const CYCLES: usize = 30;
    const CHUNKS_PER_CYCLE: usize = 96;
    const KEEP: usize = 3;
    let chunks = SIZE / CHUNK;
    // Scattered writes make one log record per chunk, so a low compaction threshold has the
    // metadata log compacted several times during the run: the final reopen rebuilds the
    // allocator from a compacted log.
    let vopts = VolumeOptions {
        cache_size: 8 * MIB,
        compact_after_records: 256,
        ..VolumeOptions::default()
    };
    let fx = Fixture::new();
    let vol = fx.create("vol", SIZE, CHUNK, None, vopts.clone());
    let mut live = pattern(0, 0, SIZE);
    vol.write(0, &live).unwrap();
    vol.destage_all().unwrap();

    let mut oracle = CopyOracle::new(chunks);
    let mut snaps: VecDeque<(String, SnapshotSeq, Vec<u8>)> = VecDeque::new();
    let mut rng = Rng::new(2);
    let mut file_len = Vec::new();
    let mut metadata_bytes = Vec::new();
    for cycle in 1..=CYCLES {
        let name = format!("c{cycle}");
        let seq = vol.snapshot_create(&name).unwrap().seq;
        snaps.push_back((name, seq, live.clone()));
        // Overwrite a random part: a piece of each of CHUNKS_PER_CYCLE distinct chunks.
        for c in rng.distinct(CHUNKS_PER_CYCLE, chunks) {
            let within = rng.below(CHUNK - 1);
            let len = rng.range(1, CHUNK - within + 1);
            let off = c * CHUNK + within;
            let data = pattern(1000 + cycle as u64, off, len);
            vol.write(off, &data).unwrap();
            live[off as usize..(off + len) as usize].copy_from_slice(&data);
            oracle.written(c, seq.0);
        }
        vol.destage_all().unwrap();
        while snaps.len() > KEEP {
            let (old, ..) = snaps.pop_front().unwrap();
            let before = vol.info();
            let exclusive = vol.snapshot(&old).unwrap().exclusive_bytes;
            vol.snapshot_delete(&old).unwrap();
            assert_eq!(
                vol.info().target_used_bytes,
                before.target_used_bytes - exclusive,
                "deleting {old} frees exactly its exclusive bytes"
            );
        }
        let alive: Vec<u64> = snaps.iter().map(|(_, s, _)| s.0).collect();
        let info = vol.info();
        assert_eq!(
            info.target_used_bytes,
            oracle.copies(&alive) * CHUNK,
            "after cycle {cycle}, the target holds exactly the copies the {KEEP} remaining snapshots need"
        );
        let accounting: Vec<(u64, u64)> = info
            .snapshots
            .iter()
            .map(|s| (s.exclusive_bytes, s.shared_bytes))
            .collect();
        assert_eq!(
            accounting,
            oracle.accounting(&alive, CHUNK),
            "(exclusive, shared) bytes per snapshot after cycle {cycle}"
        );
        file_len.push(fx.target_len("vol"));
        metadata_bytes.push(info.metadata_bytes);
        if cycle % 10 == 0 {
            let named: Vec<_> = snaps
                .iter()
                .map(|(n, _, d)| (n.clone(), d.clone()))
                .collect();
            assert_volume(&vol, &live, &named, &format!("after cycle {cycle}"));
        }
    }
    // At most KEEP + 1 cycles' worth of copies is ever live, so once the workload is steady
    // the target file stops growing: freed slots are reused. Without reuse it would grow by
    // CHUNKS_PER_CYCLE chunks a cycle; what may still grow a little is the metadata log, which
    // is compacted only once it holds four times more records than the live metadata.
    assert!(
        metadata_bytes.windows(2).any(|w| w[1] < w[0]),
        "the metadata log should have been compacted during the run: {metadata_bytes:?}"
    );
    let (at10, at30) = (file_len[9], file_len[CYCLES - 1]);
    assert!(
        at30 <= at10 + 8 * CHUNK,
        "the target file kept growing in a steady workload: {at10} bytes after cycle 10, {at30} after cycle {CYCLES} (lengths per cycle: {file_len:?})"
    );
    let peak_live_copies = (KEEP as u64 + 1) * CHUNKS_PER_CYCLE as u64;
    assert!(
        at30 <= (peak_live_copies + 16) * CHUNK + 64 * KIB,
        "the target file ({at30} bytes) is far larger than {peak_live_copies} live copies need"
    );

    let alive: Vec<u64> = snaps.iter().map(|(_, s, _)| s.0).collect();
    let used = vol.info().target_used_bytes;
    vol.close().unwrap();

    // The allocator is rebuilt from the logs: same figures after reopening.
    let vol = fx.open("vol", vopts.clone());
    let info = vol.info();
    assert_eq!(info.target_used_bytes, used, "target use after reopening");
    assert_eq!(info.target_used_bytes, oracle.copies(&alive) * CHUNK);
    let names: Vec<_> = info.snapshots.iter().map(|s| s.name.clone()).collect();
    let want: Vec<_> = snaps.iter().map(|(n, ..)| n.clone()).collect();
    assert_eq!(names, want, "the live snapshots after reopening");
    let named: Vec<_> = snaps
        .iter()
        .map(|(n, _, d)| (n.clone(), d.clone()))
        .collect();
    assert_volume(&vol, &live, &named, "after reopening");

    // Reused space after the reopen: another steady cycle does not grow the file either.
    let before = fx.target_len("vol");
    let seq = vol.snapshot_create("after-reopen").unwrap().seq;
    for c in rng.distinct(CHUNKS_PER_CYCLE, chunks) {
        let off = c * CHUNK + 7;
        let data = pattern(5000, off, 100);
        vol.write(off, &data).unwrap();
        live[off as usize..off as usize + 100].copy_from_slice(&data);
        oracle.written(c, seq.0);
    }
    vol.destage_all().unwrap();
    for (name, ..) in snaps.drain(..) {
        vol.snapshot_delete(&name).unwrap();
    }
    assert_eq!(
        vol.info().target_used_bytes,
        oracle.copies(&[seq.0]) * CHUNK
    );
    assert!(
        fx.target_len("vol") <= before + 2 * CHUNK,
        "a cycle after reopening grew the target file from {before} to {} bytes",
        fx.target_len("vol")
    );

    // With every snapshot deleted, nothing is held.
    vol.snapshot_delete("after-reopen").unwrap();
    assert_eq!(vol.info().target_used_bytes, 0, "no snapshot, no copies");
    assert!(vol.info().snapshots.is_empty());
    assert_volume(&vol, &live, &[], "with every snapshot deleted");
    vol.close().unwrap();
    let vol = fx.open("vol", vopts);
    assert_eq!(
        vol.info().target_used_bytes,
        0,
        "no copies after reopening a volume without snapshots"
    );
    assert!(vol.info().snapshots.is_empty());
    assert_volume(&vol, &live, &[], "after the last reopen");
    vol.close().unwrap();
}
