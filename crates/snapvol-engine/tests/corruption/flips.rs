//! Byte flips: every byte of the metadata flipped, one at a time, and the repairs from the
//! second copies.

use std::collections::BTreeMap;
use std::time::Instant;

use snapvol_engine::check::check;
use snapvol_engine::format::{self, Record, Superblock, BLOCK_SIZE};
use snapvol_engine::vlun::Vlun;
use snapvol_engine::Error;

use crate::on_disk::{copies_of, layout_of};
use crate::volume::{build, describe, open, open_corrupt, serves};
use crate::SIZE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    CurrentSuperblock,
    OtherSuperblock,
    MetaBlock,
    MetaBlockCopy,
    JournalHeader,
}

#[test]
fn the_pristine_volume_checks_clean_and_serves_its_oracle() {
    let img = build();
    let (sb, chain) = layout_of(&img.target);
    let (s, t, j) = img.overlays();
    let r = check(&s, &t, &j, false).expect("check");
    assert!(r.is_clean(), "{}", describe(&r));
    assert_eq!(r.summary.snapshots, img.snapshots.len());
    assert_eq!(r.summary.metadata_blocks, chain.len() as u64);
    assert_eq!(r.summary.superblock_generation, sb.generation);
    assert_eq!(
        r.summary.journal_records, 0,
        "a closed volume's journal is empty"
    );
    assert!(r.summary.preserved_chunks > 0);
    let vol = open(s, t, j).expect("open");
    serves(&vol, &img).expect("the oracle");
    let info = vol.info();
    assert_eq!(info.preserved_chunks, r.summary.preserved_chunks);
    vol.kill();
}

