//! Races on the data path: several threads writing into the same chunks while snapshots are
//! taken, read and deleted, and the power cut at a random moment.
//!
//! The promise under test (DESIGN.md, "Semantics"): a snapshot never changes after it is
//! taken, whatever the concurrency. What a snapshot reads right after its creation returned
//! is what it reads forever: while the writers go on, after everything is destaged, after a
//! clean close and reopen, and after a power loss at any moment. A read of a snapshot that is
//! being deleted returns that snapshot's data or an error, never other data.
//!
//! `rollback` races rollbacks and guarded changes (`import-diff`) with the same writers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use snapvol_engine::fault::{CrashMode, CrashVlun, FaultController};
use snapvol_engine::units::{Geometry, SnapshotSeq};
use snapvol_engine::{Error, Layout, Vluns, Volume, VolumeOptions, WriteMode};

mod compaction;
mod rollback;

const KIB: u64 = 1 << 10;
const CHUNK: u64 = 64 * KIB;
/// The volume; the writers race in its first [`HOT`] bytes only.
const SIZE: u64 = 16 * CHUNK;
/// Eight chunks that every writer writes into.
const HOT: u64 = 8 * CHUNK;
const WRITERS: u64 = 8;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix(self.0) % n
    }
}

/// Bytes unique to one write request (`tag`) and to where they lie.
fn pattern(tag: u64, off: u64, len: u64) -> Vec<u8> {
    (off..off + len)
        .map(|p| (splitmix(tag ^ (p >> 3).rotate_left(20)) >> (8 * (p & 7))) as u8)
        .collect()
}

/// One random write request into the hot chunks: mostly aligned 4 KiB blocks, some 512-byte
/// pieces of a block (the cache then fills the rest of the block), and some 12 KiB requests
/// that straddle a chunk boundary (one request, two chunks).
fn random_request(rng: &mut Rng) -> (u64, u64) {
    match rng.below(8) {
        0 => (rng.below(HOT / 512) * 512, 512),
        1 => {
            let boundary = (1 + rng.below(HOT / CHUNK - 1)) * CHUNK;
            (boundary - 4 * KIB * (1 + rng.below(2)), 12 * KIB)
        }
        _ => (rng.below(HOT / (4 * KIB)) * 4 * KIB, 4 * KIB),
    }
}

/// In write mode throughput, one request in four is large instead: a whole chunk, or up to two
/// chunks at any 512-byte offset, so that it skips the journal (where no journal record still
/// covers its chunks) while small ones are journaled into the same chunks.
fn random_request_in(rng: &mut Rng, mode: WriteMode) -> (u64, u64) {
    if mode == WriteMode::Atomic || rng.below(4) != 0 {
        return random_request(rng);
    }
    if rng.below(2) == 0 {
        (rng.below(HOT / CHUNK) * CHUNK, CHUNK)
    } else {
        let len = CHUNK + rng.below(CHUNK / 512) * 512;
        (rng.below((HOT - len) / 512) * 512, len)
    }
}

/// The chunks after the hot ones, where one writer alone writes (write mode throughput): it
/// knows exactly what it flushed, so that a recovery can be held to it.
const COLD: std::ops::Range<u64> = HOT..HOT + 4 * CHUNK;

/// What the writer of the cold chunks knows: their content as of its last completed FLUSH,
/// and every write it issued since (each may or may not have survived, a large one in part).
#[derive(Debug, Clone, Default)]
struct Flushed {
    image: Vec<u8>,
    since: Vec<(u64, Vec<u8>)>,
}

impl Flushed {
    /// Each byte of the cold chunks reads its flushed value or that of a write issued after.
    fn assert_present(&self, vol: &Volume, when: &str) {
        let mut got = vec![0u8; (COLD.end - COLD.start) as usize];
        vol.read(COLD.start, &mut got)
            .expect("read the cold chunks");
        for (i, (&g, &f)) in got.iter().zip(&self.image).enumerate() {
            let at = COLD.start + i as u64;
            let later = |&(off, ref d): &(u64, Vec<u8>)| {
                off <= at && at < off + d.len() as u64 && d[(at - off) as usize] == g
            };
            assert!(
                g == f || self.since.iter().any(later),
                "byte {at:#x} reads {g:#04x} {when}: neither what it held at the last completed                  FLUSH ({f:#04x}) nor what a later write put there (flushed data lost)"
            );
        }
    }
}

