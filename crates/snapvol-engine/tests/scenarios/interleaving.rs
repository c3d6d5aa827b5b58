//! Interleaving (scenario 3): each snapshot reads exactly its point in time; each overwrite
//! preserves a chunk at most once.

use crate::common::{assert_bytes_eq, assert_volume, opts, pattern, Fixture, KIB, MIB};

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
