//! Numbers no volume reaches: counters near u64::MAX, pointers past the end of a device.

use snapvol_engine::check::check;
use snapvol_engine::format::{self, MetaBlock, Record, Superblock};
use snapvol_engine::journal::RING_OFFSET;
use snapvol_engine::units::{ChunkIndex, SnapshotSeq, TargetSlot};
use snapvol_engine::vlun::{MemVlun, Vlun};

use crate::on_disk::{append_block, layout_of, live_copies, zero_record_in_epoch};
use crate::volume::{build, describe, open_corrupt, Images};
use crate::{CHUNK, CHUNKS};

/// The pristine images in plain in-memory VLUNs, as a caller of `Volume::open_on` holds them.
fn mem_vluns(img: &Images) -> (MemVlun, MemVlun, MemVlun) {
    let mem = |bytes: &[u8]| {
        let v = MemVlun::new(0);
        v.write_at(bytes, 0).expect("write");
        v
    };
    (mem(&img.source), mem(&img.target), mem(&img.journal))
}

/// Writes `sb` into both superblock copies, as generations `sb.generation` and the one after,
/// so an open cannot fall back to an undamaged copy.
fn write_both_superblocks(t: &dyn Vlun, sb: &Superblock) {
    for g in [sb.generation, sb.generation + 1] {
        let mut copy = sb.clone();
        copy.generation = g;
        t.write_at(&copy.encode(), format::superblock_offset(g))
            .expect("write");
    }
}

/// What broke (issue 9, defect 5): open took the superblock's generation and sequence numbers
/// as they came and counted on from them, so a value near u64::MAX overflowed: a panic in a
/// debug build, a silent wrap in release — the journal's next record number wrapped to one its
/// ring could still hold (`seq + ring_len / SECTOR + 1`), the next metadata block got sequence
/// number 0, the next superblock generation 0, the next snapshot sequence number 0.
#[test]
fn superblock_counters_no_volume_reaches_are_corruption_not_a_wrap() {
    let img = build();
    type Damage = Box<dyn Fn(&MemVlun, &mut Superblock)>;
    let cases: Vec<(&str, Damage)> = vec![
        ("generation", Box::new(|_, sb| sb.generation = u64::MAX - 1)),
        (
            "journal head seq",
            Box::new(|_, sb| sb.journal_head_seq = u64::MAX - 1),
        ),
        (
            "last_snapshot_seq",
            Box::new(|_, sb| sb.last_snapshot_seq = u64::MAX),
        ),
        (
            "meta_head_seq",
            Box::new(|t, sb| {
                // A chain of one block carrying the sequence number, so the chain itself is
                // consistent and only the number is wrong.
                let off = t.len().expect("len").next_multiple_of(CHUNK);
                let blk = MetaBlock::pack(&[], u64::MAX).remove(0);
                t.write_at(&blk.encode(&sb.volume_id), off).expect("write");
                sb.meta_head = off;
                sb.meta_head_seq = u64::MAX;
            }),
        ),
    ];
    for (field, damage) in cases {
        let (s, t, j) = mem_vluns(&img);
        let (mut sb, _) = layout_of(&img.target);
        sb.generation += 2;
        damage(&t, &mut sb);
        write_both_superblocks(&t, &sb);

        let r = check(&s, &t, &j, false).expect("check");
        for copy in [0u64, 0x1000] {
            let want = format!("superblock copy at {copy:#x}");
            assert!(
                r.problems
                    .iter()
                    .any(|p| p.location == want && p.detail.contains(field)),
                "{field}: expected {want}: ...{field}...; got:\n{}",
                describe(&r)
            );
        }
        let (location, detail) = open_corrupt(field, s, t, j);
        assert!(
            location.starts_with("superblock copy at") && detail.contains(field),
            "{field}: {location}: {detail}"
        );
    }
}

/// What broke (issue 9, defect 5): a metadata record's snapshot sequence number was taken as
/// it came; one at u64::MAX became the epoch open restarts at (and the sentinel the read path
/// uses for "the live volume"), so taking the next snapshot overflowed it.
#[test]
fn snapshot_sequence_numbers_no_volume_reaches_are_corruption_with_their_record() {
    let img = build();
    let (copies, seqs) = live_copies(&img);
    let newest = *seqs.last().expect("a live snapshot");
    let free_chunk = (0..CHUNKS)
        .find(|c| copies.iter().all(|x| x.0 != *c))
        .expect("a chunk without copies");
    let data_start = format::data_start(CHUNK as u32);
    let spare_slot = ((img.target.len() as u64).next_multiple_of(CHUNK) - data_start) / CHUNK;
    let cases = [
        (
            "a snapshot created with sequence number u64::MAX",
            Record::SnapshotCreate {
                seq: SnapshotSeq(u64::MAX),
                created_ms: 0,
                name: "last".into(),
            },
        ),
        (
            "a copy shared up to snapshot u64::MAX",
            Record::Preserve {
                chunk: ChunkIndex(free_chunk),
                slot: TargetSlot(spare_slot),
                lo: SnapshotSeq(newest),
                hi: SnapshotSeq(u64::MAX),
                crcs: vec![0],
            },
        ),
        (
            "a deletion of snapshot 2^63",
            Record::SnapshotDelete {
                seq: SnapshotSeq(1 << 63),
            },
        ),
    ];
    for (what, record) in cases {
        let (s, t, j) = mem_vluns(&img);
        // The spare slot exists, so only the sequence number is wrong.
        t.write_at(&[0u8; CHUNK as usize], data_start + spare_slot * CHUNK)
            .expect("write");
        let off = append_block(&t, vec![record]);
        let r = check(&s, &t, &j, false).expect("check");
        let want = format!("metadata block at {off:#x} record 0");
        assert!(
            r.problems
                .iter()
                .any(|p| p.location == want && p.detail.contains("sequence number")),
            "{what}: expected {want}: ...sequence number...; got:\n{}",
            describe(&r)
        );
        let (location, detail) = open_corrupt(what, s, t, j);
        assert_eq!(location, format!("metadata block at {off:#x}"), "{what}");
        assert!(detail.starts_with("record 0:"), "{what}: {detail}");
    }
}

