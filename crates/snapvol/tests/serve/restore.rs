//! `snapvol diff` and `snapvol snapshot rollback`, through the control socket while `serve`
//! runs and offline: the diff names exactly the chunks written between two points, a rollback
//! makes the live volume the snapshot and keeps every snapshot, it is refused while clients
//! use the live export unless forced, and a rollback killed part-way is finished by the next
//! open, never left half done.

use std::collections::BTreeSet;
use std::fs;
use std::thread;
use std::time::Duration;

use crate::bitmaps::{volume_with_known_changes, CHUNK};
use crate::serving::*;

/// The chunks `snapvol diff ARGS --json` names, checking the document's shape on the way.
fn diff_chunks(env: &Env, args: &[&str]) -> BTreeSet<u64> {
    let mut full = vec!["diff"];
    full.extend_from_slice(args);
    full.push("--json");
    let d = env.snapvol_json(&full);
    assert_eq!(d["chunk_size"], CHUNK, "{d}");
    assert_eq!(d["from"], args[0], "{d}");
    let extents = d["extents"].as_array().expect("extents");
    let mut chunks = BTreeSet::new();
    let (mut total, mut end) = (0, 0);
    for e in extents {
        let (offset, length) = (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        assert!(
            offset % CHUNK == 0 && length % CHUNK == 0 && length > 0,
            "{d}"
        );
        assert!(
            offset > end || (end == 0 && offset == 0 && chunks.is_empty()),
            "extents sorted and merged: {d}"
        );
        end = offset + length;
        total += length;
        chunks.extend(offset / CHUNK..end / CHUNK);
    }
    assert_eq!(d["changed_bytes"], total, "{d}");
    chunks
}

/// Exports `spec` with the CLI into a file named after it; returns its path.
fn export(env: &Env, spec: &str) -> std::path::PathBuf {
    let path = env.path(&format!("{}.img", spec.replace('@', "-")));
    env.snapvol_ok(&["export", spec, path.to_str().expect("UTF-8 path")]);
    path
}

/// An interactive qemu-io connected to `uri`, once its first read has been answered.
fn connected_client(uri: &str) -> Interactive {
    let mut client = Interactive::spawn(tool("qemu-io").args(["-f", "raw", uri]));
    client.send("read 0 4k");
    client.wait_for("read 4096/4096");
    client
}

#[test]
fn diff_names_exactly_the_chunks_written_between_two_points_served_and_offline() {
    let env = Env::new();
    let (server, [since_s1, since_s2, between]) = volume_with_known_changes(&env);
    let check = |env: &Env| {
        assert_eq!(diff_chunks(env, &["v@s1"]), since_s1);
        assert_eq!(diff_chunks(env, &["v@s1", "v"]), since_s1);
        assert_eq!(diff_chunks(env, &["v@s2"]), since_s2);
        assert_eq!(diff_chunks(env, &["v@s1", "v@s2"]), between);
        let human = env.snapvol_ok(&["diff", "v@s1", "v@s2"]);
        assert!(
            human.starts_with(&format!(
                "v@s1 -> v@s2: {}K changed in ",
                between.len() as u64 * CHUNK / KIB
            )),
            "{human}"
        );
        let backwards = env.snapvol_fails(&["diff", "v@s2", "v@s1"]);
        assert!(
            backwards.contains("older point to a newer one"),
            "{backwards}"
        );
        let missing = env.snapvol_fails(&["diff", "v@nope"]);
        assert!(missing.contains("'v@nope' not found"), "{missing}");
        let other = env.snapvol_fails(&["diff", "v@s1", "w@s2"]);
        assert!(other.contains("different volumes"), "{other}");
    };
    check(&env);
    server.stop();
    check(&env);
}

#[test]
fn rollback_while_serving_is_refused_with_clients_and_keeps_every_snapshot() {
    let env = Env::new();
    let (server, [since_s1, ..]) = volume_with_known_changes(&env);
    let (s1, s2) = (export(&env, "v@s1"), export(&env, "v@s2"));

    let client = connected_client(&server.uri("v"));
    let refused = env.snapvol_fails(&["snapshot", "rollback", "v@s1"]);
    assert!(
        refused.contains("1 client connection") && refused.contains("--force"),
        "{refused}"
    );
    assert_eq!(
        diff_chunks(&env, &["v@s1"]),
        since_s1,
        "a refusal changes nothing"
    );
    let (status, _) = client.finish();
    assert!(status.success());

    let out = env.snapvol_ok(&["snapshot", "rollback", "v@s1"]);
    assert!(
        out.starts_with(&format!(
            "rolled back v to v@s1: rewrote {}K in ",
            since_s1.len() as u64 * CHUNK / KIB
        )),
        "{out}"
    );
    assert_same_file(&export(&env, "v"), &s1);
    assert_same_file(&export(&env, "v@s2"), &s2);
    assert_same_file(&export(&env, "v@s1"), &s1);
    // The live export serves the rolled-back content to a new client.
    let copy = env.path("copy.img");
    nbdcopy(&server.uri("v"), &copy);
    assert_same_file(&copy, &s1);

    // Forward again to s2 with a client connected, forced.
    let mut client = connected_client(&server.uri("v"));
    env.snapvol_ok(&["snapshot", "rollback", "v@s2", "--force"]);
    client.send("read -P 0x22 320k 64k");
    client.wait_for("read 65536/65536");
    let (status, out) = client.finish();
    assert!(
        status.success() && !out.contains("Pattern verification failed"),
        "{out}"
    );
    assert_same_file(&export(&env, "v"), &s2);
    assert_same_file(&export(&env, "v@s1"), &s1);
    server.stop();

    // Offline, the same.
    env.snapvol_ok(&["snapshot", "rollback", "v@s1"]);
    assert_same_file(&export(&env, "v"), &s1);
    assert_same_file(&export(&env, "v@s2"), &s2);
    let report = env.snapvol_json(&["check", "v", "--json"]);
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
}

/// A rollback killed with SIGKILL part-way: `check` is clean, a read-only look (export, info)
/// sees the volume as the snapshot with the rollback reported unfinished, and the next open
/// for writing finishes it; every snapshot reads what it held all along.
#[test]
fn a_rollback_killed_part_way_is_finished_by_the_next_open() {
    const BIG: u64 = 256 * MIB;
    let env = Env::new();
    env.create("v", "512M");
    let (a, b) = (env.path("a.img"), env.path("b.img"));
    write_image(&a, BIG, &[(0, BIG, 1)]);
    write_image(&b, BIG, &[(0, BIG, 2)]);
    let cut = |delay: Duration| -> bool {
        env.snapvol_ok(&["import", "v", a.to_str().unwrap()]);
        env.snapvol_ok(&["snapshot", "create", "v@s1"]);
        env.snapvol_ok(&["import", "v", b.to_str().unwrap()]);
        env.snapvol_ok(&["snapshot", "create", "v@s2"]);
        let rollback = Background::spawn(
            env.snapvol().args(["snapshot", "rollback", "v@s1"]),
            env.dir(),
            "rollback",
        );
        thread::sleep(delay);
        // Dropping it sends SIGKILL.
        drop(rollback);
        let info = env.snapvol_json(&["info", "v", "--json"]);
        if info["rollback_to"] != "s1" {
            // Killed before it began or after it ended: start over and cut sooner or later.
            env.snapvol_ok(&["snapshot", "delete", "v@s1"]);
            env.snapvol_ok(&["snapshot", "delete", "v@s2"]);
            return false;
        }
        true
    };
    let delays = [300, 150, 600, 80, 1000, 40, 1500, 2500].map(Duration::from_millis);
    assert!(
        delays.into_iter().any(cut),
        "no kill landed in the middle of the rollback"
    );
    let report = env.snapvol_json(&["check", "v", "--json"]);
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    let human = env.snapvol_ok(&["info", "v"]);
    assert!(human.contains("unfinished"), "{human}");
    // Read-only, the live volume already reads as s1.
    let live = export(&env, "v");
    assert_eq!(fs::metadata(&live).unwrap().len(), 512 * MIB);
    let s1 = export(&env, "v@s1");
    assert_same_file(&live, &s1);
    // Opened for writing (here, to take a snapshot), the rollback is finished first.
    env.snapvol_ok(&["snapshot", "create", "v@after"]);
    assert_eq!(
        env.snapvol_json(&["info", "v", "--json"])["rollback_to"],
        serde_json::Value::Null
    );
    assert_same_file(&export(&env, "v"), &s1);
    assert_same_file(&export(&env, "v@after"), &s1);
    let expected_s2 = env.path("s2-expected.img");
    write_image(&expected_s2, 512 * MIB, &[(0, BIG, 2)]);
    assert_same_file(&export(&env, "v@s2"), &expected_s2);
    let report = env.snapvol_json(&["check", "v", "--json"]);
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    // And a forward rollback to s2 from here restores the newer snapshot's content.
    env.snapvol_ok(&["snapshot", "rollback", "v@s2"]);
    assert_same_file(&export(&env, "v"), &expected_s2);
}
