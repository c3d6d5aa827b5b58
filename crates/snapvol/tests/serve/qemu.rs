//! qemu-img and qemu-io on the live export and on snapshot exports.

use crate::serving::*;
use crate::{snapshot_names, SIZE};

// ---------------------------------------------------------------------------------------------
// 1. qemu-img

#[test]
fn qemu_img_info_convert_and_compare_work_on_the_live_export_and_on_snapshot_exports() {
    let env = Env::new();
    env.create("v", "256M");
    let server = env.serve();
    let live = server.uri("v");

    let info = run_ok(tool("qemu-img").args(["info", "--output=json", "-f", "raw", &live]));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("qemu-img json");
    assert_eq!(info["virtual-size"], SIZE, "{info}");
    assert_eq!(info["format"], "raw", "{info}");

    // An image with data at the start, in the middle (not chunk-aligned) and at the very end.
    let a = env.path("a.img");
    write_image(
        &a,
        SIZE,
        &[
            (0, 8 * MIB, 1),
            (100 * MIB + 4 * KIB, 4 * MIB + 4 * KIB, 2),
            (SIZE - MIB, MIB, 3),
        ],
    );
    run_ok(
        tool("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&a)
            .arg(&live),
    );
    assert!(qemu_img_compare(a.to_str().unwrap(), &live));

    assert_eq!(
        env.snapvol_ok(&["snapshot", "create", "v@s1"]).trim(),
        "created snapshot v@s1"
    );
    let s1 = server.uri("v@s1");
    let info = run_ok(tool("qemu-img").args(["info", "--output=json", "-f", "raw", &s1]));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("qemu-img json");
    assert_eq!(info["virtual-size"], SIZE, "{info}");

    // A second image overwrites part of the first's data and leaves zeroes over the rest.
    let b = env.path("b.img");
    write_image(&b, SIZE, &[(4 * MIB, 8 * MIB, 4), (101 * MIB, 64 * KIB, 5)]);
    run_ok(
        tool("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&b)
            .arg(&live),
    );

    assert!(
        qemu_img_compare(b.to_str().unwrap(), &live),
        "the live volume is not image b"
    );
    assert!(
        qemu_img_compare(a.to_str().unwrap(), &s1),
        "v@s1 is not image a"
    );
    assert!(
        !qemu_img_compare(a.to_str().unwrap(), &live),
        "compare cannot tell a from b"
    );
    assert!(!qemu_img_compare(&s1, &live));

    let out = env.path("s1.img");
    run_ok(
        tool("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &s1])
            .arg(&out),
    );
    assert_same_file(&out, &a);
    server.stop();
}

// ---------------------------------------------------------------------------------------------
// 2. qemu-io

#[test]
fn qemu_io_patterns_read_back_from_the_live_export_and_from_snapshots_created_while_serving() {
    let env = Env::new();
    env.create("v", "256M");
    let server = env.serve();
    let live = server.uri("v");

    qemu_io_write(&live, &[(0x11, 0, MIB), (0x22, MIB, MIB)]);
    qemu_io_verify(
        &live,
        &[(0x11, 0, MIB), (0x22, MIB, MIB), (0, 2 * MIB, MIB)],
    );
    // The check can fail.
    let (_, out) = qemu_io(&["-r", "-c", "read -P 0x11 1M 64k"], &live);
    assert!(out.contains("Pattern verification failed"), "{out}");

    assert_eq!(
        env.snapvol_ok(&["snapshot", "create", "v@s1"]).trim(),
        "created snapshot v@s1"
    );
    // Exported at once.
    let s1 = server.uri("v@s1");
    let size = run_ok(tool("nbdinfo").args(["--size", &s1]));
    assert_eq!(text(&size.stdout).trim(), SIZE.to_string());

    // A whole chunk and part of another (516K..576K of the 512K..576K chunk).
    qemu_io_write(&live, &[(0x33, 0, MIB), (0x44, 516 * KIB, 60 * KIB)]);
    env.snapvol_ok(&["snapshot", "create", "v@s2"]);
    let s2 = server.uri("v@s2");
    qemu_io_write(&live, &[(0x55, 0, 2 * MIB), (0x66, 100 * MIB, 64 * KIB)]);

    qemu_io_verify(&live, &[(0x55, 0, 2 * MIB), (0x66, 100 * MIB, 64 * KIB)]);
    qemu_io_verify(
        &s1,
        &[
            (0x11, 0, MIB),
            (0x22, MIB, MIB),
            (0, 2 * MIB, MIB),
            (0, 100 * MIB, 64 * KIB),
        ],
    );
    qemu_io_verify(
        &s2,
        &[
            (0x33, 0, 516 * KIB),
            (0x44, 516 * KIB, 60 * KIB),
            (0x33, 576 * KIB, 448 * KIB),
            (0x22, MIB, MIB),
            (0, 100 * MIB, 64 * KIB),
        ],
    );

    // qemu refuses to open a read-only export for writing...
    let (status, out) = qemu_io(&["-c", "write -P 0x99 0 4k"], &s1);
    assert!(!status.success(), "{out}");
    assert!(!out.contains("wrote"), "{out}");
    assert!(
        out.contains("Permission denied") || out.contains("read-only"),
        "{out}"
    );
    // ...and a client that sends the write anyway gets EPERM.
    let mut raw = RawNbd::connect(server.port(), "v@s1").expect("open v@s1");
    assert_ne!(raw.flags & 2, 0, "v@s1 is not advertised read-only");
    assert_eq!(
        raw.write(0, &[0x99; 4096]),
        1,
        "a write to v@s1 must get EPERM"
    );
    assert_eq!(raw.read(0, 4096).expect("read v@s1"), vec![0x11; 4096]);
    drop(raw);
    qemu_io_verify(&s1, &[(0x11, 0, MIB)]);
    server.stop();
}

#[test]
fn a_deleted_snapshot_disappears_and_a_connection_already_open_to_it_gets_errors_not_stale_data() {
    let env = Env::new();
    env.create("v", "64M");
    let server = env.serve();
    let live = server.uri("v");
    qemu_io_write(&live, &[(0x11, 0, MIB)]);
    env.snapvol_ok(&["snapshot", "create", "v@s1"]);
    env.snapvol_ok(&["snapshot", "create", "v@s2"]);
    // s1 and s2 share the preserved copy of the first MiB.
    qemu_io_write(&live, &[(0x22, 0, MIB)]);
    let s1 = server.uri("v@s1");
    qemu_io_verify(&s1, &[(0x11, 0, MIB), (0, 8 * MIB, MIB)]);

    // Two connections open on v@s1: qemu-io reading commands from stdin, and a raw client.
    let mut session = Interactive::spawn(tool("qemu-io").args(["-f", "raw", "-r", &s1]));
    session.send("read -P 0x11 0 1M");
    session.wait_for("read 1048576/1048576 bytes at offset 0");
    let mut raw = RawNbd::connect(server.port(), "v@s1").expect("open v@s1");
    assert_eq!(raw.read(0, 4096).expect("read v@s1"), vec![0x11; 4096]);

    assert_eq!(
        env.snapvol_ok(&["snapshot", "delete", "v@s1"]).trim(),
        "deleted snapshot v@s1"
    );

    // Gone for new connections...
    let out = run_fails(tool("nbdinfo").args(["--size", &s1]));
    assert!(!out.stdout.starts_with(SIZE.to_string().as_bytes()));
    assert!(RawNbd::connect(server.port(), "v@s1").is_err());
    let list = run_ok(tool("nbdinfo").args(["--list", "--json", &server.uri("")]));
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    let mut names: Vec<&str> = list["exports"]
        .as_array()
        .expect("exports")
        .iter()
        .map(|e| e["export-name"].as_str().expect("name"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["v", "v@s2"], "{list}");

    // ...and the open ones get errors, both where the data was preserved and where it was not.
    let preserved = raw.read(0, 4096);
    let unpreserved = raw.read(8 * MIB, 4096);
    assert!(
        preserved.is_err() && unpreserved.is_err(),
        "reads of a deleted snapshot on an open connection succeeded: {:?} {:?}",
        preserved.map(|d| d[0]),
        unpreserved.map(|d| d[0])
    );
    session.send("read -P 0x11 0 1M");
    session.send("read -P 0x00 8M 1M");
    session.send("quit");
    let (_, out) = session.finish();
    assert_eq!(
        out.matches("bytes at offset").count(),
        1,
        "qemu-io read a deleted snapshot:\n{out}"
    );
    assert_eq!(out.matches("read failed").count(), 2, "{out}");

    // The snapshot that shared the copy still has it; the live volume is unchanged.
    qemu_io_verify(&server.uri("v@s2"), &[(0x11, 0, MIB)]);
    qemu_io_verify(&live, &[(0x22, 0, MIB)]);
    let info = env.snapvol_json(&["info", "v", "--json"]);
    assert_eq!(snapshot_names(&info), ["s2"]);
    server.stop();
}
