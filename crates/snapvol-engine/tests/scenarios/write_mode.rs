//! Write mode throughput (`create --write-mode throughput`): requests of at least a chunk skip
//! the cache journal and become durable at the next FLUSH, FUA write or snapshot; smaller
//! requests, and large ones into chunks the journal still holds a record of, are journaled.
//! The destager runs on the caller's thread here, so what reaches a disk before a kill is
//! exactly what the test asked for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use snapvol_engine::units::Geometry;
use snapvol_engine::vlun::MemVlun;
use snapvol_engine::{CreateOptions, Layout, Vluns, Volume, VolumeOptions, WriteMode};

use crate::common::{assert_bytes_eq, opts, pattern, read_live, Fixture, SyncHook, KIB, MIB};

const SIZE: u64 = 4 * MIB;
const CHUNK: u64 = 64 * KIB;

fn manual() -> VolumeOptions {
    VolumeOptions {
        background_destage: false,
        ..opts(2 * MIB)
    }
}

fn create(fx: &Fixture, mode: WriteMode) -> Volume {
    let create = CreateOptions {
        chunk_size: CHUNK as u32,
        journal_size: 16 << 20,
        write_mode: mode,
        ..CreateOptions::new(SIZE)
    };
    fx.store.create("v", &create, manual()).expect("create")
}

fn journal_used(vol: &Volume) -> u64 {
    vol.metrics().journal_used_bytes
}

#[test]
fn the_write_mode_is_kept_by_the_volume_and_shown_by_info() {
    let fx = Fixture::new();
    let vol = create(&fx, WriteMode::Throughput);
    assert_eq!(vol.info().write_mode, WriteMode::Throughput);
    vol.close().unwrap();
    let vol = fx.open("v", manual());
    assert_eq!(vol.info().write_mode, WriteMode::Throughput);
    drop(vol);
    let create = CreateOptions {
        chunk_size: CHUNK as u32,
        ..CreateOptions::new(SIZE)
    };
    let other = fx.store.create("w", &create, manual()).unwrap();
    assert_eq!(other.info().write_mode, WriteMode::Atomic);
}

#[test]
fn a_large_write_skips_the_journal_and_a_flush_makes_it_durable_by_destage() {
    let fx = Fixture::new();
    let vol = create(&fx, WriteMode::Throughput);
    let a = pattern(1, 0, MIB);
    vol.write(0, &a).unwrap();
    vol.flush().unwrap();
    assert_eq!(
        journal_used(&vol),
        0,
        "a 1 MiB write went through the journal"
    );
    // A small write is journaled as in atomic mode.
    let b = pattern(2, 2 * MIB, 4 * KIB);
    vol.write(2 * MIB, &b).unwrap();
    vol.flush().unwrap();
    assert!(
        journal_used(&vol) >= 4 * KIB,
        "a 4 KiB write skipped the journal"
    );
    vol.kill();

    let vol = fx.open("v", manual());
    let live = read_live(&vol);
    assert_bytes_eq(&live[..MIB as usize], &a, 0, "the flushed large write");
    assert_bytes_eq(
        &live[2 * MIB as usize..(2 * MIB + 4 * KIB) as usize],
        &b,
        2 * MIB,
        "the flushed small write",
    );
}

#[test]
fn the_same_writes_in_atomic_mode_all_go_through_the_journal() {
    let fx = Fixture::new();
    let vol = create(&fx, WriteMode::Atomic);
    vol.write(0, &pattern(1, 0, MIB)).unwrap();
    vol.flush().unwrap();
    assert!(journal_used(&vol) >= MIB);
}

