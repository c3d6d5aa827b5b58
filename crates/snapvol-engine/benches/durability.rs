//! Durability benchmarks on real files.
//!
//! - `flush_full_cache/SIZE`: latency of FLUSH when the RAM cache holds SIZE of dirty data that
//!   is not yet in the journal (the worst case: everything must be appended and synced).
//! - `recovery/VOLUME`: time to open a volume whose journal holds 256 MiB of flushed but not
//!   destaged writes after the process died (`Volume::kill` stops it exactly as SIGKILL
//!   would: nothing more is written), on a 1 GiB and a sparse 1 TiB volume. Recovery replays
//!   the journal and destages it; it must not depend on the volume size.
//!
//! Run: `cargo bench -p snapvol-engine --bench durability` (figures in docs/benchmarks.md).
//! `SNAPVOL_BENCH_DIR` picks the file system (default /var/tmp).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use snapvol_engine::{CreateOptions, Store, Volume, VolumeOptions};

const MIB: u64 = 1 << 20;

fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::var("SNAPVOL_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
        .expect("tempdir")
}

fn write_mib(vol: &Volume, from: u64, mib: u64, seed: u8) {
    let mut buf = vec![0u8; MIB as usize];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(13).wrapping_add(seed);
    }
    for m in 0..mib {
        buf[0] = m as u8;
        vol.write(from + m * MIB, &buf).expect("write");
    }
}

fn flush_full_cache(c: &mut Criterion) {
    let mut group = c.benchmark_group("flush_full_cache");
    group.sample_size(10);
    let cache = 128 * MIB;
    let dir = bench_dir();
    let store = Store::new(dir.path());
    let opts = VolumeOptions {
        cache_size: cache,
        // Keep the destager from draining the cache before the flush is measured.
        background_destage: false,
        ..VolumeOptions::default()
    };
    let vol = store
        .create("bench", &CreateOptions::new(GIB), opts)
        .expect("create");
    group.throughput(Throughput::Bytes(cache / 2));
    let mut round = 0u8;
    group.bench_function(BenchmarkId::from_parameter("64MiB"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round = round.wrapping_add(1);
                // Untimed: fill half the cache (what fits beside the request copies).
                write_mib(&vol, 0, cache / 2 / MIB, round);
                let start = Instant::now();
                vol.flush().expect("flush");
                total += start.elapsed();
                vol.destage_all().expect("destage");
            }
            total
        });
    });
    vol.close().expect("close");
    group.finish();
}

const GIB: u64 = 1 << 30;

fn recovery(c: &mut Criterion) {
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    let dirty = 256 * MIB;
    group.throughput(Throughput::Bytes(dirty));
    for (label, size) in [("1GiB", GIB), ("1TiB", 1u64 << 40)] {
        let dir = bench_dir();
        let store = Store::new(dir.path());
        let opts = VolumeOptions {
            cache_size: 2 * dirty,
            background_destage: false,
            ..VolumeOptions::default()
        };
        let create = CreateOptions {
            journal_size: 4 * dirty,
            ..CreateOptions::new(size)
        };
        store
            .create("bench", &create, opts.clone())
            .expect("create")
            .close()
            .expect("close");
        let mut round = 0u8;
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round = round.wrapping_add(1);
                    // Untimed: 256 MiB flushed into the journal, then the process "dies".
                    let vol = store.open("bench", opts.clone()).expect("open");
                    vol.snapshot_create(&format!("s{round}")).expect("snapshot");
                    write_mib(&vol, 0, dirty / MIB, round);
                    vol.flush().expect("flush");
                    vol.kill();
                    let start = Instant::now();
                    let vol = store.open("bench", opts.clone()).expect("recover");
                    total += start.elapsed();
                    vol.close().expect("close");
                }
                total
            });
        });
    }
    group.finish();
}

criterion_group!(benches, flush_full_cache, recovery);
criterion_main!(benches);