/// The three VLUNs of one simulated machine.
struct Devices {
    ctl: Arc<FaultController>,
    source: Arc<CrashVlun>,
    target: Arc<CrashVlun>,
    journal: Arc<CrashVlun>,
}

impl Devices {
    fn blank(size: u64) -> Self {
        let ctl = FaultController::new();
        Self {
            source: Arc::new(CrashVlun::new(&ctl, size)),
            target: Arc::new(CrashVlun::new(&ctl, 0)),
            journal: Arc::new(CrashVlun::new(&ctl, 0)),
            ctl,
        }
    }

    /// The machine after a power loss: what each device durably held, with a random part of
    /// its unsynced writes (possibly torn) reaching the media.
    fn after_power_loss(&self, seed: u64) -> Self {
        let ctl = FaultController::new();
        let image = |d: &CrashVlun, salt: u64| {
            Arc::new(CrashVlun::from_image(
                &ctl,
                d.crash_image(CrashMode::Random, seed ^ salt),
            ))
        };
        Self {
            source: image(&self.source, 1),
            target: image(&self.target, 2),
            journal: image(&self.journal, 3),
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

    /// The offline checker finds nothing wrong.
    fn assert_check_clean(&self, when: &str) {
        let report =
            snapvol_engine::check::check(&*self.source, &*self.target, &*self.journal, false)
                .unwrap_or_else(|e| panic!("check could not run {when}: {e}"));
        assert!(report.is_clean(), "check {when}: {:?}", report.problems);
    }
}

fn options() -> VolumeOptions {
    VolumeOptions {
        // A small cache keeps the destager busy while the writers go on.
        cache_size: 2 << 20,
        compact_after_records: 256,
        background_destage: true,
    }
}

/// A cache whose destage batches (a quarter of it) take half the hot chunks: a run of batches
/// then writes one batch's copies while the batch before it commits, both batches holding
/// chunks the writers race into.
const OVERLAP_CACHE: u64 = 1 << 20;

fn create_sized(dev: &Devices, size: u64, chunk: u64) -> Volume {
    create_in(dev, size, chunk, WriteMode::Atomic)
}

fn create_in(dev: &Devices, size: u64, chunk: u64, write_mode: WriteMode) -> Volume {
    create_with_cache(dev, size, chunk, write_mode, options().cache_size)
}

fn create_with_cache(
    dev: &Devices,
    size: u64,
    chunk: u64,
    write_mode: WriteMode,
    cache_size: u64,
) -> Volume {
    let options = VolumeOptions {
        cache_size,
        ..options()
    };
    let layout = Layout {
        geometry: Geometry::new(size, chunk as u32).expect("geometry"),
        target_cap: None,
        journal_size: 4 << 20,
        write_mode,
    };
    Volume::create_on("vol", dev.vluns(), layout, options).expect("create the volume")
}

fn read_snapshot(vol: &Volume, seq: SnapshotSeq) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; HOT as usize];
    vol.read_snapshot(seq, 0, &mut buf).map(|()| buf)
}

/// A snapshot whose creation returned, with what it read right after.
#[derive(Debug, Clone)]
struct Taken {
    name: String,
    seq: SnapshotSeq,
    image: Vec<u8>,
}

/// What the snapshot thread did, as far as it knows.
#[derive(Debug, Default)]
struct History {
    /// Snapshots taken and read, not deleted.
    live: Vec<Taken>,
    /// Snapshots whose deletion returned `Ok`.
    deleted: Vec<Taken>,
    /// A snapshot whose deletion was under way when the power went (may exist or not).
    deleting: Option<Taken>,
    /// Requests refused with ENOSPC while the file systems were full.
    refused: u64,
    /// Write mode throughput: what the writer of the cold chunks flushed.
    flushed: Option<Flushed>,
}

