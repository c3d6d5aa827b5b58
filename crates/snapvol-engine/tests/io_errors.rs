//! I/O errors from the VLUNs, injected one at a time: the rules a user relies on when a disk
//! returns `EIO`.
//!
//! 1. An error from any VLUN reaches the caller of some operation as an `Err`; it is never
//!    swallowed, nor retried into a silent success.
//! 2. After a failed write or sync the volume refuses further writes, flushes and snapshots
//!    (`Error::Failed`) until it is reopened; reads return the right data or an error.
//! 3. After a reopen on the same devices nothing that was durable before the error is lost:
//!    every write acknowledged before a flush that returned `Ok` is there, every write request
//!    is all-old or all-new, every acknowledged snapshot reads exactly its oracle, and the
//!    volume works normally again.
//!
//! How: three `MemVlun`s (source, target, journal), each behind a `FaultyVlun` attached to one
//! `FaultController`, run a fixed workload (writes, zeroing, flushes, snapshots, deletes,
//! reads, a full destage, a crash and recovery, a close) with `background_destage: false`, so
//! the I/O order depends only on the calls. A dry run records which device each I/O call of
//! the workload goes to; then, for one device and one kind of call (read, write, sync), the
//! workload runs again once per matching call with an `EIO` armed at exactly that call. One
//! more test does the same with the background destager, where the order is not fixed, and
//! the last two are the smallest cases the sweeps found.
//!
//! A failing sweep lists the fault points that broke a rule, each as `KIND #INDEX on (device,
//! call)` and what went wrong; `SNAPVOL_FAULT_POINT=INDEX` reruns only that point. A case that
//! does not finish within `CASE_TIMEOUT` is reported as a hang. Release builds sweep every
//! point (CI runs them: about 1,300 runs, 10 to 20 s); debug builds every seventh.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use snapvol_engine::error::Device;
use snapvol_engine::fault::{FaultController, FaultyVlun, IoOp, OpFilter};
use snapvol_engine::units::Geometry;
use snapvol_engine::vlun::{MemVlun, Vlun};
use snapvol_engine::{Error, Layout, Vluns, Volume, VolumeOptions};

const KIB: u64 = 1 << 10;
const SIZE: u64 = 512 * KIB;
const CHUNK: u32 = 8 << 10;
/// Small enough that writes destage on the caller's thread many times over the workload.
const CACHE: u64 = 64 * KIB;
/// The smallest journal ring: the workload's first burst fills a quarter of it, so the
/// journal's head moves (source sync, superblock write) on the writer's thread.
const JOURNAL: u64 = 4 << 20;
/// Random steps of the workload after its first burst.
const STEPS: u64 = 110;
/// Violations listed in a failure message; the rest are counted.
const SHOWN: usize = 12;

// ---------------------------------------------------------------------------------------------
// Devices: MemVluns behind one FaultController, with a record of every call.
// ---------------------------------------------------------------------------------------------

/// Every I/O call of a run, in the order the controller admitted it (exact when one thread
/// does the I/O), and the calls that failed with the injected `EIO`.
#[derive(Debug, Default)]
struct Log {
    calls: Vec<(Device, IoOp)>,
    failed: Vec<(Device, IoOp)>,
}

/// One device as the engine sees it: the faulty wrapper, recorded.
#[derive(Debug)]
struct Recorded {
    device: Device,
    inner: FaultyVlun<Arc<MemVlun>>,
    log: Arc<Mutex<Log>>,
}

impl Recorded {
    fn call<T>(
        &self,
        op: IoOp,
        f: impl FnOnce(&FaultyVlun<Arc<MemVlun>>) -> io::Result<T>,
    ) -> io::Result<T> {
        // Logged before the controller admits it: with one I/O thread the log's order is the
        // controller's.
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.calls.push((self.device, op));
        drop(log);
        let r = f(&self.inner);
        if let Err(e) = &r {
            if e.raw_os_error() == Some(libc::EIO) {
                let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
                log.failed.push((self.device, op));
            }
        }
        r
    }
}

impl Vlun for Recorded {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.call(IoOp::Read, |v| v.read_at(buf, offset))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.call(IoOp::Write, |v| v.write_at(buf, offset))
    }
    fn sync(&self) -> io::Result<()> {
        self.call(IoOp::Sync, Vlun::sync)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn growable(&self) -> bool {
        self.inner.growable()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.call(IoOp::SetLen, |v| v.set_len(len))
    }
    fn punch_zero(&self, offset: u64, len: u64) -> io::Result<()> {
        self.call(IoOp::PunchZero, |v| v.punch_zero(offset, len))
    }
    fn growth_room(&self) -> Option<u64> {
        self.inner.growth_room()
    }
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        self.inner.next_data(offset)
    }
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        self.inner.next_hole(offset)
    }
}

/// The three devices of one simulated machine. The memory outlives every open of the volume,
/// so a reopen sees exactly what the engine wrote.
struct Machine {
    ctl: Arc<FaultController>,
    mem: [Arc<MemVlun>; 3],
    log: Arc<Mutex<Log>>,
    /// The fault fired while a volume was being killed.
    fired_in_kill: AtomicBool,
}

const DEVICES: [Device; 3] = [Device::Source, Device::Target, Device::Journal];

impl Machine {
    fn new() -> Self {
        Self {
            ctl: FaultController::new(),
            mem: [
                Arc::new(MemVlun::new(SIZE)),
                Arc::new(MemVlun::new(0)),
                Arc::new(MemVlun::new(0)),
            ],
            log: Arc::default(),
            fired_in_kill: AtomicBool::new(false),
        }
    }

    fn vlun(&self, i: usize) -> Box<dyn Vlun> {
        Box::new(Recorded {
            device: DEVICES[i],
            inner: FaultyVlun::new(&self.ctl, Arc::clone(&self.mem[i])),
            log: Arc::clone(&self.log),
        })
    }

    fn vluns(&self) -> Vluns {
        Vluns {
            source: self.vlun(0),
            target: self.vlun(1),
            journal: self.vlun(2),
        }
    }

