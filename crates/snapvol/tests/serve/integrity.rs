//! Integrity: a damaged journal, a damaged preserved chunk, and a store on a full file system.

use std::fs;

use crate::serving::*;

/// The journal records of a journal file: `(file offset, sequence number, data length)` of
/// every record header (magic "SVJR" at a 512-byte boundary of the ring), by sequence number.
fn journal_records(journal: &[u8]) -> Vec<(usize, u64, u32)> {
    let mut found: Vec<(usize, u64, u32)> = (4096..journal.len().saturating_sub(64))
        .step_by(512)
        .filter(|&at| &journal[at..at + 4] == b"SVJR")
        .map(|at| {
            let seq = u64::from_le_bytes(journal[at + 8..at + 16].try_into().unwrap());
            let len = u32::from_le_bytes(journal[at + 40..at + 44].try_into().unwrap());
            (at, seq, len)
        })
        .collect();
    found.sort_by_key(|r| r.1);
    found
}

/// What broke (issue 10, findings 1 and 3): a flipped byte in a flushed journal record made
/// replay silently drop it and every later one, and a volume that could not be opened made
/// `serve` exit, serving no volume at all. Now the damaged volume is refused with the way out,
/// left out by `serve` while the other volume is served, and `check --repair` salvages it,
/// naming the write it lost.
#[test]
fn a_damaged_journal_is_refused_left_out_by_serve_and_salvaged_by_check_repair() {
    let env = Env::new();
    env.create("bad", "64M");
    env.create("good", "64M");
    let server = env.serve();
    // 40 (4 KiB write, FLUSH) pairs: 40 appends of one record each.
    let cmds: Vec<String> = (0..40u64)
        .flat_map(|i| {
            [
                format!("write -P {} {} 4096", i + 1, i * 4096),
                "flush".to_owned(),
            ]
        })
        .collect();
    let args: Vec<&str> = cmds.iter().flat_map(|c| ["-c", c.as_str()]).collect();
    let (status, out) = qemu_io(&args, &server.uri("bad"));
    assert!(status.success(), "{out}");
    qemu_io_write(&server.uri("good"), &[(0x77, 0, MIB)]);
    server.kill9();

    let path = env.store().join("bad").join("journal.svj");
    let mut journal = fs::read(&path).expect("read the journal");
    let writes: Vec<_> = journal_records(&journal)
        .into_iter()
        .filter(|r| r.2 == 4096)
        .collect();
    assert_eq!(writes.len(), 40, "every write is in the journal");
    let (at, seq, _) = writes[19];
    journal[at + 64 + 1000] ^= 0x40;
    fs::write(&path, &journal).expect("damage the journal");

    let err = env.snapvol_fails(&["info", "bad"]);
    assert!(err.contains("check VOL --repair"), "{err}");
    let out = env.snapvol().args(["check", "bad"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    assert!(
        report.contains(&format!("journal record at {at:#x}")),
        "check names the damaged record at {at:#x}:\n{report}"
    );

    // Served meanwhile: the good volume, not the damaged one.
    let server = env.serve();
    let (status, out) = qemu_io(&["-c", "read -P 0x77 0 1M"], &server.uri("good"));
    assert!(status.success(), "the good volume is served: {out}");
    let listed = run_ok(tool("nbdinfo").args(["--list", &server.uri("")]));
    assert!(
        !text(&listed.stdout).contains("\"bad\""),
        "{}",
        text(&listed.stdout)
    );
    let (status, _) = qemu_io(&["-c", "read 0 4096"], &server.uri("bad"));
    assert!(!status.success(), "the damaged volume is not served");
    assert!(
        server.log().contains("volume cannot be opened"),
        "{}",
        server.log()
    );
    // `list` shows it, with why, and fails for it.
    let out = env.snapvol().arg("list").output().expect("runs");
    let list = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("bad") && l.contains("error: damage found")),
        "{list}"
    );
    server.stop();

    let repaired = env.snapvol_ok(&["check", "bad", "--repair"]);
    assert!(
        repaired.contains(&format!("lost journal record {seq} at {at:#x}"))
            && repaired.contains("write of 0x1000 bytes at 0x13000"),
        "{repaired}"
    );
    let server = env.serve();
    let reads: Vec<String> = (0..40u64)
        .filter(|&i| i != 19)
        .map(|i| format!("read -P {} {} 4096", i + 1, i * 4096))
        .collect();
    let args: Vec<&str> = reads.iter().flat_map(|c| ["-c", c.as_str()]).collect();
    let (status, out) = qemu_io(&args, &server.uri("bad"));
    assert!(
        status.success() && !out.contains("Pattern verification failed"),
        "every other flushed write is there after the salvage: {out}"
    );
    server.stop();
    let report = env.snapvol_ok(&["check", "bad"]);
    assert!(report.contains("is clean"), "{report}");
}