#[test]
fn every_flipped_metadata_byte_is_detected_and_located() {
    let started = Instant::now();
    let img = build();
    let (sb, chain) = layout_of(&img.target);
    let kinds = |pred: fn(&Record) -> bool| {
        chain
            .iter()
            .flat_map(|(_, b)| &b.records)
            .filter(|r| pred(r))
            .count()
    };
    assert!(kinds(|r| matches!(r, Record::SnapshotCreate { .. })) > 0);
    assert!(
        kinds(|r| matches!(r, Record::SnapshotDelete { .. })) > 0,
        "the chain holds no SnapshotDelete: {chain:?}"
    );
    assert!(kinds(|r| matches!(r, Record::Preserve { .. })) > 0);
    assert!(chain.len() >= 2, "the chain has {} blocks", chain.len());

    let current = format::superblock_offset(sb.generation);
    let other = format::superblock_offset(sb.generation + 1);
    // (device: true = journal, first byte, region, location check must name)
    let mut regions: Vec<(bool, u64, Region, String)> = vec![
        (
            false,
            current,
            Region::CurrentSuperblock,
            format!("superblock copy at {current:#x}"),
        ),
        (
            false,
            other,
            Region::OtherSuperblock,
            format!("superblock copy at {other:#x}"),
        ),
        (
            true,
            0,
            Region::JournalHeader,
            "journal header at 0x0".to_owned(),
        ),
    ];
    for ((off, _), copy) in chain.iter().zip(copies_of(&img.target)) {
        regions.push((
            false,
            *off,
            Region::MetaBlock,
            format!("metadata block at {off:#x}"),
        ));
        regions.push((
            false,
            copy,
            Region::MetaBlockCopy,
            format!("metadata block at {copy:#x}"),
        ));
    }

    let mut flips = 0u64;
    let mut opened_ok = BTreeMap::<&str, u64>::new();
    let mut refused = BTreeMap::<&str, u64>::new();
    for (journal_dev, start, region, want) in &regions {
        for i in 0..BLOCK_SIZE as u64 {
            let at = start + i;
            // One bit per flip, walking through the bit positions.
            let mask = 1u8 << (at % 8);
            let (s, t, j) = img.overlays();
            if *journal_dev {
                j.flip(at, mask);
            } else {
                t.flip(at, mask);
            }
            flips += 1;
            let what = format!("{region:?} byte {at:#x} ^ {mask:#04x}");

            let r = check(&s, &t, &j, false).unwrap_or_else(|e| panic!("{what}: check: {e}"));
            assert!(
                r.problems
                    .iter()
                    .any(|p| p.location == *want || p.location.starts_with(&format!("{want} "))),
                "{what}: check did not name {want}:\n{}",
                describe(&r)
            );

            match (open(s, t, j), region) {
                (
                    Ok(vol),
                    Region::OtherSuperblock
                    | Region::CurrentSuperblock
                    | Region::MetaBlock
                    | Region::MetaBlockCopy,
                ) => {
                    serves(&vol, &img).unwrap_or_else(|e| panic!("{what}: opened, but {e}"));
                    vol.kill();
                    *opened_ok.entry(region_name(*region)).or_default() += 1;
                }
                (Ok(vol), _) => {
                    vol.kill();
                    panic!("{what}: the volume opened");
                }
                (Err(Error::Corrupt { location, detail }), _) => {
                    assert_ne!(
                        *region,
                        Region::OtherSuperblock,
                        "{what}: a flip in the non-current copy must not stop open: {location}: {detail}"
                    );
                    if *region != Region::CurrentSuperblock {
                        assert_eq!(location, *want, "{what}: open blamed {location}: {detail}");
                    }
                    *refused.entry(region_name(*region)).or_default() += 1;
                }
                (Err(e), _) => panic!("{what}: open failed with a non-corruption error: {e}"),
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{flips} flipped bytes ({} superblock, {} in {} metadata blocks and their ditto copies, \
         {} journal header), each checked and opened, in {elapsed:.2?}; opened and served the \
         right data: {opened_ok:?}; refused as corrupt: {refused:?}",
        2 * BLOCK_SIZE,
        2 * chain.len() * BLOCK_SIZE,
        chain.len(),
        BLOCK_SIZE
    );
    // Every flip in a metadata block is read around: its ditto copy is whole.
    assert_eq!(
        opened_ok.get("metadata blocks").copied().unwrap_or(0),
        (chain.len() * BLOCK_SIZE) as u64
    );
    assert_eq!(
        opened_ok.get("their ditto copies").copied().unwrap_or(0),
        (chain.len() * BLOCK_SIZE) as u64
    );
    assert!(flips >= 20_000, "only {flips} flips");
}

fn region_name(r: Region) -> &'static str {
    match r {
        Region::CurrentSuperblock => "current superblock copy",
        Region::OtherSuperblock => "other superblock copy",
        Region::MetaBlock => "metadata blocks",
        Region::MetaBlockCopy => "their ditto copies",
        Region::JournalHeader => "journal header",
    }
}

#[test]
fn repair_rewrites_a_damaged_superblock_copy_from_the_good_one() {
    let img = build();
    let (sb, _) = layout_of(&img.target);
    for copy in [0u64, 0x1000] {
        for byte in [0u64, 17, 100, 4095] {
            let (s, t, j) = img.overlays();
            t.flip(copy + byte, 0x80);
            let before = check(&s, &t, &j, false).expect("check");
            assert!(!before.is_clean());
            assert!(
                before.problems.iter().all(|p| p.repairable),
                "{}",
                describe(&before)
            );
            let r = check(&s, &t, &j, true).expect("repair");
            assert!(r.is_clean(), "after repair: {}", describe(&r));
            assert_eq!(r.repaired.len(), 1, "{:?}", r.repaired);
            assert!(
                r.repaired[0].starts_with(&format!("superblock copy at {copy:#x}")),
                "{:?}",
                r.repaired
            );
            assert!(r.not_repaired.is_empty());
            // Both copies are valid again and the volume serves the same data.
            for g in 0..2u64 {
                let off = format::superblock_offset(g);
                let mut b = [0u8; BLOCK_SIZE];
                t.read_at(&mut b, off).expect("read");
                let copy_sb = Superblock::decode(&b, off).expect("a valid copy after repair");
                assert_eq!(copy_sb.volume_id, sb.volume_id);
            }
            let vol = open(s, t, j).expect("open after repair");
            serves(&vol, &img).expect("the oracle after repair");
            vol.kill();
        }
    }
}

/// What broke (issue 10, finding 3): one damaged metadata block made the volume unusable, and
/// `check --repair` could not repair it. Every block now has a ditto copy: open reads around
/// the damage (and, opened for writing, rewrites the bad copy), and `--repair` rewrites it.
#[test]
fn repair_rewrites_a_damaged_metadata_block_from_its_ditto_copy() {
    let img = build();
    let (_, chain) = layout_of(&img.target);
    let copies = copies_of(&img.target);
    let i = chain.len() / 2;
    for (damaged, whole) in [(chain[i].0, copies[i]), (copies[i], chain[i].0)] {
        let (s, t, j) = img.overlays();
        t.flip(damaged + 50, 0x04);
        let r = check(&s, &t, &j, false).expect("check");
        let want = format!("metadata block at {damaged:#x}");
        let p = r
            .problems
            .iter()
            .find(|p| p.location == want)
            .unwrap_or_else(|| panic!("check does not name {want}: {}", describe(&r)));
        assert!(
            p.repairable && p.detail.contains(&format!("{whole:#x} is whole")),
            "{p:?}"
        );
        let r = check(&s, &t, &j, true).expect("repair");
        assert!(r.is_clean(), "{}", describe(&r));
        assert_eq!(
            r.repaired,
            [format!(
                "metadata block at {damaged:#x}: rewritten from its ditto copy"
            )]
        );
        let vol = open(s, t, j).expect("open after the repair");
        serves(&vol, &img).expect("the right data");
        vol.kill();
    }
}

#[test]
fn a_metadata_block_damaged_in_both_copies_is_refused_and_named() {
    let img = build();
    let (_, chain) = layout_of(&img.target);
    let copies = copies_of(&img.target);
    let i = chain.len() / 2;
    let (s, t, j) = img.overlays();
    t.flip(chain[i].0 + 50, 0x04);
    t.flip(copies[i] + 60, 0x04);
    let r = check(&s, &t, &j, true).expect("repair");
    assert!(r.repaired.is_empty(), "{:?}", r.repaired);
    let want = format!("metadata block at {:#x}", chain[i].0);
    assert!(
        r.not_repaired.iter().any(|n| n.starts_with(&want)),
        "{:?}",
        r.not_repaired
    );
    let (location, _) = open_corrupt("both copies damaged", s, t, j);
    assert_eq!(location, want);
}

#[test]
fn superblock_copies_that_disagree_on_geometry_are_reported_and_repaired() {
    let img = build();
    let (sb, _) = layout_of(&img.target);
    let (s, t, j) = img.overlays();
    let mut stale = sb.clone();
    stale.generation = sb.generation - 1;
    stale.volume_size = SIZE * 2;
    let other = format::superblock_offset(stale.generation);
    t.write_at(&stale.encode(), other).expect("write");
    let r = check(&s, &t, &j, false).expect("check");
    let p = r
        .problems
        .iter()
        .find(|p| p.location == format!("superblock copy at {other:#x}"))
        .unwrap_or_else(|| panic!("{}", describe(&r)));
    assert!(p.detail.contains("volume size"), "{}", p.detail);
    assert!(p.repairable);
    let r = check(&s, &t, &j, true).expect("repair");
    assert!(r.is_clean(), "{}", describe(&r));
}