#[test]
fn an_unflushed_large_write_may_be_lost_by_a_kill_but_never_half_of_a_chunk() {
    let fx = Fixture::new();
    let vol = create(&fx, WriteMode::Throughput);
    let a = pattern(1, 0, MIB);
    vol.write(0, &a).unwrap();
    vol.flush().unwrap();
    let b = pattern(2, 0, MIB);
    vol.write(0, &b).unwrap();
    vol.kill();

    let vol = fx.open("v", manual());
    let live = read_live(&vol);
    for c in 0..(MIB / CHUNK) as usize {
        let r = c * CHUNK as usize..(c + 1) * CHUNK as usize;
        assert!(
            live[r.clone()] == a[r.clone()] || live[r.clone()] == b[r.clone()],
            "chunk {c} holds neither the flushed write nor the unflushed one whole"
        );
    }
}

#[test]
fn a_snapshot_holds_the_large_writes_acknowledged_before_it_across_a_kill() {
    let fx = Fixture::new();
    let vol = create(&fx, WriteMode::Throughput);
    let a = pattern(1, 0, MIB);
    vol.write(0, &a).unwrap();
    // No FLUSH: taking the snapshot makes A durable.
    let s1 = vol.snapshot_create("s1").unwrap().seq;
    let b = pattern(2, 0, MIB);
    vol.write(0, &b).unwrap();
    vol.flush().unwrap();
    let c = pattern(3, 0, 512 * KIB);
    vol.write(0, &c).unwrap();
    let s2 = vol.snapshot_create("s2").unwrap().seq;
    vol.kill();

    let vol = fx.open("v", manual());
    let mut at_s2 = b.clone();
    at_s2[..c.len()].copy_from_slice(&c);
    let mut buf = vec![0u8; MIB as usize];
    vol.read_snapshot(s1, 0, &mut buf).unwrap();
    assert_bytes_eq(&buf, &a, 0, "s1 after the kill");
    vol.read_snapshot(s2, 0, &mut buf).unwrap();
    assert_bytes_eq(&buf, &at_s2, 0, "s2 after the kill");
    assert_bytes_eq(&read_live(&vol)[..MIB as usize], &at_s2, 0, "live");
}

/// The reason a large write is journaled where the journal still holds a record of its
/// chunk: were it destaged without one, a replay after a crash would lay the older, journaled
/// write over it, and a FLUSHed write would come back older.
#[test]
fn a_large_write_into_a_chunk_the_journal_still_holds_is_journaled_so_a_replay_keeps_it() {
    let fx = Fixture::new();
    let vol = create(&fx, WriteMode::Throughput);
    let small = pattern(1, 0, 4 * KIB);
    vol.write(0, &small).unwrap();
    vol.flush().unwrap();
    let before = journal_used(&vol);
    let large = pattern(2, 0, 2 * CHUNK);
    vol.write(0, &large).unwrap();
    vol.flush().unwrap();
    assert!(
        journal_used(&vol) >= before + 2 * CHUNK,
        "the large write over a journaled chunk skipped the journal"
    );
    // Elsewhere the same write skips it.
    let used = journal_used(&vol);
    vol.write(MIB, &pattern(3, MIB, 2 * CHUNK)).unwrap();
    vol.flush().unwrap();
    assert_eq!(journal_used(&vol), used);
    vol.kill();

    let vol = fx.open("v", manual());
    let live = read_live(&vol);
    assert_bytes_eq(
        &live[..2 * CHUNK as usize],
        &large,
        0,
        "the flushed large write",
    );
}

#[test]
fn once_the_journal_head_passes_a_chunks_records_large_writes_into_it_skip_the_journal_again() {
    let fx = Fixture::new();
    let vol = create(&fx, WriteMode::Throughput);
    vol.write(0, &pattern(1, 0, 4 * KIB)).unwrap();
    vol.flush().unwrap();
    // Destages everything and moves the journal head past the small write's record.
    vol.destage_all().unwrap();
    let used = journal_used(&vol);
    let large = pattern(2, 0, 2 * CHUNK);
    vol.write(0, &large).unwrap();
    vol.flush().unwrap();
    assert_eq!(journal_used(&vol), used, "the chunk's record was reclaimed");
    vol.kill();
    let vol = fx.open("v", manual());
    assert_bytes_eq(&read_live(&vol)[..2 * CHUNK as usize], &large, 0, "live");
}

