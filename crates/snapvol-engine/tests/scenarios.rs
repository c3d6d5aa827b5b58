//! Scenario tests of the engine on real files: a store in a temporary directory, volumes of a
//! few MiB, and an oracle (`Vec<u8>` per point in time) for everything a user reads back.
//!
//! Each test states the rule a user relies on in its name, and checks it again after a close
//! and reopen where the rule is about what is on disk.

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use common::{
    assert_bytes_eq, assert_volume, decode_tag, is_pattern, opts, pattern, read_live,
    read_snapshot, Fixture, Rng, KIB, MIB,
};
use snapvol_engine::units::SnapshotSeq;
use snapvol_engine::{Error, Volume, VolumeOptions};

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

// ---------------------------------------------------------------------------------------------
// 3. Interleaving: each snapshot reads exactly its point in time; each overwrite preserves a
//    chunk at most once.
// ---------------------------------------------------------------------------------------------

/// How the interleaving scenario lets writes reach the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destage {
    /// Flush after every write.
    FlushEveryWrite,
    /// Never flush; a cache large enough to hold everything between two snapshots.
    LargeCacheNoFlush,
    /// Never flush; a cache of a few chunks, so the destager runs in the middle of a step.
    TinyCacheNoFlush,
}

fn interleaved_snapshots_and_overwrites(mode: Destage) {
    const SIZE: u64 = 4 * MIB;
    const CHUNK: u64 = 64 * KIB;
    let chunks = SIZE / CHUNK;
    let cache = match mode {
        Destage::TinyCacheNoFlush => 4 * CHUNK,
        _ => 64 * MIB,
    };
    let fx = Fixture::new();
    let vol = fx.create("vol", SIZE, CHUNK, None, opts(cache));
    let h = SIZE / 2;
    let q = SIZE / 4;
    // Each step: a snapshot, then these writes (offset, length). Several writes of a step may
    // touch the same chunk; it is still one overwrite of that chunk.
    let steps: Vec<Vec<(u64, u64)>> = vec![
        vec![(0, h)],
        vec![(0, SIZE)],
        vec![(h, h)],
        vec![(q + 1000, h - 1777), (q + 5000, 10)],
        vec![(0, 1), (SIZE - 1, 1), (0, 1), (CHUNK - 1, 2)],
        vec![],
        vec![
            (3 * CHUNK + 17, 5 * CHUNK),
            (0, SIZE),
            (SIZE - 3 * CHUNK, 3 * CHUNK),
        ],
        vec![(7 * CHUNK, CHUNK), (9 * CHUNK + 4096, 4096)],
    ];

    let mut live = pattern(0, 0, SIZE);
    vol.write(0, &live).unwrap();
    if mode == Destage::FlushEveryWrite {
        vol.destage_all().unwrap();
    }
    // Epoch of each chunk's latest write; 0 = before any snapshot.
    let mut last_write: Vec<Option<u64>> = vec![Some(0); chunks as usize];
    let mut expected_preserved = 0u64;
    let mut snaps: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, writes) in steps.iter().enumerate() {
        let name = format!("s{}", i + 1);
        let epoch = vol.snapshot_create(&name).unwrap().seq.0;
        snaps.push((name, live.clone()));
        for (j, &(off, len)) in writes.iter().enumerate() {
            let data = pattern(100 * (i as u64 + 1) + j as u64, off, len);
            vol.write(off, &data).unwrap();
            if mode == Destage::FlushEveryWrite {
                vol.destage_all().unwrap();
            }
            live[off as usize..(off + len) as usize].copy_from_slice(&data);
            for c in off / CHUNK..(off + len).div_ceil(CHUNK) {
                // Every snapshot is alive, so the first write of a chunk after a snapshot
                // needs its original preserved; later writes in the same epoch do not.
                if last_write[c as usize] != Some(epoch) {
                    expected_preserved += 1;
                    last_write[c as usize] = Some(epoch);
                }
            }
        }
        // Every snapshot reads its point in time while later writes may still be cached.
        assert_volume(&vol, &live, &snaps, &format!("after step {}", i + 1));
    }
    vol.destage_all().unwrap();
    let info = vol.info();
    assert_eq!(
        info.copies_since_open, expected_preserved,
        "one copy per chunk-overwrite that a snapshot needed ({mode:?})"
    );
    assert_eq!(
        info.target_used_bytes,
        expected_preserved * CHUNK,
        "no copy is freed while every snapshot lives ({mode:?})"
    );
    assert_volume(&vol, &live, &snaps, "after the final flush");
    vol.close().unwrap();
    let source = std::fs::read(fx.source_path("vol")).unwrap();
    assert_bytes_eq(&source, &live, 0, "the source VLUN after close");

    let vol = fx.open("vol", opts(cache));
    assert_eq!(vol.info().target_used_bytes, expected_preserved * CHUNK);
    assert_volume(&vol, &live, &snaps, "after reopening");
    vol.close().unwrap();
}

#[test]
fn every_snapshot_reads_its_point_in_time_and_each_overwrite_preserves_once_when_flushed() {
    interleaved_snapshots_and_overwrites(Destage::FlushEveryWrite);
}

#[test]
fn every_snapshot_reads_its_point_in_time_while_writes_stay_in_the_cache() {
    interleaved_snapshots_and_overwrites(Destage::LargeCacheNoFlush);
}

