//! Commands that only read: they change no byte and work on a store mounted read-only.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{path_str, random_image, text, Env, SIZE};

/// Every file under `dir`, with its content and modification time.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read a directory") {
            let entry = entry.expect("directory entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                let content = fs::read(entry.path()).expect("read a file");
                out.push((entry.path(), content, meta.modified().expect("mtime")));
            }
        }
    }
    out.sort();
    out
}

/// A read-only bind mount of a directory, unmounted when dropped.
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    fn new(source: &Path, at: &Path) -> Self {
        fs::create_dir_all(at).expect("mount point");
        let mount = |args: &[&str]| {
            let status = Command::new("mount")
                .args(args)
                .status()
                .expect("mount runs (the tests run as root)");
            assert!(
                status.success(),
                "mount {args:?} failed: read-only stores need root to test"
            );
        };
        mount(&["--bind", path_str(source), path_str(at)]);
        let guard = Self(at.to_path_buf());
        mount(&["-o", "remount,bind,ro", path_str(at)]);
        guard
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn commands_that_only_read_change_no_byte_and_work_on_a_store_mounted_read_only() {
    let env = Env::new();
    env.create("vol");
    env.import("vol", "a.img", &random_image(SIZE, 1));
    env.ok(&["snapshot", "create", "vol@s1"]);
    env.import("vol", "b.img", &random_image(SIZE / 2, 2));
    let before = fingerprint(&env.store());
    let reads = |store: &Path, out: &str| {
        let run = |args: &[&str]| -> String {
            let mut all = vec!["--store", path_str(store)];
            all.extend_from_slice(args);
            let out = env.command().args(&all).output().expect("snapvol runs");
            assert_eq!(
                out.status.code(),
                Some(0),
                "snapvol {args:?} failed: {}",
                text(&out.stderr)
            );
            text(&out.stdout)
        };
        let info = run(&["info", "vol", "--json"]);
        let list = run(&["list", "--json"]);
        let snaps = run(&["snapshot", "list", "vol", "--json"]);
        let live = env.path(&format!("{out}-live.img"));
        let s1 = env.path(&format!("{out}-s1.img"));
        run(&["export", "vol", path_str(&live)]);
        run(&["export", "vol@s1", path_str(&s1)]);
        run(&["check", "vol"]);
        (
            info,
            list,
            snaps,
            fs::read(live).unwrap(),
            fs::read(s1).unwrap(),
        )
    };
    let here = reads(&env.store(), "rw");
    assert!(
        before == fingerprint(&env.store()),
        "info, list, snapshot list, export or check changed a file of the store"
    );
    let mut expected = random_image(SIZE, 1);
    assert!(here.4 == expected, "the snapshot exports what it held");
    expected[..SIZE as usize / 2].copy_from_slice(&random_image(SIZE / 2, 2));
    assert!(here.3 == expected, "the live volume exports what it holds");

    let mount = ReadOnlyMount::new(&env.store(), &env.path("ro-store"));
    let there = reads(&mount.0, "ro");
    // The same answers (the store's path is not part of any of them).
    assert_eq!(here, there, "a read-only store answers as the writable one");
    drop(mount);
    assert!(before == fingerprint(&env.store()));
}
