//! nbdinfo and nbdcopy (libnbd) on the live export and on snapshot exports.

use crate::serving::*;
use crate::SIZE;

// ---------------------------------------------------------------------------------------------
// 3. nbdinfo

#[test]
fn nbdinfo_shows_a_writable_live_export_with_flush_fua_trim_multi_conn_and_read_only_snapshots() {
    let env = Env::new();
    env.create("v", "64M");
    let size = 64 * MIB;
    let server = env.serve();
    let live = server.uri("v");
    qemu_io_write(&live, &[(0x42, 2 * MIB, MIB)]);
    env.snapvol_ok(&["snapshot", "create", "v@s1"]);
    let s1 = server.uri("v@s1");
    // After the snapshot the live volume zeroes and discards that data and writes elsewhere.
    let (status, out) = qemu_io(
        &[
            "-c",
            "write -z 2M 512k",
            "-c",
            "discard 2560k 512k",
            "-c",
            "write -P 0x43 5M 64k",
            "-c",
            "flush",
        ],
        &live,
    );
    assert!(status.success() && !out.contains("fail"), "{out}");

    let e = nbdinfo_json(&live);
    assert_eq!(e["export-name"], "v", "{e}");
    assert_eq!(e["export-size"], size, "{e}");
    assert_eq!(e["is_read_only"], false, "{e}");
    for can in ["can_flush", "can_fua", "can_trim", "can_multi_conn"] {
        assert_eq!(e[can], true, "{can}: {e}");
    }
    let contexts = e["contexts"].as_array().expect("contexts");
    assert!(contexts.iter().any(|c| c == "base:allocation"), "{e}");
    for can in ["flush", "fua", "trim", "multi-conn"] {
        assert_eq!(
            nbdinfo_code(&["--can", can], &live),
            0,
            "--can {can} {live}"
        );
    }
    assert_eq!(nbdinfo_code(&["--is", "read-only"], &live), 2);

    assert_eq!(nbdinfo_code(&["--is", "read-only"], &s1), 0);
    assert_eq!(nbdinfo_code(&["--can", "write"], &s1), 2);
    let e = nbdinfo_json(&s1);
    assert_eq!(e["export-name"], "v@s1", "{e}");
    assert_eq!(e["export-size"], size, "{e}");
    assert_eq!(e["is_read_only"], true, "{e}");

    // Block status: a map of each export, data is never reported as zeroes (a client that
    // trusts the map would skip it) and what is reported as zeroes reads as zeroes. Once while
    // the writes may still be in the cache, once after a restart destaged everything.
    check_maps(&live, &s1, size);
    server.stop();
    let server = env.serve();
    check_maps(&server.uri("v"), &server.uri("v@s1"), size);
    server.stop();
}

/// The maps of the volume and snapshot written by the test above.
fn check_maps(live: &str, s1: &str, size: u64) {
    const ZERO: u32 = 2;
    for (uri, data) in [(live, 5 * MIB..5 * MIB + 64 * KIB), (s1, 2 * MIB..3 * MIB)] {
        let map = nbdinfo_map(uri, size);
        for r in map_rows_over(&map, data.start, data.end - data.start) {
            assert_eq!(r.flags & ZERO, 0, "{uri}: data mapped as zeroes: {map:?}");
        }
        let zeroes: Vec<(u8, u64, u64)> = map
            .iter()
            .filter(|r| r.flags & ZERO != 0)
            .map(|r| (0, r.offset, r.length))
            .collect();
        qemu_io_verify(uri, &zeroes);
    }
    qemu_io_verify(s1, &[(0x42, 2 * MIB, MIB), (0, 5 * MIB, 64 * KIB)]);
    qemu_io_verify(live, &[(0, 2 * MIB, MIB), (0x43, 5 * MIB, 64 * KIB)]);
}

// ---------------------------------------------------------------------------------------------
// 4. nbdcopy

#[test]
fn nbdcopy_of_a_snapshot_export_equals_snapvol_export_of_the_same_snapshot() {
    let env = Env::new();
    env.create("v", "256M");
    let server = env.serve();
    let live = server.uri("v");

    let a = env.path("a.img");
    write_image(
        &a,
        SIZE,
        &[
            (0, 16 * MIB, 11),
            (64 * MIB + 4 * KIB, MIB, 12),
            (200 * MIB, 32 * MIB, 13),
        ],
    );
    run_ok(tool("nbdcopy").arg("--flush").arg(&a).arg(&live));
    env.snapvol_ok(&["snapshot", "create", "v@s1"]);
    // Overwrite, zero and discard parts of what v@s1 holds.
    let (status, out) = qemu_io(
        &[
            "-c",
            "write -P 0xee 0 4M",
            "-c",
            "write -z 200M 8M",
            "-c",
            "discard 210M 4M",
            "-c",
            "write -P 0x11 100M 1M",
            "-c",
            "flush",
        ],
        &live,
    );
    assert!(status.success() && !out.contains("fail"), "{out}");

    let copied = env.path("copied.img");
    nbdcopy(&server.uri("v@s1"), &copied);
    let live_copy = env.path("live.img");
    nbdcopy(&live, &live_copy);
    // The store is locked while it is served.
    server.stop();

    let exported = env.path("exported.img");
    env.snapvol_ok(&["export", "v@s1", exported.to_str().unwrap()]);
    assert_same_file(&copied, &exported);
    assert_same_file(&exported, &a);
    let exported_live = env.path("exported-live.img");
    env.snapvol_ok(&["export", "v", exported_live.to_str().unwrap()]);
    assert_same_file(&live_copy, &exported_live);
}