#[test]
fn every_snapshot_reads_its_point_in_time_when_the_cache_destages_mid_step() {
    interleaved_snapshots_and_overwrites(Destage::TinyCacheNoFlush);
}

// ---------------------------------------------------------------------------------------------
// 4. Target full: ENOSPC, nothing changed, no snapshot invalidated, space back on delete.
// ---------------------------------------------------------------------------------------------

fn target_full(flush_every_write: bool) {
    const SIZE: u64 = 4 * MIB;
    const CHUNK: u64 = 64 * KIB;
    const CAP: u64 = 2 * MIB;
    let fx = Fixture::new();
    let vol = fx.create("vol", SIZE, CHUNK, Some(CAP), opts(32 * MIB));
    assert_eq!(vol.info().target_size, Some(CAP));
    let flush = |vol: &Volume| {
        if flush_every_write {
            vol.destage_all().unwrap();
        }
    };
    let mut live = pattern(0, 0, SIZE);
    vol.write(0, &live).unwrap();
    vol.destage_all().unwrap();

    // s1 alone needs the originals of chunks 0..4.
    vol.snapshot_create("s1").unwrap();
    let snap1 = live.clone();
    for c in 0..4 {
        let data = pattern(10 + c, c * CHUNK, CHUNK);
        vol.write(c * CHUNK, &data).unwrap();
        flush(&vol);
        live[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize].copy_from_slice(&data);
    }
    // s1 and s2 share the originals of everything overwritten from now on.
    vol.snapshot_create("s2").unwrap();
    let snap2 = live.clone();
    let mut snaps = vec![("s1".to_owned(), snap1), ("s2".to_owned(), snap2.clone())];

    // Unaligned writes over two chunks each, until the target cannot hold their originals.
    let mut chunks_overwritten_after_s2 = 0;
    let mut failed = None;
    for k in 0.. {
        let off = (4 + 2 * k) * CHUNK + 1000;
        let len = 2 * CHUNK - 2000;
        assert!(
            off + len <= SIZE,
            "a {CAP}-byte target took more than {} preserved chunks without ENOSPC",
            2 * k
        );
        let data = pattern(100 + k, off, len);
        match vol.write(off, &data) {
            Ok(()) => {
                flush(&vol);
                live[off as usize..(off + len) as usize].copy_from_slice(&data);
                chunks_overwritten_after_s2 += 2;
            }
            Err(Error::NoSpace { .. }) => {
                failed = Some((off, data));
                break;
            }
            Err(e) => panic!("write {k} failed with {e} where ENOSPC or success was due"),
        }
    }
    let (off, data) = failed.expect("the loop ends at the failure");
    assert!(
        chunks_overwritten_after_s2 > 0,
        "the target should hold some preservations"
    );
    // The failed write changed nothing; acknowledged writes and every snapshot are intact.
    assert_volume(&vol, &live, &snaps, "after ENOSPC");
    // A write that needs no preservation still succeeds: chunk 4 is preserved for s2 already.
    let fix = pattern(7, 4 * CHUNK + 10, 100);
    vol.write(4 * CHUNK + 10, &fix)
        .expect("a write needing no preservation succeeds on a full target");
    live[(4 * CHUNK + 10) as usize..(4 * CHUNK + 110) as usize].copy_from_slice(&fix);
    // Everything acknowledged can be made durable: the promised space was really there.
    vol.destage_all()
        .expect("destaging acknowledged writes on a full target");
    assert_volume(&vol, &live, &snaps, "after ENOSPC and a flush");
    assert!(
        fx.target_len("vol") <= CAP,
        "the target file ({} bytes) exceeds its cap of {CAP}",
        fx.target_len("vol")
    );

    // Deleting s1 frees the copies only it read; the same write now succeeds.
    vol.snapshot_delete("s1").unwrap();
    snaps.remove(0);
    vol.write(off, &data)
        .expect("the write that hit ENOSPC succeeds once a snapshot is deleted");
    flush(&vol);
    live[off as usize..off as usize + data.len()].copy_from_slice(&data);
    chunks_overwritten_after_s2 += 2;
    assert_volume(&vol, &live, &snaps, "after deleting s1 and retrying");
    vol.destage_all().unwrap();
    assert_eq!(
        vol.info().target_used_bytes,
        chunks_overwritten_after_s2 * CHUNK,
        "s2 holds one copy per chunk overwritten after it"
    );
    vol.close().unwrap();
    assert!(
        fx.target_len("vol") <= CAP,
        "the target file exceeds its cap"
    );

    let vol = fx.open("vol", opts(32 * MIB));
    assert_eq!(vol.info().target_size, Some(CAP));
    assert_eq!(
        vol.info().target_used_bytes,
        chunks_overwritten_after_s2 * CHUNK
    );
    assert_volume(&vol, &live, &snaps, "after reopening");
    vol.close().unwrap();
}

#[test]
fn a_full_target_fails_the_write_with_enospc_and_invalidates_nothing_when_flushing_every_write() {
    target_full(true);
}

#[test]
fn a_full_target_fails_the_write_with_enospc_and_invalidates_nothing_with_writes_in_the_cache() {
    target_full(false);
}

