//! What snapshot create and delete cost the engine with 10 and with many snapshots, in
//! process (no `snapvol` process start, no control socket: `scripts/bench-many-snapshots.py`
//! measures those through `serve`).
//!
//! A sparse 8 GiB volume of 64 KiB chunks; snapshots s1..sN, with 4 KiB written to a chunk of
//! its own between each two (as `bench-many-snapshots.py` does). At 10 and at N
//! snapshots: medians of `REPS` creates of a throwaway snapshot, and of its deletion after a
//! 4 KiB overwrite was destaged (so the deletion frees a copy).
//!
//! Run: `cargo run --release -p snapvol-engine --example many_snapshots` (`SNAPS`, default
//! 10000; `REPS`, default 20; `SNAPVOL_BENCH_DIR`, default /var/tmp: where the store goes).

use std::time::{Duration, Instant};

use snapvol_engine::{CreateOptions, Store, Volume, VolumeOptions};

mod common;
use common::{env, store_dir};

const CHUNK: u64 = 64 << 10;

fn median(mut d: Vec<Duration>) -> f64 {
    d.sort();
    d[d.len() / 2].as_secs_f64() * 1e6
}

fn measure(vol: &Volume, reps: u64, snaps: u64) {
    let block = vec![0xa5u8; 4096];
    let (mut create, mut delete) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        vol.snapshot_create("throwaway").expect("create");
        create.push(t.elapsed());
        vol.write(0, &block).expect("write");
        vol.destage_all().expect("destage");
        let t = Instant::now();
        vol.snapshot_delete("throwaway").expect("delete");
        delete.push(t.elapsed());
    }
    println!(
        "{snaps:>6} snapshots: create {:>8.0} µs, delete {:>8.0} µs (medians of {reps})",
        median(create),
        median(delete)
    );
}

fn main() {
    let n = env("SNAPS", 10_000);
    let reps = env("REPS", 20);
    let dir = store_dir();
    let vol = Store::new(dir.path())
        .create(
            "many",
            &CreateOptions::new(8 << 30),
            VolumeOptions::default(),
        )
        .expect("create");
    let block = vec![0x5au8; 4096];
    for i in 1..=n {
        vol.write(i * CHUNK, &block).expect("write");
        vol.snapshot_create(&format!("s{i}")).expect("snapshot");
        if i == 10 || i == n {
            vol.destage_all().expect("destage");
            measure(&vol, reps, i);
        }
    }
    vol.close().expect("close");
}
