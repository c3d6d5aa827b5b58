//! Preserved data is never served wrong. What broke (issue 10, finding 2): a flipped byte in
//! a preserved chunk was served as the snapshot's data, and `check` was clean. Every preserved
//! copy now carries a CRC-32C in its pointer record, verified on every read of it: a damaged
//! copy fails the read (EIO over NBD), is logged with its location and counted in `info`, and
//! `check --data` finds it and names the snapshots that read it.

#[allow(dead_code)] // each test file uses its own part of the helpers
mod common;

use common::{pattern, Fixture, KIB, MIB};
use snapvol_engine::check::CheckOptions;
use snapvol_engine::{Error, VolumeOptions};

const CHUNK: u64 = 64 * KIB;
const SIZE: u64 = 4 * MIB;

fn manual() -> VolumeOptions {
    VolumeOptions {
        background_destage: false,
        ..common::opts(8 * MIB)
    }
}

/// A volume whose first 1 MiB was overwritten after two snapshots: 16 copies in the target,
/// each read by both. Returns the fixture and where chunk 0's copy lies in the target file.
fn two_snapshots_sharing_copies() -> (Fixture, u64) {
    let fx = Fixture::new();
    let vol = fx.create("v", SIZE, CHUNK, None, manual());
    vol.write(0, &pattern(1, 0, SIZE)).unwrap();
    vol.snapshot_create("s1").unwrap();
    vol.snapshot_create("s2").unwrap();
    vol.write(0, &pattern(2, 0, MIB)).unwrap();
    vol.close().unwrap();
    // The copy of chunk 0 holds pattern 1's first chunk.
    let at = copy_at(&fx, &pattern(1, 0, CHUNK));
    (fx, at)
}

fn flip(fx: &Fixture, at: u64) {
    let path = fx.target_path("v");
    let mut target = std::fs::read(&path).unwrap();
    target[at as usize] ^= 0x08;
    std::fs::write(&path, target).unwrap();
}

#[test]
fn a_damaged_preserved_copy_fails_its_reads_is_counted_and_check_data_names_its_snapshots() {
    let (fx, at) = two_snapshots_sharing_copies();
    flip(&fx, at + 1234);

    let vol = fx.open("v", manual());
    let s1 = vol.snapshot("s1").unwrap().seq;
    let s2 = vol.snapshot("s2").unwrap().seq;
    let mut buf = vec![0u8; 4096];
    // A piece of the damaged chunk, from either snapshot: an error, never the bytes.
    for s in [s1, s2] {
        match vol.read_snapshot(s, 8192, &mut buf) {
            Err(e @ Error::Corrupt { .. }) => {
                assert_eq!(e.errno(), libc::EIO);
                assert!(e.to_string().contains(&format!("at {at:#x}")), "{e}");
            }
            other => panic!("a damaged copy was read: {other:?}"),
        }
    }
    // The other chunks and the live volume read as ever.
    vol.read_snapshot(s1, CHUNK, &mut buf).unwrap();
    assert!(buf == pattern(1, CHUNK, 4096));
    vol.read(0, &mut buf).unwrap();
    assert!(buf == pattern(2, 0, 4096));
    assert_eq!(vol.info().checksum_errors, 2);
    vol.close().unwrap();

    // check without --data reads the metadata only: clean. With --data it names the copy and
    // both snapshots.
    let quick = fx.store.check("v", false).unwrap();
    assert!(quick.is_clean(), "{:?}", quick.problems);
    let full = fx
        .store
        .check_with(
            "v",
            CheckOptions {
                repair: false,
                data: true,
                journal_in_use: false,
            },
        )
        .unwrap();
    assert_eq!(full.summary.data_chunks_verified, 16);
    assert_eq!(full.problems.len(), 1, "{:?}", full.problems);
    let p = &full.problems[0];
    assert!(
        p.location.contains("chunk 0") && p.location.contains(&format!("{at:#x}")),
        "{p:?}"
    );
    assert!(p.detail.contains("s1, s2"), "{p:?}");
    // The scenario fixture checks the store when it goes; put the byte back for it.
    flip(&fx, at + 1234);
}

/// Bytes all over a preserved copy flipped one at a time: every read of the copy fails, and
/// no read ever returns other bytes than the snapshot's.
#[test]
fn every_flip_in_a_preserved_copy_is_caught_by_every_read_of_it() {
    let (fx, at) = two_snapshots_sharing_copies();
    let mut caught = 0;
    for i in 0..64u64 {
        let byte = at + i * (CHUNK / 64) + i;
        flip(&fx, byte);
        let vol = fx.open("v", manual());
        let seq = vol.snapshot("s1").unwrap().seq;
        let mut whole = vec![0u8; CHUNK as usize];
        let mut piece = vec![0u8; 512];
        let r1 = vol.read_snapshot(seq, 0, &mut whole);
        let r2 = vol.read_snapshot(seq, (i * 512) % CHUNK, &mut piece);
        assert!(
            matches!(r1, Err(Error::Corrupt { .. })) && matches!(r2, Err(Error::Corrupt { .. })),
            "flip at {byte:#x}: {r1:?} {r2:?}"
        );
        caught += 1;
        vol.close().unwrap();
        flip(&fx, byte);
    }
    eprintln!("{caught} of 64 flips in a preserved copy caught by whole-chunk and 512-byte reads");
    assert_eq!(caught, 64);
}

