//! `snapvol check`: a healthy volume, flipped bytes named and repaired, and the volumes it
//! refuses.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use snapvol_engine::{Store, VolumeOptions};

use crate::{failure_message, random_image, text, u64_of, Env, SIZE};

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
