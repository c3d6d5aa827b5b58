//! End-to-end tests of the `snapvol` binary: each test runs the real executable against its own
//! store in a temporary directory and checks exit codes, output and the images it produces.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use snapvol_engine::{Store, VolumeOptions};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_snapvol");
const MIB: u64 = 1 << 20;
/// Volume size used by most tests: small, so the suite stays fast.
const SIZE: u64 = 4 * MIB;

/// A temporary directory holding a store (`store/`) and the test's image files.
struct Env {
    dir: TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A command with a clean environment, run from the temporary directory.
    fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(self.dir.path())
            .env_remove("SNAPVOL_STORE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `snapvol --store STORE ARGS...`.
    fn run(&self, args: &[&str]) -> Output {
        self.command()
            .arg("--store")
            .arg(self.store())
            .args(args)
            .output()
            .expect("snapvol runs")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "snapvol {args:?} failed\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs a command that must succeed and print JSON.
    fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: not JSON:\n{stdout}"))
    }

    /// Runs a command that must fail with exit code 1; returns its one-line error message.
    fn fails(&self, args: &[&str]) -> String {
        failure_message(&self.run(args), args)
    }

    /// Runs a command that must be refused as a usage error (exit code 2); returns stderr.
    fn usage_error(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "snapvol {args:?} was not a usage error\nstderr: {}",
            text(&out.stderr)
        );
        text(&out.stderr)
    }

    /// Creates volume `name` of [`SIZE`] bytes with 4 KiB chunks.
    fn create(&self, name: &str) {
        self.ok(&["create", name, "--size", "4M", "--chunk-size", "4K"]);
    }

    /// Writes `data` to a file and imports it into `volume`.
    fn import(&self, volume: &str, file: &str, data: &[u8]) {
        let path = self.path(file);
        fs::write(&path, data).expect("write image");
        self.ok(&["import", volume, path_str(&path)]);
    }

    /// Exports `spec` (VOL or VOL@SNAP) to a file and returns its content.
    fn export(&self, spec: &str, file: &str) -> Vec<u8> {
        let path = self.path(file);
        self.ok(&["export", spec, path_str(&path)]);
        fs::read(&path).expect("read exported image")
    }

    fn info(&self, volume: &str) -> Value {
        self.json(&["info", volume, "--json"])
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Checks the failure contract: exit code 1 and exactly one line `snapvol: error: ...`.
fn failure_message(out: &Output, args: &[&str]) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "snapvol {args:?} did not fail with exit code 1\nstdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    assert!(
        stderr.starts_with("snapvol: error: ") && stderr.trim_end().lines().count() == 1,
        "snapvol {args:?}: the error is not one 'snapvol: error:' line:\n{stderr}"
    );
    stderr
}