#[test]
fn a_write_fails_with_enospc_only_when_the_target_cannot_hold_its_preservation() {
    const SIZE: u64 = 4 * MIB;
    const CHUNK: u64 = 64 * KIB;
    const CAP: u64 = 2 * MIB;
    const CACHED: u64 = 16;
    const MORE: u64 = 4;
    let fx = Fixture::new();
    let vol = fx.create("vol", SIZE, CHUNK, Some(CAP), opts(32 * MIB));
    let mut live = pattern(0, 0, SIZE);
    vol.write(0, &live).unwrap();
    vol.destage_all().unwrap();
    vol.snapshot_create("s1").unwrap();
    let snaps = vec![("s1".to_owned(), live.clone())];
    // 16 overwrites wait in the cache: 16 copies are promised. With 4 more, the target holds
    // 20 copies of 64 KiB and its metadata: well within 2 MiB.
    for c in 0..CACHED {
        let data = pattern(10 + c, c * CHUNK, CHUNK);
        vol.write(c * CHUNK, &data).unwrap();
        live[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize].copy_from_slice(&data);
    }
    let len_before = fx.target_len("vol");
    let results = std::thread::scope(|scope| {
        let flusher = scope.spawn(|| vol.destage_all());
        // Overwrite more chunks while the 16 copies are being written and committed (the
        // target file grows when they are written). Whatever the timing, the space is there:
        // a correct engine accepts these writes.
        while fx.target_len("vol") == len_before && !flusher.is_finished() {
            std::hint::spin_loop();
        }
        let results: Vec<_> = (0..MORE)
            .map(|i| {
                let c = 20 + i;
                let data = pattern(100 + c, c * CHUNK, CHUNK);
                (c, data.clone(), vol.write(c * CHUNK, &data))
            })
            .collect();
        flusher.join().unwrap().unwrap();
        results
    });
    let mut failures = Vec::new();
    for (c, data, r) in results {
        match r {
            Ok(()) => live[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize].copy_from_slice(&data),
            Err(e) => failures.push(format!("chunk {c}: {e}")),
        }
    }
    vol.destage_all().unwrap();
    let used = vol.info().target_used_bytes;
    assert!(
        failures.is_empty(),
        "writes failed although the target holds {used} of {CAP} bytes of copies: {failures:?}"
    );
    assert_eq!(used, (CACHED + MORE) * CHUNK);
    assert_volume(&vol, &live, &snaps, "after the writes");
    vol.close().unwrap();
}

#[test]
fn snapshots_taken_on_a_full_target_never_grow_it_past_its_cap() {
    const SIZE: u64 = MIB;
    const CHUNK: u64 = 4 * KIB;
    const CAP: u64 = 256 * KIB;
    let fx = Fixture::new();
    let vol = fx.create("vol", SIZE, CHUNK, Some(CAP), opts(4 * MIB));
    let mut live = pattern(0, 0, SIZE);
    vol.write(0, &live).unwrap();
    vol.destage_all().unwrap();
    vol.snapshot_create("base").unwrap();
    let snaps = vec![("base".to_owned(), live.clone())];
    // Fill the target with originals for "base" until a write gets ENOSPC.
    let mut filled = false;
    for c in 0..SIZE / CHUNK {
        let data = pattern(1, c * CHUNK, CHUNK);
        match vol.write(c * CHUNK, &data) {
            Ok(()) => {
                vol.destage_all().unwrap();
                live[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize].copy_from_slice(&data);
            }
            Err(Error::NoSpace { .. }) => {
                filled = true;
                break;
            }
            Err(e) => panic!("overwriting chunk {c}: {e}"),
        }
    }
    assert!(filled, "the target never filled up");
    // Every snapshot adds metadata. Once it no longer fits, taking one must fail, not write
    // past the cap (on a block device that is an I/O error; in a file, a target that is
    // larger than the size it was given).
    let mut taken = 0;
    for i in 0..1000 {
        let name = format!("{i:0>128}");
        match vol.snapshot_create(&name) {
            Ok(_) => taken += 1,
            Err(Error::NoSpace { .. }) => break,
            Err(e) => panic!("snapshot {i} on a full target: {e}"),
        }
        let len = fx.target_len("vol");
        assert!(
            len <= CAP,
            "after {taken} snapshots on a full target its file holds {len} bytes, past its cap of {CAP}"
        );
    }
    assert_volume(
        &vol,
        &live,
        &snaps,
        &format!("after {taken} more snapshots"),
    );
    vol.close().unwrap();
    let vol = fx.open("vol", opts(4 * MIB));
    assert_volume(&vol, &live, &snaps, "after reopening");
    vol.close().unwrap();
}

// ---------------------------------------------------------------------------------------------
// 5. Concurrency: a snapshot holds whole writes, exactly those acknowledged before it.
// ---------------------------------------------------------------------------------------------

const WRITERS: usize = 4;
const INITIAL: u64 = 0xa5a5 << 48;
const SHARED_TAG: u64 = 2 << 56;

fn own_tag(w: usize, n: u64) -> u64 {
    if n == 0 {
        INITIAL
    } else {
        (1 << 56) | ((w as u64) << 48) | n
    }
}

/// A byte range of the volume.
#[derive(Debug, Clone, Copy)]
struct Range {
    off: u64,
    len: u64,
}

