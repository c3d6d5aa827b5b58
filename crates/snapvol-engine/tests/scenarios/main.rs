//! Scenario tests of the engine on real files: a store in a temporary directory, volumes of a
//! few MiB, and an oracle (`Vec<u8>` per point in time) for everything a user reads back.
//!
//! Each test states the rule a user relies on in its name, and checks it again after a close
//! and reopen where the rule is about what is on disk.
//!
//! The scenarios, one module each: `sharing` (one preserved copy per overwritten chunk, and
//! the space deleted snapshots give back), `interleaving` (each snapshot reads its point in
//! time), `target_full` (ENOSPC), `concurrency` (a snapshot holds whole writes, those
//! acknowledged before it), `unaligned` (unaligned I/O) and `zeroing` (write_zeroes and trim);
//! the snapshots kept in the cache journal and the errors a user acts on are below.

#[allow(dead_code)] // each test binary uses its own part of the helpers
#[path = "../common/mod.rs"]
mod common;
mod concurrency;
mod interleaving;
mod sharing;
mod target_full;
mod unaligned;
mod write_mode;
mod zeroing;

use snapvol_engine::{Error, VolumeOptions};

use crate::common::{assert_volume, opts, pattern, Fixture, KIB, MIB};

// ---------------------------------------------------------------------------------------------
// Snapshots live in the cache journal until the metadata log takes them.
// ---------------------------------------------------------------------------------------------

/// A snapshot is one journal append: taken, then the process killed before any destage or
/// metadata-log write, it must come back from the journal with exactly the data acknowledged
/// before it — and a snapshot deleted before the kill must stay deleted.
#[test]
fn a_snapshot_killed_before_any_destage_comes_back_from_the_journal_and_a_deleted_one_stays_gone() {
    let fx = Fixture::new();
    let size = 4 * MIB;
    let manual = VolumeOptions {
        background_destage: false,
        ..opts(8 * MIB)
    };
    let vol = fx.create("v", size, 64 * KIB, None, manual.clone());
    let a = pattern(1, 0, size);
    vol.write(0, &a).unwrap();
    vol.destage_all().unwrap();
    // Written after the last destage: only the journal (with the snapshot) holds it.
    let b = pattern(2, 64 * KIB, 256 * KIB);
    vol.write(64 * KIB, &b).unwrap();
    let mut at_s1 = a.clone();
    at_s1[64 * 1024..320 * 1024].copy_from_slice(&b);
    vol.snapshot_create("s1").unwrap();
    vol.snapshot_create("gone").unwrap();
    vol.snapshot_delete("gone").unwrap();
    // An overwrite after s1: s2's append makes it durable with s2, and s1 must not see it.
    vol.write(0, &pattern(3, 0, MIB)).unwrap();
    vol.snapshot_create("s2").unwrap();
    vol.kill();

    let vol = fx.open("v", manual.clone());
    let names: Vec<String> = vol.snapshots().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["s1", "s2"], "snapshots after the kill");
    let mut live = at_s1.clone();
    live[..1024 * 1024].copy_from_slice(&pattern(3, 0, MIB));
    assert_volume(
        &vol,
        &live,
        &[("s1".into(), at_s1.clone()), ("s2".into(), live.clone())],
        "after the kill",
    );
    // The recovered snapshots are in the metadata log now: a second reopen (with an empty
    // journal) and a check agree.
    vol.close().unwrap();
    let report = fx.store.check("v", false).unwrap();
    assert!(
        report.is_clean(),
        "check after recovery: {:?}",
        report.problems
    );
    let vol = fx.open("v", manual);
    assert_volume(
        &vol,
        &live,
        &[("s1".into(), at_s1), ("s2".into(), live.clone())],
        "after a clean reopen",
    );
    // A new snapshot takes a fresh sequence number.
    let s3 = vol.snapshot_create("s3").unwrap();
    assert!(vol
        .snapshots()
        .iter()
        .all(|s| s.name == "s3" || s.seq < s3.seq));
}

// ---------------------------------------------------------------------------------------------
// 8. Errors a user acts on.
// ---------------------------------------------------------------------------------------------

