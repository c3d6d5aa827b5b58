//! In-process benchmarks of the engine on real files.
//!
//! - `overwrite/N`: sequential 1 MiB overwrite of a pre-filled volume right after N snapshots
//!   were taken back to back (each measured pass gets fresh snapshots, so every pass preserves
//!   every chunk once), timed until everything is destaged: journal, preserved originals and
//!   source all written and synced. Cost must not grow with N.
//! - `snapshot_create/SIZE`: latency of taking a snapshot of an idle volume of 1 GiB and of a
//!   sparse 1 TiB volume. It must not depend on the size.
//! - `snapshot_read/preserved`: reading a whole snapshot sequentially in 1 MiB reads when
//!   every chunk of it was overwritten since, so every byte comes from a preserved copy on
//!   the target (and every copy's checksum is verified); `snapshot_read/live` reads the live
//!   volume the same way, for comparison.
//!
//! - `snapshot_delete_index/{span,whole}`: what deleting one of 10,000 snapshots costs the
//!   preservation index, which holds 64 copies for each of them (640,000 in all): the walk a
//!   deletion does (`span`: the copies whose newest reader is the deleted snapshot) against
//!   a walk of the whole index (`whole`, what deletions did before).
//!
//! - `cache_land/4k`: the CPU a random 4 KiB write costs the RAM cache, no I/O: writes land in
//!   a 1 GiB volume of 64 KiB chunks (128 MiB bound), and whenever 64 MiB are dirty, 32 MiB of
//!   versions are taken and retired as a destage batch would.
//!
//! Run: `cargo bench -p snapvol-engine --bench engine` (figures in docs/benchmarks.md).
//! `SNAPVOL_BENCH_MIB` sets the overwrite volume size (default 256).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use snapvol_engine::cache::{Cache, Journaling, Landing, Pick};
use snapvol_engine::metadata::{Entry, Index, SnapshotMeta, SnapshotTable};
use snapvol_engine::units::{ChunkIndex, Epoch, Geometry, SnapshotSeq, TargetSlot};
use snapvol_engine::{CreateOptions, Store, Volume, VolumeOptions};

const MIB: u64 = 1 << 20;

fn volume_mib() -> u64 {
    std::env::var("SNAPVOL_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

/// A fresh volume of `size` bytes in a temporary store (`SNAPVOL_BENCH_DIR`, else /var/tmp);
/// the directory lives as long as the returned guard.
fn bench_volume(size: u64) -> (tempfile::TempDir, Volume) {
    let dir = tempfile::tempdir_in(
        std::env::var("SNAPVOL_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()),
    )
    .expect("tempdir");
    let vol = Store::new(dir.path())
        .create("bench", &CreateOptions::new(size), VolumeOptions::default())
        .expect("create");
    (dir, vol)
}

fn fill(vol: &Volume, seed: u8) {
    let mut buf = vec![0u8; MIB as usize];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    for off in (0..vol.size()).step_by(MIB as usize) {
        buf[0] = off as u8;
        vol.write(off, &buf).expect("write");
    }
    vol.destage_all().expect("destage");
}

fn overwrite(c: &mut Criterion) {
    let size = volume_mib() * MIB;
    let mut group = c.benchmark_group("overwrite");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Bytes(size));
    for n in [0usize, 1, 8, 64] {
        let (_dir, vol) = bench_volume(size);
        fill(&vol, 1);
        let mut round = 0u32;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Untimed: replace the previous pass's snapshots with N fresh ones.
                    for s in vol.snapshots() {
                        vol.snapshot_delete(&s.name).expect("delete");
                    }
                    for i in 0..n {
                        vol.snapshot_create(&format!("r{round}-{i}"))
                            .expect("snapshot");
                    }
                    round += 1;
                    let start = Instant::now();
                    fill(&vol, round as u8);
                    total += start.elapsed();
                }
                total
            });
        });
        vol.close().expect("close");
    }
    group.finish();
}