impl Range {
    fn end(&self) -> u64 {
        self.off + self.len
    }
}

/// Where each writer writes. Writers 0 and 1 also write, in turns, two partially overlapping
/// halves of one shared region; `history[g - 1]` is which of them wrote shared write `g`.
struct Layout {
    own: [Range; WRITERS],
    shared: Range,
    /// The part of `shared` writer 0 writes: its first two thirds.
    shared_a: Range,
    /// The part writer 1 writes: its last two thirds.
    shared_b: Range,
}

impl Layout {
    fn new() -> Self {
        let own = std::array::from_fn(|w| Range {
            off: w as u64 * MIB + 5000 + 8 * w as u64,
            len: 300_001,
        });
        let shared = Range {
            off: 5 * MIB + 777,
            len: 240_000,
        };
        Self {
            own,
            shared,
            shared_a: Range {
                off: shared.off,
                len: 160_000,
            },
            shared_b: Range {
                off: shared.off + 80_000,
                len: 160_000,
            },
        }
    }
}

/// Progress counters: writes are numbered per writer from 1 (0 = the initial content).
struct Progress {
    issued: [AtomicU64; WRITERS],
    acked: [AtomicU64; WRITERS],
    shared_issued: AtomicU64,
    shared_acked: AtomicU64,
    /// Serializes the shared writes, so they have one order that both writers know.
    shared_lock: Mutex<()>,
    history: RwLock<Vec<usize>>,
}

/// Which versions a snapshot may hold: for each counter, `acked before <= v < issued after`.
#[derive(Debug, Clone)]
struct Window {
    name: String,
    seq: SnapshotSeq,
    own: [(u64, u64); WRITERS],
    shared: (u64, u64),
}

/// Checks one region of one snapshot: a whole write within its window, never a mix.
fn check_own(buf: &[u8], r: Range, w: usize, window: (u64, u64)) -> Result<(), String> {
    let tag = decode_tag(buf, r.off, 0);
    let n = if tag == INITIAL {
        0
    } else if tag >> 48 == (1 << 8) | w as u64 {
        tag & 0xffff_ffff_ffff
    } else {
        return Err(format!(
            "region of writer {w} starts with data tagged {tag:#x}"
        ));
    };
    if !is_pattern(buf, r.off, own_tag(w, n)) {
        return Err(format!(
            "region of writer {w} is torn: starts as version {n} but does not hold it whole"
        ));
    }
    if !(window.0..window.1).contains(&n) {
        return Err(format!(
            "region of writer {w} holds version {n}; writes {}..{} were acknowledged before / issued after the snapshot",
            window.0, window.1
        ));
    }
    Ok(())
}

/// Checks the shared region: the image after some shared write `g` in the window.
fn check_shared(
    buf: &[u8],
    l: &Layout,
    window: (u64, u64),
    history: &[usize],
) -> Result<(), String> {
    let s = l.shared;
    let version = |tag: u64| -> Result<u64, String> {
        if tag == INITIAL {
            Ok(0)
        } else if tag >> 56 == SHARED_TAG >> 56 {
            Ok(tag & 0xffff_ffff_ffff)
        } else {
            Err(format!("shared region holds data tagged {tag:#x}"))
        }
    };
    // First third: only writer 0 writes it; last third: only writer 1.
    let ga = version(decode_tag(buf, s.off, 0))?;
    let gb = version(decode_tag(buf, s.off, (l.shared_a.end() - s.off) as usize))?;
    for (g, who) in [(ga, 0), (gb, 1)] {
        if g > 0 && history.get(g as usize - 1) != Some(&who) {
            return Err(format!(
                "shared region: write {g} appears where writer {who} writes"
            ));
        }
    }
    let tag = |g| if g == 0 { INITIAL } else { SHARED_TAG | g };
    let mid = (l.shared_b.off - s.off) as usize..(l.shared_a.end() - s.off) as usize;
    let a_part = &buf[..mid.start];
    let m_part = &buf[mid.clone()];
    let b_part = &buf[mid.end..];
    let whole = is_pattern(a_part, s.off, tag(ga))
        && is_pattern(m_part, s.off + mid.start as u64, tag(ga.max(gb)))
        && is_pattern(b_part, s.off + mid.end as u64, tag(gb));
    if !whole {
        return Err(format!(
            "shared region is torn (last writes seen: {ga} by writer 0, {gb} by writer 1)"
        ));
    }
    // Some point g of the window must have exactly these last writes.
    let (mut last_a, mut last_b) = (0u64, 0u64);
    for g in 0..window.1 {
        if g > 0 {
            match history[g as usize - 1] {
                0 => last_a = g,
                _ => last_b = g,
            }
        }
        if g >= window.0 && (last_a, last_b) == (ga, gb) {
            return Ok(());
        }
    }
    Err(format!(
        "shared region holds writes {ga} and {gb}, no point between shared writes {} and {}",
        window.0, window.1
    ))
}