/// Deterministic pseudo-random bytes (splitmix64), different for each seed.
fn random_image(len: u64, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn snapshot_names(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("an array of snapshots")
        .iter()
        .map(|s| s["name"].as_str().expect("a name").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The user journey

#[test]
fn export_of_a_snapshot_returns_the_image_imported_before_it() {
    let env = Env::new();
    env.create("v");
    let monday = random_image(SIZE, 1);
    let tuesday = random_image(SIZE, 2);
    env.import("v", "monday.img", &monday);
    assert!(env
        .ok(&["snapshot", "create", "v@monday"])
        .contains("v@monday"));
    env.import("v", "tuesday.img", &tuesday);

    assert!(env.export("v@monday", "out.img") == monday);
    assert!(env.export("v", "live.img") == tuesday);
}

#[test]
fn export_of_the_live_volume_returns_the_last_image_imported() {
    let env = Env::new();
    env.create("v");
    let image = random_image(SIZE, 3);
    env.import("v", "a.img", &image);
    assert!(env.export("v", "out.img") == image);
}

#[test]
fn snapshots_taken_back_to_back_share_one_preserved_copy() {
    let env = Env::new();
    env.create("v");
    env.import("v", "first.img", &random_image(SIZE, 4));
    for snap in ["v@a", "v@b", "v@c"] {
        env.ok(&["snapshot", "create", snap]);
    }
    env.import("v", "second.img", &random_image(SIZE, 5));

    let info = env.info("v");
    assert_eq!(u64_of(&info["target_used_bytes"]), SIZE, "{info:#}");
    let snapshots = info["snapshots"].as_array().expect("snapshots");
    assert_eq!(snapshots.len(), 3);
    for s in snapshots {
        assert_eq!(u64_of(&s["shared_bytes"]), SIZE, "{s}");
        assert_eq!(u64_of(&s["exclusive_bytes"]), 0, "{s}");
    }
}

#[test]
fn every_snapshot_keeps_its_own_image_across_several_overwrites() {
    let env = Env::new();
    env.create("v");
    let images: Vec<Vec<u8>> = (10..13).map(|seed| random_image(SIZE, seed)).collect();
    for (i, image) in images.iter().enumerate() {
        env.import("v", &format!("in{i}.img"), image);
        env.ok(&["snapshot", "create", &format!("v@s{i}")]);
    }
    env.import("v", "last.img", &random_image(SIZE, 99));
    for (i, image) in images.iter().enumerate() {
        assert!(
            env.export(&format!("v@s{i}"), &format!("out{i}.img")) == *image,
            "s{i}"
        );
    }
    // Each overwrite after a snapshot preserved one volume's worth: three in all.
    assert_eq!(u64_of(&env.info("v")["target_used_bytes"]), 3 * SIZE);
}

#[test]
fn deleting_every_snapshot_that_shares_a_copy_frees_it() {
    let env = Env::new();
    env.create("v");
    env.import("v", "a.img", &random_image(SIZE, 6));
    env.ok(&["snapshot", "create", "v@a"]);
    env.ok(&["snapshot", "create", "v@b"]);
    env.import("v", "b.img", &random_image(SIZE, 7));

    assert!(env.ok(&["snapshot", "delete", "v@a"]).contains("v@a"));
    let info = env.info("v");
    assert_eq!(u64_of(&info["target_used_bytes"]), SIZE);
    assert_eq!(u64_of(&info["snapshots"][0]["exclusive_bytes"]), SIZE);

    env.ok(&["snapshot", "delete", "v@b"]);
    let info = env.info("v");
    assert_eq!(u64_of(&info["target_used_bytes"]), 0);
    assert_eq!(info["snapshots"], Value::Array(vec![]));
}

// ---------------------------------------------------------------------------------------------
// create, list, info

#[test]
fn create_makes_a_volume_that_list_and_info_describe() {
    let env = Env::new();
    let stdout = env.ok(&["create", "vm-1.disk_a", "--size", "8M"]);
    assert!(stdout.contains("vm-1.disk_a"), "{stdout}");

    let list = env.json(&["list", "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list:#}");
    assert_eq!(list[0]["name"], "vm-1.disk_a");
    assert_eq!(u64_of(&list[0]["size"]), 8 * MIB);
    assert_eq!(u64_of(&list[0]["chunk_size"]), 64 << 10);
    assert_eq!(u64_of(&list[0]["snapshots"]), 0);
    assert_eq!(list[0]["in_use"], false);

    let info = env.info("vm-1.disk_a");
    assert_eq!(info["name"], "vm-1.disk_a");
    assert_eq!(u64_of(&info["size"]), 8 * MIB);
    assert_eq!(u64_of(&info["chunk_size"]), 64 << 10);
    assert_eq!(info["target_size"], Value::Null);
    assert_eq!(u64_of(&info["target_used_bytes"]), 0);
    assert!(info["metadata_bytes"].is_u64(), "{info:#}");
    assert_eq!(info["snapshots"], Value::Array(vec![]));
}

#[test]
fn create_accepts_human_sizes_in_any_case_with_an_ib_suffix() {
    let env = Env::new();
    env.ok(&["create", "v", "--size", "2mib", "--chunk-size", "8KiB"]);
    let info = env.info("v");
    assert_eq!(u64_of(&info["size"]), 2 * MIB);
    assert_eq!(u64_of(&info["chunk_size"]), 8 << 10);
}

#[test]
fn info_reports_the_target_size_cap_when_one_was_given() {
    let env = Env::new();
    env.ok(&["create", "v", "--size", "4M", "--target-size", "64M"]);
    assert_eq!(u64_of(&env.info("v")["target_size"]), 64 * MIB);
}

#[test]
fn create_puts_a_relative_source_path_in_the_current_directory() {
    let env = Env::new();
    env.ok(&[
        "create",
        "v",
        "--size",
        "4M",
        "--chunk-size",
        "4K",
        "--source",
        "disk.raw",
    ]);
    assert!(
        env.path("disk.raw").exists(),
        "the source VLUN is in the working directory"
    );
    let image = random_image(SIZE, 8);
    env.import("v", "a.img", &image);
    assert!(env.export("v", "out.img") == image);
}

#[test]
fn info_prints_aligned_details_and_a_snapshot_table() {
    let env = Env::new();
    env.create("v");
    env.import("v", "a.img", &random_image(SIZE, 9));
    env.ok(&["snapshot", "create", "v@monday"]);
    env.import("v", "b.img", &random_image(SIZE, 10));

    let out = env.ok(&["info", "v"]);
    assert!(out.contains("volume:"), "{out}");
    assert!(out.contains("4M (4194304 bytes)"), "{out}");
    assert!(out.contains("chunk size:"), "{out}");
    assert!(out.contains("unlimited"), "{out}");
    let header = out
        .lines()
        .find(|l| l.starts_with("SNAPSHOT"))
        .unwrap_or_else(|| panic!("no snapshot table:\n{out}"));
    assert!(
        header.contains("EXCLUSIVE") && header.contains("SHARED"),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.starts_with("monday"))
        .unwrap_or_else(|| panic!("no row for monday:\n{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells.len(), 4, "{out}");
    assert!(cells[1].ends_with('Z'), "{out}");
    assert_eq!(cells[2..], ["4M", "0"], "{out}");
}

#[test]
fn list_prints_a_table_of_volumes() {
    let env = Env::new();
    env.create("alpha");
    env.ok(&["create", "beta", "--size", "1G"]);
    env.ok(&["snapshot", "create", "beta@x"]);
    let out = env.ok(&["list"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{out}");
    assert!(
        lines[1].starts_with("alpha") && lines[1].contains("4M"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("beta") && lines[2].contains("1G"),
        "{out}"
    );
    assert!(
        lines[2].contains("64K") && lines[2].trim_end().ends_with('1'),
        "{out}"
    );
}

#[test]
fn list_of_an_empty_store_says_so() {
    let env = Env::new();
    assert_eq!(env.json(&["list", "--json"]), Value::Array(vec![]));
    assert!(env.ok(&["list"]).contains("no volumes"));
}

// ---------------------------------------------------------------------------------------------
// snapshots

#[test]
fn snapshot_list_shows_snapshots_oldest_first() {
    let env = Env::new();
    env.create("v");
    for snap in ["v@monday", "v@tuesday", "v@wednesday"] {
        env.ok(&["snapshot", "create", snap]);
    }
    let list = env.json(&["snapshot", "list", "v", "--json"]);
    assert_eq!(snapshot_names(&list), ["monday", "tuesday", "wednesday"]);
    for s in list.as_array().expect("array") {
        let created = s["created"].as_str().expect("created is a string");
        assert!(
            created.len() == 20 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
            "not RFC 3339 UTC: {created}"
        );
        assert!(
            s["exclusive_bytes"].is_u64() && s["shared_bytes"].is_u64(),
            "{s}"
        );
    }

    let out = env.ok(&["snapshot", "list", "v"]);
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["monday", "tuesday", "wednesday"], "{out}");
}

#[test]
fn snapshot_delete_removes_it_from_the_list() {
    let env = Env::new();
    env.create("v");
    env.ok(&["snapshot", "create", "v@a"]);
    env.ok(&["snapshot", "create", "v@b"]);
    env.ok(&["snapshot", "delete", "v@a"]);
    let list = env.json(&["snapshot", "list", "v", "--json"]);
    assert_eq!(snapshot_names(&list), ["b"]);
    assert_eq!(u64_of(&env.json(&["list", "--json"])[0]["snapshots"]), 1);
}

#[test]
fn snapshot_list_of_a_volume_without_snapshots_says_so() {
    let env = Env::new();
    env.create("v");
    assert_eq!(
        env.json(&["snapshot", "list", "v", "--json"]),
        Value::Array(vec![])
    );
    assert!(env.ok(&["snapshot", "list", "v"]).contains("no snapshots"));
}

#[test]
fn a_snapshot_name_can_be_reused_after_its_snapshot_is_deleted() {
    let env = Env::new();
    env.create("v");
    let old = random_image(SIZE, 11);
    env.import("v", "old.img", &old);
    env.ok(&["snapshot", "create", "v@s"]);
    env.ok(&["snapshot", "delete", "v@s"]);
    let new = random_image(SIZE, 12);
    env.import("v", "new.img", &new);
    env.ok(&["snapshot", "create", "v@s"]);
    env.import("v", "newer.img", &random_image(SIZE, 13));
    assert!(env.export("v@s", "out.img") == new);
}

// ---------------------------------------------------------------------------------------------
// import and export

#[test]
fn import_of_a_smaller_file_leaves_the_rest_of_the_volume_as_it_was() {
    let env = Env::new();
    env.create("v");
    let mut image = random_image(SIZE, 14);
    env.import("v", "full.img", &image);
    let head = random_image(MIB + 1000, 15);
    env.import("v", "head.img", &head);
    image[..head.len()].copy_from_slice(&head);
    assert!(env.export("v", "out.img") == image);
}

#[test]
fn import_writes_zero_regions_too() {
    let env = Env::new();
    env.create("v");
    env.import("v", "random.img", &random_image(SIZE, 16));
    let mut image = random_image(SIZE, 17);
    image[..(2 * MIB) as usize].fill(0);
    env.import("v", "half-zero.img", &image);
    assert!(env.export("v", "out.img") == image);
}

#[test]
fn export_writes_a_sparse_file_of_exactly_the_volume_size() {
    use std::os::unix::fs::MetadataExt;

    let env = Env::new();
    env.ok(&["create", "v", "--size", "16M", "--chunk-size", "64K"]);
    let mut image = vec![0u8; (16 * MIB) as usize];
    image[(5 * MIB) as usize..(5 * MIB + 4096) as usize].fill(0xAB);
    env.import("v", "a.img", &image);

    let out = env.export("v", "out.img");
    assert_eq!(out.len() as u64, 16 * MIB);
    assert!(out == image);
    let meta = fs::metadata(env.path("out.img")).expect("metadata");
    assert!(
        meta.blocks() * 512 < 8 * MIB,
        "export allocated {} bytes for 4 KiB of data",
        meta.blocks() * 512
    );
}

#[test]
fn export_overwrites_an_existing_file_completely() {
    let env = Env::new();
    env.create("v");
    fs::write(env.path("out.img"), random_image(2 * SIZE, 18)).expect("write");
    let out = env.export("v", "out.img");
    assert_eq!(out.len() as u64, SIZE);
    assert!(out.iter().all(|&b| b == 0));
}

#[test]
fn export_to_a_dash_writes_the_image_to_standard_output() {
    let env = Env::new();
    env.create("v");
    let image = random_image(SIZE, 19);
    env.import("v", "a.img", &image);
    env.ok(&["snapshot", "create", "v@s"]);
    env.import("v", "b.img", &random_image(SIZE, 20));
    let out = env.run(&["export", "v@s", "-"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout == image);
}

#[test]
fn export_to_a_device_streams_the_image_without_truncating_it() {
    let env = Env::new();
    env.create("v");
    env.import("v", "a.img", &random_image(SIZE, 23));
    let stdout = env.ok(&["export", "v", "/dev/null"]);
    assert!(stdout.contains("exported v (4M) to /dev/null"), "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// the store

#[test]
fn the_store_comes_from_snapvol_store_when_no_flag_is_given() {
    let env = Env::new();
    let out = env
        .command()
        .env("SNAPVOL_STORE", env.path("elsewhere"))
        .args(["create", "v", "--size", "1M"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(env.path("elsewhere").join("v").is_dir());
}

#[test]
fn the_store_defaults_to_snapvol_store_in_the_current_directory() {
    let env = Env::new();
    let out = env
        .command()
        .args(["create", "v", "--size", "1M"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(env.path("snapvol-store").join("v").is_dir());
}

#[test]
fn the_store_flag_wins_over_the_environment() {
    let env = Env::new();
    let out = env
        .command()
        .env("SNAPVOL_STORE", env.path("from-env"))
        .arg("--store")
        .arg(env.path("from-flag"))
        .args(["create", "v", "--size", "1M"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(env.path("from-flag").join("v").is_dir());
    assert!(!env.path("from-env").exists());
}

// ---------------------------------------------------------------------------------------------
// failures: exit code 1 and a message that names the problem

#[test]
fn a_store_that_is_not_a_directory_is_refused() {
    let env = Env::new();
    fs::write(env.store(), b"not a directory").expect("write");
    let err = env.fails(&["list"]);
    assert!(err.contains("is not a directory"), "{err}");
}

#[test]
fn create_refuses_a_volume_that_already_exists() {
    let env = Env::new();
    env.create("v");
    let err = env.fails(&["create", "v", "--size", "4M"]);
    assert!(err.contains("'v' already exists"), "{err}");
}

#[test]
fn create_refuses_a_size_that_is_not_a_multiple_of_the_chunk_size() {
    let env = Env::new();
    let err = env.fails(&["create", "v", "--size", "4100K"]);
    assert!(
        err.contains("not a multiple of the chunk size 64K"),
        "{err}"
    );
    assert!(!env.store().join("v").exists(), "nothing is left behind");
}

#[test]
fn create_refuses_a_chunk_size_that_is_not_a_power_of_two_from_4k_to_1m() {
    let env = Env::new();
    for bad in ["3000", "2K", "96K", "2M"] {
        let err = env.fails(&["create", "v", "--size", "4M", "--chunk-size", bad]);
        assert!(err.contains("power of two from 4K to 1M"), "{bad}: {err}");
    }
}

#[test]
fn bad_names_are_refused_with_the_allowed_alphabet() {
    let env = Env::new();
    for bad in ["a/b", "a b", "..", "caf\u{e9}"] {
        let err = env.fails(&["create", bad, "--size", "4M"]);
        assert!(err.contains("invalid name"), "{bad}: {err}");
    }
    let err = env.fails(&["create", "a/b", "--size", "4M"]);
    assert!(err.contains("letters, digits"), "{err}");
    env.create("v");
    let err = env.fails(&["snapshot", "create", "v@no/pe"]);
    assert!(err.contains("invalid name 'no/pe'"), "{err}");
}

#[test]
fn snapshot_commands_need_a_vol_at_snap_name() {
    let env = Env::new();
    env.create("v");
    for cmd in ["create", "delete"] {
        let err = env.fails(&["snapshot", cmd, "v"]);
        assert!(err.contains("VOL@SNAP"), "{cmd}: {err}");
    }
    let err = env.fails(&["info", "v@s"]);
    assert!(err.contains("names a snapshot"), "{err}");
}

#[test]
fn commands_on_a_missing_volume_say_it_was_not_found() {
    let env = Env::new();
    fs::write(env.path("a.img"), [1u8; 4096]).expect("write");
    let image = path_str(&env.path("a.img")).to_owned();
    let out = path_str(&env.path("out.img")).to_owned();
    for args in [
        vec!["info", "nope"],
        vec!["info", "nope", "--json"],
        vec!["snapshot", "create", "nope@s"],
        vec!["snapshot", "list", "nope"],
        vec!["snapshot", "delete", "nope@s"],
        vec!["import", "nope", &image],
        vec!["export", "nope", &out],
        vec!["export", "nope@s", &out],
    ] {
        let err = env.fails(&args);
        assert!(err.contains("volume 'nope' not found"), "{args:?}: {err}");
    }
    assert!(
        !env.path("out.img").exists(),
        "a failed export creates no file"
    );
}

#[test]
fn snapshot_create_refuses_a_snapshot_that_already_exists() {
    let env = Env::new();
    env.create("v");
    env.ok(&["snapshot", "create", "v@s"]);
    let err = env.fails(&["snapshot", "create", "v@s"]);
    assert!(err.contains("snapshot 'v@s' already exists"), "{err}");
}

#[test]
fn snapshot_delete_refuses_a_snapshot_that_does_not_exist() {
    let env = Env::new();
    env.create("v");
    let err = env.fails(&["snapshot", "delete", "v@nope"]);
    assert!(err.contains("snapshot 'v@nope' not found"), "{err}");
}

#[test]
fn export_of_a_missing_snapshot_fails_without_touching_the_output() {
    let env = Env::new();
    env.create("v");
    fs::write(env.path("keep.img"), b"precious").expect("write");
    let err = env.fails(&["export", "v@nope", path_str(&env.path("keep.img"))]);
    assert!(err.contains("snapshot 'v@nope' not found"), "{err}");
    assert_eq!(fs::read(env.path("keep.img")).expect("read"), b"precious");
}

#[test]
fn import_refuses_a_file_larger_than_the_volume_before_writing_anything() {
    let env = Env::new();
    env.create("v");
    let image = random_image(SIZE, 21);
    env.import("v", "a.img", &image);
    env.ok(&["snapshot", "create", "v@s"]);

    fs::write(env.path("big.img"), random_image(SIZE + 1, 22)).expect("write");
    let err = env.fails(&["import", "v", path_str(&env.path("big.img"))]);
    assert!(err.contains("larger than volume 'v'"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");

    assert!(env.export("v", "out.img") == image);
    assert_eq!(u64_of(&env.info("v")["target_used_bytes"]), 0);
}

#[test]
fn import_of_a_missing_file_names_the_file() {
    let env = Env::new();
    env.create("v");
    let err = env.fails(&["import", "v", "no-such.img"]);
    assert!(err.contains("no-such.img"), "{err}");
}

#[test]
fn a_volume_held_by_another_process_is_refused_as_in_use() {
    let env = Env::new();
    env.create("v");
    fs::write(env.path("a.img"), [1u8; 4096]).expect("write");
    let image = path_str(&env.path("a.img")).to_owned();
    let out = path_str(&env.path("out.img")).to_owned();

    let held = Store::new(env.store())
        .open("v", VolumeOptions::default())
        .expect("the test opens the volume");
    for args in [
        vec!["info", "v"],
        vec!["snapshot", "create", "v@s"],
        vec!["snapshot", "list", "v"],
        vec!["import", "v", &image],
        vec!["export", "v", &out],
    ] {
        let err = env.fails(&args);
        assert!(err.contains("in use"), "{args:?}: {err}");
        assert!(err.contains("'v'"), "{args:?}: {err}");
    }
    held.close().expect("close");
    env.ok(&["info", "v"]);
}

#[test]
fn list_shows_a_volume_in_use_instead_of_failing() {
    let env = Env::new();
    env.create("busy");
    env.create("free");
    let held = Store::new(env.store())
        .open("busy", VolumeOptions::default())
        .expect("the test opens the volume");

    let list = env.json(&["list", "--json"]);
    assert_eq!(list[0]["name"], "busy");
    assert_eq!(list[0]["in_use"], true);
    assert!(list[0]["holder"].is_string(), "{list:#}");
    assert_eq!(list[0]["size"], Value::Null);
    assert_eq!(list[1]["name"], "free");
    assert_eq!(list[1]["in_use"], false);
    assert_eq!(u64_of(&list[1]["size"]), SIZE);

    let out = env.ok(&["list"]);
    let busy = out
        .lines()
        .find(|l| l.starts_with("busy"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(busy.contains("in use"), "{out}");
    held.close().expect("close");
}

// ---------------------------------------------------------------------------------------------
// usage errors: exit code 2

#[test]
fn junk_sizes_are_usage_errors_that_name_the_value() {
    let env = Env::new();
    for bad in ["ten", "10X", "1.5G", "0", "16E", "-4M", ""] {
        let err = env.usage_error(&["create", "v", "--size", bad]);
        assert!(err.contains("--size"), "{bad:?}: {err}");
    }
    let err = env.usage_error(&["create", "v", "--size", "4M", "--chunk-size", "64Q"]);
    assert!(err.contains("unknown unit 'Q'"), "{err}");
    let err = env.usage_error(&["create", "v", "--size", "16E"]);
    assert!(err.contains("too large"), "{err}");
    let err = env.usage_error(&["create", "v", "--size", "0"]);
    assert!(err.contains("zero"), "{err}");
    assert!(!env.store().exists());
}

#[test]
fn missing_arguments_and_unknown_commands_are_usage_errors() {
    let env = Env::new();
    env.usage_error(&["create", "v"]);
    env.usage_error(&["export", "v"]);
    env.usage_error(&["snapshot"]);
    env.usage_error(&["frobnicate"]);
    env.usage_error(&[]);
}

#[test]
fn help_teaches_with_examples() {
    let env = Env::new();
    let top = env.ok(&["--help"]);
    assert!(
        top.contains("source VLUN") && top.contains("target VLUN"),
        "{top}"
    );
    for args in [
        vec!["--help"],
        vec!["create", "--help"],
        vec!["import", "--help"],
        vec!["export", "--help"],
        vec!["snapshot", "--help"],
    ] {
        let help = env.ok(&args);
        assert!(help.contains("Examples:"), "{args:?}:\n{help}");
        assert!(help.contains("snapvol "), "{args:?}:\n{help}");
    }
}

// ---------------------------------------------------------------------------------------------
// check

/// XORs one byte of a file.
fn flip_byte(path: &Path, offset: u64, mask: u8) {
    let mut bytes = fs::read(path).expect("read");
    bytes[offset as usize] ^= mask;
    fs::write(path, bytes).expect("write");
}

/// The current superblock of a volume's target file, as open picks it.
fn current_superblock(target: &Path) -> snapvol_engine::format::Superblock {
    use snapvol_engine::format::{superblock_offset, Superblock, BLOCK_SIZE};
    let bytes = fs::read(target).expect("read target");
    (0..2u64)
        .filter_map(|g| {
            let off = superblock_offset(g);
            let block: [u8; BLOCK_SIZE] = bytes[off as usize..off as usize + BLOCK_SIZE]
                .try_into()
                .expect("a block");
            Superblock::decode(&block, off).ok()
        })
        .max_by_key(|sb| sb.generation)
        .expect("a valid superblock copy")
}

/// A volume `v` with a snapshot and an overwrite, so its metadata log has records.
fn volume_with_history(env: &Env) -> PathBuf {
    env.create("v");
    env.import("v", "a.img", &random_image(SIZE, 1));
    env.ok(&["snapshot", "create", "v@monday"]);
    env.import("v", "b.img", &random_image(SIZE / 4, 2));
    env.store().join("v").join("target.svt")
}

#[test]
fn check_of_a_healthy_volume_exits_0_and_says_it_is_clean() {
    let env = Env::new();
    volume_with_history(&env);
    let out = env.ok(&["check", "v"]);
    assert!(out.contains("volume 'v' is clean"), "{out}");
    assert!(out.contains("1 snapshot,"), "{out}");

    let report = env.json(&["check", "v", "--json"]);
    assert_eq!(report["problems"], Value::Array(vec![]), "{report:#}");
    assert_eq!(u64_of(&report["summary"]["snapshots"]), 1);
    assert_eq!(
        u64_of(&report["summary"]["preserved_chunks"]),
        SIZE / 4 / 4096
    );
    assert!(u64_of(&report["summary"]["metadata_blocks"]) >= 1);
}

#[test]
fn check_names_a_flipped_byte_in_superblock_copy_1_and_repair_fixes_it() {
    let env = Env::new();
    let target = volume_with_history(&env);
    let before = env.export("v@monday", "before.img");
    flip_byte(&target, 0x1000 + 50, 0x10);

    let out = env.run(&["check", "v"]);
    failure_message(&out, &["check", "v"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("superblock copy at 0x1000: ")),
        "{stdout}"
    );

    let out = env.run(&["check", "v", "--json"]);
    failure_message(&out, &["check", "v", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(
        report["problems"][0]["location"],
        "superblock copy at 0x1000"
    );
    assert_eq!(report["problems"][0]["repairable"], true);

    let repaired = env.ok(&["check", "v", "--repair"]);
    assert!(
        repaired.contains("repaired: superblock copy at 0x1000"),
        "{repaired}"
    );
    assert!(repaired.contains("is clean"), "{repaired}");
    env.ok(&["check", "v"]);
    assert!(env.export("v@monday", "after.img") == before);
}

#[test]
fn check_names_a_corrupted_metadata_block_and_repair_rewrites_it_from_its_ditto_copy() {
    let env = Env::new();
    let target = volume_with_history(&env);
    let sb = current_superblock(&target);
    let head = sb.meta_head;
    assert_ne!(head, 0, "the volume has a metadata log");
    let before = env.json(&["info", "v", "--json"]);
    flip_byte(&target, head + 100, 0x01);

    let out = env.run(&["check", "v"]);
    let err = failure_message(&out, &["check", "v"]);
    assert!(err.contains("1 problem"), "{err}");
    let stdout = text(&out.stdout);
    let want = format!("metadata block at {head:#x}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&want))
        .unwrap_or_else(|| panic!("no line names {want}:\n{stdout}"));
    assert!(
        line.contains(&format!("ditto copy at {:#x} is whole", sb.meta_head_copy)),
        "{line}"
    );
    // The volume is read around the damage in the meantime (what was issue 10, finding 3:
    // one damaged block made it unusable).
    assert_eq!(env.json(&["info", "v", "--json"]), before);

    let out = env.ok(&["check", "v", "--repair"]);
    assert!(
        out.contains(&format!("repaired: {want}: rewritten from its ditto copy")),
        "{out}"
    );
    assert!(env.ok(&["check", "v"]).contains("is clean"));
}

#[test]
fn check_of_a_missing_volume_fails_and_says_so() {
    let env = Env::new();
    env.create("v");
    let err = env.fails(&["check", "nope"]);
    assert!(err.contains("'nope' not found"), "{err}");
    let err = env.fails(&["check", "v@s"]);
    assert!(err.contains("names a snapshot"), "{err}");
}

#[test]
fn check_refuses_a_volume_that_is_open_elsewhere() {
    let env = Env::new();
    env.create("v");
    let held = Store::new(env.store())
        .open("v", VolumeOptions::default())
        .expect("the test opens the volume");
    let err = env.fails(&["check", "v"]);
    assert!(err.contains("in use"), "{err}");
    held.close().expect("close");
    env.ok(&["check", "v"]);
}

#[test]
fn check_help_has_examples() {
    let env = Env::new();
    let help = env.ok(&["check", "--help"]);
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("snapvol check vm1 --repair"), "{help}");
}

// ---------------------------------------------------------------------------------------------
// Commands that only read
// ---------------------------------------------------------------------------------------------

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

/// What broke: when the server died while taking a snapshot, the CLI reported a plain error,
/// yet the snapshot could exist after a restart. A broken connection after the request went
/// out now says that the outcome is unknown and how to find it out.
#[test]
fn a_server_that_dies_during_snapshot_create_leaves_an_error_that_says_the_outcome_is_unknown() {
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    let env = Env::new();
    env.create("v");
    // A stand-in for a server that holds the volume, reads the request and dies before
    // answering.
    let mut holder = Command::new("flock")
        .args([
            "-x",
            path_str(&env.store().join("v").join("lock")),
            "sleep",
            "60",
        ])
        .spawn()
        .expect("flock(1) runs");
    // Until flock(1) has the lock, `info` (a reader) succeeds; then it says the volume is in use.
    while env.run(&["info", "v"]).status.success() {
        std::thread::yield_now();
    }
    assert!(text(&env.run(&["info", "v"]).stderr).contains("in use"));
    let listener = UnixListener::bind(env.store().join("control.sock")).expect("bind");
    let dying = std::thread::spawn(move || {
        // The CLI connects once to see the server is there, then once with its request.
        let mut requests = Vec::new();
        for conn in listener.incoming().take(2) {
            let conn = conn.expect("accept");
            let mut line = String::new();
            std::io::BufReader::new(&conn)
                .read_line(&mut line)
                .expect("read");
            requests.push(line);
        }
        requests
    });
    let err = env.fails(&["snapshot", "create", "v@s1"]);
    assert!(
        err.contains("may or may not have been taken") && err.contains("snapvol snapshot list v"),
        "{err}"
    );
    let requests = dying.join().expect("the stand-in server");
    assert!(
        requests
            .iter()
            .any(|r| r.contains("snapshot_create") && r.contains("s1")),
        "{requests:?}"
    );
    let _ = holder.kill();
    let _ = holder.wait();
}
