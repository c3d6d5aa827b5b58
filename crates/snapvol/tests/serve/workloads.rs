//! Real workloads: fio with verification on several connections, and an ext4 file system on
//! a loop device, each read back from a snapshot after changes.

use std::fs;

use crate::serving::*;

// ---------------------------------------------------------------------------------------------
// 5. fio

#[test]
fn fio_data_verified_on_several_connections_stays_verified_on_a_snapshot_after_an_overwrite() {
    let env = Env::new();
    env.create("v", "256M");
    let server = env.serve();
    let live = server.uri("v");
    let after = server.uri("v@after");
    let per_job = 48 * MIB;

    // Two jobs, two connections: [0, 48M) and [64M, 112M), written then read back.
    fio_ok(
        &env,
        &fio_job(&live, 0, per_job, 2, 1),
        Some(per_job),
        per_job,
    );
    env.snapvol_ok(&["snapshot", "create", "v@after"]);
    fio_ok(
        &env,
        &with(fio_job(&after, 0, per_job, 2, 1), &["--verify_only=1"]),
        None,
        per_job,
    );
    // fio's crc32c check only proves each block is some intact fio block at the right offset,
    // not which run wrote it: keep the exact bytes to compare with after the overwrite.
    let saved = env.path("after.img");
    nbdcopy(&after, &saved);

    // The live volume overwritten with another seed (other block sizes and data).
    fio_ok(
        &env,
        &fio_job(&live, 0, per_job, 2, 2),
        Some(per_job),
        per_job,
    );
    fio_ok(
        &env,
        &with(fio_job(&after, 0, per_job, 2, 1), &["--verify_only=1"]),
        None,
        per_job,
    );
    assert!(
        qemu_img_compare(saved.to_str().unwrap(), &after),
        "v@after changed"
    );
    assert!(
        !qemu_img_compare(saved.to_str().unwrap(), &live),
        "the overwrite was lost"
    );
    server.stop();
}

// ---------------------------------------------------------------------------------------------
// 6. ext4

#[test]
fn an_ext4_filesystem_on_the_live_export_is_read_back_intact_from_a_snapshot_after_changes() {
    for t in [
        "mkfs.ext4",
        "e2fsck",
        "mount",
        "umount",
        "losetup",
        "nbdfuse",
    ] {
        require(t);
    }
    let env = Env::new();
    env.create("v", "256M");
    let server = env.serve();
    let live = server.uri("v");
    let mnt = env.path("mnt");
    let big_before = pattern(8 << 20, 6);
    let big_after = pattern(8 << 20, 7);

    // mkfs and files through nbdfuse and a loop device.
    let fuse = FuseDisk::mount(&env.path("fuse-rw"), &live, false);
    run_ok(tool("mkfs.ext4").args(["-F", "-q"]).arg(fuse.disk()));
    let fs_rw = LoopMount::mount(&fuse.disk(), &mnt, "");
    fs::write(fs_rw.path("keep.txt"), "written before the snapshot\n").unwrap();
    fs::write(fs_rw.path("doomed.txt"), "deleted after the snapshot\n").unwrap();
    fs::write(fs_rw.path("big.bin"), &big_before).unwrap();
    fs::create_dir(fs_rw.path("dir")).unwrap();
    fs::write(fs_rw.path("dir/nested.txt"), "nested\n").unwrap();
    fs_rw.unmount();
    fuse.flush();
    fuse.unmount();

    env.snapvol_ok(&["snapshot", "create", "v@before"]);

    // Change, overwrite in place, delete and add files on the live volume.
    let fuse = FuseDisk::mount(&env.path("fuse-rw"), &live, false);
    let fs_rw = LoopMount::mount(&fuse.disk(), &mnt, "");
    fs::write(fs_rw.path("keep.txt"), "changed after the snapshot\n").unwrap();
    fs::remove_file(fs_rw.path("doomed.txt")).unwrap();
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(fs_rw.path("big.bin"))
            .unwrap();
        f.write_all(&big_after).unwrap();
        f.sync_all().unwrap();
    }
    fs::remove_dir_all(fs_rw.path("dir")).unwrap();
    fs::write(fs_rw.path("new.txt"), "added after the snapshot\n").unwrap();
    fs_rw.unmount();
    fuse.flush();
    fuse.unmount();

    // The snapshot, read-only: e2fsck is clean and the old files are there.
    let fuse = FuseDisk::mount(&env.path("fuse-snap"), &server.uri("v@before"), true);
    run_ok(tool("e2fsck").args(["-f", "-n"]).arg(fuse.disk()));
    let fs_ro = LoopMount::mount(&fuse.disk(), &mnt, "ro");
    assert_eq!(
        fs::read_to_string(fs_ro.path("keep.txt")).unwrap(),
        "written before the snapshot\n"
    );
    assert_eq!(
        fs::read_to_string(fs_ro.path("doomed.txt")).unwrap(),
        "deleted after the snapshot\n"
    );
    assert!(
        fs::read(fs_ro.path("big.bin")).unwrap() == big_before,
        "big.bin in v@before"
    );
    assert_eq!(
        fs::read_to_string(fs_ro.path("dir/nested.txt")).unwrap(),
        "nested\n"
    );
    assert!(!fs_ro.path("new.txt").exists());
    fs_ro.unmount();
    fuse.unmount();

    // The live volume: e2fsck is clean and the changes are there.
    let fuse = FuseDisk::mount(&env.path("fuse-live"), &live, true);
    run_ok(tool("e2fsck").args(["-f", "-n"]).arg(fuse.disk()));
    let fs_ro = LoopMount::mount(&fuse.disk(), &mnt, "ro");
    assert_eq!(
        fs::read_to_string(fs_ro.path("keep.txt")).unwrap(),
        "changed after the snapshot\n"
    );
    assert!(!fs_ro.path("doomed.txt").exists());
    assert!(!fs_ro.path("dir").exists());
    assert!(
        fs::read(fs_ro.path("big.bin")).unwrap() == big_after,
        "big.bin in v"
    );
    assert_eq!(
        fs::read_to_string(fs_ro.path("new.txt")).unwrap(),
        "added after the snapshot\n"
    );
    fs_ro.unmount();
    fuse.unmount();
    server.stop();
}
