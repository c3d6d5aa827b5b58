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
    // The copy of chunk 0 holds pattern 1's first chunk: find its slot in the target.
    let target = std::fs::read(fx.target_path("v")).unwrap();
    let original = pattern(1, 0, CHUNK);
    let at = (0..target.len() as u64 / CHUNK)
        .map(|i| i * CHUNK)
        .find(|&off| target[off as usize..(off + CHUNK) as usize] == original[..])
        .expect("the copy of chunk 0 is in the target");
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
