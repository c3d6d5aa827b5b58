//! Rollbacks and guarded changes (what `import-diff` applies under) racing with writers that
//! write into the same chunks, as `snapshot rollback --force` allows while clients stay
//! connected, with snapshots taken and deleted meanwhile and the power cut at a random moment.
//!
//! The oracle is linearizability per 512-byte sector. Every operation that sets a sector is an
//! event with the logical time it was issued and the time it returned: a write (its pattern),
//! a write of zeroes, a rollback (the target snapshot's content, over the whole volume), and
//! the fallback of guarded changes (the fallback snapshot's content, which takes effect only
//! if the changes never finish). A sector must read as the value of an event that nothing
//! later has overridden, where event `b` overrides event `a` when `b` was issued after `a`
//! returned. Without a crash every returned event overrides; after a power cut only durable
//! ones do (returned before a FLUSH, a snapshot, a rollback or a guard's finish was issued
//! that itself returned), and events under way at the cut may or may not have happened,
//! except that a rollback under way at the cut takes effect whole or not at all: the volume is
//! never a mix of rewritten and old chunks.
//!
//! Every snapshot read right after its creation reads the same after every rollback, at the
//! end, and after recovery from the power cut; a rollback never changes a snapshot, its target
//! included. The checker is clean after every run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use snapvol_engine::units::SnapshotSeq;
use snapvol_engine::{Error, Volume};

use super::{
    create_sized, first_difference, options, pattern, Devices, Rng, StopOnDrop, CHUNK, KIB,
};

const SECTOR: u64 = 512;
const WRITERS: u64 = 4;
/// Where the writers write: 32 chunks, so that a rollback rewrites several extents in several
/// requests, and a FLUSH can land between two of them.
const AREA: u64 = 32 * CHUNK;
const SIZE: u64 = AREA + 2 * CHUNK;

/// What an event sets its sectors to.
#[derive(Debug, Clone)]
enum Value {
    Zero,
    /// The pattern of a write with this tag.
    Data(u64),
    /// The content of a snapshot, as read right after its creation (the hot bytes).
    Snapshot(Arc<Vec<u8>>),
}

#[derive(Debug, Clone)]
struct Event {
    off: u64,
    len: u64,
    value: Value,
    issued: u64,
    /// When it returned `Ok`; `None` while under way (at the power cut: maybe, maybe not).
    returned: Option<u64>,
    /// Whether it was durable when it returned (a rollback syncs before it returns).
    durable_when_returned: bool,
}

/// The shared record of the race: a logical clock, the events, and the latest issue time of a
/// durability point (a FLUSH, snapshot, rollback or guard finish that returned `Ok`).
#[derive(Debug, Default)]
struct Log {
    clock: AtomicU64,
    events: Mutex<Vec<Event>>,
    synced_up_to: AtomicU64,
}

impl Log {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Records an event as issued now; returns its index.
    fn issue(&self, off: u64, len: u64, value: Value) -> usize {
        let mut events = self.events.lock().unwrap();
        events.push(Event {
            off,
            len,
            value,
            issued: self.tick(),
            returned: None,
            durable_when_returned: false,
        });
        events.len() - 1
    }

    fn returned(&self, i: usize) {
        let t = self.tick();
        self.events.lock().unwrap()[i].returned = Some(t);
    }

    /// An event that turned out to change nothing (refused, or a guard that finished).
    fn void(&self, i: usize) {
        let mut events = self.events.lock().unwrap();
        events[i].len = 0;
    }

    /// A durability point issued at `issued` returned `Ok`.
    fn synced(&self, issued: u64) {
        self.synced_up_to.fetch_max(issued, Ordering::SeqCst);
    }

