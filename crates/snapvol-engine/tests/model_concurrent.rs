//! Model-based test with concurrency and power loss: random operations from three threads at
//! once on a volume whose VLUNs keep unsynced writes volatile, checked against before/after
//! bounds, and a power cut at the end that drops, keeps or tears what was not synced.
//!
//! Each thread writes only its own region of the volume, so its oracle is exact: a history of
//! the region's content after each of its writes. Whatever the threads share is judged by
//! bounds:
//! - a snapshot holds, of each region, the state after some write `k` with `k` at least the
//!   writes acknowledged before the snapshot was asked for and at most those issued before it
//!   returned; read right after creation, it reads the same ever after (more writes, deletes,
//!   destages, the power cut);
//! - after the power cut, each region is in the state after some write `k` between the last
//!   one made durable (by a FLUSH of that thread, or a snapshot taken after it was
//!   acknowledged) and the last one issued, and each request is all-old or all-new (a region's
//!   writes reach the journal in the order the thread issued them, so the surviving ones are a
//!   prefix of them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use snapvol_engine::fault::{CrashMode, CrashVlun, FaultController};
use snapvol_engine::units::{Geometry, SnapshotSeq};
use snapvol_engine::{Layout, Vluns, Volume, VolumeOptions};

const THREADS: usize = 3;
const CHUNK: u32 = 8192;
/// Each thread's region: six chunks, so requests straddle chunk boundaries.
const REGION: u64 = 6 * CHUNK as u64;
const SIZE: u64 = THREADS as u64 * REGION + 2 * CHUNK as u64;

#[derive(Debug, Clone)]
enum Op {
    /// Pattern data at `(off, len)` of the thread's region.
    Write {
        off: u64,
        len: u64,
        seed: u8,
    },
    Zero {
        off: u64,
        len: u64,
    },
    Flush,
    /// Take a snapshot, read it back, check it against the bounds.
    Snap,
    /// Delete one of the snapshots taken so far (by any thread).
    Delete(usize),
    /// Read the thread's own region: exactly its oracle.
    Read,
    DestageAll,
}

fn op() -> impl Strategy<Value = Op> {
    let range = prop_oneof![
        (0..REGION, 1..2000u64),
        (0..REGION, 1..REGION),
        (0..REGION / 4096, 1..4u64).prop_map(|(b, n)| (b * 4096, n * 4096)),
    ]
    .prop_map(|(off, len)| (off, len.min(REGION - off).max(1)));
    prop_oneof![
        8 => (range.clone(), any::<u8>()).prop_map(|((off, len), seed)| Op::Write { off, len, seed }),
        2 => range.prop_map(|(off, len)| Op::Zero { off, len }),
        2 => Just(Op::Flush),
        2 => Just(Op::Snap),
        1 => any::<usize>().prop_map(Op::Delete),
        2 => Just(Op::Read),
        1 => Just(Op::DestageAll),
    ]
}

fn pattern(seed: u8, t: usize, k: usize, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (u64::from(seed) ^ (t as u64) << 5 ^ (k as u64) << 9 ^ i.wrapping_mul(131)) as u8)
        .collect()
}

fn region_of(t: usize) -> std::ops::Range<usize> {
    let start = t * REGION as usize;
    start..start + REGION as usize
}

/// The volatile devices of one machine.
struct Devices {
    ctl: Arc<FaultController>,
    source: Arc<CrashVlun>,
    target: Arc<CrashVlun>,
    journal: Arc<CrashVlun>,
}

impl Devices {
    fn blank() -> Self {
        let ctl = FaultController::new();
        Self {
            source: Arc::new(CrashVlun::new(&ctl, SIZE)),
            target: Arc::new(CrashVlun::new(&ctl, 0)),
            journal: Arc::new(CrashVlun::new(&ctl, 0)),
            ctl,
        }
    }

    /// What a power loss leaves: any subset of the unsynced writes, in any order, some torn.
    fn after_power_loss(&self, seed: u64) -> Self {
        let ctl = FaultController::new();
        let keep = |d: &CrashVlun, salt: u64| {
            Arc::new(CrashVlun::from_image(
                &ctl,
                d.crash_image(CrashMode::Random, seed ^ salt),
            ))
        };
        Self {
            source: keep(&self.source, 1),
            target: keep(&self.target, 2),
            journal: keep(&self.journal, 3),
            ctl: ctl.clone(),
        }
    }

