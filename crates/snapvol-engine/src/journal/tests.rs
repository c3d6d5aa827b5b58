//! The journal's own tests: appends, wraps, head moves, damage and the header's bytes.

use super::*;
use crate::vlun::MemVlun;

fn req(epoch: u64, offset: u64, data: &[u8]) -> Request {
    Request::Write {
        epoch,
        offset,
        len: data.len() as u64,
        data: Some(Arc::from(data)),
    }
}

/// A record's write data, if it is a write with data.
fn data(r: &JournalRecord) -> Option<&[u8]> {
    match &r.request {
        Request::Write { data, .. } => data.as_deref(),
        Request::Snapshot { .. } => None,
    }
}

fn open(dev: &Arc<MemVlun>, head: JournalHead) -> (Journal, Vec<JournalRecord>) {
    let (j, records, _) =
        Journal::open(Box::new(dev.clone()), [7; 16], head, false, Mode::Replay).expect("open");
    (j, records)
}

/// A formatted journal, opened the way the volume opens it: the head it would persist.
fn fresh() -> (Arc<MemVlun>, Journal, JournalHead) {
    let dev = Arc::new(MemVlun::new(0));
    Journal::format(&*dev, [7; 16], MIN_JOURNAL_SIZE).unwrap();
    let (mut j, recs) = open(&dev, JournalHead::default());
    assert!(recs.is_empty());
    let head = j.tail_head();
    j.reset_to(head);
    (dev, j, head)
}

#[test]
fn appended_records_replay_in_order_from_the_head() {
    let (dev, mut j, head) = fresh();
    let zero = Request::Write {
        epoch: 2,
        offset: 4096,
        len: 8192,
        data: None,
    };
    let snap = Request::Snapshot {
        seq: 3,
        created_ms: 1_700_000_000_000,
        name: "monday".into(),
    };
    j.append(&[req(1, 0, b"hello"), zero.clone(), snap.clone()])
        .unwrap();
    j.append(&[req(3, 10, &[9u8; 5000])]).unwrap();
    let (_, recs) = open(&dev, head);
    assert_eq!(recs.len(), 4);
    assert_eq!(data(&recs[0]), Some(&b"hello"[..]));
    assert_eq!(recs[1].request, zero);
    assert_eq!(recs[2].request, snap);
    assert_eq!(recs[2].request.epoch(), 3);
    assert_eq!(data(&recs[3]).map(<[u8]>::len), Some(5000));
}

#[test]
fn the_ring_wraps_and_a_moved_head_forgets_what_was_destaged() {
    let (dev, mut j, mut last) = fresh();
    let big = vec![3u8; 1 << 20];
    for i in 0..12u64 {
        let r = [req(i, i * 4096, &big)];
        if j.free() < j.append_cost(&r) {
            let h = j.head_after(j.generation()).unwrap();
            j.advance_head(h);
            last = h;
        }
        j.append(&r).unwrap();
    }
    let (_, recs) = open(&dev, last);
    assert!(!recs.is_empty());
    assert_eq!(recs.last().unwrap().request.epoch(), 11);
    assert!(recs
        .windows(2)
        .all(|w| w[1].seq == w[0].seq + 1 || w[1].seq == w[0].seq + 2));
}

/// What broke: the room an append needs was counted as its records plus one sector, but a
/// record that does not fit before the ring's end leaves the rest of the ring unused and
/// goes on at its start. With the head past the start, such an append passed the check and
/// overwrote live records there: acknowledged writes a replay after a crash no longer found.
#[test]
fn an_append_that_wraps_never_overwrites_live_records() {
    let (dev, mut j, _) = fresh();
    let ring = j.ring_len();
    let payload = |n: u64| vec![7u8; (n - RECORD_HEADER as u64) as usize];
    // A quarter of the ring, then five eighths: the tail is at seven eighths.
    j.append(&[req(1, 0, &payload(ring / 4))]).unwrap();
    let first = j.generation();
    j.append(&[req(2, 0, &payload(ring * 5 / 8))]).unwrap();
    // The first append is destaged: the head moves to a quarter, three eighths are free.
    let head = j.head_after(first).unwrap();
    j.advance_head(head);
    assert_eq!(j.free(), ring * 3 / 8);
    // Five sixteenths fit in what is free, but not before the ring's end: after the turn
    // they would reach past the head.
    let late = [req(3, 0, &payload(ring * 5 / 16))];
    assert!(
        j.append_cost(&late) > j.free(),
        "the room a wrapping append needs includes the end of the ring it skips"
    );
    assert!(
        j.append(&late).is_err(),
        "an append without room is refused"
    );
    let (_, recs) = open(&dev, head);
    assert_eq!(recs.len(), 1, "the live record is still there");
    assert_eq!(recs[0].request.epoch(), 2);
    // Once everything is destaged it fits.
    let tail = j.tail_head();
    j.advance_head(tail);
    assert!(j.append_cost(&late) <= j.free());
    j.append(&late).unwrap();
    let (_, recs) = open(&dev, tail);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].request.epoch(), 3);
}