    /// Checks every sector of the hot bytes of `live` against the events; `after_cut`: only
    /// durable events override.
    fn check(&self, live: &[u8], after_cut: bool, when: &str) {
        let events = self.events.lock().unwrap().clone();
        let synced = self.synced_up_to.load(Ordering::SeqCst);
        // A rollback (or guarded changes' fallback) under way at the cut either took effect
        // whole, finished by the open that followed, or not at all: never a mix of rewritten
        // and old chunks.
        let under_way = events.iter().position(|e| {
            e.len > 0 && e.returned.is_none() && matches!(e.value, Value::Snapshot(_))
        });
        let Some(r) = under_way.filter(|_| after_cut) else {
            return check_sectors(&events, synced, after_cut, live)
                .unwrap_or_else(|e| panic!("{when}: {e}"));
        };
        let mut happened = events.clone();
        happened[r].returned = Some(u64::MAX);
        happened[r].durable_when_returned = true;
        let mut never = events;
        never[r].len = 0;
        let whole = check_sectors(&happened, synced, after_cut, live);
        let none = check_sectors(&never, synced, after_cut, live);
        if let (Err(whole), Err(none)) = (whole, none) {
            panic!(
                "{when}: the restore under way at the cut is neither whole nor absent\n\
                 as if it took effect: {whole}\nas if it never began: {none}"
            );
        }
    }
}

/// Checks every sector of the hot bytes of `live` against `events`; `after_cut`: only
/// durable events override (`synced`: the latest durability point's issue time).
fn check_sectors(
    events: &[Event],
    synced: u64,
    after_cut: bool,
    live: &[u8],
) -> Result<(), String> {
    let overrides = |e: &Event| match e.returned {
        None => false,
        Some(_) if !after_cut => true,
        Some(r) => r < synced || e.durable_when_returned,
    };
    for s in 0..AREA / SECTOR {
        let at = s * SECTOR;
        let covering = || {
            events
                .iter()
                .filter(move |e| e.off <= at && at < e.off + e.len)
        };
        // Nothing that returned before the latest overriding event was issued may show (the
        // blank volume is an event returned at time 0).
        let horizon = covering()
            .filter(|e| overrides(e))
            .map(|e| e.issued)
            .max()
            .unwrap_or(0);
        let in_force = || covering().filter(move |e| e.returned.is_none_or(|r| r >= horizon));
        let got = &live[at as usize..(at + SECTOR) as usize];
        let value_of = |v: &Value| -> Vec<u8> {
            match v {
                Value::Zero => vec![0; SECTOR as usize],
                Value::Data(tag) => pattern(*tag, at, SECTOR),
                Value::Snapshot(img) => img[at as usize..(at + SECTOR) as usize].to_vec(),
            }
        };
        let blank = horizon == 0 && got.iter().all(|&b| b == 0);
        if !blank && !in_force().any(|e| value_of(&e.value) == got) {
            let candidates: Vec<String> = in_force()
                .map(|e| format!("{}@{}..{:?}", kind(&e.value), e.issued, e.returned))
                .collect();
            return Err(format!(
                "sector at {at:#x} (chunk {}) holds data that no write, zeroing or rollback \
                 still in force put there; in force: {candidates:?}",
                at / CHUNK
            ));
        }
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Zero => "zero",
        Value::Data(_) => "write",
        Value::Snapshot(_) => "snapshot",
    }
}