/// Where the first difference between a snapshot's image and what it reads now lies.
fn first_difference(want: &[u8], got: &[u8]) -> Option<usize> {
    want.iter().zip(got).position(|(a, b)| a != b)
}

fn assert_unchanged(vol: &Volume, snap: &Taken, when: &str) {
    let got = read_snapshot(vol, snap.seq)
        .unwrap_or_else(|e| panic!("reading snapshot {} {when}: {e}", snap.name));
    if let Some(at) = first_difference(&snap.image, &got) {
        panic!(
            "snapshot {} (seq {}) changed {when}: first difference at byte {at:#x} (chunk {})",
            snap.name,
            snap.seq.0,
            at as u64 / CHUNK
        );
    }
}

/// Sets its flag when dropped: the threads of a race stop when the thread driving it does,
/// even when that one fails an assertion.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs writers, readers and the snapshot thread until `snapshots` snapshots were taken or the
/// power went (`cut_after`: the controller crashes after that many snapshots, at a random
/// moment of the next step). With `fill`, the file systems fill up and are freed again and
/// again meanwhile: a write, a snapshot creation or a deletion may then fail with ENOSPC
/// (and change nothing); a FLUSH never does (the journal's ring was allocated at create).
/// Returns what the snapshot thread saw.
fn race(
    vol: &Volume,
    dev: &Devices,
    snapshots: u64,
    seed: u64,
    cut_after: Option<u64>,
    fill: bool,
) -> History {
    let stop = AtomicBool::new(false);
    let history = Mutex::new(History::default());
    let reads_checked = AtomicU64::new(0);
    let misreads: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let next_tag = AtomicU64::new(1);
    let refused = AtomicU64::new(0);
    let mode = vol.info().write_mode;
    let flushed = Mutex::new(Flushed {
        image: vec![0; (COLD.end - COLD.start) as usize],
        since: Vec::new(),
    });
    std::thread::scope(|s| {
        // Every thread stops when the snapshot thread does, even when it fails an assertion.
        let _stop_all = StopOnDrop(&stop);
        for w in 0..WRITERS {
            let (stop, next_tag, refused) = (&stop, &next_tag, &refused);
            s.spawn(move || {
                let mut rng = Rng(seed ^ (w << 32));
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let (off, len) = random_request_in(&mut rng, mode);
                    let tag = next_tag.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                    // Every other request as the NBD server sends it, in a buffer the cache
                    // keeps (`write_shared`), the others copied (`write`). Now and then a
                    // FLUSH, as NBD clients send them: it journals what is staged, whenever it
                    // comes relative to a snapshot being taken.
                    let bytes = pattern(tag, off, len);
                    let written = if tag % 2 == 0 {
                        vol.write_shared(off, &Arc::from(bytes))
                    } else {
                        vol.write(off, &bytes)
                    };
                    let done =
                        written.and_then(|()| if n % 16 == 0 { vol.flush() } else { Ok(()) });
                    match done {
                        Ok(()) => {}
                        Err(Error::DeviceFull { .. }) if fill => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        // The power went: the volume refuses writes from now on.
                        Err(e) => {
                            assert!(
                                dev.ctl.crashed(),
                                "a write failed before the power went: {e}"
                            );
                            return;
                        }
                    }
                }
            });
        }
        // A client that flushes without pause: its FLUSHes come at every moment of a snapshot
        // being taken, between its epoch advancing and its record reaching the journal too.
        {
            let stop = &stop;
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Err(e) = vol.flush() {
                        assert!(
                            dev.ctl.crashed(),
                            "a flush failed before the power went: {e}"
                        );
                        return;
                    }
                }
            });
        }
        // Write mode throughput: one writer alone in the cold chunks, large writes and small
        // ones into the same chunks and a FLUSH every few, recording what each FLUSH covered.
        if mode == WriteMode::Throughput {
            let (stop, next_tag, flushed) = (&stop, &next_tag, &flushed);
            s.spawn(move || {
                let mut rng = Rng(seed ^ 0xc01d);
                let mut image = vec![0u8; (COLD.end - COLD.start) as usize];
                let span = COLD.end - COLD.start;
                for n in 1u64.. {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let len = match rng.below(3) {
                        0 => 512 * (1 + rng.below(16)),
                        1 => CHUNK,
                        _ => CHUNK + 512 * rng.below(2 * CHUNK / 512),
                    };
                    let off = COLD.start + rng.below((span - len) / 512 + 1) * 512;
                    let tag = next_tag.fetch_add(1, Ordering::Relaxed);
                    let data = pattern(tag, off, len);
                    flushed.lock().unwrap().since.push((off, data.clone()));
                    if let Err(e) = vol.write(off, &data) {
                        assert!(dev.ctl.crashed(), "a cold write failed: {e}");
                        return;
                    }
                    let at = (off - COLD.start) as usize;
                    image[at..at + data.len()].copy_from_slice(&data);
                    if n % 4 == 0 {
                        if let Err(e) = vol.flush() {
                            assert!(dev.ctl.crashed(), "a cold flush failed: {e}");
                            return;
                        }
                        *flushed.lock().unwrap() = Flushed {
                            image: image.clone(),
                            since: Vec::new(),
                        };
                    }
                }
            });
        }
        // Readers re-read snapshots at random, including the one being deleted: a read returns
        // the snapshot's data or an error, never other data.
        for r in 0..2u64 {
            let (stop, history, reads_checked, misreads) =
                (&stop, &history, &reads_checked, &misreads);
            s.spawn(move || {
                let mut rng = Rng(seed ^ 0xabcd ^ r);
                while !stop.load(Ordering::SeqCst) {
                    let pick = {
                        let h = history.lock().unwrap();
                        let all: Vec<&Taken> = h.live.iter().chain(h.deleting.iter()).collect();
                        (!all.is_empty()).then(|| all[rng.below(all.len() as u64) as usize].clone())
                    };
                    let Some(snap) = pick else {
                        std::thread::yield_now();
                        continue;
                    };
                    match read_snapshot(vol, snap.seq) {
                        Ok(got) => {
                            if let Some(at) = first_difference(&snap.image, &got) {
                                misreads.lock().unwrap().push(format!(
                                    "snapshot {} read other data with success at byte {at:#x}",
                                    snap.name
                                ));
                            }
                            reads_checked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Error::SnapshotNotFound(_)) => {}
                        Err(_) if dev.ctl.crashed() => {}
                        Err(e) => misreads
                            .lock()
                            .unwrap()
                            .push(format!("snapshot {} failed to read: {e}", snap.name)),
                    }
                }
            });
        }
        // The file systems fill up for a moment, again and again.
        if fill {
            let (stop, ctl) = (&stop, &dev.ctl);
            s.spawn(move || {
                let mut rng = Rng(seed ^ 0xf111);
                let pause = |rng: &mut Rng| {
                    std::thread::sleep(std::time::Duration::from_micros(rng.below(2000)))
                };
                while !stop.load(Ordering::SeqCst) {
                    pause(&mut rng);
                    ctl.fill_up();
                    pause(&mut rng);
                    ctl.free_space();
                }
            });
        }
        let mut rng = Rng(seed ^ 0x5eed);
        for i in 0..snapshots {
            if cut_after == Some(i) {
                // The power goes at a random moment of this step.
                let (ctl, delay) = (Arc::clone(&dev.ctl), rng.below(3000));
                s.spawn(move || {
                    std::thread::sleep(std::time::Duration::from_micros(delay));
                    ctl.crash_now();
                });
            }
            let name = format!("s{i}");
            let info = match vol.snapshot_create(&name) {
                Ok(info) => info,
                Err(Error::DeviceFull { .. }) if fill => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => {
                    assert!(
                        dev.ctl.crashed(),
                        "snapshot {name} failed before the power went: {e}"
                    );
                    break;
                }
            };
            let Ok(image) = read_snapshot(vol, info.seq) else {
                assert!(
                    dev.ctl.crashed(),
                    "snapshot {name} unreadable before the power went"
                );
                break;
            };
            let taken = Taken {
                name,
                seq: info.seq,
                image,
            };
            history.lock().unwrap().live.push(taken);
            // Now and then an older snapshot goes, while the readers may be reading it.
            if i % 3 == 2 {
                let victim = {
                    let mut h = history.lock().unwrap();
                    let k = rng.below(h.live.len() as u64) as usize;
                    let victim = h.live.remove(k);
                    h.deleting = Some(victim.clone());
                    victim
                };
                let deleted = vol.snapshot_delete(&victim.name);
                let mut h = history.lock().unwrap();
                match deleted {
                    Ok(()) => {
                        h.deleting = None;
                        h.deleted.push(victim);
                    }
                    // Refused for want of space: the snapshot stays, whole.
                    Err(Error::DeviceFull { .. }) if fill => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        h.deleting = None;
                        h.live.push(victim);
                    }
                    Err(e) => {
                        assert!(dev.ctl.crashed(), "deleting {}: {e}", victim.name);
                        break;
                    }
                }
            }
            if dev.ctl.crashed() {
                break;
            }
        }
        // On a loaded machine the readers may not have run yet (the assertion below wants at
        // least one read checked): give them time to read a live snapshot, never forever.
        let waited = std::time::Instant::now();
        while cut_after.is_none()
            && reads_checked.load(Ordering::Relaxed) == 0
            && !history.lock().unwrap().live.is_empty()
            && waited.elapsed() < std::time::Duration::from_secs(30)
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        stop.store(true, Ordering::SeqCst);
    });
    dev.ctl.free_space();
    let misreads = misreads.into_inner().unwrap();
    assert!(misreads.is_empty(), "{}", misreads.join("\n"));
    if cut_after.is_none() {
        assert!(
            reads_checked.load(Ordering::Relaxed) > 0,
            "the readers checked some snapshots"
        );
    }
    let mut history = history.into_inner().unwrap();
    history.refused = refused.into_inner();
    if mode == WriteMode::Throughput {
        history.flushed = Some(flushed.into_inner().unwrap());
    }
    history
}

