//! What each command does when it works: create, list and info, snapshots, import and export,
//! and where the store comes from.

use std::fs;

use serde_json::Value;

use crate::{random_image, snapshot_names, text, u64_of, Env, MIB, SIZE};

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

/// The value of the `info` line `KEY: VALUE`.
fn info_line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no '{key}:' line:\n{out}"))
        .trim()
}

#[test]
fn create_write_mode_throughput_is_what_create_info_and_info_json_report_and_it_lasts() {
    let env = Env::new();
    let stdout = env.ok(&["create", "v", "--size", "4M", "--write-mode", "throughput"]);
    assert!(stdout.contains("write mode throughput"), "{stdout}");
    assert_eq!(
        info_line(&env.ok(&["info", "v"]), "write mode"),
        "throughput"
    );
    assert_eq!(env.info("v")["write_mode"], "throughput");

    // Still so once data, a snapshot and more data rewrote the superblock.
    env.import("v", "a.img", &random_image(4 * MIB, 21));
    env.ok(&["snapshot", "create", "v@s1"]);
    let b = random_image(4 * MIB, 22);
    env.import("v", "b.img", &b);
    assert_eq!(env.info("v")["write_mode"], "throughput");
    assert_eq!(
        info_line(&env.ok(&["info", "v"]), "write mode"),
        "throughput"
    );
    assert!(env.export("v", "out.img") == b);
    assert!(env.export("v@s1", "s1.img") == random_image(4 * MIB, 21));
    assert!(env.ok(&["check", "v"]).contains("clean"));
}

#[test]
fn create_without_write_mode_makes_an_atomic_volume_as_write_mode_atomic_does() {
    let env = Env::new();
    let stdout = env.ok(&["create", "d", "--size", "4M"]);
    assert!(stdout.contains("write mode atomic"), "{stdout}");
    assert_eq!(info_line(&env.ok(&["info", "d"]), "write mode"), "atomic");
    assert_eq!(env.info("d")["write_mode"], "atomic");

    env.ok(&["create", "a", "--size", "4M", "--write-mode", "atomic"]);
    assert_eq!(info_line(&env.ok(&["info", "a"]), "write mode"), "atomic");
    assert_eq!(env.info("a")["write_mode"], "atomic");
}

#[test]
fn create_help_documents_write_mode_and_both_its_values() {
    let env = Env::new();
    let help = env.ok(&["create", "--help"]);
    let at = help
        .find("--write-mode <MODE>")
        .unwrap_or_else(|| panic!("no --write-mode in create --help:\n{help}"));
    let option = &help[at..];
    // Up to the next option.
    let option = &option[..option[2..].find("\n  -").map_or(option.len(), |i| i + 2)];
    for word in ["atomic", "throughput", "FLUSH", "FUA", "[default: atomic]"] {
        assert!(option.contains(word), "no {word:?} in:\n{option}");
    }
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