fn check_snapshot_window(
    vol: &Volume,
    l: &Layout,
    win: &Window,
    p: &Progress,
) -> Result<(), String> {
    let read = |r: Range| -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; r.len as usize];
        vol.read_snapshot(win.seq, r.off, &mut buf)
            .map_err(|e| format!("read: {e}"))?;
        Ok(buf)
    };
    let ctx = |e: String| format!("snapshot {}: {e}", win.name);
    for w in 0..WRITERS {
        check_own(&read(l.own[w])?, l.own[w], w, win.own[w]).map_err(ctx)?;
    }
    let history = p.history.read().unwrap().clone();
    check_shared(&read(l.shared)?, l, win.shared, &history).map_err(ctx)
}

#[test]
fn concurrent_snapshots_hold_whole_writes_acknowledged_before_them_and_none_issued_after() {
    const SIZE: u64 = 8 * MIB;
    const CHUNK: u64 = 16 * KIB;
    const SNAPSHOTS: usize = 40;
    let fx = Fixture::new();
    // A small cache keeps the destager busy while writes, snapshots and reads go on.
    let vol = fx.create("vol", SIZE, CHUNK, None, opts(2 * MIB));
    vol.write(0, &pattern(INITIAL, 0, SIZE)).unwrap();
    vol.destage_all().unwrap();
    let l = Layout::new();
    let p = Progress {
        issued: std::array::from_fn(|_| AtomicU64::new(0)),
        acked: std::array::from_fn(|_| AtomicU64::new(0)),
        shared_issued: AtomicU64::new(0),
        shared_acked: AtomicU64::new(0),
        shared_lock: Mutex::new(()),
        history: RwLock::new(Vec::new()),
    };
    let stop = AtomicBool::new(false);
    let windows: RwLock<Vec<Window>> = RwLock::new(Vec::new());
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let reads_checked = AtomicU64::new(0);

    std::thread::scope(|scope| {
        for w in 0..WRITERS {
            let (vol, l, p, stop) = (&vol, &l, &p, &stop);
            scope.spawn(move || {
                let r = l.own[w];
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    p.issued[w].store(n, Ordering::SeqCst);
                    vol.write(r.off, &pattern(own_tag(w, n), r.off, r.len))
                        .unwrap();
                    p.acked[w].store(n, Ordering::SeqCst);
                    if w < 2 && n % 3 == 0 {
                        let part = if w == 0 { l.shared_a } else { l.shared_b };
                        let _order = p.shared_lock.lock().unwrap();
                        let g = p.shared_issued.load(Ordering::SeqCst) + 1;
                        p.history.write().unwrap().push(w);
                        p.shared_issued.store(g, Ordering::SeqCst);
                        vol.write(part.off, &pattern(SHARED_TAG | g, part.off, part.len))
                            .unwrap();
                        p.shared_acked.store(g, Ordering::SeqCst);
                    }
                }
            });
        }
        for reader in 0..2u64 {
            let (vol, l, p, stop, windows, errors, reads_checked) =
                (&vol, &l, &p, &stop, &windows, &errors, &reads_checked);
            scope.spawn(move || {
                let mut rng = Rng::new(100 + reader);
                while !stop.load(Ordering::SeqCst) {
                    let win = {
                        let all = windows.read().unwrap();
                        if all.is_empty() {
                            None
                        } else {
                            Some(all[rng.below(all.len() as u64) as usize].clone())
                        }
                    };
                    let Some(win) = win else {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    if let Err(e) = check_snapshot_window(vol, l, &win, p) {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("concurrent reader: {e}"));
                        return;
                    }
                    reads_checked.fetch_add(1, Ordering::Relaxed);
                }
            });
        }

        let mut rng = Rng::new(7);
        for i in 0..SNAPSHOTS {
            std::thread::sleep(Duration::from_millis(rng.below(15)));
            let own_before: [u64; WRITERS] =
                std::array::from_fn(|w| p.acked[w].load(Ordering::SeqCst));
            let shared_before = p.shared_acked.load(Ordering::SeqCst);
            let name = format!("snap{i}");
            let seq = vol.snapshot_create(&name).unwrap().seq;
            let own =
                std::array::from_fn(|w| (own_before[w], p.issued[w].load(Ordering::SeqCst) + 1));
            let shared = (shared_before, p.shared_issued.load(Ordering::SeqCst) + 1);
            windows.write().unwrap().push(Window {
                name,
                seq,
                own,
                shared,
            });
            if i % 7 == 3 {
                vol.destage_all().unwrap();
            }
        }
        stop.store(true, Ordering::SeqCst);
    });

    let errors = errors.into_inner().unwrap();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let windows = windows.into_inner().unwrap();
    assert!(
        p.acked.iter().all(|a| a.load(Ordering::SeqCst) > 0)
            && p.shared_acked.load(Ordering::SeqCst) > 0,
        "every writer made progress"
    );
    let check_all = |vol: &Volume, when: &str| {
        for win in &windows {
            if let Err(e) = check_snapshot_window(vol, &l, win, &p) {
                panic!("{when}: {e}");
            }
        }
        // The live volume holds the last acknowledged writes.
        let mut buf = read_live(vol);
        for w in 0..WRITERS {
            let r = l.own[w];
            let n = p.acked[w].load(Ordering::SeqCst);
            let got = &buf[r.off as usize..r.end() as usize];
            assert!(
                is_pattern(got, r.off, own_tag(w, n)),
                "{when}: live region of writer {w} is not its last write {n}"
            );
        }
        let g = p.shared_acked.load(Ordering::SeqCst);
        let s = l.shared;
        let got = buf.split_off(s.off as usize);
        let history = p.history.read().unwrap();
        if let Err(e) = check_shared(&got[..s.len as usize], &l, (g, g + 1), &history) {
            panic!("{when}: live {e}");
        }
    };
    check_all(&vol, "after the writers stopped");
    assert!(
        reads_checked.load(Ordering::Relaxed) > 0,
        "the concurrent readers checked some snapshots"
    );
    vol.close().unwrap();
    let vol = fx.open("vol", opts(2 * MIB));
    check_all(&vol, "after reopening");
    vol.close().unwrap();
}