/// What broke (issue 9, defect 5): open read the metadata block a pointer names without asking
/// whether the target holds it, so a pointer near u64::MAX overflowed the offset arithmetic of
/// the read (the in-memory VLUN panicked, in release too) instead of being reported.
#[test]
fn a_chain_pointer_past_the_end_of_the_target_is_corruption_not_a_panic() {
    let img = build();
    // 4 KiB aligned from the data area, so only its distance from the target is wrong.
    let far = u64::MAX - 0xfff;

    // The superblock's meta_head.
    let (s, t, j) = mem_vluns(&img);
    let (mut sb, _) = layout_of(&img.target);
    sb.meta_head = far;
    sb.generation += 1;
    let sb_off = format::superblock_offset(sb.generation);
    t.write_at(&sb.encode(), sb_off).expect("write");
    let r = check(&s, &t, &j, false).expect("check");
    assert!(
        r.problems
            .iter()
            .any(|p| p.location == format!("superblock copy at {sb_off:#x}")
                && p.detail.contains("meta_head")),
        "{}",
        describe(&r)
    );
    let (location, detail) = open_corrupt("meta_head", s, t, j);
    assert_eq!(location, format!("superblock copy at {sb_off:#x}"));
    assert!(
        detail.contains("meta_head") && detail.contains("beyond the end of the target"),
        "{detail}"
    );

    // A block's prev pointer.
    let (s, t, j) = mem_vluns(&img);
    let (mut sb, _) = layout_of(&img.target);
    let off = (img.target.len() as u64).next_multiple_of(CHUNK);
    let mut blk = MetaBlock::pack(&[], sb.meta_head_seq + 1).remove(0);
    blk.prev = far;
    t.write_at(&blk.encode(&sb.volume_id), off).expect("write");
    sb.meta_head = off;
    sb.meta_head_seq = blk.seq;
    sb.generation += 1;
    t.write_at(&sb.encode(), format::superblock_offset(sb.generation))
        .expect("write");
    let r = check(&s, &t, &j, false).expect("check");
    assert!(
        r.problems
            .iter()
            .any(|p| p.location == format!("metadata block at {off:#x}")
                && p.detail.contains("prev pointer")),
        "{}",
        describe(&r)
    );
    let (location, detail) = open_corrupt("prev", s, t, j);
    assert_eq!(location, format!("metadata block at {off:#x}"));
    assert!(
        detail.contains("prev pointer") && detail.contains("beyond the end of the target"),
        "{detail}"
    );
}

/// What broke (issue 9, defect 5): open bounded a preserve record's slots by the target size
/// cap only, and a target without a cap by nothing: a record could name slots past the end of
/// the target (a snapshot then read zeroes no copy ever held, as its data), and its count drove
/// that many index insertions, up to 2^32 per record, whatever the target held.
#[test]
fn a_preserve_record_past_the_end_of_the_target_is_refused_by_open_as_by_check() {
    let img = build();
    let (copies, seqs) = live_copies(&img);
    let newest = *seqs.last().expect("a live snapshot");
    let free_chunk = (0..CHUNKS)
        .find(|c| copies.iter().all(|x| x.0 != *c))
        .expect("a chunk without copies");
    let data_start = format::data_start(CHUNK as u32);
    let past_end = ((img.target.len() as u64).next_multiple_of(CHUNK) - data_start) / CHUNK + 1000;
    let (s, t, j) = mem_vluns(&img);
    let off = append_block(
        &t,
        vec![Record::Preserve {
            chunk: ChunkIndex(free_chunk),
            slot: TargetSlot(past_end),
            lo: SnapshotSeq(newest),
            hi: SnapshotSeq(newest),
            crcs: vec![0],
        }],
    );
    let r = check(&s, &t, &j, false).expect("check");
    assert!(
        r.problems.iter().any(
            |p| p.location == format!("metadata block at {off:#x} record 0")
                && p.detail.contains("beyond the end of the target")
        ),
        "{}",
        describe(&r)
    );
    // Open and check read the log with one walker, so open names the record as check does.
    let (location, detail) = open_corrupt("slot past the end", s, t, j);
    assert_eq!(location, format!("metadata block at {off:#x} record 0"));
    assert!(detail.contains("beyond the end of the target"), "{detail}");
}

/// What broke (issue 9, defect 5): replay took a sealed journal record's epoch as it came; one
/// at u64::MAX became the epoch open restarts at, and the next snapshot overflowed it. `check`
/// found nothing wrong.
#[test]
fn a_journal_record_from_an_epoch_no_volume_reaches_is_corruption_with_its_location() {
    let img = build();
    let (sb, _) = layout_of(&img.target);
    let head = RING_OFFSET + sb.journal_head;
    let (s, t, j) = mem_vluns(&img);
    j.write_at(
        &zero_record_in_epoch(sb.journal_head_seq, u64::MAX, 0, CHUNK, &sb.volume_id),
        head,
    )
    .expect("write");
    let want = format!("journal record at {head:#x}");
    let r = check(&s, &t, &j, false).expect("check");
    assert!(
        r.problems
            .iter()
            .any(|p| p.location == want && p.detail.contains("epoch")),
        "{}",
        describe(&r)
    );
    let (location, detail) = open_corrupt("epoch u64::MAX", s, t, j);
    assert_eq!(location, want);
    assert!(detail.contains("epoch"), "{detail}");
}
