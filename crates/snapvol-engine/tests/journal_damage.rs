//! A damaged journal record is never silently dropped together with the flushed writes after
//! it. What broke (issue 10, finding 1): with 400 (4 KiB write, FLUSH) pairs journaled and
//! the process killed, a flipped byte in record 200 made replay stop there, losing the
//! flushed writes after it that the destager had not copied yet, and `check` said clean.
//!
//! Now: a damaged record that intact records of later appends follow is corruption — `check`
//! reports it with its location, open refuses, and a salvage replays every intact record and
//! names the writes lost. A damaged *last* append cannot be told from one a crash cut short:
//! open drops it, and `check` warns with its location. No flip ever makes a read return
//! bytes that were not written.

use std::sync::Arc;

use snapvol_engine::check::{check, CheckReport};
use snapvol_engine::format::{Superblock, BLOCK_SIZE};
use snapvol_engine::journal::{self, Held, JournalHead, JournalHeader, Mode, RING_OFFSET};
use snapvol_engine::units::Geometry;
use snapvol_engine::vlun::MemVlun;
use snapvol_engine::{Error, Layout, Vluns, Volume, VolumeOptions};

const BLOCK: u64 = 4096;
const WRITES: u64 = 400;
const SIZE: u64 = 2 << 20;

fn options() -> VolumeOptions {
    VolumeOptions {
        // Nothing is destaged: every write stays in the journal only.
        cache_size: 64 << 20,
        background_destage: false,
        ..VolumeOptions::default()
    }
}

/// Write `i` of the workload: 4 KiB of bytes that say which write they are.
fn data(i: u64) -> Vec<u8> {
    (0..BLOCK)
        .map(|b| (i.wrapping_mul(131) ^ b.wrapping_mul(7)) as u8 | 1)
        .collect()
}

fn offset(i: u64) -> u64 {
    i * BLOCK % SIZE
}

/// The three devices as images.
#[derive(Clone)]
struct Images {
    source: Vec<u8>,
    target: Vec<u8>,
    journal: Vec<u8>,
}

impl Images {
    fn vluns(&self) -> (Vluns, [Arc<MemVlun>; 3]) {
        let devs = [&self.source, &self.target, &self.journal]
            .map(|img| Arc::new(MemVlun::from_bytes(img.clone())));
        let vluns = Vluns {
            source: Box::new(devs[0].clone()),
            target: Box::new(devs[1].clone()),
            journal: Box::new(devs[2].clone()),
        };
        (vluns, devs)
    }

    fn check(&self) -> CheckReport {
        let (_, [s, t, j]) = self.vluns();
        check(&*s, &*t, &*j, false).expect("check runs")
    }
}

/// 400 pairs of (4 KiB write, FLUSH), each flush an append of one record, then a kill: the
/// journal holds them all.
fn killed_volume() -> Images {
    let devs = [
        Arc::new(MemVlun::new(SIZE)),
        Arc::new(MemVlun::new(0)),
        Arc::new(MemVlun::new(0)),
    ];
    let vluns = Vluns {
        source: Box::new(devs[0].clone()),
        target: Box::new(devs[1].clone()),
        journal: Box::new(devs[2].clone()),
    };
    let layout = Layout {
        geometry: Geometry::new(SIZE, BLOCK as u32).unwrap(),
        target_cap: None,
        // The cache (a quarter of the ring) holds every write: none is destaged.
        journal_size: 16 << 20,
        write_mode: Default::default(),
    };
    let vol = Volume::create_on("v", vluns, layout, options()).unwrap();
    for i in 0..WRITES {
        vol.write(offset(i), &data(i)).unwrap();
        vol.flush().unwrap();
    }
    vol.kill();
    Images {
        source: devs[0].contents(),
        target: devs[1].contents(),
        journal: devs[2].contents(),
    }
}

/// Ring positions of the journal's records, in order.
fn record_positions(img: &Images) -> Vec<u64> {
    let sb = [0u64, BLOCK_SIZE as u64]
        .iter()
        .filter_map(|&off| {
            let b: [u8; BLOCK_SIZE] = img.target[off as usize..off as usize + BLOCK_SIZE]
                .try_into()
                .unwrap();
            Superblock::decode(&b, off).ok()
        })
        .max_by_key(|sb| sb.generation)
        .expect("a superblock");
    let hb: [u8; BLOCK_SIZE] = img.journal[..BLOCK_SIZE].try_into().unwrap();
    let ring_len = JournalHeader::decode(&hb).unwrap().ring_len;
    let dev = MemVlun::from_bytes(img.journal.clone());
    let head = JournalHead {
        pos: sb.journal_head,
        seq: sb.journal_head_seq,
    };
    let scan = journal::scan(&dev, &sb.volume_id, ring_len, head, false, Mode::Replay).unwrap();
    assert_eq!(
        scan.records.len() as u64,
        WRITES,
        "every write is in the journal"
    );
    scan.records.iter().map(|(pos, _)| *pos).collect()
}

/// Which writes the volume holds: each 4 KiB block must read as its write or as never written
/// (zeros), nothing else. Returns the writes missing.
fn missing_writes(vol: &Volume) -> Vec<u64> {
    let mut missing = Vec::new();
    let mut buf = vec![0u8; BLOCK as usize];
    for i in 0..WRITES {
        vol.read(offset(i), &mut buf).unwrap();
        if buf == data(i) {
            continue;
        }
        assert!(
            buf.iter().all(|&b| b == 0),
            "write {i} reads as bytes that were never written"
        );
        missing.push(i);
    }
    missing
}

