//! Records that are checksummed correctly but impossible.

use snapvol_engine::check::check;
use snapvol_engine::format::{self, MetaBlock, Record};
use snapvol_engine::units::{ChunkIndex, SnapshotSeq, TargetSlot};
use snapvol_engine::vlun::Vlun;

use crate::on_disk::{append_block, layout_of, live_copies};
use crate::volume::{build, describe, open_corrupt, Images};
use crate::{CHUNK, CHUNKS};

fn chain_slot(img: &Images) -> u64 {
    let (sb, chain) = layout_of(&img.target);
    (chain[0].0 - sb.data_start) / CHUNK
}

#[test]
fn impossible_records_are_reported_with_their_block_and_record_number() {
    let img = build();
    let (copies, seqs) = live_copies(&img);
    let (c0, lo0, hi0, slot0) = copies[0];
    let newest = *seqs.last().expect("a live snapshot");
    let live_name = img.snapshots.keys().next().expect("a snapshot").clone();
    let free_chunk = (0..CHUNKS)
        .find(|c| copies.iter().all(|x| x.0 != *c))
        .expect("a chunk without copies");
    let tlen = img.target.len() as u64;
    let data_start = format::data_start(CHUNK as u32);
    // A slot inside the target that the new block will not take: the block goes after the
    // end, so extend the target by one chunk for it first.
    let spare_slot = (tlen.next_multiple_of(CHUNK) - data_start) / CHUNK;
    let preserve = |chunk: u64, slot: u64, lo: u64, hi: u64| Record::Preserve {
        chunk: ChunkIndex(chunk),
        slot: TargetSlot(slot),
        lo: SnapshotSeq(lo),
        hi: SnapshotSeq(hi),
        crcs: vec![0],
    };
    let slot_taken = format!("slot {slot0} holds");
    let cases: Vec<(&str, Record, &str)> = vec![
        (
            "a snapshot seq that does not increase",
            Record::SnapshotCreate {
                seq: SnapshotSeq(newest),
                created_ms: 0,
                name: "late".into(),
            },
            "not above",
        ),
        (
            "a duplicate live name",
            Record::SnapshotCreate {
                seq: SnapshotSeq(newest + 100),
                created_ms: 0,
                name: live_name,
            },
            "already taken",
        ),
        (
            "a delete of a snapshot that does not exist",
            Record::SnapshotDelete {
                seq: SnapshotSeq(newest + 1000),
            },
            "does not exist",
        ),
        (
            "chunks beyond the volume",
            preserve(CHUNKS, spare_slot, newest, newest),
            "beyond the volume",
        ),
        (
            "slots beyond the target",
            preserve(free_chunk, spare_slot + 1000, newest, newest),
            "beyond the end of the target",
        ),
        (
            "a second pointer for one snapshot and chunk",
            preserve(c0, spare_slot, lo0, hi0),
            "two pointers",
        ),
        (
            "two live copies in one slot",
            preserve(free_chunk, slot0, newest, newest),
            &slot_taken,
        ),
        (
            "a live copy in a slot of the metadata chain",
            preserve(free_chunk, chain_slot(&img), newest, newest),
            "holds blocks of the metadata chain",
        ),
    ];
    for (what, record, expect) in cases {
        let (s, t, j) = img.overlays();
        // The spare slot exists (zeroes), so only what the case is about is wrong.
        t.write_at(&[0u8; CHUNK as usize], data_start + spare_slot * CHUNK)
            .expect("write");
        let off = append_block(&t, vec![record]);
        let r = check(&s, &t, &j, false).expect("check");
        let want = format!("metadata block at {off:#x} record 0");
        assert!(
            r.problems
                .iter()
                .any(|p| p.location == want && p.detail.contains(expect)),
            "{what}: expected {want}: ...{expect}...; got:\n{}",
            describe(&r)
        );
        assert!(r.problems.iter().all(|p| !p.repairable), "{what}");
        let r = check(&s, &t, &j, true).expect("repair");
        assert!(r.repaired.is_empty(), "{what}: {:?}", r.repaired);
        assert!(!r.not_repaired.is_empty(), "{what}");
        // Open reads the log with the same walker: it refuses the volume at the same record.
        let (location, detail) = open_corrupt(what, s, t, j);
        assert_eq!(location, want, "{what}: {detail}");
    }
}

#[test]
fn a_broken_prev_pointer_and_a_bad_meta_head_are_located() {
    let img = build();
    // A block whose prev is not a block position.
    let (s, t, j) = img.overlays();
    let mut raw = vec![0u8; img.target.len()];
    t.read_at(&mut raw, 0).expect("read");
    let (mut sb, _) = layout_of(&raw);
    let off = (img.target.len() as u64).next_multiple_of(CHUNK);
    let mut blk = MetaBlock::pack(&[], sb.meta_head_seq + 1).remove(0);
    blk.prev = sb.meta_head + 1;
    t.write_at(&blk.encode(&sb.volume_id), off).expect("write");
    sb.meta_head = off;
    sb.meta_head_seq = blk.seq;
    sb.generation += 1;
    let sb_off = format::superblock_offset(sb.generation);
    t.write_at(&sb.encode(), sb_off).expect("write");
    let r = check(&s, &t, &j, false).expect("check");
    assert!(
        r.problems
            .iter()
            .any(|p| p.location == format!("metadata block at {off:#x}")
                && p.detail.contains("prev pointer")),
        "{}",
        describe(&r)
    );
    // A superblock whose meta_head points into the superblocks.
    sb.meta_head = 0x800;
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
}
