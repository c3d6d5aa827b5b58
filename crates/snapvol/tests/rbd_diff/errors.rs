//! What cannot work is refused before anything is written, with a message that says why; a
//! stream cut short leaves the live volume as the from-snapshot.

use std::fs;

use crate::serving::*;
use crate::{assert_same_export, check_clean, create, edit, export, export_diff, s};

/// Store `a` with `v@s1` and `v@s2` and the stream between them; store `b` with `v` restored
/// to `s1` (and the snapshot taken). Returns both and the stream's path.
fn two_stores() -> (Env, Env, std::path::PathBuf) {
    let a = Env::new();
    create(&a, "v", "4M", "4K");
    edit(&a, "v", |v| {
        v.write(0, &pattern(4 * MIB as usize, 1)).expect("fill");
        v.snapshot_create("s1").expect("s1");
        v.write(100 * KIB, &pattern(2 * MIB as usize, 2))
            .expect("write");
        v.write_zeroes(3 * MIB, 64 * KIB).expect("zero");
        v.snapshot_create("s2").expect("s2");
    });
    let d12 = export_diff(&a, "v@s2", "v@s1", "d12");
    let full = export(&a, "v@s1", "full.img");
    let b = Env::new();
    create(&b, "v", "4M", "4K");
    b.snapvol_ok(&["import", "v", s(&full)]);
    b.snapvol_ok(&["snapshot", "create", "v@s1"]);
    (a, b, d12)
}

/// Asserts that `b`'s live volume is still `a`'s `v@s1` and `b` has only `s1`.
fn unchanged(a: &Env, b: &Env) {
    assert_same_export(a, "v@s1", b, "v");
    assert_eq!(b.snapshot_names("v"), ["s1"]);
    check_clean(b, "v");
}

#[test]
fn a_missing_from_snapshot_an_existing_to_snapshot_or_another_size_writes_nothing() {
    let (a, b, d12) = two_stores();

    // No from-snapshot: a volume that never had s1.
    let c = Env::new();
    create(&c, "v", "4M", "4K");
    let err = c.snapvol_fails(&["import-diff", "v", s(&d12)]);
    assert!(
        err.contains("no snapshot 's1', which the stream starts from")
            && err.contains("nothing was written"),
        "{err}"
    );
    assert!(c.snapshot_names("v").is_empty());
    let live = export(&c, "v", "c-live");
    assert!(fs::read(&live).expect("read").iter().all(|&b| b == 0));

    // Another size.
    let d = Env::new();
    create(&d, "v", "8M", "4K");
    d.snapvol_ok(&["snapshot", "create", "v@s1"]);
    let err = d.snapvol_fails(&["import-diff", "v", s(&d12)]);
    assert!(err.contains("does not resize"), "{err}");
    assert_eq!(d.snapshot_names("v"), ["s1"]);

    // The to-snapshot exists already: the second import of the same stream.
    b.snapvol_ok(&["import-diff", "v", s(&d12)]);
    let err = b.snapvol_fails(&["import-diff", "v", s(&d12)]);
    assert!(
        err.contains("'v@s2', which the stream ends with, already exists"),
        "{err}"
    );
    assert_same_export(&a, "v@s2", &b, "v");
}

#[test]
fn a_live_volume_changed_since_the_from_snapshot_needs_force() {
    let (a, b, d12) = two_stores();
    edit(&b, "v", |v| v.write(0, &[9; 4096]).expect("write"));
    let err = b.snapvol_fails(&["import-diff", "v", s(&d12)]);
    assert!(
        err.contains("has changed since v@s1") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(b.snapshot_names("v"), ["s1"]);
    b.snapvol_ok(&["import-diff", "v", s(&d12), "--force"]);
    // The stream's chunks are a@s2's; the forced-over chunk 0 keeps b's own write.
    assert_eq!(b.snapshot_names("v"), ["s1", "s2"]);
    let live = fs::read(export(&b, "v", "b-live")).expect("read");
    assert_eq!(&live[..4096], &[9; 4096][..]);
    let want = fs::read(export(&a, "v@s2", "a-s2")).expect("read");
    assert_eq!(&live[4096..], &want[4096..]);
}

#[test]
fn a_stream_cut_short_or_with_a_bad_header_leaves_the_from_snapshot() {
    let (a, b, d12) = two_stores();
    let bytes = fs::read(&d12).expect("read");

    let cut = b.path("cut");
    fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).expect("write");
    let err = b.snapvol_fails(&["import-diff", "v", s(&cut)]);
    assert!(err.contains("cut short"), "{err}");
    unchanged(&a, &b);

    let garbage = b.path("garbage");
    fs::write(&garbage, b"rbd diff v2\nsomething else").expect("write");
    let err = b.snapvol_fails(&["import-diff", "v", s(&garbage)]);
    assert!(err.contains("not an rbd diff v1 stream"), "{err}");
    unchanged(&a, &b);

    // Served: the same through the control socket.
    let server = b.serve();
    let err = b.snapvol_fails(&["import-diff", "v", s(&cut)]);
    assert!(err.contains("cut short"), "{err}");
    assert_eq!(b.snapshot_names("v"), ["s1"]);
    let err = b.snapvol_fails(&["import-diff", "v", s(&garbage)]);
    assert!(err.contains("not an rbd diff v1 stream"), "{err}");
    server.stop();
    unchanged(&a, &b);

    // The undone chunks were written back to what they were: not a change that needs --force.
    b.snapvol_ok(&["import-diff", "v", s(&d12)]);
    assert_same_export(&a, "v@s2", &b, "v@s2");
}

#[test]
fn export_refuses_a_from_that_is_not_older_or_not_of_the_volume_and_writes_no_file() {
    let (a, _b, _) = two_stores();
    let out = a.path("x");
    let err = a.snapvol_fails(&["export", "v@s1", s(&out), "--from", "v@s2"]);
    assert!(err.contains("from an older point to a newer one"), "{err}");
    let err = a.snapvol_fails(&["export", "v@s2", s(&out), "--from", "v@s2"]);
    assert!(err.contains("the same snapshot"), "{err}");
    let err = a.snapvol_fails(&["export", "v@s2", s(&out), "--from", "w@s1"]);
    assert!(err.contains("not of 'v'"), "{err}");
    let err = a.snapvol_fails(&["export", "v@s2", s(&out), "--from", "v@nope"]);
    assert!(err.contains("'v@nope' not found"), "{err}");
    assert!(!out.exists(), "no output file for a refused export");
}