/// A snapshot whose creation returned, with what it read right after.
#[derive(Debug, Clone)]
struct Taken {
    name: String,
    seq: SnapshotSeq,
    image: Arc<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Snapshots {
    live: Vec<Taken>,
    deleted: Vec<Taken>,
    /// Deletions under way (at the power cut: the snapshot may exist or not).
    deleting: Vec<Taken>,
}

fn assert_same(vol: &Volume, snap: &Taken, when: &str) {
    let got = read_snapshot(vol, snap.seq)
        .unwrap_or_else(|e| panic!("reading snapshot {} {when}: {e}", snap.name));
    if let Some(at) = first_difference(&snap.image, &got) {
        panic!(
            "snapshot {} changed {when}: first difference at {at:#x} (chunk {})",
            snap.name,
            at as u64 / CHUNK
        );
    }
}

/// One write request into the hot chunks: mostly 4 KiB blocks, some 512-byte sectors, some
/// 12 KiB requests across a chunk boundary, now and then zeroes.
fn request(rng: &mut Rng) -> (u64, u64) {
    match rng.below(8) {
        0 => (rng.below(AREA / SECTOR) * SECTOR, SECTOR),
        1 => {
            let boundary = (1 + rng.below(AREA / CHUNK - 1)) * CHUNK;
            (boundary - 4 * KIB, 12 * KIB)
        }
        _ => (rng.below(AREA / (4 * KIB)) * 4 * KIB, 4 * KIB),
    }
}

/// Runs the race: writers, a snapshot thread that takes and deletes snapshots, and a restore
/// thread that rolls back and applies guarded changes, `restores` times. With `cut`, the power
/// goes at a random moment of restore number `cut`. Returns what the snapshot thread saw.
fn race(
    vol: &Volume,
    dev: &Devices,
    log: &Log,
    seed: u64,
    restores: u64,
    cut: Option<u64>,
) -> Snapshots {
    let stop = AtomicBool::new(false);
    let snaps = Mutex::new(Snapshots::default());
    let next_tag = AtomicU64::new(seed << 32 | 1);
    let crashed = || dev.ctl.crashed();
    std::thread::scope(|s| {
        let _stop_all = StopOnDrop(&stop);
        for w in 0..WRITERS {
            let (stop, next_tag) = (&stop, &next_tag);
            s.spawn(move || {
                let mut rng = Rng(seed ^ w << 40);
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let (off, len) = request(&mut rng);
                    let (i, done) = if n % 11 == 0 {
                        let i = log.issue(off, len, Value::Zero);
                        (i, vol.write_zeroes(off, len))
                    } else {
                        let tag = next_tag.fetch_add(1, Ordering::Relaxed);
                        let i = log.issue(off, len, Value::Data(tag));
                        (i, vol.write(off, &pattern(tag, off, len)))
                    };
                    match done {
                        Ok(()) => log.returned(i),
                        Err(e) => {
                            assert!(crashed(), "writer {w}: a write failed before the cut: {e}");
                            return;
                        }
                    }
                    if n % 16 == 0 {
                        let issued = log.tick();
                        match vol.flush() {
                            Ok(()) => log.synced(issued),
                            Err(e) => {
                                assert!(
                                    crashed(),
                                    "writer {w}: a flush failed before the cut: {e}"
                                );
                                return;
                            }
                        }
                    }
                }
            });
        }
        // A client that flushes without pause: its FLUSHes land in the middle of rollbacks and
        // make part of their rewriting durable before the rollback is done.
        {
            let stop = &stop;
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let issued = log.tick();
                    match vol.flush() {
                        Ok(()) => log.synced(issued),
                        Err(e) => {
                            assert!(crashed(), "a flush failed before the cut: {e}");
                            return;
                        }
                    }
                }
            });
        }
        // Snapshots come and go while the restores run: each is read right after its
        // creation, and an older one is deleted now and then.
        {
            let (stop, snaps) = (&stop, &snaps);
            s.spawn(move || {
                let mut rng = Rng(seed ^ 0x5eed);
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let name = format!("s{i}");
                    let issued = log.tick();
                    let seq = match vol.snapshot_create(&name) {
                        Ok(info) => info.seq,
                        Err(e) => {
                            assert!(crashed(), "snapshot {name} failed before the cut: {e}");
                            return;
                        }
                    };
                    log.synced(issued);
                    let Ok(image) = read_snapshot(vol, seq) else {
                        assert!(crashed(), "snapshot {name} unreadable before the cut");
                        return;
                    };
                    let image = Arc::new(image);
                    snaps.lock().unwrap().live.push(Taken { name, seq, image });
                    // An older one goes now and then, and always past eight, so that the
                    // restore thread's checks stay quick.
                    if i % 3 == 0 || snaps.lock().unwrap().live.len() > 8 {
                        let victim = {
                            let mut h = snaps.lock().unwrap();
                            let k = rng.below(h.live.len() as u64) as usize;
                            let victim = h.live.remove(k);
                            h.deleting.push(victim.clone());
                            victim
                        };
                        let deleted = vol.snapshot_delete(&victim.name);
                        let mut h = snaps.lock().unwrap();
                        match deleted {
                            Ok(()) => {
                                h.deleting.retain(|t| t.name != victim.name);
                                h.deleted.push(victim);
                            }
                            Err(e) => {
                                assert!(crashed(), "deleting {}: {e}", victim.name);
                                return;
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_micros(500 + rng.below(1500)));
                }
            });
        }
        // The restore thread: rollbacks to a random snapshot, and guarded changes that write
        // a few extents on top of the live volume and keep them, as `import-diff` does.
        let mut rng = Rng(seed ^ 0x7e57);
        let mut done = 0;
        while done < restores && !crashed() {
            let pick = {
                let h = snaps.lock().unwrap();
                (!h.live.is_empty())
                    .then(|| h.live[rng.below(h.live.len() as u64) as usize].clone())
            };
            let Some(target) = pick else {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            };
            if cut == Some(done) {
                // The power goes a few I/Os into this restore, or a random moment later.
                if rng.below(2) == 0 {
                    dev.ctl.crash_at(dev.ctl.io_count() + 1 + rng.below(48));
                } else {
                    let (ctl, delay) = (Arc::clone(&dev.ctl), rng.below(4000));
                    s.spawn(move || {
                        std::thread::sleep(Duration::from_micros(delay));
                        ctl.crash_now();
                    });
                }
            }
            done += 1;
            let whole = Value::Snapshot(Arc::clone(&target.image));
            if rng.below(3) > 0 {
                let i = log.issue(0, AREA, whole);
                match vol.rollback(target.seq, &mut |_, _| {}) {
                    Ok(_) => {
                        log.events.lock().unwrap()[i].durable_when_returned = true;
                        let issued = log.events.lock().unwrap()[i].issued;
                        log.returned(i);
                        log.synced(issued);
                    }
                    // Deleted between the pick and the call: nothing happened.
                    Err(Error::SnapshotNotFound(_)) if !crashed() => log.void(i),
                    Err(e) => {
                        assert!(crashed(), "rollback to {}: {e}", target.name);
                        break;
                    }
                }
            } else {
                let i = log.issue(0, AREA, whole);
                let guard = match vol.guarded_changes(target.seq) {
                    Ok(guard) => guard,
                    Err(Error::SnapshotNotFound(_)) if !crashed() => {
                        log.void(i);
                        continue;
                    }
                    Err(e) => {
                        assert!(crashed(), "guarded changes on {}: {e}", target.name);
                        break;
                    }
                };
                let mut failed = false;
                for _ in 0..1 + rng.below(6) {
                    let (off, len) = request(&mut rng);
                    let tag = next_tag.fetch_add(1, Ordering::Relaxed);
                    let w = log.issue(off, len, Value::Data(tag));
                    if vol.write(off, &pattern(tag, off, len)).is_err() {
                        failed = true;
                        break;
                    }
                    log.returned(w);
                }
                if failed {
                    assert!(crashed(), "a guarded write failed before the cut");
                    // Dropping the guard undoes the changes, or the next open does.
                    drop(guard);
                    break;
                }
                let issued = log.tick();
                match guard.finish() {
                    // Kept: the fallback never happened.
                    Ok(()) => {
                        log.void(i);
                        log.synced(issued);
                    }
                    Err(e) => {
                        assert!(crashed(), "finishing guarded changes: {e}");
                        break;
                    }
                }
            }
            // Give the writers and the snapshot thread time between restores.
            std::thread::sleep(Duration::from_micros(500 + rng.below(2500)));
            // A rollback changes the live volume only: every snapshot reads as it did.
            if !crashed() {
                let h = snaps.lock().unwrap().live.clone();
                for snap in &h {
                    match read_snapshot(vol, snap.seq) {
                        Ok(got) => assert!(
                            first_difference(&snap.image, &got).is_none(),
                            "snapshot {} changed during rollbacks",
                            snap.name
                        ),
                        // Deleted since the copy of the list was taken.
                        Err(Error::SnapshotNotFound(_)) => {}
                        Err(_) if crashed() => {}
                        Err(e) => panic!("reading snapshot {}: {e}", snap.name),
                    }
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
    });
    snaps.into_inner().unwrap()
}

fn read_live(vol: &Volume) -> Vec<u8> {
    let mut live = vec![0u8; AREA as usize];
    vol.read(0, &mut live).expect("read the live volume");
    live
}

fn read_snapshot(vol: &Volume, seq: SnapshotSeq) -> Result<Vec<u8>, Error> {
    let mut image = vec![0u8; AREA as usize];
    vol.read_snapshot(seq, 0, &mut image).map(|()| image)
}

#[test]
fn rollbacks_and_guarded_changes_racing_with_writers_leave_every_sector_linearizable_and_every_snapshot_intact(
) {
    for round in 0..6u64 {
        let dev = Devices::blank(SIZE);
        let vol = create_sized(&dev, SIZE, CHUNK);
        let log = Log::default();
        let snaps = race(&vol, &dev, &log, round, 24, None);
        let when = format!("round {round}");
        log.check(&read_live(&vol), false, &when);
        for snap in &snaps.live {
            assert_same(&vol, snap, &when);
        }
        assert_eq!(vol.rollback_pending(), None);
        vol.close().expect("close");
        dev.assert_check_clean(&when);
        let vol = Volume::open_on("vol", dev.vluns(), options()).expect("reopen");
        log.check(&read_live(&vol), false, &format!("{when}, reopened"));
        vol.close().expect("close");
    }
}

#[test]
fn a_power_cut_at_a_random_moment_of_racing_rollbacks_loses_nothing_durable_and_no_snapshot() {
    for round in 0..24u64 {
        let dev = Devices::blank(SIZE);
        let vol = create_sized(&dev, SIZE, CHUNK);
        let log = Log::default();
        let cut = Rng(round ^ 0xc07).below(6);
        let snaps = race(&vol, &dev, &log, 100 + round, 8, Some(cut));
        dev.ctl.crash_now();
        let _ = vol.kill();
        for k in 0..3 {
            let restarted = dev.after_power_loss(round * 10 + k);
            let when = format!("round {round}, cut in restore {cut}, loss {k}, after recovery");
            let vol = Volume::open_on("vol", restarted.vluns(), options())
                .unwrap_or_else(|e| panic!("{when}: open: {e}"));
            assert_eq!(
                vol.rollback_pending(),
                None,
                "{when}: open finishes a rollback"
            );
            log.check(&read_live(&vol), true, &when);
            for snap in &snaps.live {
                assert_same(&vol, snap, &when);
            }
            for snap in &snaps.deleted {
                assert!(
                    matches!(vol.snapshot(&snap.name), Err(Error::SnapshotNotFound(_))),
                    "{when}: snapshot {} deleted before the cut is back",
                    snap.name
                );
            }
            for snap in &snaps.deleting {
                if vol.snapshot(&snap.name).is_ok() {
                    assert_same(&vol, snap, &format!("{when}, its deletion interrupted"));
                }
            }
            vol.close().unwrap_or_else(|e| panic!("{when}: close: {e}"));
            restarted.assert_check_clean(&when);
        }
    }
}
