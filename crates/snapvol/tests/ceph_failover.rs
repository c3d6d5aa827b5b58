//! snapvol on Ceph, against the real single-node cluster `scripts/test.sh` starts: a store in
//! a RADOS pool (`--store rbd:rbd`) served by one `snapvol serve` while a second stands by;
//! the holder killed with SIGKILL, or stalled past its lease, and the standby taking the
//! volume over with every flushed write and every snapshot intact.
//!
//! Without `CEPH_CONF` these tests say so and pass, unless `SNAPVOL_REQUIRE_CEPH=1` (as the
//! test command sets it) makes that a failure.

#[path = "serving/mod.rs"]
mod serving;

use std::thread;
use std::time::{Duration, Instant};

use serving::*;

/// Waits (at most `limit`, a bound that only turns a hang into a failure) until `server`'s
/// log contains `needle`.
fn wait_for_log(server: &Server, needle: &str, limit: Duration) {
    wait_for_log_after(server, 0, needle, limit);
}

/// Waits as [`wait_for_log`] does, for a line logged after the first `from` bytes of the log.
fn wait_for_log_after(server: &Server, from: usize, needle: &str, limit: Duration) {
    let start = Instant::now();
    while !server.log()[from..].contains(needle) {
        assert!(
            start.elapsed() < limit,
            "'{needle}' not logged within {limit:?}; the log:\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// `ceph osd blocklist ls`.
fn blocklist() -> String {
    ceph_ok("ceph", &["osd", "blocklist", "ls"])
}

#[test]
fn a_standby_server_takes_over_a_killed_holders_volume_with_every_flushed_write_and_snapshot() {
    if !ceph("failover") {
        return;
    }
    let pool = TestPool::new("failover");
    let env = Env::with_store(&pool.store());
    let v = "vm1";
    env.snapvol_ok(&["create", v, "--size", "256M"]);
    let holder = env.serve_logged(&[], "a.log");
    let standby = env.serve_logged(&[], "b.log");
    wait_for_log(&standby, "standing by", LIMIT);
    let live = holder.uri(v);

    // fio A: [0, 64M) written at random with crc32c verification data, and flushed.
    let job_a = |uri: &str| fio_job(uri, 0, 64 * MIB, 1, 11);
    fio_ok(
        &env,
        &with(job_a(&live), &["--end_fsync=1"]),
        Some(64 * MIB),
        64 * MIB,
    );
    // A pattern, snapshot s1 (through the holder's control socket), an overwrite, s2.
    qemu_io_write(&live, &[(0x5a, 64 * MIB, 64 * MIB)]);
    env.snapvol_ok(&["snapshot", "create", &format!("{v}@s1")]);
    let s1 = env.path("s1.img");
    nbdcopy(&holder.uri(&format!("{v}@s1")), &s1);
    qemu_io_write(&live, &[(0xa5, 64 * MIB, 16 * MIB)]);
    env.snapvol_ok(&["snapshot", "create", &format!("{v}@s2")]);
    let s2 = env.path("s2.img");
    nbdcopy(&holder.uri(&format!("{v}@s2")), &s2);
    // fio D: [128M, 192M), flushed.
    let job_d = |uri: &str| fio_job(uri, 128 * MIB, 64 * MIB, 1, 12);
    fio_ok(
        &env,
        &with(job_d(&live), &["--end_fsync=1"]),
        Some(64 * MIB),
        64 * MIB,
    );

    let killed = Instant::now();
    holder.kill9();
    wait_for_log(&standby, "took the volume over", Duration::from_secs(90));
    eprintln!(
        "failover: the standby served the volume {:.1} s after the holder was killed",
        killed.elapsed().as_secs_f64()
    );
    let log = standby.log();
    assert!(
        log.contains("fencing it with a blocklist entry"),
        "the dead holder was not fenced:\n{log}"
    );
    assert!(
        log.contains("recovery complete"),
        "the takeover replayed no journal: the kill tested nothing\n{log}"
    );
    // The fenced address is in the OSD blocklist.
    let address = log
        .split("address=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the fencing line names the address");
    assert!(blocklist().contains(address), "{address} not blocklisted");

    // Everything flushed and every snapshot, through the new holder.
    let live = standby.uri(v);
    fio_verify(&env, job_a(&live), 64 * MIB);
    fio_verify(&env, job_d(&live), 64 * MIB);
    qemu_io_verify(
        &live,
        &[(0xa5, 64 * MIB, 16 * MIB), (0x5a, 80 * MIB, 48 * MIB)],
    );
    for (snap, image) in [("s1", &s1), ("s2", &s2)] {
        assert!(
            qemu_img_compare(
                image.to_str().unwrap(),
                &standby.uri(&format!("{v}@{snap}"))
            ),
            "{v}@{snap} changed across the failover"
        );
    }
    // Commands on this host reach the new holder; its check is clean.
    let check = env.snapvol_ok(&["check", v]);
    assert!(check.contains("is clean"), "{check}");
    standby.stop();
    let check = env.snapvol_ok(&["check", v]);
    assert!(check.contains("is clean"), "{check}");
}

#[test]
fn a_holder_stalled_past_its_lease_loses_the_volume_and_stands_by_for_it_again_as_a_new_client() {
    if !ceph("stalled holder") {
        return;
    }
    let pool = TestPool::new("stalled");
    let env = Env::with_store(&pool.store());
    let v = "vm1";
    env.snapvol_ok(&["create", v, "--size", "64M"]);
    let mut holder = env.serve_logged(&[], "a.log");
    qemu_io_write(&holder.uri(v), &[(0x11, 0, 4 * MIB)]);

    // The holder stops (a stalled host) long enough for its lease to run out.
    signal(holder.pid(), libc::SIGSTOP);
    let standby = env.serve_logged(&[], "b.log");
    wait_for_log(&standby, "took the volume over", Duration::from_secs(90));
    qemu_io_write(&standby.uri(v), &[(0x22, 0, 4 * MIB)]);

    // Back, it finds its lease gone and stops serving the volume, saying so.
    signal(holder.pid(), libc::SIGCONT);
    wait_for_log(
        &holder,
        "lost the lock on the volume: no longer serving it",
        Duration::from_secs(60),
    );
    let (status, out) = qemu_io(&["-c", "write -P 0x33 0 64k"], &holder.uri(v));
    assert!(
        !status.success(),
        "the old holder still took a write:\n{out}"
    );
    qemu_io_verify(&standby.uri(v), &[(0x22, 0, 4 * MIB)]);
    assert!(
        holder.is_running(),
        "the old holder died:\n{}",
        holder.log()
    );

    // Fenced, it connects again as a new Ceph client and stands by: when the new holder dies
    // in turn, the old one takes the volume back with the new holder's writes.
    wait_for_log(
        &holder,
        "Ceph client was fenced (blocklisted): connecting again as a new client",
        Duration::from_secs(30),
    );
    let before = holder.log().len();
    standby.kill9();
    wait_for_log_after(
        &holder,
        before,
        "took the volume over",
        Duration::from_secs(90),
    );
    qemu_io_verify(&holder.uri(v), &[(0x22, 0, 4 * MIB)]);
    qemu_io_write(&holder.uri(v), &[(0x44, 4 * MIB, MIB)]);
    qemu_io_verify(&holder.uri(v), &[(0x22, 0, 4 * MIB), (0x44, 4 * MIB, MIB)]);
    holder.stop();
    let check = env.snapvol_ok(&["check", v]);
    assert!(check.contains("is clean"), "{check}");
}
