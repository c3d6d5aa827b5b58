//! A chain of streams restores every snapshot.

use std::fs;

use crate::serving::*;
use crate::{
    assert_same_export, check_clean, create, edit, export, export_diff, parse_stream, s, Rec,
};

const KIB64: u64 = 64 * KIB;

#[test]
fn a_full_image_and_a_chain_of_diffs_restore_every_snapshot_byte_for_byte() {
    let a = Env::new();
    create(&a, "vol", "8M", "64K");
    edit(&a, "vol", |v| {
        v.write(0, &pattern(8 * MIB as usize, 1)).expect("fill");
        v.snapshot_create("s1").expect("s1");
        // s1 → s2: a partial chunk, zeroing, a trim, the last chunk.
        v.write(3 * KIB64 + 100, &pattern(5000, 2)).expect("write");
        v.write_zeroes(MIB, 256 * KIB).expect("zero");
        v.trim(2 * MIB, 2 * KIB64).expect("trim");
        v.write(8 * MIB - 4096, &pattern(4096, 3)).expect("write");
        v.snapshot_create("s2").expect("s2");
        // s2 → s3: data into the zeroed range, more zeroing, the first chunk.
        v.write(MIB + KIB64, &pattern(3 * KIB64 as usize, 4))
            .expect("write");
        v.write_zeroes(4 * MIB, KIB64).expect("zero");
        v.write(0, &pattern(4096, 5)).expect("write");
        v.snapshot_create("s3").expect("s3");
        // After s3: never part of any stream.
        v.write(5 * MIB, &pattern(4096, 6)).expect("write");
    });

    let full = export(&a, "vol@s1", "full.img");
    let d12 = export_diff(&a, "vol@s2", "vol@s1", "d12");
    let d23 = export_diff(&a, "vol@s3", "vol@s2", "d23");
    let zeroes = |path| {
        parse_stream(&fs::read(path).expect("read"))
            .iter()
            .filter(|r| matches!(r, Rec::Zero(..)))
            .count()
    };
    assert!(zeroes(&d12) >= 2, "zeroing and trim travel as 'z' records");
    assert!(zeroes(&d23) >= 1);
    assert!(
        fs::metadata(&d12).expect("stat").len() < 600 * KIB,
        "the stream holds only what changed"
    );

    let b = Env::new();
    create(&b, "b", "8M", "64K");
    b.snapvol_ok(&["import", "b", s(&full)]);
    b.snapvol_ok(&["snapshot", "create", "b@s1"]);
    let out = b.snapvol_ok(&["import-diff", "b", s(&d12)]);
    assert!(out.contains("created snapshot b@s2"), "{out}");
    b.snapvol_ok(&["import-diff", "b", s(&d23)]);

    assert_eq!(b.snapshot_names("b"), ["s1", "s2", "s3"]);
    for snap in ["s1", "s2", "s3"] {
        assert_same_export(&a, &format!("vol@{snap}"), &b, &format!("b@{snap}"));
    }
    assert_same_export(&a, "vol@s3", &b, "b");
    check_clean(&b, "b");
    check_clean(&a, "vol");
}