// ---------------------------------------------------------------------------------------------
// 6. Unaligned I/O.
// ---------------------------------------------------------------------------------------------

fn unaligned_io(chunk: u64) {
    let size = (2 * MIB).max(4 * chunk);
    let chunks = size / chunk;
    // Lengths stay moderate with big chunks; boundaries are straddled on purpose instead.
    let span = chunk.min(32 * KIB);
    let fx = Fixture::new();
    let vol = fx.create("vol", size, chunk, None, opts(MIB));
    let mut live = pattern(0, 0, size);
    vol.write(0, &live).unwrap();
    let mut snaps: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rng = Rng::new(6);
    let mut writes: Vec<(u64, u64)> = Vec::new();
    for i in 0..300u64 {
        let (off, len) = match i % 6 {
            // One byte anywhere, or on either side of a chunk edge.
            0 => (rng.below(size), 1),
            1 => (rng.range(1, chunks) * chunk - 1 + rng.below(2), 1),
            // Odd offsets and lengths.
            2 => {
                let off = rng.below(size - 1);
                (off, rng.range(1, 3 * span + 1).min(size - off))
            }
            // Straddling a chunk edge.
            3 => {
                let edge = rng.range(1, chunks) * chunk;
                let len = rng.range(2, 2 * span + 1);
                let before = rng.range(1, len);
                (edge - before, len.min(size - (edge - before)))
            }
            // Ending exactly at the end of the volume.
            4 => {
                let len = rng.range(1, 2 * span);
                (size - len, len)
            }
            _ => {
                let off = rng.below(size - 1);
                (off, rng.range(1, 4097).min(size - off))
            }
        };
        writes.push((off, len));
    }
    writes.push((size - 1, 1));
    writes.push((0, 1));
    for (i, &(off, len)) in writes.iter().enumerate() {
        if i == 100 || i == 200 {
            let name = format!("s{i}");
            vol.snapshot_create(&name).unwrap();
            snaps.push((name, live.clone()));
        }
        let data = pattern(1 + i as u64, off, len);
        vol.write(off, &data).unwrap();
        live[off as usize..(off + len) as usize].copy_from_slice(&data);
        // A read at an odd place around the write.
        let roff = off.saturating_sub(rng.below(span + 3));
        let rlen = rng.range(1, 2 * span + 5).min(size - roff);
        let mut buf = vec![0u8; rlen as usize];
        vol.read(roff, &mut buf).unwrap();
        assert_bytes_eq(
            &buf,
            &live[roff as usize..(roff + rlen) as usize],
            roff,
            &format!("live read after write {i} ({off}+{len})"),
        );
        for (name, data) in &snaps {
            let seq = vol.snapshot(name).unwrap().seq;
            vol.read_snapshot(seq, roff, &mut buf).unwrap();
            assert_bytes_eq(
                &buf,
                &data[roff as usize..(roff + rlen) as usize],
                roff,
                &format!("snapshot {name} read after write {i}"),
            );
        }
    }
    assert_volume(&vol, &live, &snaps, "after the unaligned writes");

    // Out of bounds: refused, and nothing changes.
    vol.destage_all().unwrap();
    let before = vol.info();
    let oob = |r: snapvol_engine::Result<()>, what: &str| match r {
        Err(Error::OutOfBounds { .. }) => {}
        other => panic!("{what}: want OutOfBounds, got {other:?}"),
    };
    oob(vol.write(size - 10, &[0xee; 11]), "write over the end");
    oob(vol.write(size, &[0xee]), "write at the end");
    oob(
        vol.write(u64::MAX - 1, &[0xee; 4]),
        "write whose end overflows",
    );
    oob(
        vol.write_zeroes(size - chunk, chunk + 1),
        "write_zeroes over the end",
    );
    oob(vol.trim(size - 1, 2), "trim over the end");
    let mut buf = [0u8; 2];
    oob(vol.read(size - 1, &mut buf), "read over the end");
    let seq = vol.snapshot(&snaps[0].0).unwrap().seq;
    oob(
        vol.read_snapshot(seq, size - 1, &mut buf),
        "snapshot read over the end",
    );
    vol.destage_all().unwrap();
    let after = vol.info();
    assert_eq!(
        (after.target_used_bytes, after.copies_since_open),
        (before.target_used_bytes, before.copies_since_open),
        "a refused write preserves nothing"
    );
    assert_volume(&vol, &live, &snaps, "after refused out-of-bounds requests");
    vol.close().unwrap();
    let source = std::fs::read(fx.source_path("vol")).unwrap();
    assert_bytes_eq(&source, &live, 0, "the source VLUN after close");
    let vol = fx.open("vol", opts(MIB));
    assert_volume(&vol, &live, &snaps, "after reopening");
    vol.close().unwrap();
}