/// What broke (issue 10, finding 2): a flipped byte in a preserved chunk was served as the
/// snapshot's data. Now an NBD read of it gets EIO, `info` counts it, `export` refuses to
/// write a damaged image, and `check --data` names the copy and its snapshot.
#[test]
fn a_damaged_preserved_chunk_is_an_eio_over_nbd_counted_by_info_and_found_by_check_data() {
    let env = Env::new();
    env.create("v", "64M");
    let server = env.serve();
    qemu_io_write(&server.uri("v"), &[(0xaa, 0, 4 * MIB)]);
    env.snapvol_ok(&["snapshot", "create", "v@s1"]);
    qemu_io_write(&server.uri("v"), &[(0xbb, 0, MIB)]);
    server.stop();

    // The copy of chunk 0 (64 KiB of 0xaa) in the target: damage one byte of it.
    let path = env.store().join("v").join("target.svt");
    let mut target = fs::read(&path).expect("read the target");
    let chunk = 64 * 1024;
    let at = (0..target.len() / chunk)
        .map(|i| i * chunk)
        .find(|&off| target[off..off + chunk].iter().all(|&b| b == 0xaa))
        .expect("a preserved copy of 0xaa");
    target[at + 777] ^= 0x01;
    fs::write(&path, &target).expect("damage the copy");

    let server = env.serve();
    let (_, out) = qemu_io(&["-r", "-c", "read 0 4096"], &server.uri("v@s1"));
    assert!(
        out.contains("read failed: Input/output error"),
        "the damaged chunk was served: {out}"
    );
    let (status, out) = qemu_io(&["-r", "-c", "read -P 0xaa 1M 1M"], &server.uri("v@s1"));
    assert!(
        status.success() && !out.contains("verification failed"),
        "{out}"
    );
    let info = env.snapvol_json(&["info", "v", "--json"]);
    assert!(info["checksum_errors"].as_u64() >= Some(1), "{info}");
    assert!(
        server.log().contains("checksum mismatch"),
        "{}",
        server.log()
    );
    server.stop();

    let out_img = env.path("s1.img");
    let err = env.snapvol_fails(&["export", "v@s1", out_img.to_str().expect("utf-8")]);
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!out_img.exists(), "no damaged image is left behind");
    let out = env
        .snapvol()
        .args(["check", "v", "--data"])
        .output()
        .expect("runs");
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("preserved copy of chunk 0 in slot") && report.contains("s1"),
        "{report}"
    );
}

/// Free bytes on the file system holding `path`, as `df` sees them.
fn free_bytes(path: &std::path::Path) -> u64 {
    let out = run_ok(tool("df").args(["--output=avail", "-B1"]).arg(path));
    text(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes")
}

/// What broke (issue 10, finding 4): a full host file system failed the volume with EIO until
/// it was reopened. Now, on a store that lives on a small ext4 file system which fills up,
/// qemu-io gets ENOSPC for the writes that need space (an overwrite whose original a snapshot
/// needs, a first write to a region the source has no blocks for), everything else goes on,
/// and once a file is removed the same server takes those writes; the snapshot is intact
/// and `check --data` is clean.
#[test]
fn a_store_on_a_full_file_system_gives_enospc_over_nbd_and_takes_writes_once_space_is_freed() {
    for t in ["mkfs.ext4", "mount", "umount", "losetup", "fallocate", "df"] {
        require(t);
    }
    let env = Env::new();
    let image = env.path("fs.img");
    fs::File::create(&image)
        .and_then(|f| f.set_len(96 * MIB))
        .expect("file system image");
    run_ok(tool("mkfs.ext4").args(["-F", "-q", "-m", "0"]).arg(&image));
    let fs_mount = LoopMount::mount(&image, &env.path("fs"), "");
    fs::create_dir(fs_mount.path("store")).expect("store directory");
    std::os::unix::fs::symlink(fs_mount.path("store"), env.store()).expect("store link");
    env.snapvol_ok(&["create", "v", "--size", "32M", "--journal-size", "4M"]);

    let server = env.serve();
    qemu_io_write(&server.uri("v"), &[(0xaa, 0, 8 * MIB)]);
    env.snapvol_ok(&["snapshot", "create", "v@s1"]);

    // Something else takes all the space left.
    let filler = fs_mount.path("filler");
    let free = free_bytes(&fs_mount.path(""));
    run_ok(
        tool("fallocate")
            .args(["-l", &free.saturating_sub(128 * 1024).to_string()])
            .arg(&filler),
    );
    let (_, out) = qemu_io(
        &["-c", "write -P 0xbb 0 4M", "-c", "flush"],
        &server.uri("v"),
    );
    assert!(
        out.contains("No space left on device"),
        "an overwrite that needs its original preserved: {out}"
    );
    let (_, out) = qemu_io(&["-c", "write -P 0xcc 16M 4M"], &server.uri("v"));
    assert!(
        out.contains("No space left on device"),
        "a first write to a region the source has no blocks for: {out}"
    );
    // Nothing else changed: reads, the snapshot and info all answer as before.
    qemu_io_verify(&server.uri("v@s1"), &[(0xaa, 0, 8 * MIB)]);
    let info = env.snapvol_json(&["info", "v", "--json"]);
    assert_eq!(
        info["snapshots"].as_array().map(Vec::len),
        Some(1),
        "{info}"
    );
    assert!(!server.log().contains("volume failed"), "{}", server.log());

    // Space is freed: the same server takes the same writes.
    fs::remove_file(&filler).expect("remove the filler");
    qemu_io_write(
        &server.uri("v"),
        &[(0xbb, 0, 4 * MIB), (0xcc, 16 * MIB, 4 * MIB)],
    );
    qemu_io_verify(
        &server.uri("v"),
        &[
            (0xbb, 0, 4 * MIB),
            (0xaa, 4 * MIB, 4 * MIB),
            (0xcc, 16 * MIB, 4 * MIB),
        ],
    );
    qemu_io_verify(
        &server.uri("v@s1"),
        &[(0xaa, 0, 8 * MIB), (0, 16 * MIB, 4 * MIB)],
    );
    server.stop();
    let out = env.snapvol_ok(&["check", "v", "--data"]);
    assert!(out.contains("clean"), "{out}");
    fs_mount.unmount();
}
