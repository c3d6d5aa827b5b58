//! Corruption tests: every byte of the metadata is flipped, one at a time, and `check` must
//! name the damaged structure while open must refuse the damage (or, where the format keeps a
//! second copy, serve exactly the right data). Records that are checksummed correctly but
//! say something impossible are crafted too, and `check` must name the record.
//!
//! The images are built once in RAM; each flip runs on copy-on-write overlays of them, so a
//! flip costs only what the check and the open read.
//!
//! The support: `overlay` (the copy-on-write VLUN), `volume` (the volume under test, its
//! oracle, and opening it), `on_disk` (reading and crafting the on-disk structures). The
//! tests: `flips` (every metadata byte flipped), `records` (impossible records), `journal`,
//! `limits` (numbers no volume reaches); `Store::check` and any bytes are below.

mod flips;
mod journal;
mod limits;
mod on_disk;
mod overlay;
mod records;
mod volume;

use snapvol_engine::check::check;
use snapvol_engine::format::{self, Record};
use snapvol_engine::units::{ChunkIndex, SnapshotSeq, TargetSlot};
use snapvol_engine::vlun::Vlun;
use snapvol_engine::{CreateOptions, Error, Store};

use crate::on_disk::{append_block, current_superblock};
use crate::volume::{build, describe, options};

const CHUNK: u64 = 4096;
const CHUNKS: u64 = 64;
const SIZE: u64 = CHUNK * CHUNKS;
const JOURNAL_SIZE: u64 = 4 << 20;

// ---------------------------------------------------------------------------------------------
// Store::check
// ---------------------------------------------------------------------------------------------

#[test]
fn store_check_reads_without_writing_and_refuses_an_open_volume() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::new(dir.path().join("store"));
    let opts = CreateOptions {
        chunk_size: CHUNK as u32,
        journal_size: JOURNAL_SIZE,
        ..CreateOptions::new(SIZE)
    };
    let vol = store.create("v", &opts, options()).expect("create");
    vol.write(0, &[7u8; 8192]).expect("write");
    vol.snapshot_create("s").expect("snapshot");
    vol.write(0, &[8u8; 4096]).expect("write");

    match store.check("v", false) {
        Err(Error::Locked { volume, .. }) => assert_eq!(volume, "v"),
        other => panic!("check of an open volume: {other:?}"),
    }
    vol.close().expect("close");
    assert!(matches!(
        store.check("nope", false),
        Err(Error::VolumeNotFound(_))
    ));
    assert!(matches!(
        store.check("a/b", false),
        Err(Error::InvalidName { .. })
    ));

    let vdir = dir.path().join("store").join("v");
    let paths = [
        vdir.join("source.raw"),
        vdir.join("target.svt"),
        vdir.join("journal.svj"),
    ];
    let before: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let r = store.check("v", false).expect("check");
    assert!(r.is_clean(), "{}", describe(&r));
    assert_eq!(r.summary.snapshots, 1);
    let after: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    assert!(before == after, "a check without repair changed a file");

    // A clean repair changes nothing either.
    let r = store.check("v", true).expect("repair");
    assert!(r.is_clean() && r.repaired.is_empty());
    let again: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    assert!(before == again, "a repair of a clean volume changed a file");
}

// ---------------------------------------------------------------------------------------------
// Any bytes
// ---------------------------------------------------------------------------------------------

/// splitmix64, so every run crafts the same blocks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Small values most of the time, any value sometimes: what reaches edge cases.
    fn value(&mut self) -> u64 {
        match self.next() % 4 {
            0 => self.next(),
            1 => u64::MAX - self.next() % 4,
            _ => self.next() % 80,
        }
    }
}

#[test]
fn checksummed_blocks_of_random_records_and_random_superblock_fields_never_make_check_panic() {
    let img = build();
    let mut rng = Rng(7);
    let mut problems = 0usize;
    for round in 0..400 {
        let (s, t, j) = img.overlays();
        let mut records = Vec::new();
        for _ in 0..1 + rng.next() % 30 {
            let r = match rng.next() % 3 {
                0 => Record::SnapshotCreate {
                    seq: SnapshotSeq(rng.value().max(1)),
                    created_ms: rng.next(),
                    name: ["a", "d", "e", "f", "zz", "q.1"][(rng.next() % 6) as usize].into(),
                },
                1 => Record::SnapshotDelete {
                    seq: SnapshotSeq(rng.value()),
                },
                _ => {
                    let lo = rng.value().max(1);
                    Record::Preserve {
                        chunk: ChunkIndex(rng.value()),
                        crcs: vec![0; (rng.value() % 70).max(1) as usize],
                        slot: TargetSlot(rng.value()),
                        lo: SnapshotSeq(lo),
                        hi: SnapshotSeq(lo.saturating_add(rng.value() % 8)),
                    }
                }
            };
            records.push(r);
        }
        let off = append_block(&t, records);
        // Now damage fields of the new current superblock that decode does not vouch for.
        // Only the superblock: the new block may hold records no decoder accepts.
        let mut cur = current_superblock(&{
            let mut raw = vec![0u8; t.len().expect("len") as usize];
            t.read_at(&mut raw, 0).expect("read");
            raw
        });
        assert_eq!(cur.meta_head, off);
        match round % 6 {
            0 => cur.journal_head = rng.value(),
            1 => cur.journal_head_seq = rng.value(),
            2 => cur.meta_head_seq = rng.value(),
            3 => cur.meta_head = rng.value(),
            4 => cur.target_cap = rng.value(),
            _ => cur.volume_size = (rng.value() % 1000 + 1) * CHUNK,
        }
        cur.generation += 2;
        t.write_at(&cur.encode(), format::superblock_offset(cur.generation))
            .expect("write");
        let r = check(&s, &t, &j, false).expect("check");
        problems += r.problems.len();
        let _ = check(&s, &t, &j, true).expect("repair");
    }
    assert!(problems > 0);
}
