//! Replication through a shell pipe, `export --from ... - | import-diff VOL -`, between two
//! stores, with neither served and with both served (the streams then go through the control
//! sockets).

use std::process::Command;

use crate::serving::*;
use crate::{assert_same_export, check_clean, create, edit, export, s};

/// Runs `snapvol --store A export ARGS... - | snapvol --store B import-diff v -` in bash with
/// pipefail; returns the import's stdout.
fn pipe(a: &Env, export_args: &str, b: &Env) -> String {
    let script = format!(
        "set -euo pipefail; '{BIN}' --store '{}' export {export_args} - | '{BIN}' --store '{}' \
         import-diff v -",
        a.store().display(),
        b.store().display()
    );
    text(&run_ok(Command::new("bash").args(["-c", &script])).stdout)
}

#[test]
fn a_pipe_between_two_stores_replicates_snapshots_offline_and_while_served() {
    let a = Env::new();
    create(&a, "v", "16M", "64K");
    edit(&a, "v", |v| {
        v.write(0, &pattern(16 * MIB as usize, 1)).expect("fill");
        v.snapshot_create("s1").expect("s1");
        v.write(MIB, &pattern(3 * MIB as usize, 2)).expect("write");
        v.write_zeroes(8 * MIB, MIB).expect("zero");
        v.snapshot_create("s2").expect("s2");
        v.write(10 * MIB, &pattern(MIB as usize, 3)).expect("write");
        v.trim(MIB, 64 * KIB).expect("trim");
        v.snapshot_create("s3").expect("s3");
        v.write(15 * MIB, &pattern(200 * KIB as usize, 4))
            .expect("write");
    });
    let b = Env::new();
    create(&b, "v", "16M", "64K");
    b.snapvol_ok(&["import", "v", s(&export(&a, "v@s1", "s1.img"))]);
    b.snapvol_ok(&["snapshot", "create", "v@s1"]);

    // Offline.
    let out = pipe(&a, "v@s2 --from v@s1", &b);
    assert!(out.contains("created snapshot v@s2"), "{out}");
    assert_same_export(&a, "v@s2", &b, "v@s2");

    // Both stores served: export and import through the control sockets.
    let server_a = a.serve();
    let server_b = b.serve();
    pipe(&a, "v@s3 --from v@s2", &b);
    // To the live volume: no to-snapshot, so none is created.
    let out = pipe(&a, "v --from v@s3", &b);
    assert!(out.contains("names no to-snapshot"), "{out}");
    assert_eq!(b.snapshot_names("v"), ["s1", "s2", "s3"]);
    assert_same_export(&a, "v@s3", &b, "v@s3");
    assert_same_export(&a, "v", &b, "v");
    server_a.stop();
    server_b.stop();
    check_clean(&b, "v");
    assert_same_export(&a, "v", &b, "v");
}
