//! `create --write-mode throughput` served to real clients, then SIGKILL: what FLUSH, FUA
//! writes and snapshots made durable survives, and what they did not is, block by block, old
//! or new data, never anything else. The same crashes on an atomic volume, where an unflushed
//! request is all-old or all-new.
//!
//! qemu-io runs with `-t writeback` and stays open across the crash: qemu-io's default cache
//! mode, writethrough, sends every write as FUA, and qemu flushes as it closes an image, so
//! either would make "unflushed" writes durable. The server's metrics show which requests
//! reached it and whether the 1 MiB writes went through the journal.

use std::thread;
use std::time::{Duration, Instant};

use crate::serving::*;
use crate::sigkill::start_load;

/// `snapvol create VOL --size SIZE --write-mode MODE`.
fn create(env: &Env, volume: &str, size: &str, mode: &str) {
    let out = env.snapvol_ok(&["create", volume, "--size", size, "--write-mode", mode]);
    assert!(out.contains(&format!("write mode {mode}")), "{out}");
}

/// `snapvol serve --metrics 127.0.0.1:PORT`; returns the server and the metrics port.
fn serve_with_metrics(env: &Env) -> (Server, u16) {
    let port = free_port();
    (
        env.serve_with(&["--metrics", &format!("127.0.0.1:{port}")]),
        port,
    )
}

/// NBD requests of kind `op` the live export of `v` received.
fn requests(s: &Samples, op: &str) -> u64 {
    s.count(&format!(
        r#"snapvol_nbd_requests_total{{volume="v",export="live",op="{op}"}}"#
    ))
}