/// Reserved bytes of the header and of a wrap record are written as zero and checked on
/// read.
#[test]
fn a_sealed_header_or_wrap_record_with_a_reserved_field_set_is_refused() {
    let good = JournalHeader {
        volume_id: [7; 16],
        ring_len: MIN_JOURNAL_SIZE,
    }
    .encode();
    JournalHeader::decode(&good).expect("the header as written");
    for at in [12, 15, 48, 1000, BLOCK_SIZE - 5] {
        let mut b = good;
        b[at] = 1;
        let crc = crc32c::crc32c(&b[..BLOCK_SIZE - 4]);
        b[BLOCK_SIZE - 4..].copy_from_slice(&crc.to_le_bytes());
        let e = JournalHeader::decode(&b).unwrap_err();
        assert!(
            e.to_string().contains("reserved byte"),
            "header byte {at}: {e}"
        );
    }
    let wrap = record::encode_header(9, None, &[7; 16], 0);
    assert!(record::decode_header(&wrap, &[7; 16]).is_some());
    for at in [16, 24, 32] {
        let mut h = wrap;
        h[at] = 1;
        let crc = crc32c::crc32c(&h[..56]);
        h[56..60].copy_from_slice(&crc.to_le_bytes());
        assert!(
            record::decode_header(&h, &[7; 16]).is_none(),
            "wrap record byte {at}"
        );
    }
}

#[test]
fn a_record_ending_exactly_at_the_ring_end_continues_at_its_start() {
    let (dev, mut j, head) = fresh();
    assert_eq!(head.pos, 0);
    // Records of exactly one sector: a 64-byte header and 448 bytes of data.
    let one = vec![5u8; 448];
    j.append(&(0..4).map(|i| req(1, i, &one)).collect::<Vec<_>>())
        .unwrap();
    let h = j.head_after(j.generation()).unwrap();
    j.advance_head(h);
    // One append that ends a record exactly at the ring's end and goes on after the turn.
    let sectors = MIN_JOURNAL_SIZE / SECTOR;
    let mut batch: Vec<_> = (4..sectors).map(|i| req(2, i, &one)).collect();
    batch.push(req(3, 0, b"after the turn"));
    j.append(&batch).unwrap();
    let (_, recs) = open(&dev, h);
    assert_eq!(recs.len() as u64, sectors - 4 + 1);
    assert_eq!(data(recs.last().unwrap()), Some(&b"after the turn"[..]));
}

#[test]
fn a_corrupt_record_ends_the_replay_there() {
    let (dev, mut j, head) = fresh();
    j.append(&[req(1, 0, b"a"), req(1, 1, b"b"), req(1, 2, b"c")])
        .unwrap();
    // Flip a data byte of the second record (at ring offset 512 + 64).
    let at = RING_OFFSET + head.pos + 512 + 64;
    let mut byte = [0u8];
    dev.read_at(&mut byte, at).unwrap();
    dev.write_at(&[byte[0] ^ 1], at).unwrap();
    let (_, recs) = open(&dev, head);
    assert_eq!(recs.len(), 1);
}