fn snapshot_create(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_create");
    group.sample_size(50);
    for (label, size) in [("1GiB", 1u64 << 30), ("1TiB", 1u64 << 40)] {
        let (_dir, vol) = bench_volume(size);
        // Some data, so the volume is not trivially empty.
        fill_prefix(&vol, 64 * MIB);
        let mut i = 0u64;
        group.bench_function(label, |b| {
            b.iter(|| {
                i += 1;
                vol.snapshot_create(&format!("s{i}")).expect("snapshot");
            });
        });
        vol.close().expect("close");
    }
    group.finish();
}

fn fill_prefix(vol: &Volume, bytes: u64) {
    let buf = vec![0x5au8; MIB as usize];
    for off in (0..bytes).step_by(MIB as usize) {
        vol.write(off, &buf).expect("write");
    }
    vol.flush().expect("flush");
}

fn snapshot_read(c: &mut Criterion) {
    let size = volume_mib() * MIB;
    let mut group = c.benchmark_group("snapshot_read");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Bytes(size));
    let (_dir, vol) = bench_volume(size);
    fill(&vol, 1);
    let seq = vol.snapshot_create("old").expect("snapshot").seq;
    fill(&vol, 2);
    let mut buf = vec![0u8; MIB as usize];
    group.bench_function("preserved", |b| {
        b.iter(|| {
            for off in (0..size).step_by(MIB as usize) {
                vol.read_snapshot(seq, off, &mut buf).expect("read");
            }
        });
    });
    group.bench_function("live", |b| {
        b.iter(|| {
            for off in (0..size).step_by(MIB as usize) {
                vol.read(off, &mut buf).expect("read");
            }
        });
    });
    group.finish();
    vol.close().expect("close");
}

fn snapshot_delete_index(c: &mut Criterion) {
    const SNAPS: u64 = 10_000;
    const PER_SNAPSHOT: u64 = 64;
    let mut group = c.benchmark_group("snapshot_delete_index");
    group.sample_size(10);
    // Snapshot s has 64 copies that only it reads (chunks written both before and after it);
    // one in the middle is deleted, the table already without it.
    let build = || {
        let index = Index::default();
        for s in 1..=SNAPS {
            for k in 0..PER_SNAPSHOT {
                let chunk = (s * 7919 + k * 104_729) % (1 << 24);
                index.insert(
                    ChunkIndex(chunk),
                    Entry {
                        lo: s,
                        hi: s,
                        slot: TargetSlot(s * PER_SNAPSHOT + k),
                        crc: 0,
                    },
                );
            }
        }
        index
    };
    let deleted = SnapshotSeq(SNAPS / 2);
    let mut table = SnapshotTable::default();
    for s in (1..=SNAPS).filter(|&s| s != deleted.0) {
        table.push(SnapshotMeta {
            seq: SnapshotSeq(s),
            name: format!("s{s}"),
            created: std::time::SystemTime::UNIX_EPOCH,
        });
    }
    group.bench_function("span", |b| {
        b.iter_batched_ref(
            build,
            |index| assert_eq!(index.remove_unreferenced_after(&table, deleted).len(), 64),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("whole", |b| {
        b.iter_batched_ref(
            build,
            |index| assert_eq!(index.remove_unreferenced(&table).len(), 64),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn cache_land(c: &mut Criterion) {
    const VOLUME: u64 = 1 << 30;
    let cache = Cache::new(
        Geometry::new(VOLUME, 64 << 10).expect("geometry"),
        128 * MIB,
    );
    let data: Arc<[u8]> = Arc::from(vec![7u8; 4096]);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut group = c.benchmark_group("cache_land");
    group.throughput(Throughput::Bytes(4096));
    group.bench_function("4k", |b| {
        b.iter(|| {
            // xorshift64: a random 4 KiB block of the volume.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let offset = state % (VOLUME / 4096) * 4096;
            let req = Landing {
                offset,
                len: 4096,
                data: Some((&data, 0)),
                epoch: Epoch(0),
                journal: Journaling::In(1),
            };
            cache.lock_range(offset, 4096).land(&req, |_| false, &[]);
            if cache.dirty_bytes() >= 64 * MIB {
                for mut taken in cache.collect(32 * MIB, Pick::ANY, &[]) {
                    cache.retire(&mut taken);
                }
                cache.forget_footprints(u64::MAX);
            }
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    overwrite,
    snapshot_create,
    snapshot_read,
    snapshot_delete_index,
    cache_land
);
criterion_main!(benches);
