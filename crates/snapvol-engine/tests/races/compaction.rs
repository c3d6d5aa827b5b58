//! The metadata log compacting on its own thread while destage batches, snapshot creations
//! and deletions commit to it: what they commit meanwhile (the compaction's tail) must reach
//! the fresh log, or a snapshot would lose copies, or a deleted one come back, once the volume
//! is reopened. Checked with every snapshot's content against what it read right after its
//! creation, live, after a clean close and reopen, and after a power loss at a random moment.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use snapvol_engine::units::{Geometry, SnapshotSeq};
use snapvol_engine::{Error, Layout, Volume, VolumeOptions, WriteMode};

use super::{first_difference, pattern, Devices, Rng, StopOnDrop, CHUNK, KIB};

/// 128 chunks, written at random 4 KiB places: the copies land in the target in an order
/// unlike the chunks', so the fresh log holds a record per copy and takes a while to write.
const SIZE: u64 = 128 * CHUNK;

fn options() -> VolumeOptions {
    VolumeOptions {
        cache_size: 1 << 20,
        // Compact as soon as the log holds four times what is live.
        compact_after_records: 64,
        background_destage: true,
    }
}

fn read_all(vol: &Volume, seq: SnapshotSeq) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; SIZE as usize];
    vol.read_snapshot(seq, 0, &mut buf).map(|()| buf)
}

fn assert_reads(vol: &Volume, (name, seq, image): &(String, SnapshotSeq, Vec<u8>), when: &str) {
    let got = read_all(vol, *seq).unwrap_or_else(|e| panic!("reading snapshot {name} {when}: {e}"));
    if let Some(at) = first_difference(image, &got) {
        panic!(
            "snapshot {name} changed {when}: first difference at byte {at:#x} (chunk {})",
            at as u64 / CHUNK
        );
    }
}

/// One round: a writer rewrites random 4 KiB blocks while the main thread takes snapshots
/// (reading each whole right away) and deletes old ones, keeping about ten. Returns the
/// snapshots still live, those deleted, and the volume's compaction figures.
#[allow(clippy::type_complexity)]
fn round(
    vol: &Volume,
    seed: u64,
    snapshots: u64,
) -> (Vec<(String, SnapshotSeq, Vec<u8>)>, Vec<String>, (u64, u64)) {
    let stop = AtomicBool::new(false);
    let tags = AtomicU64::new(1 + (seed << 40));
    let mut live: Vec<(String, SnapshotSeq, Vec<u8>)> = Vec::new();
    let mut deleted = Vec::new();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            let mut rng = Rng(seed);
            while !stop.load(Ordering::SeqCst) {
                let off = rng.below(SIZE / (4 * KIB)) * 4 * KIB;
                let tag = tags.fetch_add(1, Ordering::Relaxed);
                vol.write(off, &pattern(tag, off, 4 * KIB))
                    .expect("write while the log compacts");
            }
        });
        let mut rng = Rng(seed ^ 0x5eed);
        for i in 0..snapshots {
            std::thread::sleep(std::time::Duration::from_millis(2));
            let name = format!("r{seed}s{i}");
            let seq = vol.snapshot_create(&name).expect("snapshot create").seq;
            let image = read_all(vol, seq).expect("read a new snapshot");
            live.push((name, seq, image));
            if live.len() > 10 {
                let (name, _, _) = live.remove(rng.below(live.len() as u64 - 2) as usize);
                vol.snapshot_delete(&name).expect("snapshot delete");
                deleted.push(name);
            }
        }
    });
    let m = vol.metrics();
    (live, deleted, (m.compactions, m.compaction_tail_records))
}

#[test]
fn commits_made_while_the_log_compacts_on_its_own_thread_reach_the_fresh_log() {
    let layout = Layout {
        geometry: Geometry::new(SIZE, CHUNK as u32).expect("geometry"),
        target_cap: None,
        journal_size: 8 << 20,
        write_mode: WriteMode::Atomic,
    };
    let mut tails = 0;
    let mut rounds = 0;
    // Until some compaction has overlapped with commits (the first round almost always
    // does), and at least three rounds, each ending in a power loss.
    while rounds < 3 || (tails == 0 && rounds < 20) {
        let dev = Devices::blank(SIZE);
        let vol = Volume::create_on("vol", dev.vluns(), layout, options()).expect("create");
        let (live, deleted, (compactions, tail)) = round(&vol, rounds, 80);
        assert!(compactions > 0, "(round {rounds}) the log never compacted");
        tails += tail;
        eprintln!("round {rounds}: {compactions} compactions, {tail} tail records");
        for snap in &live {
            assert_reads(
                &vol,
                snap,
                &format!("(round {rounds}) once the writer stopped"),
            );
        }
        // The power goes now: whatever the compactor was doing stops half-way.
        dev.ctl.crash_now();
        let _ = vol.kill();
        let restarted = dev.after_power_loss(rounds);
        let when = format!("(round {rounds}) after a power loss and recovery");
        let vol = Volume::open_on("vol", restarted.vluns(), options())
            .unwrap_or_else(|e| panic!("recovery {when}: {e}"));
        for snap in &live {
            assert_reads(&vol, snap, &when);
        }
        for name in &deleted {
            assert!(
                matches!(vol.snapshot(name), Err(Error::SnapshotNotFound(_))),
                "snapshot {name}, deleted before the power went, is back {when}"
            );
        }
        // More churn on the recovered volume, then a clean close and reopen.
        let (more, _, _) = round(&vol, rounds + 100, 30);
        vol.close().expect("close");
        restarted.assert_check_clean(&format!("(round {rounds}) after a clean close"));
        let vol = Volume::open_on("vol", restarted.vluns(), options()).expect("reopen");
        for snap in live.iter().chain(&more) {
            assert_reads(
                &vol,
                snap,
                &format!("(round {rounds}) after close and reopen"),
            );
        }
        vol.close().expect("close");
        rounds += 1;
    }
    assert!(
        tails > 0,
        "in {rounds} rounds no commit came while a compaction was under way: the test did not \
         exercise what it is for"
    );
}