    fn create(&self, opts: &VolumeOptions) -> Volume {
        let layout = Layout {
            journal_size: JOURNAL,
            ..Layout::new(Geometry::new(SIZE, CHUNK).expect("geometry"))
        };
        Volume::create_on("v", self.vluns(), layout, opts.clone()).expect("create the volume")
    }

    fn open(&self, opts: &VolumeOptions) -> Result<Volume, Error> {
        Volume::open_on("v", self.vluns(), opts.clone())
    }

    fn calls(&self) -> Vec<(Device, IoOp)> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .calls
            .clone()
    }

    fn failed_calls(&self) -> Vec<(Device, IoOp)> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failed
            .clone()
    }
}

fn opts(background: bool) -> VolumeOptions {
    VolumeOptions {
        cache_size: CACHE,
        background_destage: background,
        ..VolumeOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The workload and its oracle.
// ---------------------------------------------------------------------------------------------

/// The kind of I/O call a sweep injects the error into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Sync,
}

impl Kind {
    /// The controller's filter; "write" counts everything that changes an image.
    fn filter(self) -> OpFilter {
        match self {
            Kind::Read => OpFilter::Reads,
            Kind::Write => OpFilter::Writes,
            Kind::Sync => OpFilter::Syncs,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Sync => "sync",
        })
    }
}

#[derive(Debug, Clone)]
enum Step {
    Write {
        off: u64,
        data: Arc<[u8]>,
    },
    Zero {
        off: u64,
        len: u64,
    },
    Flush,
    Snapshot(String),
    Delete(String),
    ReadLive {
        off: u64,
        len: u64,
    },
    ReadSnapshot {
        name: String,
        off: u64,
        len: u64,
    },
    DestageAll,
    /// Flush, die like a killed process, and reopen: recovery replays the journal.
    FlushAndCrash,
    Close,
}

/// splitmix64 of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0) % n
    }
}

/// `len` bytes of the pattern tagged `tag` as it lies at volume offset `off`: every aligned
/// 8-byte word depends on the tag and on its position, so a misplaced or stale piece shows.
fn pattern(tag: u64, off: u64, len: u64) -> Vec<u8> {
    let (first, end) = (off / 8, (off + len).div_ceil(8));
    let words: Vec<u8> = (first..end)
        .flat_map(|w| (tag ^ mix(w)).to_le_bytes())
        .collect();
    let skip = (off - first * 8) as usize;
    words[skip..skip + len as usize].to_vec()
}

/// The fixed workload: a burst of large writes that fills a quarter of the journal (so the
/// journal's head moves on the writer's thread), then requests of every shape over the
/// 512 KiB volume mixed with flushes, snapshots (some deleted), reads and a full destage, a
/// crash with recovery in the middle, and a close at the end.
fn workload() -> Vec<Step> {
    let mut rng = Rng(0x5eed_0e10);
    let mut steps = Vec::new();
    for (i, off) in [0, SIZE / 2, 0, SIZE / 2, SIZE / 4].into_iter().enumerate() {
        steps.push(Step::Write {
            off,
            data: Arc::from(pattern(100 + i as u64, off, SIZE / 2)),
        });
    }
    let mut snaps: Vec<String> = Vec::new();
    let mut made = 0;
    for i in 0..STEPS {
        if i == STEPS / 2 {
            steps.push(Step::FlushAndCrash);
            continue;
        }
        let roll = rng.below(100);
        let step = match roll {
            0..=59 => {
                let len = match rng.below(4) {
                    0 => rng.below(4096) + 1,
                    1 => (rng.below(8) + 1) * 4096,
                    2 => rng.below(32 * KIB) + 1,
                    _ => u64::from(CHUNK) * (rng.below(3) + 1),
                };
                let off = match rng.below(3) {
                    0 => rng.below(SIZE),
                    _ => rng.below(SIZE / 4096) * 4096,
                }
                .min(SIZE - len);
                Step::Write {
                    off,
                    data: Arc::from(pattern(1000 + i, off, len)),
                }
            }
            60..=64 => {
                let len = rng.below(3 * u64::from(CHUNK)) + 1;
                Step::Zero {
                    off: rng.below(SIZE - len),
                    len,
                }
            }
            65..=73 => Step::Flush,
            74..=80 => {
                made += 1;
                let name = format!("s{made}");
                snaps.push(name.clone());
                Step::Snapshot(name)
            }
            81..=83 if snaps.len() > 2 => Step::Delete(snaps.remove(0)),
            84..=88 if !snaps.is_empty() => {
                let len = rng.below(48 * KIB) + 1;
                Step::ReadSnapshot {
                    name: snaps[rng.below(snaps.len() as u64) as usize].clone(),
                    off: rng.below(SIZE - len),
                    len,
                }
            }
            89..=90 => Step::DestageAll,
            _ => {
                let len = rng.below(48 * KIB) + 1;
                Step::ReadLive {
                    off: rng.below(SIZE - len),
                    len,
                }
            }
        };
        steps.push(step);
    }
    steps.push(Step::Close);
    steps
}

/// An acknowledged write request: data, or zeroes when `data` is `None`.
#[derive(Debug, Clone)]
struct Acked {
    off: u64,
    len: u64,
    data: Option<Arc<[u8]>>,
}