#[test]
fn stale_records_of_an_earlier_life_are_never_replayed() {
    let (dev, mut j, head) = fresh();
    j.append(&[req(1, 0, b"a"), req(1, 1, b"b")]).unwrap();
    // Lose the first record (as a torn append would); the second stays on disk.
    dev.write_at(&[0u8; 64], RING_OFFSET + head.pos).unwrap();
    let (mut j, recs) = open(&dev, head);
    assert!(
        recs.is_empty(),
        "nothing after a missing record is replayed"
    );
    // Recovery persists this head, then the volume appends anew at the same place.
    let head = j.tail_head();
    j.reset_to(head);
    j.append(&[req(2, 0, b"new")]).unwrap();
    let (_, recs) = open(&dev, head);
    assert_eq!(
        recs.len(),
        1,
        "the stale record must not come back after the new one"
    );
    assert_eq!(data(&recs[0]), Some(&b"new"[..]));
}

/// What broke (issue 9, defect 5): open skipped the next sequence number past the ring with
/// `seq + ring_len / SECTOR + 1`, unchecked, on a head sequence number read from the
/// superblock: near u64::MAX it panicked in a debug build and in release wrapped to a
/// small number, which stale records of the ring could carry.
#[test]
fn a_head_sequence_number_without_room_after_it_is_refused_not_wrapped() {
    let (dev, _, head) = fresh();
    let late = JournalHead {
        pos: head.pos,
        seq: u64::MAX - 1,
    };
    match Journal::open(Box::new(dev.clone()), [7; 16], late, false, Mode::Replay) {
        Err(Error::Corrupt { location, detail }) => {
            assert_eq!(location, "superblock");
            assert!(detail.contains("sequence number"), "{detail}");
        }
        Err(e) => panic!("open failed otherwise: {e}"),
        Ok((j, _, _)) => panic!("open accepted it; next sequence number {}", j.next_seq),
    }
}

/// What broke (issue 9, defect 5): replay counted `seq += 1` after every record, so a sealed
/// record carrying sequence number u64::MAX overflowed the count (a panic in a debug build,
/// the next expected number 0 in release) instead of being reported.
#[test]
fn a_sealed_record_with_the_last_sequence_number_is_reported_not_wrapped() {
    let (dev, _, head) = fresh();
    let r = req(1, 0, b"last");
    let at = RING_OFFSET + head.pos;
    dev.write_at(&encode_header(u64::MAX, Some(&r), &[7; 16], 0), at)
        .unwrap();
    dev.write_at(b"last", at + RECORD_HEADER as u64).unwrap();
    let last = JournalHead {
        pos: head.pos,
        seq: u64::MAX,
    };
    match scan(&*dev, &[7; 16], MIN_JOURNAL_SIZE, last, false, Mode::Replay) {
        Err(Error::Corrupt { location, detail }) => {
            assert_eq!(location, format!("journal record at {at:#x}"));
            assert!(detail.contains("sequence number"), "{detail}");
        }
        Err(e) => panic!("scan failed otherwise: {e}"),
        Ok(s) => panic!("scan accepted it; it ends at {:?}", s.end),
    }
}

/// What broke (issue 9, defect 5): the ring length came from the journal header and was
/// trusted: one near u64::MAX made `RING_OFFSET + position` overflow, and one longer than
/// the device let a forged record header ask for a buffer of up to 4 GiB (its data length)
/// before its checksum was looked at.
#[test]
fn a_ring_the_journal_device_cannot_hold_is_refused() {
    let huge = JournalHeader {
        volume_id: [7; 16],
        ring_len: u64::MAX - (SECTOR - 1),
    };
    assert!(JournalHeader::decode(&huge.encode()).is_err());

    let (dev, _, head) = fresh();
    let long = JournalHeader {
        volume_id: [7; 16],
        ring_len: 1 << 40,
    };
    dev.write_at(&long.encode(), 0).unwrap();
    match Journal::open(Box::new(dev.clone()), [7; 16], head, false, Mode::Replay) {
        Err(Error::Corrupt { location, detail }) => {
            assert_eq!(location, "journal header at 0x0");
            assert!(detail.contains("past the end"), "{detail}");
        }
        Err(e) => panic!("open failed otherwise: {e}"),
        Ok(_) => panic!("open accepted a ring longer than its device"),
    }
}

#[test]
fn record_decoding_survives_garbage() {
    for seed in 0..300u32 {
        let data: Vec<u8> = (0..700u32)
            .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 7919) >> 11) as u8)
            .collect();
        fuzz_decode(&data);
    }
}
