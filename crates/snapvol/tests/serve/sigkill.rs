//! SIGKILL of the server under fio load: flushed writes and earlier snapshots are intact and
//! `check` passes.

use std::thread;
use std::time::{Duration, Instant};

use crate::serving::*;

/// Hashes of each MiB of `[offset, offset + len)` of `export`, read over NBD.
fn region_digest(server: &Server, export: &str, offset: u64, len: u64) -> Vec<u64> {
    use std::hash::{Hash, Hasher};
    let mut conn = RawNbd::connect(server.port(), export).expect("open the export");
    (offset..offset + len)
        .step_by(MIB as usize)
        .map(|at| {
            let data = conn.read(at, MIB as u32).expect("read a MiB");
            let mut h = std::collections::hash_map::DefaultHasher::new();
            data.hash(&mut h);
            h.finish()
        })
        .collect()
}

/// Starts fio B in the background on `export`: `fio_job(uri, offset, len, jobs, seed)` for up
/// to a minute, a FLUSH every 16 writes, no verification (it dies with the server). Returns
/// once B's writes are reaching the volume (its first job's region no longer reads as it did
/// before B started) and B is still running.
pub(crate) fn start_load(
    env: &Env,
    server: &Server,
    export: &str,
    job: (u64, u64, u32, u64),
) -> Background {
    let (offset, len, jobs, seed) = job;
    let before = region_digest(server, export, offset, len);
    let args = with(
        fio_job(&server.uri(export), offset, len, jobs, seed),
        &[
            "--time_based",
            "--runtime=60",
            "--fsync=16",
            "--do_verify=0",
        ],
    );
    let mut b = Background::spawn(
        tool("fio").args(&args).current_dir(env.dir()),
        env.dir(),
        "fio-b",
    );
    let start = Instant::now();
    while region_digest(server, export, offset, len) == before {
        assert!(
            b.is_running(),
            "fio B stopped before writing anything:\n{}",
            b.output_so_far()
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "fio B wrote nothing in 60 s:\n{}",
            b.output_so_far()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        b.is_running(),
        "fio B stopped early:\n{}",
        b.output_so_far()
    );
    b
}

#[test]
fn after_sigkill_under_fio_load_flushed_writes_and_earlier_snapshots_are_intact_and_check_passes() {
    let env = Env::new();
    env.create("v", "256M");
    let server = env.serve();
    let live = server.uri("v");

    // A: [0, 64M), completed and flushed.
    let job_a = |uri: &str| fio_job(uri, 0, 64 * MIB, 1, 1);
    fio_ok(
        &env,
        &with(job_a(&live), &["--end_fsync=1"]),
        Some(64 * MIB),
        64 * MIB,
    );
    // A known pattern over [64M, 192M), then a snapshot of it all, saved.
    qemu_io_write(&live, &[(0x5a, 64 * MIB, 128 * MIB)]);
    env.snapvol_ok(&["snapshot", "create", "v@s1"]);
    let s1_img = env.path("s1.img");
    nbdcopy(&server.uri("v@s1"), &s1_img);

    // B: load over [64M, 192M) — every write preserves v@s1's original — with a flush every
    // 16 writes, until the crash.
    let mut b = start_load(&env, &server, "v", (64 * MIB, 128 * MIB, 1, 2));
    // A snapshot taken under that load, and read out while the load goes on.
    env.snapvol_ok(&["snapshot", "create", "v@s2"]);
    let s2_img = env.path("s2.img");
    nbdcopy(&server.uri("v@s2"), &s2_img);

    // D: [192M, 256M), written and flushed while B runs.
    let job_d = |uri: &str| fio_job(uri, 192 * MIB, 64 * MIB, 1, 3);
    fio_ok(
        &env,
        &with(job_d(&live), &["--end_fsync=1"]),
        Some(64 * MIB),
        64 * MIB,
    );
    assert!(
        b.is_running(),
        "fio B was not running at the crash:\n{}",
        b.output_so_far()
    );
    server.kill9();
    let b_out = b.wait_within(Duration::from_secs(60));
    assert!(!b_out.status.success(), "fio B survived the server's death");

    let server = env.serve();
    let live = server.uri("v");
    fio_verify(&env, job_a(&live), 64 * MIB);
    fio_verify(&env, job_d(&live), 64 * MIB);
    assert!(
        server.log().contains("recovery complete"),
        "the restart replayed no journal: the crash tested nothing\n{}",
        server.log()
    );
    assert!(
        qemu_img_compare(s1_img.to_str().unwrap(), &server.uri("v@s1")),
        "v@s1 changed across the crash"
    );
    assert!(
        qemu_img_compare(s2_img.to_str().unwrap(), &server.uri("v@s2")),
        "v@s2 changed across the crash"
    );
    server.stop();
    let out = env.snapvol_ok(&["check", "v"]);
    assert!(out.contains("clean"), "{out}");
}