impl Acked {
    fn apply(&self, img: &mut [u8]) {
        let range = self.off as usize..(self.off + self.len) as usize;
        match &self.data {
            Some(d) => img[range].copy_from_slice(d),
            None => img[range].fill(0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SnapState {
    /// Acknowledged: must be there after a reopen.
    Live,
    /// Its creation failed: it may or may not be there.
    MaybeCreated,
    /// Deleted, acknowledged: must be gone.
    Deleted,
    /// Its deletion failed: it may or may not be there.
    MaybeDeleted,
}

#[derive(Debug, Clone)]
struct SnapModel {
    name: String,
    image: Vec<u8>,
    state: SnapState,
}

/// What the volume must hold.
#[derive(Debug, Clone)]
struct Model {
    /// Every acknowledged write applied.
    live: Vec<u8>,
    /// The live image as of the last flush (or snapshot, destage, close) that returned `Ok`.
    durable: Vec<u8>,
    /// Writes acknowledged since then, in order: a reopen may keep any prefix of them.
    pending: Vec<Acked>,
    snaps: Vec<SnapModel>,
}

impl Model {
    fn new() -> Self {
        Self {
            live: vec![0; SIZE as usize],
            durable: vec![0; SIZE as usize],
            pending: Vec::new(),
            snaps: Vec::new(),
        }
    }

    fn acked(&mut self, w: Acked) {
        w.apply(&mut self.live);
        self.pending.push(w);
    }

    fn made_durable(&mut self) {
        for w in self.pending.drain(..) {
            w.apply(&mut self.durable);
        }
        debug_assert!(self.durable == self.live);
    }

    fn snap(&self, name: &str) -> Option<&SnapModel> {
        self.snaps.iter().find(|s| s.name == name)
    }
}

/// First differing offset of two images, for messages.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or(Some(a.len().min(b.len())))
}

fn read_snapshot_by_name(vol: &Volume, name: &str, off: u64, buf: &mut [u8]) -> Result<(), Error> {
    let seq = vol.snapshot(name)?.seq;
    vol.read_snapshot(seq, off, buf)
}

// ---------------------------------------------------------------------------------------------
// Running the workload.
// ---------------------------------------------------------------------------------------------

/// How one step ended.
enum Outcome {
    Ok,
    /// The engine returned an error.
    Err(Error),
    /// The engine returned wrong data or broke a rule: the test fails.
    Wrong(String),
}

/// Runs one step on the volume (taking it for a close, replacing it for a crash) and updates
/// the model for what was acknowledged.
fn execute(
    step: &Step,
    vol: &mut Option<Volume>,
    machine: &Machine,
    opts: &VolumeOptions,
    model: &mut Model,
) -> Outcome {
    let v = vol
        .as_ref()
        .expect("the volume is open during the workload");
    let result = match step {
        Step::Write { off, data } => v.write(*off, data).map(|()| {
            model.acked(Acked {
                off: *off,
                len: data.len() as u64,
                data: Some(Arc::clone(data)),
            });
        }),
        Step::Zero { off, len } => v.write_zeroes(*off, *len).map(|()| {
            model.acked(Acked {
                off: *off,
                len: *len,
                data: None,
            });
        }),
        Step::Flush => v.flush().map(|()| model.made_durable()),
        Step::DestageAll => v.destage_all().map(|()| model.made_durable()),
        Step::Snapshot(name) => {
            let image = model.live.clone();
            match v.snapshot_create(name) {
                Ok(_) => {
                    model.made_durable();
                    model.snaps.push(SnapModel {
                        name: name.clone(),
                        image,
                        state: SnapState::Live,
                    });
                    Ok(())
                }
                Err(e) => {
                    model.snaps.push(SnapModel {
                        name: name.clone(),
                        image,
                        state: SnapState::MaybeCreated,
                    });
                    Err(e)
                }
            }
        }
        Step::Delete(name) => {
            let r = v.snapshot_delete(name);
            if let Some(s) = model.snaps.iter_mut().find(|s| &s.name == name) {
                s.state = if r.is_ok() {
                    SnapState::Deleted
                } else {
                    SnapState::MaybeDeleted
                };
            }
            r
        }
        Step::ReadLive { off, len } => {
            let mut buf = vec![0u8; *len as usize];
            match v.read(*off, &mut buf) {
                Ok(()) => {
                    let want = &model.live[*off as usize..(*off + *len) as usize];
                    if let Some(i) = first_difference(&buf, want) {
                        return Outcome::Wrong(format!(
                            "a live read returned wrong data at offset {:#x}",
                            *off + i as u64
                        ));
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Step::ReadSnapshot { name, off, len } => {
            let mut buf = vec![0u8; *len as usize];
            match read_snapshot_by_name(v, name, *off, &mut buf) {
                Ok(()) => {
                    let snap = model
                        .snap(name)
                        .expect("the workload reads known snapshots");
                    let want = &snap.image[*off as usize..(*off + *len) as usize];
                    if let Some(i) = first_difference(&buf, want) {
                        return Outcome::Wrong(format!(
                            "snapshot {name} returned wrong data at offset {:#x}",
                            *off + i as u64
                        ));
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Step::FlushAndCrash => {
            // A killed process reports nothing: an error that the background destager meets
            // after the flush, while the process dies, has no caller left to reach.
            let before = machine.ctl.faults_injected();
            match v.flush() {
                Ok(()) => {
                    model.made_durable();
                    // The destager may have met the fault just before the flush, and failed
                    // the volume just after it looked.
                    let failed_unseen = vol.take().expect("open").kill().is_some();
                    if failed_unseen || machine.ctl.faults_injected() > before {
                        machine.fired_in_kill.store(true, Ordering::SeqCst);
                    }
                    machine.open(opts).map(|reopened| *vol = Some(reopened))
                }
                Err(e) => Err(e),
            }
        }
        Step::Close => {
            let r = vol.take().expect("open").close();
            if r.is_ok() {
                model.made_durable();
            }
            r
        }
    };
    match result {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Err(e),
    }
}

/// Whether an operation's error names `device`: an I/O error on it, or the refusal of a
/// volume that failed because of it (its message carries the device's name).
fn names_device(e: &Error, device: Device) -> bool {
    match e {
        Error::Io { device: d, .. } => *d == device,
        Error::Failed(why) => why.contains(&device.to_string()),
        _ => false,
    }
}

/// Where to inject, and what the test expects of the call it lands on.
#[derive(Debug, Clone, Copy)]
struct FaultPoint {
    /// Index among the calls `kind` counts, since the controller was made.
    index: u64,
    kind: Kind,
    /// The call the dry run saw at that index (deterministic runs only).
    expect: Option<(Device, IoOp)>,
}

/// One workload run with one armed fault; returns the rule violations found (empty: the run
/// obeyed every rule) and whether the fault fired.
fn run_case(
    steps: &[Step],
    background: bool,
    point: FaultPoint,
    progress: &Progress,
) -> (Vec<String>, bool) {
    let opts = opts(background);
    let machine = Machine::new();
    let mut vol = Held(Some(machine.create(&opts)));
    machine.ctl.fail_at(point.index, point.kind.filter());
    let mut model = Model::new();
    let mut bad = Vec::new();
    let mut first_error: Option<(usize, Error)> = None;
    // A write that failed may or may not have landed (whole, never in part).
    let mut failed_write: Option<Acked> = None;
    let mut i = 0;
    while i < steps.len() {
        let step = &steps[i];
        progress.set(format!("step {i} ({})", describe(step)));
        i += 1;
        match execute(step, &mut vol.0, &machine, &opts, &mut model) {
            Outcome::Ok => {}
            Outcome::Wrong(why) => {
                bad.push(format!("step {} ({}): {why}", i - 1, describe(step)));
                return (bad, machine.ctl.faults_injected() > 0);
            }
            Outcome::Err(e) => {
                if first_error.is_some() {
                    bad.push(format!(
                        "step {} ({}): a second error after the volume was found working again: {e}",
                        i - 1,
                        describe(step)
                    ));
                    break;
                }
                match step {
                    Step::Write { off, data } => {
                        failed_write = Some(Acked {
                            off: *off,
                            len: data.len() as u64,
                            data: Some(Arc::clone(data)),
                        });
                    }
                    Step::Zero { off, len } => {
                        failed_write = Some(Acked {
                            off: *off,
                            len: *len,
                            data: None,
                        });
                    }
                    _ => {}
                }
                first_error = Some((i - 1, e));
                let Some(v) = &vol.0 else { break };
                // Is the volume failed, or did it shrug off a read error?
                let fatal = point.kind != Kind::Read
                    || {
                        match v.flush() {
                            Ok(()) => {
                                model.made_durable();
                                false
                            }
                            Err(Error::Failed(_)) => true,
                            Err(other) => {
                                bad.push(format!(
                                "after a read error, flush failed with {other} instead of Ok or Failed"
                            ));
                                true
                            }
                        }
                    };
                if fatal {
                    // The flush first: a volume that is not failed when it should be may make
                    // a write wait for cache space forever.
                    progress.set(format!("probing after the error of step {}", i - 1));
                    match v.flush() {
                        Err(Error::Failed(_)) => {
                            check_refuses_writes(v, &mut bad);
                            check_reads_after_failure(v, &model, failed_write.as_ref(), &mut bad);
                            if vol.take().close().is_ok() {
                                bad.push("close of a failed volume returned Ok".into());
                            }
                        }
                        other => {
                            bad.push(format!(
                                "the volume is not failed after the error of step {} ({}): a flush returned {other:?}",
                                i - 1,
                                describe(step)
                            ));
                            if other.is_ok() {
                                // A flush that returned Ok promised every acknowledged write:
                                // hold the engine to it after the reopen.
                                model.made_durable();
                            }
                            check_reads_after_failure(v, &model, failed_write.as_ref(), &mut bad);
                            if vol.take().close().is_ok() {
                                model.made_durable();
                            }
                        }
                    }
                    break;
                }
                // The volume works, and the flush made what it holds durable: a write that
                // failed must be there whole or not at all.
                if let Some(w) = failed_write.take() {
                    match whole_or_nothing(v, &model, &w) {
                        Ok(true) => {
                            model.acked(w);
                            model.made_durable();
                        }
                        Ok(false) => {}
                        Err(why) => {
                            bad.push(format!(
                                "step {} ({}) failed, and the flush after it {why}",
                                i - 1,
                                describe(step)
                            ));
                            break;
                        }
                    }
                }
                // Go on with the workload.
            }
        }
    }
    let fired = machine.ctl.faults_injected() > 0;
    // A fault the workload did not reach (the background destager's I/O varies) must not
    // fire during the checks below.
    machine.ctl.disarm();
    if let Some(v) = vol.0.take() {
        bad.push("the workload ended with the volume still open".into());
        v.kill();
    }
    let hits = machine.failed_calls();
    match (&first_error, fired) {
        (None, true) if machine.fired_in_kill.load(Ordering::SeqCst) => {}
        (None, true) => bad.push(format!(
            "the injected EIO (on {:?}) was swallowed: every operation returned Ok",
            hits.first()
        )),
        (Some((step, e)), true) => {
            let dev = hits.first().map(|h| h.0);
            if !dev.is_some_and(|d| names_device(e, d)) {
                bad.push(format!(
                    "step {step} ({}): the error {e:?} does not name the device the EIO hit ({dev:?})",
                    describe(&steps[*step])
                ));
            }
            if !background && !matches!(e, Error::Io { .. }) {
                bad.push(format!(
                    "step {step}: the first error is {e}, not the I/O error itself"
                ));
            }
        }
        (Some((step, e)), false) => bad.push(format!(
            "step {step}: an error without any injected fault: {e}"
        )),
        (None, false) => {}
    }
    if let (Some(want), Some(got)) = (point.expect, hits.first()) {
        if want != *got {
            bad.push(format!(
                "the fault landed on {got:?}, the dry run had {want:?} there: the I/O order is not deterministic"
            ));
        }
    }
    if hits.len() > 1 {
        bad.push(format!("more than one injected failure: {hits:?}"));
    }
    progress.set("reopening and verifying");
    verify_after_reopen(&machine, &opts, &mut model, failed_write.as_ref(), &mut bad);
    (bad, fired)
}

/// An open volume that a panicking test thread forgets instead of closing: closing a volume
/// the engine panicked in may panic again, and a panic during a panic aborts every test.
struct Held(Option<Volume>);

impl Held {
    fn take(&mut self) -> Volume {
        self.0.take().expect("the volume is open")
    }

    fn close(mut self) -> Result<(), Error> {
        self.take().close()
    }
}

impl std::ops::Deref for Held {
    type Target = Volume;

    fn deref(&self) -> &Volume {
        self.0.as_ref().expect("the volume is open")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.0.take());
        }
    }
}

/// What a case is doing, for the message when it hangs.
#[derive(Debug, Clone, Default)]
struct Progress(Arc<Mutex<String>>);

impl Progress {
    fn set(&self, what: impl Into<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = what.into();
    }

    fn get(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A case takes milliseconds; one that takes this long is stuck in the engine.
const CASE_TIMEOUT: Duration = Duration::from_secs(10);
/// A sweep stops after this many stuck cases (each leaves a thread behind).
const MAX_HUNG: usize = 2;

/// Runs a case on its own thread, so that an engine call that never returns is reported as a
/// hang instead of stopping the test suite. The stuck thread is left behind.
fn run_case_guarded(steps: &Arc<Vec<Step>>, background: bool, point: FaultPoint) -> Case {
    let (tx, rx) = mpsc::channel();
    let progress = Progress::default();
    let (steps, p) = (Arc::clone(steps), progress.clone());
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_case(&steps, background, point, &p)
        }));
        let r = r.unwrap_or_else(|payload| {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            (vec![format!("panicked during {}: {msg}", p.get())], true)
        });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(CASE_TIMEOUT) {
        Ok((bad, fired)) => Case {
            bad,
            fired,
            hung: false,
        },
        Err(mpsc::RecvTimeoutError::Timeout) => Case {
            bad: vec![format!(
                "hangs: {} did not return within {CASE_TIMEOUT:?}",
                progress.get()
            )],
            fired: true,
            hung: true,
        },
        Err(mpsc::RecvTimeoutError::Disconnected) => Case {
            bad: vec![format!("panicked during {}", progress.get())],
            fired: true,
            hung: false,
        },
    }
}

struct Case {
    bad: Vec<String>,
    fired: bool,
    hung: bool,
}

fn describe(step: &Step) -> String {
    match step {
        Step::Write { off, data } => format!("write {:#x}+{:#x}", off, data.len()),
        Step::Zero { off, len } => format!("zero {off:#x}+{len:#x}"),
        Step::ReadLive { off, len } => format!("read {off:#x}+{len:#x}"),
        Step::ReadSnapshot { name, off, len } => format!("read {name} {off:#x}+{len:#x}"),
        other => format!("{other:?}"),
    }
}

/// Whether the failed write `w` is in the volume whole (`Ok(true)`) or not at all
/// (`Ok(false)`); `Err` says how it is torn.
fn whole_or_nothing(v: &Volume, model: &Model, w: &Acked) -> Result<bool, String> {
    let r = w.off as usize..(w.off + w.len) as usize;
    let mut got = vec![0u8; r.len()];
    v.read(w.off, &mut got)
        .map_err(|e| format!("is followed by a failed read: {e}"))?;
    let mut new = vec![0u8; r.len()];
    Acked {
        off: 0,
        ..w.clone()
    }
    .apply(&mut new);
    if got == model.live[r.clone()] {
        return Ok(false);
    }
    if got == new {
        return Ok(true);
    }
    let old_until = got
        .iter()
        .zip(&model.live[r])
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    let new_until = got.iter().zip(&new).position(|(a, b)| a != b).unwrap_or(0);
    Err(format!(
        "made it durable torn: part old, part new (old up to {:#x}, new up to {:#x} of {:#x}+{:#x})",
        w.off + old_until as u64,
        w.off + new_until as u64,
        w.off,
        w.len
    ))
}

/// A failed volume refuses every kind of write with `Error::Failed`.
fn check_refuses_writes(v: &Volume, bad: &mut Vec<String>) {
    let mut expect_failed = |what: &str, r: Result<(), Error>| match r {
        Err(Error::Failed(_)) => {}
        Ok(()) => bad.push(format!("after the error, {what} returned Ok")),
        Err(e) => bad.push(format!(
            "after the error, {what} failed with {e}, not Failed"
        )),
    };
    expect_failed("a write", v.write(0, &[0xAB; 4096]));
    expect_failed("write-zeroes", v.write_zeroes(8192, 4096));
    expect_failed("a flush", v.flush());
    expect_failed("a snapshot", v.snapshot_create("probe").map(|_| ()));
    expect_failed("destage_all", v.destage_all());
}

/// Reads of a failed volume return the data it was given or an error, never anything else.
/// Only the range of a write that failed may hold old or new bytes.
fn check_reads_after_failure(
    v: &Volume,
    model: &Model,
    failed_write: Option<&Acked>,
    bad: &mut Vec<String>,
) {
    let mut buf = vec![0u8; SIZE as usize];
    if v.read(0, &mut buf).is_ok() {
        let mut want = model.live.clone();
        if let Some(w) = failed_write {
            // Either is acceptable in its range: take the new bytes where they were read.
            let r = w.off as usize..(w.off + w.len) as usize;
            let mut piece = vec![0u8; r.len()];
            Acked {
                off: 0,
                ..w.clone()
            }
            .apply(&mut piece);
            for ((want, got), new) in want[r.clone()].iter_mut().zip(&buf[r]).zip(&piece) {
                if got == new {
                    *want = *new;
                }
            }
        }
        if let Some(i) = first_difference(&buf, &want) {
            bad.push(format!(
                "after the error, the live volume reads wrong data at {i:#x}"
            ));
        }
    }
    for s in &model.snaps {
        if s.state != SnapState::Live {
            continue;
        }
        if read_snapshot_by_name(v, &s.name, 0, &mut buf).is_ok() {
            if let Some(i) = first_difference(&buf, &s.image) {
                bad.push(format!(
                    "after the error, snapshot {} reads wrong data at {i:#x}",
                    s.name
                ));
            }
        }
    }
}

/// Reopens on the same devices (the fault has fired) and checks that nothing durable was lost,
/// that requests are whole, that snapshots read their oracles, and that the volume works.
fn verify_after_reopen(
    machine: &Machine,
    opts: &VolumeOptions,
    model: &mut Model,
    failed_write: Option<&Acked>,
    bad: &mut Vec<String>,
) {
    let vol = match machine.open(opts) {
        Ok(v) => Held(Some(v)),
        Err(e) => {
            bad.push(format!("reopening after the fault failed: {e}"));
            return;
        }
    };
    let mut live = vec![0u8; SIZE as usize];
    if let Err(e) = vol.read(0, &mut live) {
        bad.push(format!("reading the reopened volume failed: {e}"));
        return;
    }
    // The durable image plus some prefix of what was acknowledged after it (then possibly the
    // write that failed, whole).
    let mut img = model.durable.clone();
    let mut matched = img == live;
    let candidates = model.pending.iter().chain(failed_write);
    for w in candidates {
        if matched {
            break;
        }
        w.apply(&mut img);
        matched = img == live;
    }
    if !matched {
        // Say which request is torn, if one is: part of its range old, part new.
        let mut cur = model.durable.clone();
        let mut torn = None;
        for w in model.pending.iter().chain(failed_write) {
            let r = w.off as usize..(w.off + w.len) as usize;
            let old = cur[r.clone()].to_vec();
            w.apply(&mut cur);
            if torn.is_none() && live[r.clone()] != old[..] && live[r.clone()] != cur[r] {
                torn = Some(format!("{:#x}+{:#x}", w.off, w.len));
            }
        }
        let at = first_difference(&live, &model.durable).unwrap_or(0);
        bad.push(format!(
            "after the reopen the live volume is not the durable image plus a prefix of the {} writes acknowledged after the last flush (first difference from the durable image at {at:#x}; torn request: {})",
            model.pending.len(),
            torn.as_deref().unwrap_or("none")
        ));
        return;
    }
    model.live.clone_from(&live);
    model.durable = live;
    model.pending.clear();

    let present = vol.snapshots();
    for p in &present {
        if model.snap(&p.name).is_none() && p.name != "probe" {
            bad.push(format!(
                "after the reopen an unknown snapshot {} exists",
                p.name
            ));
        }
        if p.name == "probe" {
            bad.push("after the reopen the snapshot a failed volume refused exists".into());
        }
    }
    let mut buf = vec![0u8; SIZE as usize];
    for s in &model.snaps {
        let exists = present.iter().any(|p| p.name == s.name);
        match (s.state, exists) {
            (SnapState::Live, false) => {
                bad.push(format!("snapshot {} was acknowledged and is gone", s.name));
            }
            (SnapState::Deleted, true) => {
                bad.push(format!("snapshot {} was deleted and is back", s.name));
            }
            (_, true) => match read_snapshot_by_name(&vol, &s.name, 0, &mut buf) {
                Ok(()) => {
                    if let Some(i) = first_difference(&buf, &s.image) {
                        bad.push(format!(
                            "after the reopen snapshot {} ({:?}) reads wrong data at {i:#x}",
                            s.name, s.state
                        ));
                    }
                }
                Err(e) => bad.push(format!(
                    "after the reopen snapshot {} fails to read: {e}",
                    s.name
                )),
            },
            (_, false) => {}
        }
    }
    // Keep only the snapshots that are there, now certain.
    model
        .snaps
        .retain(|s| present.iter().any(|p| p.name == s.name));
    for s in &mut model.snaps {
        s.state = SnapState::Live;
    }
    if !bad.is_empty() {
        return;
    }

    // The volume works normally again: write, snapshot, write, close, reopen, read it all.
    let works = (|| -> Result<(), Error> {
        let a = pattern(77, 40 * KIB, 100 * KIB);
        vol.write(40 * KIB, &a)?;
        model.acked(Acked {
            off: 40 * KIB,
            len: a.len() as u64,
            data: Some(Arc::from(a)),
        });
        vol.snapshot_create("after-reopen")?;
        model.snaps.push(SnapModel {
            name: "after-reopen".into(),
            image: model.live.clone(),
            state: SnapState::Live,
        });
        let b = pattern(78, 100 * KIB, 300 * KIB);
        vol.write(100 * KIB, &b)?;
        model.acked(Acked {
            off: 100 * KIB,
            len: b.len() as u64,
            data: Some(Arc::from(b)),
        });
        vol.close()
    })();
    if let Err(e) = works {
        bad.push(format!("after the reopen the volume does not work: {e}"));
        return;
    }
    let vol = match machine.open(opts) {
        Ok(v) => Held(Some(v)),
        Err(e) => {
            bad.push(format!("the second reopen failed: {e}"));
            return;
        }
    };
    if vol.read(0, &mut buf).is_err() || buf != model.live {
        bad.push("after the second reopen the live volume is wrong".into());
    }
    for s in &model.snaps {
        match read_snapshot_by_name(&vol, &s.name, 0, &mut buf) {
            Ok(()) if buf == s.image => {}
            Ok(()) => bad.push(format!(
                "after the second reopen snapshot {} is wrong",
                s.name
            )),
            Err(e) => bad.push(format!("after the second reopen snapshot {}: {e}", s.name)),
        }
    }
    if let Err(e) = vol.close() {
        bad.push(format!("the final close failed: {e}"));
    }
}

/// Runs the workload without a fault and returns every I/O call it makes after the volume
/// was created (with their indices counted from the controller's birth), checking that the
/// workload itself passes and that two runs do the same I/O.
fn dry_run(steps: &[Step]) -> (usize, Vec<(Device, IoOp)>) {
    let trace = |steps: &[Step]| {
        let opts = opts(false);
        let machine = Machine::new();
        let mut vol = Some(machine.create(&opts));
        let start = machine.calls().len();
        let mut model = Model::new();
        for (i, step) in steps.iter().enumerate() {
            match execute(step, &mut vol, &machine, &opts, &mut model) {
                Outcome::Ok => {}
                Outcome::Err(e) => {
                    panic!("step {i} ({}) failed without a fault: {e}", describe(step))
                }
                Outcome::Wrong(why) => panic!("step {i} ({}): {why}", describe(step)),
            }
        }
        let calls = machine.calls();
        let mut bad = Vec::new();
        verify_after_reopen(&machine, &opts, &mut model, None, &mut bad);
        assert!(
            bad.is_empty(),
            "the workload fails without a fault: {bad:?}"
        );
        (start, calls)
    };
    let first = trace(steps);
    let second = trace(steps);
    assert_eq!(first, second, "the workload's I/O is not deterministic");
    first
}

/// `SNAPVOL_FAULT_POINT=N` runs only the fault points with index N, to reproduce one case.
fn only_point() -> Option<u64> {
    std::env::var("SNAPVOL_FAULT_POINT")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// The workload, where its calls start in the dry run's record, and that record.
type Plan = (Arc<Vec<Step>>, usize, Vec<(Device, IoOp)>);

/// The workload and its dry run, shared by the tests.
fn planned() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        let steps = Arc::new(workload());
        let (start, calls) = dry_run(&steps);
        (steps, start, calls)
    })
}

/// Injects one `EIO` at every `kind` call the workload makes on `device`, one run each, and
/// checks every rule in each run.
fn sweep(device: Device, kind: Kind) {
    let started = Instant::now();
    let (steps, start, calls) = planned();
    let filter = kind.filter();
    let mut points = Vec::new();
    let mut counted = 0u64;
    for (t, &(d, op)) in calls.iter().enumerate() {
        if !filter.matches(op) {
            continue;
        }
        if t >= *start && d == device {
            points.push(FaultPoint {
                index: counted,
                kind,
                expect: Some((d, op)),
            });
        }
        counted += 1;
    }
    assert!(
        !points.is_empty(),
        "the workload makes no {kind} call on the {device}"
    );
    // Debug builds are about twenty times slower: they take every seventh point.
    let stride = if cfg!(debug_assertions) { 7 } else { 1 };
    let mut failures = Vec::new();
    let mut runs = 0;
    let mut hung = 0;
    let only = only_point();
    for p in points
        .iter()
        .step_by(if only.is_some() { 1 } else { stride })
        .filter(|p| only.is_none_or(|n| n == p.index))
    {
        runs += 1;
        let case = run_case_guarded(steps, false, *p);
        if !case.fired {
            failures.push(format!("{kind} #{}: the fault never fired", p.index));
        }
        if !case.bad.is_empty() {
            failures.push(format!(
                "{kind} #{} on {:?}: {}",
                p.index,
                p.expect,
                case.bad.join("; ")
            ));
        }
        hung += usize::from(case.hung);
        if hung >= MAX_HUNG {
            failures.push(format!("sweep stopped after {hung} hung cases"));
            break;
        }
    }
    println!(
        "{kind} errors on the {device}: {runs} fault points of {} in the workload ({} I/O calls), {:.1?}",
        points.len(),
        calls.len() - start,
        started.elapsed()
    );
    report(&format!("{kind} errors on the {device}"), runs, &failures);
}

fn report(what: &str, runs: usize, failures: &[String]) {
    if failures.is_empty() {
        return;
    }
    let shown: Vec<_> = failures.iter().take(SHOWN).cloned().collect();
    panic!(
        "{what}: {} of {runs} fault points broke a rule; the first ones:\n  {}",
        failures.len(),
        shown.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// The tests: one per device and kind of call.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_failed_source_read_reaches_the_caller_and_loses_nothing_that_was_durable() {
    sweep(Device::Source, Kind::Read);
}

#[test]
fn a_failed_source_write_reaches_the_caller_fails_the_volume_until_reopened_and_loses_nothing_durable(
) {
    sweep(Device::Source, Kind::Write);
}

#[test]
fn a_failed_source_sync_reaches_the_caller_fails_the_volume_until_reopened_and_loses_nothing_durable(
) {
    sweep(Device::Source, Kind::Sync);
}

#[test]
fn a_failed_target_read_reaches_the_caller_and_loses_nothing_that_was_durable() {
    sweep(Device::Target, Kind::Read);
}

#[test]
fn a_failed_target_write_reaches_the_caller_fails_the_volume_until_reopened_and_loses_nothing_durable(
) {
    sweep(Device::Target, Kind::Write);
}

#[test]
fn a_failed_target_sync_reaches_the_caller_fails_the_volume_until_reopened_and_loses_nothing_durable(
) {
    sweep(Device::Target, Kind::Sync);
}

#[test]
fn a_failed_journal_read_during_recovery_fails_the_open_and_the_next_open_recovers_everything() {
    sweep(Device::Journal, Kind::Read);
}

#[test]
fn a_failed_journal_write_reaches_the_caller_fails_the_volume_until_reopened_and_loses_nothing_durable(
) {
    sweep(Device::Journal, Kind::Write);
}

#[test]
fn a_failed_journal_sync_reaches_the_caller_fails_the_volume_until_reopened_and_loses_nothing_durable(
) {
    sweep(Device::Journal, Kind::Sync);
}

/// With the background destager the I/O order varies from run to run, so the fault lands on
/// whatever call has the chosen index; the error must still reach a caller (as the I/O error,
/// or as `Failed` naming the device once the destager has failed the volume).
#[test]
fn with_the_background_destager_every_injected_error_still_reaches_a_caller_and_loses_nothing_durable(
) {
    let started = Instant::now();
    let (steps, _, calls) = planned();
    let mut failures = Vec::new();
    let mut runs = 0;
    let mut hung = 0;
    let mut fired = 0;
    let mut hit = std::collections::BTreeMap::<String, usize>::new();
    let per_kind = if cfg!(debug_assertions) { 6 } else { 40 };
    let only = only_point();
    for kind in [Kind::Read, Kind::Write, Kind::Sync] {
        let total = calls.iter().filter(|c| kind.filter().matches(c.1)).count() as u64;
        for j in 0..per_kind {
            // Spread over the first 90% of the calls the (deterministic) dry run made.
            let index = total * 9 / 10 * j / per_kind + 1;
            if only.is_some_and(|n| n != index) {
                continue;
            }
            let point = FaultPoint {
                index,
                kind,
                expect: None,
            };
            runs += 1;
            let case = run_case_guarded(steps, true, point);
            fired += usize::from(case.fired);
            if !case.bad.is_empty() {
                failures.push(format!("{kind} #{index}: {}", case.bad.join("; ")));
            }
            *hit.entry(format!("{kind}")).or_default() += usize::from(case.fired);
            hung += usize::from(case.hung);
            if hung >= MAX_HUNG {
                break;
            }
        }
        if hung >= MAX_HUNG {
            failures.push(format!("stopped after {hung} hung cases"));
            break;
        }
    }
    println!(
        "background destager: {runs} runs, {fired} faults fired ({hit:?}), {:.1?}",
        started.elapsed()
    );
    assert!(
        fired * 2 > runs,
        "most injected faults should fire: {fired} of {runs}"
    );
    report("background destager", runs, &failures);
}

// ---------------------------------------------------------------------------------------------
// The smallest cases the sweeps found, one rule each.
// ---------------------------------------------------------------------------------------------

/// Three in-memory devices, each behind its own controller, so a test can fail exactly the
/// next call of one kind on one device.
struct Devices {
    ctl: [Arc<FaultController>; 3],
    mem: [Arc<MemVlun>; 3],
}

impl Devices {
    fn new() -> Self {
        Self {
            ctl: [
                FaultController::new(),
                FaultController::new(),
                FaultController::new(),
            ],
            mem: [
                Arc::new(MemVlun::new(SIZE)),
                Arc::new(MemVlun::new(0)),
                Arc::new(MemVlun::new(0)),
            ],
        }
    }

    fn vluns(&self) -> Vluns {
        let v = |i: usize| -> Box<dyn Vlun> {
            Box::new(FaultyVlun::new(&self.ctl[i], Arc::clone(&self.mem[i])))
        };
        Vluns {
            source: v(0),
            target: v(1),
            journal: v(2),
        }
    }

    /// Fails the next call of `kind` on device `i` (0 source, 1 target, 2 journal).
    fn fail_next(&self, i: usize, kind: Kind) {
        let ctl = &self.ctl[i];
        ctl.fail_at(ctl.op_count(kind.filter()), kind.filter());
    }
}

fn layout() -> Layout {
    Layout {
        journal_size: JOURNAL,
        ..Layout::new(Geometry::new(SIZE, CHUNK).expect("geometry"))
    }
}

/// The writer's thread destages when the cache is full (`background_destage: false`). When
/// that destage cannot append to the journal, the write that triggered it gets the error,
/// but the volume carries on: the next flush returns `Ok` although the writes the failed
/// append held never reach the journal, so they are gone after a reopen.
#[test]
fn a_journal_error_in_a_destage_on_the_writers_thread_fails_the_volume_and_loses_no_flushed_write()
{
    let d = Devices::new();
    let vol = Volume::create_on("v", d.vluns(), layout(), opts(false)).expect("create");
    let vol = Held(Some(vol));
    let a = pattern(1, 0, 24 * KIB);
    vol.write(0, &a)
        .expect("the first write lands in the cache");
    d.fail_next(2, Kind::Write);
    // The cache is full: this write destages first, and the journal append fails.
    let err = vol
        .write(64 * KIB, &pattern(2, 64 * KIB, 24 * KIB))
        .expect_err("the journal's EIO reaches the writer");
    assert!(
        matches!(
            err,
            Error::Io {
                device: Device::Journal,
                ..
            }
        ),
        "the error names the journal: {err}"
    );
    let mut problems = Vec::new();
    let flush = vol.flush();
    if !matches!(flush, Err(Error::Failed(_))) {
        problems.push(format!(
            "a flush after the failed write returned {flush:?}, not Error::Failed"
        ));
    }
    let _ = vol.close();
    let vol = Held(Some(
        Volume::open_on("v", d.vluns(), opts(false)).expect("reopen"),
    ));
    let mut got = vec![0u8; a.len()];
    vol.read(0, &mut got).expect("read");
    if flush.is_ok() && got != a {
        problems.push(
            "the write acknowledged before that flush (which returned Ok) is lost after a reopen"
                .into(),
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("; "));
    vol.close().expect("close");
}

/// A write-zeroes request longer than a quarter of the cache goes into the cache in pieces,
/// each journaled as a request of its own. A destage that starts between two pieces (here on
/// the writer's thread; the background destager does the same at any time) journals the
/// first piece alone, and a power loss before the rest leaves the request torn.
#[test]
fn a_write_zeroes_request_the_engine_splits_is_all_old_or_all_new_after_a_crash_in_its_middle() {
    use snapvol_engine::fault::{CrashMode, CrashVlun};
    let ctl = [
        FaultController::new(),
        FaultController::new(),
        FaultController::new(),
    ];
    let dev = [
        Arc::new(CrashVlun::new(&ctl[0], SIZE)),
        Arc::new(CrashVlun::new(&ctl[1], 0)),
        Arc::new(CrashVlun::new(&ctl[2], 0)),
    ];
    let vluns = |dev: &[Arc<CrashVlun>; 3]| Vluns {
        source: Box::new(Arc::clone(&dev[0])),
        target: Box::new(Arc::clone(&dev[1])),
        journal: Box::new(Arc::clone(&dev[2])),
    };
    let vol = Volume::create_on("v", vluns(&dev), layout(), opts(false)).expect("create");
    let old = pattern(1, 0, 64 * KIB);
    vol.write(0, &old).expect("write");
    vol.destage_all()
        .expect("the old data is on the source, durable");
    // Fill the cache almost to its limit, so that landing the request destages in its middle.
    let fill = pattern(2, 256 * KIB, 56 * KIB);
    vol.write(256 * KIB, &fill).expect("write");
    let mut before = vec![0u8; SIZE as usize];
    vol.read(0, &mut before).expect("read");
    // The power fails at the source's next I/O: the destage's first write. A zeroing request
    // of the whole volume is larger than the cache takes at once, so the engine lands it in
    // pieces.
    ctl[0].crash_at(ctl[0].io_count());
    let r = vol.write_zeroes(0, SIZE);
    assert!(
        r.is_err(),
        "the set-up no longer destages in the middle of the request; make the cache fuller"
    );
    vol.kill();
    // Restart on what the media hold.
    let after = FaultController::new();
    let restarted = |d: &Arc<CrashVlun>| -> Box<dyn Vlun> {
        Box::new(CrashVlun::from_image(
            &after,
            d.crash_image(CrashMode::DropAll, 0),
        ))
    };
    let vol = Volume::open_on(
        "v",
        Vluns {
            source: restarted(&dev[0]),
            target: restarted(&dev[1]),
            journal: restarted(&dev[2]),
        },
        opts(false),
    )
    .expect("recover");
    let mut got = vec![0u8; SIZE as usize];
    vol.read(0, &mut got).expect("read");
    let zeroed = got.iter().filter(|&&b| b == 0).count();
    assert!(
        got == before || zeroed == got.len(),
        "the request is torn: {zeroed:#x} bytes of the volume are zero, the rest is the old data"
    );
    vol.close().expect("close");
}
