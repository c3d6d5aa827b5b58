//! The user journey: images imported, snapshots taken, exported and deleted, and the one
//! preserved copy that snapshots taken back to back share.

use serde_json::Value;

use crate::{random_image, u64_of, Env, SIZE};

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
