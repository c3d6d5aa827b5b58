//! What a compaction of a large metadata log costs the requests around it.
//!
//! A volume of 4 KiB chunks on real files is filled, then rewritten in rounds: each round takes
//! a snapshot, rewrites every chunk once in a shuffled order with 4 KiB writes (so every chunk
//! is preserved once, its copy in a slot unlike its neighbours', a record per copy), and
//! deletes the previous round's snapshot (freeing its copies) once the rest is destaged, so
//! that the deletion waits for no batch. The log grows by a record per
//! chunk each round while the live state stays one copy per chunk, so every few rounds it is
//! compacted, rewriting every live record. Printed per round: the latency of the 4 KiB writes
//! (they wait for the destager when the cache is full), of the snapshot creation, of
//! destaging what the cache still holds, and of the deletion, and the volume's compaction
//! figures.
//!
//! Run: `cargo run --release -p snapvol-engine --example compaction_stall`
//! (`SNAPVOL_BENCH_MIB`, default 256: the volume size; `ROUNDS`, default 8;
//! `SNAPVOL_BENCH_DIR`, default /var/tmp: where the store goes).

use std::time::{Duration, Instant};

use snapvol_engine::{CreateOptions, Store, VolumeOptions};

mod common;
use common::{env, store_dir};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let size = env("SNAPVOL_BENCH_MIB", 256) * MIB;
    let rounds = env("ROUNDS", 8);
    let dir = store_dir();
    let opts = CreateOptions {
        chunk_size: 4096,
        ..CreateOptions::new(size)
    };
    let vol = Store::new(dir.path())
        .create("stall", &opts, VolumeOptions::default())
        .expect("create");
    let chunks = size / (4 * KIB);
    let mut buf = vec![0x5au8; MIB as usize];
    for off in (0..size).step_by(MIB as usize) {
        vol.write(off, &buf).expect("fill");
    }
    vol.destage_all().expect("destage");

    // A fixed shuffle of the chunks: multiplying by an odd number permutes the residues
    // modulo a power of two, and sends neighbours far apart.
    assert!(
        chunks.is_power_of_two(),
        "SNAPVOL_BENCH_MIB must be a power of two"
    );
    let order: Vec<u64> = (0..chunks)
        .map(|i| i.wrapping_mul(2_654_435_761) % chunks)
        .collect();
    println!(
        "{} MiB, {chunks} chunks of 4 KiB; per round every chunk rewritten once",
        size / MIB
    );
    println!(
        "round | write p50 / p99 / p99.9 / max (ms) | create (ms) | destage the rest (ms) | \
         delete (ms) | compactions (tail records) | compaction time (ms)"
    );
    buf.truncate(4 * KIB as usize);
    for round in 0..rounds {
        let t = Instant::now();
        vol.snapshot_create(&format!("r{round}")).expect("create");
        let create = t.elapsed();
        let mut lat: Vec<Duration> = Vec::with_capacity(chunks as usize);
        for (i, &c) in order.iter().enumerate() {
            buf[0] = round as u8;
            buf[1] = i as u8;
            let t = Instant::now();
            vol.write(c * 4 * KIB, &buf).expect("write");
            lat.push(t.elapsed());
        }
        let t = Instant::now();
        vol.destage_all().expect("destage");
        let destage = t.elapsed();
        let delete = if round > 0 {
            let t = Instant::now();
            vol.snapshot_delete(&format!("r{}", round - 1))
                .expect("delete");
            t.elapsed()
        } else {
            Duration::ZERO
        };
        lat.sort_unstable();
        let q = |p: f64| ms(lat[((lat.len() as f64 - 1.0) * p) as usize]);
        let m = vol.metrics();
        println!(
            "{round:>5} | {:.3} / {:.3} / {:.2} / {:.1} | {:.2} | {:.0} | {:.2} | {} ({}) | {:.1}",
            q(0.5),
            q(0.99),
            q(0.999),
            q(1.0),
            ms(create),
            ms(destage),
            ms(delete),
            m.compactions,
            m.compaction_tail_records,
            m.compaction_duration.sum_seconds * 1e3,
        );
    }
    vol.close().expect("close");
}
