//! Opening a volume to look at it writes nothing: not after a clean close, not after a crash
//! (the journal is replayed in RAM only), not even the lock file. Readers share the volume's
//! lock among themselves and are kept out by, and keep out, a writer.

#[allow(dead_code)] // each test file uses its own part of the helpers
mod common;

use common::{assert_volume, fingerprint, pattern, Fixture, KIB, MIB};
use snapvol_engine::{Error, VolumeOptions};

#[test]
fn a_volume_left_by_a_kill_reads_back_whole_when_opened_read_only_and_no_byte_of_it_changes() {
    let fx = Fixture::new();
    let size = 4 * MIB;
    let manual = VolumeOptions {
        background_destage: false,
        ..common::opts(8 * MIB)
    };
    let vol = fx.create("v", size, 64 * KIB, None, manual.clone());
    let a = pattern(1, 0, size);
    vol.write(0, &a).unwrap();
    vol.destage_all().unwrap();
    // From here on only the journal holds what is written.
    let b = pattern(2, 64 * KIB, 256 * KIB);
    vol.write(64 * KIB, &b).unwrap();
    let mut at_s1 = a.clone();
    at_s1[64 * 1024..320 * 1024].copy_from_slice(&b);
    vol.snapshot_create("s1").unwrap();
    let c = pattern(3, 0, MIB);
    vol.write(0, &c).unwrap();
    let mut live = at_s1.clone();
    live[..MIB as usize].copy_from_slice(&c);
    vol.flush().unwrap();
    vol.kill();

    let dir = fx.volume_dir("v");
    let before = fingerprint(&dir);
    let reader = fx.store.open_read_only("v").expect("open read-only");
    let second = fx
        .store
        .open_read_only("v")
        .expect("readers share the lock");
    assert!(
        matches!(
            fx.store.open("v", manual.clone()),
            Err(Error::Locked { .. })
        ),
        "a writer waits for the readers"
    );
    let names: Vec<String> = reader.snapshots().into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        ["s1"],
        "the snapshot taken before the kill, from the journal"
    );
    assert_volume(
        &reader,
        &live,
        &[("s1".into(), at_s1.clone())],
        "read-only after a kill",
    );
    let info = reader.info();
    assert_eq!(
        info.pending_preserve_bytes, MIB,
        "the 1 MiB overwrite after s1 will preserve 16 chunks once destaged"
    );
    assert_eq!(info.target_used_bytes, 0, "nothing is preserved yet");
    for refused in [
        reader.write(0, &[1u8; 4096]),
        reader.flush(),
        reader.destage_all(),
        reader.snapshot_create("s2").map(|_| ()),
        reader.snapshot_delete("s1"),
    ] {
        assert!(
            matches!(refused, Err(Error::ReadOnly(_))),
            "refused as read-only: {refused:?}"
        );
    }
    reader.close().unwrap();
    second.close().unwrap();
    assert!(
        before == fingerprint(&dir),
        "opening read-only changed a file"
    );

    // A writer recovers the same state, and keeps readers out while it has the volume.
    let vol = fx.open("v", manual);
    assert!(
        matches!(fx.store.open_read_only("v"), Err(Error::Locked { .. })),
        "a reader waits for the writer"
    );
    assert_volume(&vol, &live, &[("s1".into(), at_s1)], "after recovery");
    vol.close().unwrap();
    let report = fx.store.check("v", false).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}