    fn vluns(&self) -> Vluns {
        Vluns {
            source: Box::new(Arc::clone(&self.source)),
            target: Box::new(Arc::clone(&self.target)),
            journal: Box::new(Arc::clone(&self.journal)),
        }
    }

    fn assert_check_clean(&self, when: &str) {
        let report =
            snapvol_engine::check::check(&*self.source, &*self.target, &*self.journal, false)
                .unwrap_or_else(|e| panic!("check could not run {when}: {e}"));
        assert!(report.is_clean(), "check {when}: {:?}", report.problems);
    }
}

fn options() -> VolumeOptions {
    VolumeOptions {
        cache_size: 16 * u64::from(CHUNK),
        compact_after_records: 8,
        background_destage: true,
    }
}

/// One thread's oracle and progress.
struct Writer {
    /// The region after each of its writes (`history[0]`: before any).
    history: Mutex<Vec<Vec<u8>>>,
    /// Writes issued so far (the one in flight included).
    issued: AtomicU64,
    /// Writes acknowledged so far.
    acked: AtomicU64,
    /// Writes known durable: covered by a FLUSH, or acknowledged before a snapshot was asked
    /// for.
    durable: AtomicU64,
}

/// A snapshot whose creation returned, with what it read right after.
struct Taken {
    name: String,
    seq: SnapshotSeq,
    image: Vec<u8>,
}

struct Shared {
    writers: Vec<Writer>,
    snaps: Mutex<Vec<Taken>>,
    next_name: AtomicU64,
}

/// Which of `history`'s states within `lo..=hi` `got` is, if any.
fn which_state(history: &[Vec<u8>], lo: u64, hi: u64, got: &[u8]) -> Option<usize> {
    (lo as usize..=(hi as usize).min(history.len() - 1)).find(|&k| history[k] == got)
}

fn run_thread(vol: &Volume, shared: &Shared, t: usize, ops: &[Op]) {
    let me = &shared.writers[t];
    let base = region_of(t).start as u64;
    for op in ops {
        match *op {
            Op::Write { off, len, .. } | Op::Zero { off, len } => {
                let mut history = me.history.lock().unwrap();
                let k = history.len();
                let mut next = history[k - 1].clone();
                let data = match *op {
                    Op::Write { seed, .. } => pattern(seed, t, k, len),
                    _ => vec![0; len as usize],
                };
                next[off as usize..(off + len) as usize].copy_from_slice(&data);
                history.push(next);
                drop(history);
                me.issued.store(k as u64, Ordering::SeqCst);
                match *op {
                    Op::Write { .. } => vol.write(base + off, &data).unwrap(),
                    _ => vol.write_zeroes(base + off, len).unwrap(),
                }
                me.acked.store(k as u64, Ordering::SeqCst);
            }
            Op::Flush => {
                let covered = me.acked.load(Ordering::SeqCst);
                vol.flush().unwrap();
                me.durable.fetch_max(covered, Ordering::SeqCst);
            }
            Op::Snap => {
                let name = format!("s{}", shared.next_name.fetch_add(1, Ordering::SeqCst));
                let before: Vec<u64> = shared
                    .writers
                    .iter()
                    .map(|w| w.acked.load(Ordering::SeqCst))
                    .collect();
                let seq = vol.snapshot_create(&name).unwrap().seq;
                let after: Vec<u64> = shared
                    .writers
                    .iter()
                    .map(|w| w.issued.load(Ordering::SeqCst))
                    .collect();
                for (w, &b) in shared.writers.iter().zip(&before) {
                    w.durable.fetch_max(b, Ordering::SeqCst);
                }
                let mut image = vec![0u8; SIZE as usize];
                vol.read_snapshot(seq, 0, &mut image).unwrap();
                for (u, w) in shared.writers.iter().enumerate() {
                    let history = w.history.lock().unwrap();
                    let got = &image[region_of(u)];
                    assert!(
                        which_state(&history, before[u], after[u], got).is_some(),
                        "snapshot {name}: region {u} is no state between writes {} and {}",
                        before[u],
                        after[u]
                    );
                }
                shared
                    .snaps
                    .lock()
                    .unwrap()
                    .push(Taken { name, seq, image });
            }
            Op::Delete(i) => {
                let victim = {
                    let mut snaps = shared.snaps.lock().unwrap();
                    (!snaps.is_empty()).then(|| {
                        let n = snaps.len();
                        snaps.remove(i % n)
                    })
                };
                if let Some(victim) = victim {
                    vol.snapshot_delete(&victim.name).unwrap();
                }
            }
            Op::Read => {
                let mut buf = vec![0u8; REGION as usize];
                vol.read(base, &mut buf).unwrap();
                let history = me.history.lock().unwrap();
                assert!(
                    &buf == history.last().unwrap(),
                    "region {t} does not read as its last write"
                );
            }
            Op::DestageAll => vol.destage_all().unwrap(),
        }
    }
}

