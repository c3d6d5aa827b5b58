//! `kill -9` of an `import-diff` part-way through a large stream: the next open rolls the live
//! volume back to the from-snapshot, nothing is damaged, and the same import then succeeds.

use std::fs::File;
use std::io::{Read, Write};
use std::process::Stdio;

use crate::serving::*;
use crate::{assert_same_export, check_clean, create, edit, export, export_diff, s};

#[test]
fn kill_9_during_import_diff_leaves_the_from_snapshot_and_a_rerun_succeeds() {
    // 224 MiB of 'w' records.
    let a = Env::new();
    create(&a, "v", "256M", "64K");
    edit(&a, "v", |v| {
        v.write(0, &pattern(MIB as usize, 1)).expect("write");
        v.snapshot_create("s1").expect("s1");
        for i in 0..224u64 {
            v.write(16 * MIB + i * MIB, &pattern(MIB as usize, 100 + i))
                .expect("write");
        }
        v.snapshot_create("s2").expect("s2");
    });
    let d12 = export_diff(&a, "v@s2", "v@s1", "d12");
    let b = Env::new();
    create(&b, "v", "256M", "64K");
    b.snapvol_ok(&["import", "v", s(&export(&a, "v@s1", "s1.img"))]);
    b.snapvol_ok(&["snapshot", "create", "v@s1"]);

    // Feed the stream through a pipe and kill the importer once it has taken 96 MiB: with a
    // pipe's small buffer, it has applied most of that.
    let mut child = b
        .snapvol()
        .args(["import-diff", "v", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start import-diff");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stream = File::open(&d12).expect("open the stream");
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..96 {
        stream.read_exact(&mut buf).expect("read the stream");
        stdin
            .write_all(&buf)
            .expect("the importer takes the stream");
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "{status}");
    drop(stdin);

    check_clean(&b, "v");
    // A read-only look sees the from-snapshot; an open for writing rolls the volume back.
    assert_same_export(&a, "v@s1", &b, "v");
    let store = snapvol_engine::Store::new(b.store());
    let look = store.open_read_only("v").expect("open read-only");
    let s1 = look.snapshot("s1").expect("s1").seq;
    assert_eq!(
        look.rollback_pending(),
        Some(s1),
        "the kill came inside the guarded change"
    );
    look.close().expect("close");
    edit(&b, "v", |v| {
        assert_eq!(v.rollback_pending(), None, "the open finished the rollback");
        assert!(
            !v.diff(s1, None).expect("diff").is_empty(),
            "the killed import had written chunks, which the open wrote back"
        );
    });
    check_clean(&b, "v");
    assert_same_export(&a, "v@s1", &b, "v");
    assert_eq!(b.snapshot_names("v"), ["s1"]);

    b.snapvol_ok(&["import-diff", "v", s(&d12)]);
    assert_eq!(b.snapshot_names("v"), ["s1", "s2"]);
    assert_same_export(&a, "v@s2", &b, "v@s2");
    assert_same_export(&a, "v@s2", &b, "v");
    check_clean(&b, "v");
}