/// Bytes of v's journal holding records not yet destaged.
fn journal_used(s: &Samples) -> u64 {
    s.count(r#"snapvol_journal_used_bytes{volume="v"}"#)
}

/// An interactive qemu-io on `uri` in writeback mode: plain writes, no FLUSH unless told.
fn writeback_session(uri: &str) -> Interactive {
    Interactive::spawn(tool("qemu-io").args(["-f", "raw", "-t", "writeback", uri]))
}

/// Sends `command` to qemu-io and waits until it has printed `done` once more than before
/// (at most 60 s).
fn run_until(session: &mut Interactive, command: &str, done: &str) {
    let seen = session.output().matches(done).count();
    session.send(command);
    let deadline = Instant::now() + Duration::from_secs(60);
    while session.output().matches(done).count() == seen {
        assert!(
            Instant::now() < deadline,
            "qemu-io did not print {done:?} for {command:?} within 60 s; it printed:\n{}",
            session.output()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sends qemu-io `write ARGS OFFSET LEN` and waits for it to be acknowledged.
fn write_acked(session: &mut Interactive, args: &str, offset: u64, len: u64) {
    run_until(
        session,
        &format!("write {args} {offset} {len}"),
        &format!("wrote {len}/{len} bytes at offset {offset}"),
    );
}

/// Sends qemu-io `flush` and waits for it to complete: qemu-io prints nothing for a flush,
/// only its next prompt. (Commands are sent one at a time, each once the one before is done:
/// qemu-io reads stdin through a buffer, and a second line read along with the first waits
/// there until more input comes.)
fn flush_done(session: &mut Interactive) {
    run_until(session, "flush", "qemu-io> ");
}

/// Asserts that every 4 KiB block of `[offset, offset + len)` of `export` holds only byte
/// `old` or only byte `new` (a torn request is allowed, garbage is not); returns how many
/// blocks are new.
fn old_or_new(server: &Server, export: &str, offset: u64, len: u64, old: u8, new: u8) -> u64 {
    let mut conn = RawNbd::connect(server.port(), export).expect("open the export");
    let data = conn
        .read(offset, u32::try_from(len).expect("len"))
        .expect("read");
    let mut fresh = 0;
    for (i, block) in data.chunks(4096).enumerate() {
        let at = offset + i as u64 * 4096;
        if block.iter().all(|&b| b == new) {
            fresh += 1;
        } else {
            assert!(
                block.iter().all(|&b| b == old),
                "{export} at {at}: a block that is neither all {old:#x} (old) nor all {new:#x} \
                 (new): {:?}...",
                &block[..16]
            );
        }
    }
    fresh
}

// ---------------------------------------------------------------------------------------------
// qemu-io: FLUSH, a snapshot while serving, unflushed writes, SIGKILL

/// qemu-io writes 4 MiB of 0xab as 1 MiB requests and flushes, writes 1 MiB of 0xbb without a
/// flush, `snapshot create v@s1` runs, 1 MiB writes of 0xcd over [0, 1M) and 0xce over
/// [8M, 9M) follow without a flush, and the server is killed with qemu-io still open.
/// Returns the restarted server.
fn flush_snapshot_unflushed_then_sigkill(env: &Env, mode: &str) -> Server {
    create(env, "v", "64M", mode);
    let (server, metrics) = serve_with_metrics(env);
    let mut session = writeback_session(&server.uri("v"));
    for i in 0..4 {
        write_acked(&mut session, "-P 0xab", i * MIB, MIB);
    }
    flush_done(&mut session);
    // Acknowledged, not flushed: the snapshot must make it durable.
    write_acked(&mut session, "-P 0xbb", 4 * MIB, MIB);
    let before = scrape(metrics);
    assert_eq!(requests(&before, "flush"), 1, "{}", before.text);
    assert_eq!(requests(&before, "write"), 5, "{}", before.text);

    assert_eq!(
        env.snapvol_ok(&["snapshot", "create", "v@s1"]).trim(),
        "created snapshot v@s1"
    );
    write_acked(&mut session, "-P 0xcd", 0, MIB);
    write_acked(&mut session, "-P 0xce", 8 * MIB, MIB);
    let at_crash = scrape(metrics);
    assert_eq!(
        requests(&at_crash, "flush"),
        1,
        "a FLUSH reached the server after the snapshot:\n{}",
        at_crash.text
    );
    assert_eq!(requests(&at_crash, "write"), 7, "{}", at_crash.text);
    if mode == "throughput" {
        // The 1 MiB requests skipped the journal: it holds at most the snapshot's record.
        assert!(
            journal_used(&at_crash) < MIB,
            "1 MiB writes went through the journal of a throughput volume:\n{}",
            at_crash.text
        );
    }
    server.kill9();
    drop(session);
    env.serve()
}

/// What survives [`flush_snapshot_unflushed_then_sigkill`] in either write mode; returns how
/// many 4 KiB blocks of each unflushed write after the snapshot are new.
fn check_after_crash(env: &Env, server: &Server) -> (u64, u64) {
    let live = server.uri("v");
    let s1 = server.uri("v@s1");
    // Flushed, and made durable by the snapshot.
    qemu_io_verify(&live, &[(0xab, MIB, 3 * MIB), (0xbb, 4 * MIB, MIB)]);
    qemu_io_verify(
        &s1,
        &[
            (0xab, 0, 4 * MIB),
            (0xbb, 4 * MIB, MIB),
            (0, 5 * MIB, 59 * MIB),
        ],
    );
    // Never written.
    qemu_io_verify(&live, &[(0, 5 * MIB, 3 * MIB), (0, 9 * MIB, 55 * MIB)]);
    // Unflushed: old or new, block by block.
    let first = old_or_new(server, "v", 0, MIB, 0xab, 0xcd);
    let second = old_or_new(server, "v", 8 * MIB, MIB, 0, 0xce);
    assert_eq!(env.snapshot_names("v"), ["s1"]);
    (first, second)
}

#[test]
fn throughput_flushed_writes_and_a_snapshot_taken_while_serving_survive_sigkill_and_unflushed_ones_are_old_or_new(
) {
    let env = Env::new();
    let server = flush_snapshot_unflushed_then_sigkill(&env, "throughput");
    check_after_crash(&env, &server);
    server.stop();
    let info = env.snapvol_json(&["info", "v", "--json"]);
    assert_eq!(info["write_mode"], "throughput", "{info}");
    let out = env.snapvol_ok(&["check", "v"]);
    assert!(out.contains("clean"), "{out}");
}

#[test]
fn atomic_flushed_writes_and_a_snapshot_taken_while_serving_survive_sigkill_and_unflushed_requests_are_all_old_or_all_new(
) {
    let env = Env::new();
    let server = flush_snapshot_unflushed_then_sigkill(&env, "atomic");
    let (first, second) = check_after_crash(&env, &server);
    // Each request as a whole.
    assert!(
        first == 0 || first == 256,
        "a torn request on an atomic volume: {first} of 256 blocks of [0, 1M) are new"
    );
    assert!(
        second == 0 || second == 256,
        "a torn request on an atomic volume: {second} of 256 blocks of [8M, 9M) are new"
    );
    server.stop();
    let info = env.snapvol_json(&["info", "v", "--json"]);
    assert_eq!(info["write_mode"], "atomic", "{info}");
    let out = env.snapvol_ok(&["check", "v"]);
    assert!(out.contains("clean"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// FLUSH alone

/// qemu-io writes 4 MiB as 1 MiB requests, flushes, and the server is killed at once with
/// qemu-io still open: only the FLUSH made the writes durable.
fn flushed_writes_survive_sigkill(mode: &str) {
    let env = Env::new();
    create(&env, "v", "64M", mode);
    let (server, metrics) = serve_with_metrics(&env);
    let mut session = writeback_session(&server.uri("v"));
    for i in 0..4 {
        write_acked(&mut session, "-P 0x5a", 16 * MIB + i * MIB, MIB);
    }
    flush_done(&mut session);
    let at_crash = scrape(metrics);
    assert_eq!(requests(&at_crash, "flush"), 1, "{}", at_crash.text);
    assert_eq!(requests(&at_crash, "write"), 4, "{}", at_crash.text);
    server.kill9();
    drop(session);

    let server = env.serve();
    qemu_io_verify(
        &server.uri("v"),
        &[
            (0, 0, 16 * MIB),
            (0x5a, 16 * MIB, 4 * MIB),
            (0, 20 * MIB, 44 * MIB),
        ],
    );
    server.stop();
    let out = env.snapvol_ok(&["check", "v"]);
    assert!(out.contains("clean"), "{out}");
}

#[test]
fn throughput_writes_acknowledged_before_a_flush_survive_sigkill_right_after_it() {
    flushed_writes_survive_sigkill("throughput");
}

#[test]
fn atomic_writes_acknowledged_before_a_flush_survive_sigkill_right_after_it() {
    flushed_writes_survive_sigkill("atomic");
}

// ---------------------------------------------------------------------------------------------
// FUA

/// A qemu-io FUA write (`write -f`) of 1 MiB and a plain one, no FLUSH, SIGKILL: the FUA
/// write is there after the restart (replayed from the journal), the plain one is old or new.
fn fua_write_survives_sigkill_without_a_flush(mode: &str) {
    let env = Env::new();
    create(&env, "v", "64M", mode);
    let (server, metrics) = serve_with_metrics(&env);
    let mut session = writeback_session(&server.uri("v"));
    write_acked(&mut session, "-f -P 0xcd", 0, MIB);
    write_acked(&mut session, "-P 0xce", 4 * MIB, MIB);
    let at_crash = scrape(metrics);
    assert_eq!(
        requests(&at_crash, "flush"),
        0,
        "a FLUSH reached the server:\n{}",
        at_crash.text
    );
    assert_eq!(requests(&at_crash, "write"), 2, "{}", at_crash.text);
    assert!(
        journal_used(&at_crash) >= MIB,
        "the FUA write is not in the journal:\n{}",
        at_crash.text
    );
    server.kill9();
    drop(session);

    let server = env.serve();
    assert!(
        server.log().contains("recovery complete"),
        "the restart replayed no journal: the crash tested nothing\n{}",
        server.log()
    );
    qemu_io_verify(&server.uri("v"), &[(0xcd, 0, MIB), (0, MIB, 3 * MIB)]);
    old_or_new(&server, "v", 4 * MIB, MIB, 0, 0xce);
    server.stop();
    let out = env.snapvol_ok(&["check", "v"]);
    assert!(out.contains("clean"), "{out}");
}

#[test]
fn throughput_a_fua_write_survives_sigkill_with_no_flush() {
    fua_write_survives_sigkill_without_a_flush("throughput");
}

#[test]
fn atomic_a_fua_write_survives_sigkill_with_no_flush() {
    fua_write_survives_sigkill_without_a_flush("atomic");
}

// ---------------------------------------------------------------------------------------------
// fio

/// [`fio_job`] (one job, crc32c verification) with `--rw=RW --bs=BS` instead of random
/// writes of 4k-128k.
fn fio_rw(uri: &str, offset: u64, size: u64, seed: u64, rw: &str, bs: &str) -> Vec<String> {
    fio_job(uri, offset, size, 1, seed)
        .into_iter()
        .map(|a| {
            if a.starts_with("--rw=") {
                format!("--rw={rw}")
            } else if a.starts_with("--bsrange=") {
                format!("--bs={bs}")
            } else {
                a
            }
        })
        .collect()
}

#[test]
fn throughput_fio_sequential_1m_and_random_4k_writes_flushed_over_nbd_verify_after_sigkill() {
    let env = Env::new();
    create(&env, "v", "256M", "throughput");
    let (server, metrics) = serve_with_metrics(&env);
    let live = server.uri("v");

    // A: sequential 1 MiB writes over [0, 64M), then an fsync (FLUSH).
    let job_a = |uri: &str| fio_rw(uri, 0, 64 * MIB, 1, "write", "1M");
    fio_ok(
        &env,
        &with(job_a(&live), &["--end_fsync=1"]),
        Some(64 * MIB),
        64 * MIB,
    );
    let after_a = scrape(metrics);
    assert!(
        journal_used(&after_a) < MIB,
        "fio's 1 MiB writes went through the journal of a throughput volume:\n{}",
        after_a.text
    );
    // B: random 4 KiB writes (journaled: smaller than a chunk) over [64M, 96M), an fsync
    // every 32 writes and at the end.
    let job_b = |uri: &str| fio_rw(uri, 64 * MIB, 32 * MIB, 2, "randwrite", "4k");
    fio_ok(
        &env,
        &with(job_b(&live), &["--fsync=32", "--end_fsync=1"]),
        Some(32 * MIB),
        32 * MIB,
    );
    // C then D over [96M, 128M): random 4 KiB writes, journaled, then sequential 1 MiB writes
    // over the same chunks, which a replay of C's records must not undo.
    let job_c = |uri: &str| fio_rw(uri, 96 * MIB, 32 * MIB, 3, "randwrite", "4k");
    fio_ok(
        &env,
        &with(job_c(&live), &["--end_fsync=1"]),
        Some(32 * MIB),
        32 * MIB,
    );
    let job_d = |uri: &str| fio_rw(uri, 96 * MIB, 32 * MIB, 4, "write", "1M");
    fio_ok(
        &env,
        &with(job_d(&live), &["--end_fsync=1"]),
        Some(32 * MIB),
        32 * MIB,
    );
    // E: load over [128M, 256M) until the crash, with a FLUSH every 16 writes.
    let mut e = start_load(&env, &server, "v", (128 * MIB, 128 * MIB, 1, 5));
    assert!(
        e.is_running(),
        "fio E was not running at the crash:\n{}",
        e.output_so_far()
    );
    server.kill9();
    let e_out = e.wait_within(Duration::from_secs(60));
    assert!(!e_out.status.success(), "fio E survived the server's death");

    let server = env.serve();
    let live = server.uri("v");
    fio_verify(&env, job_a(&live), 64 * MIB);
    fio_verify(&env, job_b(&live), 32 * MIB);
    fio_verify(&env, job_d(&live), 32 * MIB);
    server.stop();
    let out = env.snapvol_ok(&["check", "v"]);
    assert!(out.contains("clean"), "{out}");
}