#[test]
fn snapshots_read_right_after_creation_never_change_while_writers_race_into_the_same_chunks() {
    race_then_verify(false);
}

/// The same race while the file systems fill up and are freed again and again: requests
/// that needed space fail with ENOSPC, nothing else does, no snapshot ever changes, and the
/// volume goes on without a reopen.
#[test]
fn snapshots_never_change_while_writers_race_and_the_file_systems_fill_up_and_are_freed() {
    race_then_verify(true);
}

/// The same race with destage batches that overlap (write mode throughput, where they do):
/// each batch's copies are written while the batch before it commits, into chunks the writers
/// race into, large writes skipping the journal among them. Nothing changes for any snapshot,
/// what the cold chunks' writer flushed is there, and batches did overlap.
#[test]
fn snapshots_never_change_while_destage_batches_overlap_their_commits() {
    let overlapped = race_then_verify_with(false, WriteMode::Throughput, OVERLAP_CACHE);
    assert!(overlapped > 0, "no destage batch overlapped the one before");
}

fn race_then_verify(fill: bool) {
    race_then_verify_with(fill, WriteMode::Atomic, options().cache_size);
}

/// Races four rounds in write mode `mode` with a cache of `cache_size`, verifying each; returns
/// how many destage batches overlapped the batch before them.
fn race_then_verify_with(fill: bool, mode: WriteMode, cache_size: u64) -> u64 {
    let (mut refused, mut overlapped) = (0, 0);
    for round in 0..4u64 {
        let dev = Devices::blank(SIZE);
        let vol = create_with_cache(&dev, SIZE, CHUNK, mode, cache_size);
        // Meanwhile `check` looks at the open volume again and again: what is durable is
        // always consistent, whatever is going on.
        let racing = AtomicBool::new(true);
        let history = std::thread::scope(|s| {
            let checker = s.spawn(|| {
                let mut checks = 0;
                while racing.load(Ordering::SeqCst) || checks == 0 {
                    let report = vol.check(true).expect("check the open volume");
                    assert!(
                        report.is_clean(),
                        "(round {round}) check while racing: {:?}",
                        report.problems
                    );
                    checks += 1;
                }
                checks
            });
            // The checker stops when the race ends, also when the race fails an assertion:
            // otherwise it would check on forever and the failure would never be reported.
            struct EndRace<'a>(&'a AtomicBool);
            impl Drop for EndRace<'_> {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::SeqCst);
                }
            }
            let end_race = EndRace(&racing);
            let history = race(&vol, &dev, 40, round, None, fill);
            refused += history.refused;
            drop(end_race);
            assert!(checker.join().unwrap() > 0);
            history
        });
        for snap in &history.live {
            assert_unchanged(
                &vol,
                snap,
                &format!("(round {round}) once the writers stopped"),
            );
        }
        vol.destage_all().expect("destage everything");
        for snap in &history.live {
            assert_unchanged(&vol, snap, &format!("(round {round}) after destaging"));
        }
        if let Some(flushed) = &history.flushed {
            flushed.assert_present(&vol, &format!("(round {round}) after destaging"));
        }
        overlapped += vol.metrics().destage_overlapped;
        for snap in &history.deleted {
            assert!(
                matches!(vol.snapshot(&snap.name), Err(Error::SnapshotNotFound(_))),
                "deleted snapshot {} is back",
                snap.name
            );
        }
        vol.close().expect("close");
        dev.assert_check_clean(&format!("(round {round}) after a clean close"));
        let vol = Volume::open_on("vol", dev.vluns(), options()).expect("reopen");
        for snap in &history.live {
            assert_unchanged(
                &vol,
                snap,
                &format!("(round {round}) after close and reopen"),
            );
        }
        vol.close().expect("close");
    }
    assert_eq!(fill, refused > 0, "requests refused with ENOSPC: {refused}");
    overlapped
}