#[test]
fn unaligned_writes_and_reads_read_back_exactly_and_out_of_bounds_changes_nothing_with_4k_chunks() {
    unaligned_io(4 * KIB);
}

#[test]
fn unaligned_writes_and_reads_read_back_exactly_and_out_of_bounds_changes_nothing_with_16k_chunks()
{
    unaligned_io(16 * KIB);
}

#[test]
fn unaligned_writes_and_reads_read_back_exactly_and_out_of_bounds_changes_nothing_with_1m_chunks() {
    unaligned_io(MIB);
}

// ---------------------------------------------------------------------------------------------
// 7. write_zeroes and trim.
// ---------------------------------------------------------------------------------------------

fn zero_and_trim(flush_between: bool) {
    const SIZE: u64 = 2 * MIB;
    const CHUNK: u64 = 64 * KIB;
    const C: u64 = CHUNK;
    let fx = Fixture::new();
    let vol = fx.create("vol", SIZE, CHUNK, None, opts(16 * MIB));
    let mut live = pattern(0, 0, SIZE);
    vol.write(0, &live).unwrap();
    vol.destage_all().unwrap();
    vol.snapshot_create("s1").unwrap();
    let mut snaps = vec![("s1".to_owned(), live.clone())];
    let mut touched = BTreeSet::new();

    type Op = fn(&Volume, u64, u64) -> snapvol_engine::Result<()>;
    let zero: Op = |v, o, l| v.write_zeroes(o, l);
    let trim: Op = |v, o, l| v.trim(o, l);
    let ops: [(Op, u64, u64); 7] = [
        (zero, 2 * C, 4 * C),          // whole chunks
        (zero, 8 * C + 100, C + 4900), // partial chunks, unaligned
        (trim, 12 * C, 4 * C),         // whole chunks
        (trim, 18 * C + 4096, 4096),   // one block inside a chunk
        (trim, 20 * C + 1, 2 * C - 2), // partial at both ends
        (zero, 24 * C - 1, 2),         // two bytes over a chunk edge
        (trim, SIZE - C - 3, C + 3),   // up to the end of the volume
    ];
    for (op, off, len) in ops {
        op(&vol, off, len).unwrap();
        if flush_between {
            vol.destage_all().unwrap();
        }
        live[off as usize..(off + len) as usize].fill(0);
        touched.extend(off / C..(off + len).div_ceil(C));
        assert_volume(&vol, &live, &snaps, &format!("after zeroing {off}+{len}"));
    }
    vol.destage_all().unwrap();
    assert_eq!(
        vol.info().target_used_bytes,
        touched.len() as u64 * C,
        "each zeroed or trimmed chunk's original is preserved once for s1"
    );

    // A snapshot of the zeroed state keeps reading zeroes after the ranges are rewritten.
    vol.snapshot_create("s2").unwrap();
    snaps.push(("s2".to_owned(), live.clone()));
    for (i, (_, off, len)) in ops.iter().enumerate() {
        let data = pattern(50 + i as u64, *off, *len);
        vol.write(*off, &data).unwrap();
        live[*off as usize..(*off + *len) as usize].copy_from_slice(&data);
    }
    // And zeroing over rewritten data, again in whole and partial chunks.
    vol.snapshot_create("s3").unwrap();
    snaps.push(("s3".to_owned(), live.clone()));
    vol.trim(0, 3 * C).unwrap();
    vol.write_zeroes(9 * C + 10, 3 * C).unwrap();
    live[..(3 * C) as usize].fill(0);
    live[(9 * C + 10) as usize..(12 * C + 10) as usize].fill(0);
    assert_volume(&vol, &live, &snaps, "after rewriting and zeroing again");
    vol.close().unwrap();
    let source = std::fs::read(fx.source_path("vol")).unwrap();
    assert_bytes_eq(&source, &live, 0, "the source VLUN after close");
    let vol = fx.open("vol", opts(16 * MIB));
    assert_volume(&vol, &live, &snaps, "after reopening");
    vol.close().unwrap();
}

#[test]
fn zeroed_and_trimmed_ranges_read_as_zero_and_snapshots_keep_the_originals() {
    zero_and_trim(true);
}

#[test]
fn zeroed_and_trimmed_ranges_read_as_zero_and_snapshots_keep_the_originals_without_flushes() {
    zero_and_trim(false);
}

// ---------------------------------------------------------------------------------------------
// Snapshots live in the cache journal until the metadata log takes them.
// ---------------------------------------------------------------------------------------------