#[test]
fn a_fua_large_write_is_durable_on_its_own_through_the_journal() {
    let fx = Fixture::new();
    let vol = create(&fx, WriteMode::Throughput);
    let a = pattern(1, 0, MIB);
    vol.write_fua(0, &a).unwrap();
    assert!(journal_used(&vol) >= MIB);
    vol.kill();
    let vol = fx.open("v", manual());
    assert_bytes_eq(&read_live(&vol)[..MIB as usize], &a, 0, "the FUA write");
}

/// A disk whose syncs stop answering while it is stalled (a device busy with a long flush),
/// and answer again once it is not.
#[derive(Debug, Default)]
struct Stall {
    stalled: Mutex<bool>,
    changed: Condvar,
    /// Syncs waiting now.
    waiting: AtomicUsize,
}

impl Stall {
    fn set(&self, stalled: bool) {
        *self.stalled.lock().unwrap() = stalled;
        self.changed.notify_all();
    }

    fn pass(&self) {
        let mut stalled = self.stalled.lock().unwrap();
        if *stalled {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while *stalled {
                stalled = self.changed.wait(stalled).unwrap();
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A snapshot in write mode throughput must make the large writes that skipped the journal
/// durable first, and nothing else: with only journaled writes in the cache it costs one
/// journal append, as in atomic mode, and does not wait for a destage batch of journaled writes
/// that happens to be under way (under random 4 KiB writes, W5 measured snapshots waiting up to
/// half a second behind batches that preserved originals).
#[test]
fn a_snapshot_does_not_wait_for_a_destage_of_journaled_writes_under_way() {
    let stall = Arc::new(Stall::default());
    let layout = Layout {
        journal_size: 16 << 20,
        write_mode: WriteMode::Throughput,
        ..Layout::new(Geometry::new(SIZE, CHUNK as u32).unwrap())
    };
    let vluns = Vluns {
        source: Box::new(MemVlun::new(SIZE)),
        target: Box::new(SyncHook {
            inner: MemVlun::new(0),
            before_sync: Box::new({
                let stall = Arc::clone(&stall);
                move || stall.pass()
            }),
        }),
        journal: Box::new(MemVlun::new(0)),
    };
    // The background destager runs: it destages once the cache is an eighth full.
    let vol = Arc::new(Volume::create_on("v", vluns, layout, opts(2 * MIB)).unwrap());
    let a = pattern(1, 0, MIB);
    vol.write(0, &a).unwrap();
    let s1 = vol.snapshot_create("s1").unwrap().seq;

    // Half-chunk writes into sixteen chunks: journaled, each preserving its chunk's original
    // for s1 when destaged. The target stops answering syncs, so the batch that takes them
    // stalls in its commit.
    stall.set(true);
    let mut expected = a.clone();
    for c in 0..16 {
        let off = c * CHUNK;
        let b = pattern(2, off, CHUNK / 2);
        vol.write(off, &b).unwrap();
        expected[off as usize..(off + CHUNK / 2) as usize].copy_from_slice(&b);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while stall.waiting.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "no destage batch reached the target's sync"
        );
        thread::sleep(Duration::from_millis(5));
    }

    let (tx, rx) = mpsc::channel();
    let taker = {
        let vol = Arc::clone(&vol);
        thread::spawn(move || tx.send(vol.snapshot_create("s2").map(|i| i.seq)))
    };
    let taken = rx.recv_timeout(Duration::from_secs(20));
    stall.set(false);
    taker.join().unwrap().ok();
    let s2 = taken
        .expect("the snapshot waited for a destage batch of journaled writes to commit")
        .unwrap();

    let mut buf = vec![0u8; MIB as usize];
    vol.read_snapshot(s1, 0, &mut buf).unwrap();
    assert_bytes_eq(&buf, &a, 0, "s1");
    vol.read_snapshot(s2, 0, &mut buf).unwrap();
    assert_bytes_eq(&buf, &expected, 0, "s2");
}