fn assert_snapshots_unchanged(vol: &Volume, snaps: &[Taken], when: &str) {
    let mut buf = vec![0u8; SIZE as usize];
    for s in snaps {
        vol.read_snapshot(s.seq, 0, &mut buf)
            .unwrap_or_else(|e| panic!("snapshot {} {when}: {e}", s.name));
        if buf != s.image {
            // Where, to tell a chunk that lost its preserved copy from a torn block.
            let differ: Vec<usize> = (0..buf.len()).filter(|&i| buf[i] != s.image[i]).collect();
            panic!(
                "snapshot {} changed {when}: {} bytes differ, from {:#x} to {:#x} (chunk {} to {})",
                s.name,
                differ.len(),
                differ[0],
                differ[differ.len() - 1],
                differ[0] as u64 / u64::from(CHUNK),
                differ[differ.len() - 1] as u64 / u64::from(CHUNK)
            );
        }
    }
}

fn run(ops: &[Vec<Op>; THREADS], loss_seed: u64) {
    let dev = Devices::blank();
    let layout = Layout {
        geometry: Geometry::new(SIZE, CHUNK).unwrap(),
        target_cap: None,
        journal_size: 4 << 20,
        write_mode: Default::default(),
    };
    let vol = Volume::create_on("v", dev.vluns(), layout, options()).unwrap();
    let shared = Shared {
        writers: (0..THREADS)
            .map(|_| Writer {
                history: Mutex::new(vec![vec![0u8; REGION as usize]]),
                issued: AtomicU64::new(0),
                acked: AtomicU64::new(0),
                durable: AtomicU64::new(0),
            })
            .collect(),
        snaps: Mutex::new(Vec::new()),
        next_name: AtomicU64::new(0),
    };
    std::thread::scope(|s| {
        for (t, ops) in ops.iter().enumerate() {
            let (vol, shared) = (&vol, &shared);
            s.spawn(move || run_thread(vol, shared, t, ops));
        }
    });
    let snaps = shared.snaps.into_inner().unwrap();
    assert_snapshots_unchanged(&vol, &snaps, "once the threads were done");
    // Names are picked before their snapshots are taken, so they need not come in order.
    let mut names: Vec<String> = vol.snapshots().into_iter().map(|s| s.name).collect();
    let mut want: Vec<String> = snaps.iter().map(|s| s.name.clone()).collect();
    names.sort();
    want.sort();
    assert_eq!(names, want, "the snapshots that were taken and not deleted");

    // The power goes, with whatever was not synced volatile.
    dev.ctl.crash_now();
    let _ = vol.kill();
    let restarted = dev.after_power_loss(loss_seed);
    let when = format!("after the power cut (loss seed {loss_seed})");
    let vol = Volume::open_on("v", restarted.vluns(), options())
        .unwrap_or_else(|e| panic!("recovery {when}: {e}"));
    assert_snapshots_unchanged(&vol, &snaps, &when);
    let mut live = vec![0u8; SIZE as usize];
    vol.read(0, &mut live).unwrap();
    for (t, w) in shared.writers.iter().enumerate() {
        let history = w.history.lock().unwrap();
        let (lo, hi) = (
            w.durable.load(Ordering::SeqCst),
            w.issued.load(Ordering::SeqCst),
        );
        assert!(
            which_state(&history, lo, hi, &live[region_of(t)]).is_some(),
            "region {t} {when} is no state between its durable write {lo} and its last {hi}"
        );
    }
    vol.close().unwrap();
    restarted.assert_check_clean(&when);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("SNAPVOL_MODEL_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256),
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn three_threads_match_their_oracles_and_every_snapshot_its_bounds_through_a_power_cut(
        a in prop::collection::vec(op(), 1..25),
        b in prop::collection::vec(op(), 1..25),
        c in prop::collection::vec(op(), 1..25),
        loss_seed in any::<u64>(),
    ) {
        run(&[a, b, c], loss_seed);
    }
}