fn flipped(img: &Images, at: u64) -> Images {
    let mut img = img.clone();
    img.journal[(RING_OFFSET + at) as usize] ^= 0x10;
    img
}

#[test]
fn a_damaged_record_with_later_appends_after_it_is_reported_refused_and_salvaged() {
    let img = killed_volume();
    let pos = record_positions(&img);
    // A byte of the payload of record 200 (its data starts 64 bytes in).
    let bad = flipped(&img, pos[200] + 64 + 100);

    let report = bad.check();
    let loc = format!("journal record at {:#x}", RING_OFFSET + pos[200]);
    let problem = report
        .problems
        .iter()
        .find(|p| p.location == loc)
        .unwrap_or_else(|| panic!("check does not report {loc}: {report:?}"));
    assert!(
        problem.repairable && problem.detail.contains("write of 0x1000 bytes"),
        "{problem:?}"
    );

    let (vluns, _) = bad.vluns();
    match Volume::open_on("v", vluns, options()) {
        Err(Error::Corrupt { location, detail }) => {
            assert_eq!(location, loc);
            assert!(detail.contains("check VOL --repair"), "{detail}");
        }
        other => panic!("open accepted a journal with a damaged acknowledged record: {other:?}"),
    }

    let (vluns, devs) = bad.vluns();
    let (vol, lost) = Volume::open_salvaging_on("v", vluns, options()).expect("salvage");
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].pos, Some(pos[200]));
    assert_eq!(
        lost[0].held,
        Some(Held::Write {
            offset: offset(200),
            len: BLOCK
        })
    );
    assert_eq!(
        missing_writes(&vol),
        [200],
        "every other flushed write survives"
    );
    vol.close().unwrap();
    let after = check(&*devs[0], &*devs[1], &*devs[2], false).unwrap();
    assert!(after.is_clean() && after.warnings.is_empty(), "{after:?}");
    let (vluns, _) = Images {
        source: devs[0].contents(),
        target: devs[1].contents(),
        journal: devs[2].contents(),
    }
    .vluns();
    let vol = Volume::open_on("v", vluns, options()).expect("a clean open after the salvage");
    assert_eq!(missing_writes(&vol), [200]);
    vol.close().unwrap();
}

#[test]
fn a_damaged_last_record_is_dropped_with_a_warning_that_names_it() {
    let img = killed_volume();
    let pos = record_positions(&img);
    let last = WRITES as usize - 1;
    let bad = flipped(&img, pos[last] + 64 + 7);
    let report = bad.check();
    assert!(report.is_clean(), "{:?}", report.problems);
    let loc = format!("journal record at {:#x}", RING_OFFSET + pos[last]);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.location == loc && w.detail.contains("cut short by a crash")),
        "check does not warn about {loc}: {report:?}"
    );
    let (vluns, _) = bad.vluns();
    let vol = Volume::open_on("v", vluns, options()).expect("open drops a torn tail");
    assert_eq!(missing_writes(&vol), [WRITES - 1]);
    vol.close().unwrap();
}

/// Every byte of a middle record's header, and bytes of its payload, flipped one at a time:
/// each flip is reported with the record's location, open refuses it, and a salvage loses
/// that one write and nothing else. The same for the last record: dropped, with a warning.
#[test]
fn every_flip_in_a_journal_record_is_located_and_never_serves_wrong_data() {
    let img = killed_volume();
    let pos = record_positions(&img);
    let payload = [0u64, 1, 2047, 4095].map(|b| 64 + b);
    let (mut refused, mut salvaged, mut warned) = (0, 0, 0);
    for (which, must_refuse) in [(200usize, true), (WRITES as usize - 1, false)] {
        let loc = format!("journal record at {:#x}", RING_OFFSET + pos[which]);
        for at in (0..64).chain(payload) {
            let bad = flipped(&img, pos[which] + at);
            let report = bad.check();
            let (vluns, _) = bad.vluns();
            let opened = Volume::open_on("v", vluns, options());
            if must_refuse {
                assert!(
                    report
                        .problems
                        .iter()
                        .any(|p| p.location.starts_with("journal record")),
                    "byte {at} of record {which}: check is clean: {report:?}"
                );
                assert!(
                    matches!(opened, Err(Error::Corrupt { .. })),
                    "byte {at} of record {which}: open accepted it"
                );
                refused += 1;
                let (vluns, _) = bad.vluns();
                let (vol, lost) = Volume::open_salvaging_on("v", vluns, options()).unwrap();
                assert_eq!(lost.len(), 1, "byte {at}: {lost:?}");
                assert_eq!(missing_writes(&vol), [which as u64], "byte {at}");
                vol.kill();
                salvaged += 1;
            } else {
                assert!(report.is_clean(), "byte {at}: {:?}", report.problems);
                let vol = opened.unwrap_or_else(|e| panic!("byte {at} of the last record: {e}"));
                assert_eq!(missing_writes(&vol), [which as u64], "byte {at}");
                vol.kill();
                if report.warnings.iter().any(|w| w.location == loc) {
                    warned += 1;
                }
            }
        }
    }
    // Flips that leave the last record unrecognisable — its magic or volume id, or a
    // sequence number made smaller, as a stale record of an earlier lap has — make it look
    // like the end of the written ring, not a damaged record: only the others can be named.
    eprintln!(
        "middle record: {refused} flips refused and salvaged; last record: {warned} of {} flips warned about",
        64 + payload.len()
    );
    assert_eq!(refused, 64 + payload.len());
    assert_eq!(salvaged, refused);
    assert!(warned >= 64 + payload.len() - 12 - 8, "{warned}");
}