#[test]
fn snapshots_read_right_after_creation_survive_a_power_loss_at_a_random_moment_of_racing_writes() {
    power_loss_then_verify(16, false);
}

/// The power goes at a random moment of the race while the file systems fill up and are
/// freed: a destage stopped for want of space and a power loss together lose nothing.
#[test]
fn snapshots_survive_a_power_loss_while_writers_race_and_the_file_systems_fill_up() {
    power_loss_then_verify(8, true);
}

/// Write mode throughput: writers race large requests (a chunk or more, which skip the
/// journal) and small ones into the same chunks while snapshots are taken, read and deleted
/// and FLUSHes come from every side, and the power goes at a random moment. Every snapshot
/// read right after creation reads the same after recovery, none deleted comes back, what a
/// writer had flushed is there, and `check` is clean.
#[test]
fn in_write_mode_throughput_snapshots_and_flushed_data_survive_a_power_loss_amid_racing_large_writes(
) {
    power_loss_then_verify_in(12, false, WriteMode::Throughput);
}

/// The power goes at a random moment of a race whose destage batches overlap (write mode
/// throughput, large writes and FLUSHes racing with small writes): a commit under
/// way with the next batch's copies half written, or the copies whole and not committed, lose
/// nothing and leave no slot taken.
#[test]
fn snapshots_survive_a_power_loss_while_destage_batches_overlap_their_commits() {
    let overlapped = power_loss_then_verify_with(12, false, WriteMode::Throughput, OVERLAP_CACHE);
    assert!(overlapped > 0, "no destage batch overlapped the one before");
}