/// A snapshot is one journal append: taken, then the process killed before any destage or
/// metadata-log write, it must come back from the journal with exactly the data acknowledged
/// before it — and a snapshot deleted before the kill must stay deleted.
#[test]
fn a_snapshot_killed_before_any_destage_comes_back_from_the_journal_and_a_deleted_one_stays_gone() {
    let fx = Fixture::new();
    let size = 4 * MIB;
    let manual = VolumeOptions {
        background_destage: false,
        ..opts(8 * MIB)
    };
    let vol = fx.create("v", size, 64 * KIB, None, manual.clone());
    let a = pattern(1, 0, size);
    vol.write(0, &a).unwrap();
    vol.destage_all().unwrap();
    // Written after the last destage: only the journal (with the snapshot) holds it.
    let b = pattern(2, 64 * KIB, 256 * KIB);
    vol.write(64 * KIB, &b).unwrap();
    let mut at_s1 = a.clone();
    at_s1[64 * 1024..320 * 1024].copy_from_slice(&b);
    vol.snapshot_create("s1").unwrap();
    vol.snapshot_create("gone").unwrap();
    vol.snapshot_delete("gone").unwrap();
    // An overwrite after s1: s2's append makes it durable with s2, and s1 must not see it.
    vol.write(0, &pattern(3, 0, MIB)).unwrap();
    vol.snapshot_create("s2").unwrap();
    vol.kill();

    let vol = fx.open("v", manual.clone());
    let names: Vec<String> = vol.snapshots().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["s1", "s2"], "snapshots after the kill");
    let mut live = at_s1.clone();
    live[..1024 * 1024].copy_from_slice(&pattern(3, 0, MIB));
    assert_volume(
        &vol,
        &live,
        &[("s1".into(), at_s1.clone()), ("s2".into(), live.clone())],
        "after the kill",
    );
    // The recovered snapshots are in the metadata log now: a second reopen (with an empty
    // journal) and a check agree.
    vol.close().unwrap();
    let report = fx.store.check("v", false).unwrap();
    assert!(
        report.is_clean(),
        "check after recovery: {:?}",
        report.problems
    );
    let vol = fx.open("v", manual);
    assert_volume(
        &vol,
        &live,
        &[("s1".into(), at_s1), ("s2".into(), live.clone())],
        "after a clean reopen",
    );
    // A new snapshot takes a fresh sequence number.
    let s3 = vol.snapshot_create("s3").unwrap();
    assert!(vol
        .snapshots()
        .iter()
        .all(|s| s.name == "s3" || s.seq < s3.seq));
}

// ---------------------------------------------------------------------------------------------
// 8. Errors a user acts on.
// ---------------------------------------------------------------------------------------------

#[test]
fn name_clashes_missing_names_and_a_second_open_are_refused_with_their_own_errors() {
    const SIZE: u64 = MIB;
    const CHUNK: u64 = 64 * KIB;
    let fx = Fixture::new();
    let vol = fx.create("vol", SIZE, CHUNK, None, opts(4 * MIB));
    let live = pattern(0, 0, SIZE);
    vol.write(0, &live).unwrap();
    let s = vol.snapshot_create("s").unwrap();

    match vol.snapshot_create("s") {
        Err(Error::SnapshotExists(name)) => assert!(name.contains('s')),
        other => panic!("a second snapshot 's': want SnapshotExists, got {other:?}"),
    }
    assert_eq!(vol.info().snapshots.len(), 1, "the clash created nothing");
    assert_eq!(
        vol.snapshot("s").unwrap().seq,
        s.seq,
        "the first 's' is untouched"
    );
    match vol.snapshot_delete("missing") {
        Err(Error::SnapshotNotFound(_)) => {}
        other => panic!("deleting a missing snapshot: want SnapshotNotFound, got {other:?}"),
    }
    assert!(matches!(
        vol.snapshot("missing"),
        Err(Error::SnapshotNotFound(_))
    ));

    match fx.store.open("nothing", opts(4 * MIB)) {
        Err(Error::VolumeNotFound(name)) => assert_eq!(name, "nothing"),
        other => panic!("opening a missing volume: want VolumeNotFound, got {other:?}"),
    }
    let create = snapvol_engine::CreateOptions::new(SIZE);
    match fx.store.create("vol", &create, opts(4 * MIB)) {
        Err(Error::VolumeExists(name)) => assert_eq!(name, "vol"),
        other => panic!("creating 'vol' again: want VolumeExists, got {other:?}"),
    }
    match fx.store.open("vol", opts(4 * MIB)) {
        Err(Error::Locked { volume, holder }) => {
            assert_eq!(volume, "vol");
            assert!(
                holder.contains(&std::process::id().to_string()),
                "the error names the holder: {holder}"
            );
        }
        other => panic!("opening an open volume: want Locked, got {other:?}"),
    }

    // None of the refusals harmed the volume that is open.
    let overwrite = pattern(1, 0, SIZE);
    vol.write(0, &overwrite).unwrap();
    assert_volume(
        &vol,
        &overwrite,
        &[("s".to_owned(), live.clone())],
        "after the refusals",
    );
    vol.snapshot_delete("s").unwrap();
    let mut buf = vec![0u8; 16];
    assert!(
        matches!(
            vol.read_snapshot(s.seq, 0, &mut buf),
            Err(Error::SnapshotNotFound(_))
        ),
        "a deleted snapshot cannot be read"
    );
    match vol.snapshot_delete("s") {
        Err(Error::SnapshotNotFound(_)) => {}
        other => panic!("deleting 's' twice: want SnapshotNotFound, got {other:?}"),
    }
    vol.close().unwrap();

    // Once closed, the volume opens again, with its data.
    let vol = fx.open("vol", opts(4 * MIB));
    assert_volume(&vol, &overwrite, &[], "after reopening");
    vol.close().unwrap();
}