/// Where `want` (a whole chunk) lies in the target file.
fn copy_at(fx: &Fixture, want: &[u8]) -> u64 {
    let target = std::fs::read(fx.target_path("v")).unwrap();
    (0..target.len() as u64 / CHUNK)
        .map(|i| i * CHUNK)
        .find(|&off| target[off as usize..(off + CHUNK) as usize] == *want)
        .expect("the copy is in the target")
}

/// A read over copies in consecutive slots fetches them at once and verifies each: the damaged
/// one in the middle fails the read and is the one named, and reads up to it and after it
/// serve the snapshot's bytes.
#[test]
fn a_read_across_consecutive_copies_names_the_damaged_one_and_serves_around_it() {
    let (fx, at0) = two_snapshots_sharing_copies();
    let at5 = copy_at(&fx, &pattern(1, 5 * CHUNK, CHUNK));
    assert_eq!(
        at5,
        at0 + 5 * CHUNK,
        "one batch preserves the run in consecutive slots"
    );
    flip(&fx, at5 + 77);

    let vol = fx.open("v", manual());
    let s1 = vol.snapshot("s1").unwrap().seq;
    let mut whole = vec![0u8; MIB as usize];
    match vol.read_snapshot(s1, 0, &mut whole) {
        Err(e @ Error::Corrupt { .. }) => {
            assert!(e.to_string().contains(&format!("at {at5:#x}")), "{e}");
            assert!(e.to_string().contains("chunk 5 "), "{e}");
        }
        other => panic!("a read over a damaged copy returned {other:?}"),
    }
    let mut before = vec![0u8; 5 * CHUNK as usize];
    vol.read_snapshot(s1, 0, &mut before).unwrap();
    assert!(before == pattern(1, 0, 5 * CHUNK));
    let mut after = vec![0u8; 10 * CHUNK as usize];
    vol.read_snapshot(s1, 6 * CHUNK, &mut after).unwrap();
    assert!(after == pattern(1, 6 * CHUNK, 10 * CHUNK));
    assert_eq!(vol.info().checksum_errors, 1);
    vol.close().unwrap();
    flip(&fx, at5 + 77);
}

/// Copies of one snapshot scattered over the target (preserved by different batches, some
/// shared with an older snapshot) read the same whatever the request's alignment: runs of
/// consecutive slots, single copies, pieces of chunks and the source, in one request.
#[test]
fn a_snapshot_whose_copies_are_scattered_reads_right_at_any_alignment() {
    let fx = Fixture::new();
    let vol = fx.create("v", SIZE, CHUNK, None, manual());
    vol.write(0, &pattern(1, 0, SIZE)).unwrap();
    vol.snapshot_create("s1").unwrap();
    // Chunks 3 and 9 preserved first, in a batch of their own...
    vol.write(3 * CHUNK, &pattern(2, 3 * CHUNK, CHUNK)).unwrap();
    vol.write(9 * CHUNK, &pattern(2, 9 * CHUNK, 100)).unwrap();
    vol.close().unwrap();
    let vol = fx.open("v", manual());
    vol.snapshot_create("s2").unwrap();
    // ... then chunks 0..16 except 12 (which stays in the source for both snapshots), and
    // chunk 20 alone.
    vol.write(0, &pattern(3, 0, 12 * CHUNK)).unwrap();
    vol.write(13 * CHUNK, &pattern(3, 13 * CHUNK, 3 * CHUNK))
        .unwrap();
    vol.write(20 * CHUNK + 5, &pattern(3, 20 * CHUNK + 5, 10))
        .unwrap();
    vol.close().unwrap();

    let vol = fx.open("v", manual());
    let s1 = vol.snapshot("s1").unwrap().seq;
    let s2 = vol.snapshot("s2").unwrap().seq;
    let mut s2_image = pattern(1, 0, SIZE);
    s2_image[3 * CHUNK as usize..4 * CHUNK as usize].copy_from_slice(&pattern(2, 3 * CHUNK, CHUNK));
    s2_image[9 * CHUNK as usize..9 * CHUNK as usize + 100].copy_from_slice(&pattern(
        2,
        9 * CHUNK,
        100,
    ));
    let s1_image = pattern(1, 0, SIZE);
    for (seq, image) in [(s1, &s1_image), (s2, &s2_image)] {
        for (offset, len) in [
            (0, 2 * MIB),
            (1000, MIB + 5),
            (CHUNK - 1, 17 * CHUNK + 2),
            (2 * CHUNK, 3 * CHUNK),
            (11 * CHUNK, 11 * CHUNK),
        ] {
            let mut buf = vec![0u8; len as usize];
            vol.read_snapshot(seq, offset, &mut buf).unwrap();
            assert!(
                buf[..] == image[offset as usize..(offset + len) as usize],
                "snapshot {seq:?} read wrong at {offset}+{len}"
            );
        }
    }
    assert_eq!(vol.info().checksum_errors, 0);
    vol.close().unwrap();
}