fn power_loss_then_verify(rounds: u64, fill: bool) {
    power_loss_then_verify_in(rounds, fill, WriteMode::Atomic);
}

fn power_loss_then_verify_in(rounds: u64, fill: bool, mode: WriteMode) {
    power_loss_then_verify_with(rounds, fill, mode, options().cache_size);
}

/// Races `rounds` times with a cache of `cache_size`, the power cut at a random moment of
/// each, and verifies three recoveries of each; returns how many destage batches overlapped
/// the batch before them before the power went.
fn power_loss_then_verify_with(rounds: u64, fill: bool, mode: WriteMode, cache_size: u64) -> u64 {
    let (mut refused, mut overlapped) = (0, 0);
    for round in 0..rounds {
        let dev = Devices::blank(SIZE);
        let vol = create_with_cache(&dev, SIZE, CHUNK, mode, cache_size);
        let mut rng = Rng(round);
        let cut = 5 + rng.below(20);
        let history = race(&vol, &dev, 40, 100 + round, Some(cut), fill);
        refused += history.refused;
        overlapped += vol.metrics().destage_overlapped;
        // Whatever the volume reports, nothing more reaches the media.
        dev.ctl.crash_now();
        let _ = vol.kill();
        for k in 0..3 {
            let restarted = dev.after_power_loss(round * 10 + k);
            let when =
                format!("(round {round}, power cut after snapshot {cut}, loss {k}) after recovery");
            let vol = Volume::open_on("vol", restarted.vluns(), options())
                .unwrap_or_else(|e| panic!("recovery {when}: {e}"));
            for snap in &history.live {
                assert_unchanged(&vol, snap, &when);
            }
            for snap in &history.deleted {
                assert!(
                    matches!(vol.snapshot(&snap.name), Err(Error::SnapshotNotFound(_))),
                    "snapshot {} deleted before the power went is back {when}",
                    snap.name
                );
            }
            if let Some(snap) = &history.deleting {
                if vol.snapshot(&snap.name).is_ok() {
                    assert_unchanged(&vol, snap, &format!("{when}, its deletion interrupted"));
                }
            }
            if let Some(flushed) = &history.flushed {
                flushed.assert_present(&vol, &when);
            }
            vol.close().unwrap_or_else(|e| panic!("close {when}: {e}"));
            restarted.assert_check_clean(&when);
        }
    }
    assert_eq!(fill, refused > 0, "requests refused with ENOSPC: {refused}");
    overlapped
}