#[test]
fn name_clashes_missing_names_and_a_second_open_are_refused_with_their_own_errors() {
    const SIZE: u64 = MIB;
    const CHUNK: u64 = 64 * KIB;
    let fx = Fixture::new();
    let vol = fx.create("vol", SIZE, CHUNK, None, opts(4 * MIB));
    let live = pattern(0, 0, SIZE);
    vol.write(0, &live).unwrap();
    let s = vol.snapshot_create("s").unwrap();

    match vol.snapshot_create("s") {
        Err(Error::SnapshotExists(name)) => assert!(name.contains('s')),
        other => panic!("a second snapshot 's': want SnapshotExists, got {other:?}"),
    }
    assert_eq!(vol.info().snapshots.len(), 1, "the clash created nothing");
    assert_eq!(
        vol.snapshot("s").unwrap().seq,
        s.seq,
        "the first 's' is untouched"
    );
    match vol.snapshot_delete("missing") {
        Err(Error::SnapshotNotFound(_)) => {}
        other => panic!("deleting a missing snapshot: want SnapshotNotFound, got {other:?}"),
    }
    assert!(matches!(
        vol.snapshot("missing"),
        Err(Error::SnapshotNotFound(_))
    ));

    match fx.store.open("nothing", opts(4 * MIB)) {
        Err(Error::VolumeNotFound(name)) => assert_eq!(name, "nothing"),
        other => panic!("opening a missing volume: want VolumeNotFound, got {other:?}"),
    }
    let create = snapvol_engine::CreateOptions::new(SIZE);
    match fx.store.create("vol", &create, opts(4 * MIB)) {
        Err(Error::VolumeExists(name)) => assert_eq!(name, "vol"),
        other => panic!("creating 'vol' again: want VolumeExists, got {other:?}"),
    }
    match fx.store.open("vol", opts(4 * MIB)) {
        Err(Error::Locked { volume, holder }) => {
            assert_eq!(volume, "vol");
            assert!(
                holder.contains(&std::process::id().to_string()),
                "the error names the holder: {holder}"
            );
        }
        other => panic!("opening an open volume: want Locked, got {other:?}"),
    }

    // None of the refusals harmed the volume that is open.
    let overwrite = pattern(1, 0, SIZE);
    vol.write(0, &overwrite).unwrap();
    assert_volume(
        &vol,
        &overwrite,
        &[("s".to_owned(), live.clone())],
        "after the refusals",
    );
    vol.snapshot_delete("s").unwrap();
    let mut buf = vec![0u8; 16];
    assert!(
        matches!(
            vol.read_snapshot(s.seq, 0, &mut buf),
            Err(Error::SnapshotNotFound(_))
        ),
        "a deleted snapshot cannot be read"
    );
    match vol.snapshot_delete("s") {
        Err(Error::SnapshotNotFound(_)) => {}
        other => panic!("deleting 's' twice: want SnapshotNotFound, got {other:?}"),
    }
    vol.close().unwrap();

    // Once closed, the volume opens again, with its data.
    let vol = fx.open("vol", opts(4 * MIB));
    assert_volume(&vol, &overwrite, &[], "after reopening");
    vol.close().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Monitoring: `Volume::metrics` follows what happened.
// ---------------------------------------------------------------------------------------------

/// The figures `snapvol serve --metrics` exports come from `Volume::metrics`: each must move by
/// exactly what the volume did, and agree with `info`.
#[test]
fn metrics_count_snapshots_copies_destage_batches_and_the_journal_as_they_happen() {
    const CHUNK: u64 = 64 * KIB;
    let fx = Fixture::new();
    let manual = VolumeOptions {
        background_destage: false,
        ..opts(8 * MIB)
    };
    let vol = fx.create("v", 4 * MIB, CHUNK, None, manual);
    let m = vol.metrics();
    assert_eq!(
        (m.snapshots, m.snapshots_created, m.snapshots_deleted),
        (0, 0, 0)
    );
    assert_eq!(
        (m.preserved_chunks, m.copies_made, m.destage_batches),
        (0, 0, 0)
    );
    assert_eq!((m.dirty_bytes, m.journal_used_bytes), (0, 0));
    assert!(m.journal_size_bytes > 0 && m.cache_limit_bytes > 0 && !m.failed);

    vol.write(0, &pattern(1, 0, MIB)).unwrap();
    // Until it is journaled, the request's own copy counts too.
    assert_eq!(vol.metrics().dirty_bytes, 2 * MIB);
    vol.flush().unwrap();
    let m = vol.metrics();
    assert_eq!(m.dirty_bytes, MIB);
    assert!(m.journal_used_bytes >= MIB, "{m:?}");
    assert!(m.journal_used_bytes <= m.journal_size_bytes);
    vol.destage_all().unwrap();
    let m = vol.metrics();
    assert_eq!(m.dirty_bytes, 0);
    assert_eq!(m.journal_used_bytes, 0, "destaged and the head moved");
    assert!(m.destage_batches >= 1, "{m:?}");
    assert_eq!(m.destaged_chunks, MIB / CHUNK);
    assert_eq!(m.destage_duration.count(), m.destage_batches);
    assert_eq!(m.copies_made, 0, "no snapshot needed an original");
    assert_eq!(
        m.cache_spare_bytes, 0,
        "whole chunks share the request's buffer"
    );

    // A write of less than a chunk fills a chunk buffer of its own; once it is destaged, the
    // cache keeps the buffer for the next such write, which takes it.
    vol.write(2 * MIB, &pattern(3, 2 * MIB, 4 * KIB)).unwrap();
    vol.destage_all().unwrap();
    assert_eq!(vol.metrics().cache_spare_bytes, CHUNK);
    vol.write(3 * MIB, &pattern(3, 3 * MIB, 4 * KIB)).unwrap();
    assert_eq!(vol.metrics().cache_spare_bytes, 0, "the next write took it");
    vol.destage_all().unwrap();

    // Three snapshots, then one overwrite of 4 chunks: 4 copies, shared by the three.
    for s in ["a", "b", "c"] {
        vol.snapshot_create(s).unwrap();
    }
    vol.write(0, &pattern(2, 0, 4 * CHUNK)).unwrap();
    vol.destage_all().unwrap();
    vol.snapshot_delete("b").unwrap();
    let m = vol.metrics();
    assert_eq!(
        (m.snapshots, m.snapshots_created, m.snapshots_deleted),
        (2, 3, 1)
    );
    assert_eq!((m.preserved_chunks, m.copies_made), (4, 4));
    assert_eq!(m.preserved_bytes, 4 * CHUNK);
    let info = vol.info();
    assert_eq!(m.preserved_bytes, info.target_used_bytes);
    assert_eq!(m.checksum_failures, info.checksum_errors);
    vol.close().unwrap();
}