/// What broke: `snapshot_delete` took the snapshot's copies out of the index before it
/// published the table without the snapshot, so a reader in between found no pointer, read
/// the live volume's data instead, still found the snapshot alive, and returned that data with
/// success.
#[test]
fn a_snapshot_read_during_its_deletion_returns_its_data_or_an_error_never_the_live_volumes() {
    const SIZE: u64 = 16 << 20;
    const CHUNK: u64 = 4 * KIB;
    const READ: u64 = 64 * KIB;
    let dev = Devices::blank(SIZE);
    let vol = create_sized(&dev, SIZE, CHUNK);
    let (mut served, mut refused) = (0u64, 0u64);
    for round in 0..20u64 {
        let old = pattern(2 * round, 0, SIZE);
        vol.write(0, &old).expect("write the snapshot's data");
        let name = format!("s{round}");
        let seq = vol.snapshot_create(&name).expect("snapshot").seq;
        // Every chunk is overwritten and destaged: the snapshot reads all of it from the
        // target, through thousands of pointers that its deletion removes.
        vol.write(0, &pattern(2 * round + 1, 0, SIZE))
            .expect("overwrite");
        vol.destage_all().expect("destage");
        let deleting = AtomicBool::new(false);
        let results: Mutex<(u64, u64)> = Mutex::new((0, 0));
        std::thread::scope(|s| {
            for r in 0..2u64 {
                let (vol, old, deleting, results, name) = (&vol, &old, &deleting, &results, &name);
                s.spawn(move || {
                    let mut rng = Rng(round << 8 | r);
                    let mut buf = vec![0u8; READ as usize];
                    loop {
                        let off = rng.below(SIZE / READ) * READ;
                        match vol.read_snapshot(seq, off, &mut buf) {
                            Ok(()) => {
                                let want = &old[off as usize..(off + READ) as usize];
                                if let Some(at) = first_difference(want, &buf) {
                                    panic!(
                                        "round {round}: snapshot {name} read other data with success at {:#x} while it was being deleted",
                                        off + at as u64
                                    );
                                }
                                results.lock().unwrap().0 += 1;
                            }
                            Err(Error::SnapshotNotFound(_)) => {
                                assert!(deleting.load(Ordering::SeqCst), "refused before the deletion began");
                                results.lock().unwrap().1 += 1;
                                return;
                            }
                            Err(e) => panic!("round {round}: reading {name}: {e}"),
                        }
                    }
                });
            }
            // Let the readers get going, then delete under them.
            while results.lock().unwrap().0 < 4 {
                std::thread::yield_now();
            }
            deleting.store(true, Ordering::SeqCst);
            vol.snapshot_delete(&name).expect("delete");
        });
        let (ok, gone) = results.into_inner().unwrap();
        served += ok;
        refused += gone;
    }
    assert_eq!(refused, 40, "every reader ended with the snapshot gone");
    assert!(served > 0);
    vol.close().expect("close");
    dev.assert_check_clean("after the deletions");
}

/// What broke: a request too large for the cache to take at once reserved target space for
/// its whole range, gave all but its first piece's share back after landing that piece, and
/// let its later pieces take slots without asking whether the target had them; with other
/// writers taking the space given back meanwhile, the target grew past its cap.
#[test]
fn the_target_never_grows_past_its_cap_whatever_the_concurrency_and_request_sizes() {
    const SIZE: u64 = 32 << 20;
    // Room for about a quarter of the volume's chunks, so that bursts of overwrites fill it.
    const CAP: u64 = (1 << 20) + (8 << 20);
    let dev = Devices::blank(SIZE);
    let layout = Layout {
        geometry: Geometry::new(SIZE, CHUNK as u32).expect("geometry"),
        target_cap: Some(CAP),
        journal_size: 16 << 20,
        write_mode: Default::default(),
    };
    // A 2 MiB cache takes 512 KiB at once: the 1 and 3 MiB requests below land in pieces.
    let vol = Volume::create_on("vol", dev.vluns(), layout, options()).expect("create");
    vol.write(0, &pattern(1000, 0, SIZE))
        .expect("write the original");
    let (ok, full) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut previous: Option<String> = None;
    for burst in 0..12u64 {
        // Each burst starts with the previous snapshot gone and a fresh one, so the target has
        // room again and the writers race to fill it.
        if let Some(old) = previous.take() {
            vol.snapshot_delete(&old)
                .expect("delete the previous snapshot");
        }
        let name = format!("s{burst}");
        let mut image = vec![0u8; SIZE as usize];
        vol.read(0, &mut image).expect("read the live volume");
        let snap = vol.snapshot_create(&name).expect("snapshot").seq;
        previous = Some(name);
        std::thread::scope(|s| {
            for w in 0..4u64 {
                let (vol, ok, full, dev) = (&vol, &ok, &full, &dev);
                s.spawn(move || {
                    let mut rng = Rng(burst << 16 | w);
                    for i in 0..8u64 {
                        let len = match (w + i) % 4 {
                            0 => 4 * KIB,
                            1 => 256 * KIB,
                            2 => 1 << 20,
                            _ => 3 << 20,
                        };
                        let off = rng.below((SIZE - len) / (4 * KIB)) * 4 * KIB;
                        match vol.write(off, &pattern(burst << 40 | w << 32 | i, off, len)) {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(Error::NoSpace { .. }) => full.fetch_add(1, Ordering::Relaxed),
                            Err(e) => panic!("burst {burst}: writer {w}: {e}"),
                        };
                        let len_now = dev.target.live_image().len() as u64;
                        assert!(
                            len_now <= CAP,
                            "burst {burst}: the target grew to {len_now} bytes, past its cap of {CAP}"
                        );
                    }
                });
            }
        });
        vol.destage_all().expect("destage");
        let len = dev.target.live_image().len() as u64;
        assert!(
            len <= CAP,
            "burst {burst}: the target holds {len} bytes, past its cap of {CAP}"
        );
        let mut got = vec![0u8; SIZE as usize];
        vol.read_snapshot(snap, 0, &mut got)
            .expect("read the snapshot");
        assert!(
            first_difference(&image, &got).is_none(),
            "burst {burst}: the snapshot lost data a write needed preserved"
        );
    }
    assert!(
        full.load(Ordering::Relaxed) > 0,
        "some writes found the target full"
    );
    assert!(ok.load(Ordering::Relaxed) > 0, "some writes fitted");
    vol.close().expect("close");
    dev.assert_check_clean("after the bursts");
}
