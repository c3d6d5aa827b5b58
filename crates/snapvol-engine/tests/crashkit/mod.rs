//! The crash-point harness: run a scripted workload on crash-simulating VLUNs, cut the power at
//! one I/O index, take what the media would hold, recover, and judge the result against an
//! oracle of what the user was promised (DESIGN.md I1–I6, "Semantics").
//!
//! The oracle knows, for every byte of the live volume, the value it was *settled* to by the
//! last completed FLUSH (a flush, a FUA write, a snapshot create, `destage_all` or a clean
//! close that returned `Ok`), and the writes issued after it, each of which may or may not
//! have survived, but only whole. Every snapshot whose creation returned `Ok` is an exact image.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

use snapvol_engine::fault::{CrashMode, CrashVlun, FaultController};
use snapvol_engine::units::{Geometry, SnapshotSeq};
use snapvol_engine::vlun::Vlun;
use snapvol_engine::{Layout, Vluns, Volume, VolumeOptions};

pub const KIB: u64 = 1024;
/// The journal ring every workload uses (the engine's minimum).
pub const JOURNAL_SIZE: u64 = 4 << 20;

// ---------------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------------

/// One operation of a scripted workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `write` of pattern data unique to this operation.
    Write {
        off: u64,
        len: u64,
    },
    /// `write_zeroes`.
    Zero {
        off: u64,
        len: u64,
    },
    /// `trim` (reads as zero afterwards, like `write_zeroes`).
    Trim {
        off: u64,
        len: u64,
    },
    /// `write_fua` of pattern data.
    Fua {
        off: u64,
        len: u64,
    },
    Flush,
    Snap(&'static str),
    Delete(&'static str),
    DestageAll,
    /// `close`, then `open_on` the same devices.
    Reopen,
    /// Reads the live volume and compares with the oracle (no crash involved).
    Read {
        off: u64,
        len: u64,
    },
}

/// A deterministic workload on a small volume.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: &'static str,
    pub chunk_size: u32,
    pub chunks: u64,
    pub cache_size: u64,
    pub compact_after_records: u64,
    pub ops: Vec<Op>,
}

impl Workload {
    pub fn size(&self) -> u64 {
        self.chunks * u64::from(self.chunk_size)
    }

    fn layout(&self) -> Layout {
        let geometry = Geometry::new(self.size(), self.chunk_size).expect("workload geometry");
        Layout {
            geometry,
            target_cap: None,
            journal_size: JOURNAL_SIZE,
        }
    }

    fn options(&self, background_destage: bool) -> VolumeOptions {
        VolumeOptions {
            cache_size: self.cache_size,
            compact_after_records: self.compact_after_records,
            background_destage,
        }
    }

    /// Checks that the script itself makes sense: ranges inside the volume, names unique.
    fn validate(&self) {
        let mut created = Vec::new();
        for (i, op) in self.ops.iter().enumerate() {
            match *op {
                Op::Write { off, len }
                | Op::Zero { off, len }
                | Op::Trim { off, len }
                | Op::Fua { off, len }
                | Op::Read { off, len } => assert!(
                    len > 0 && off + len <= self.size(),
                    "{}: op {i} {op:?} lies outside the volume",
                    self.name
                ),
                Op::Snap(name) => {
                    assert!(
                        !created.contains(&name),
                        "{}: snapshot name {name} reused",
                        self.name
                    );
                    created.push(name);
                }
                _ => {}
            }
        }
    }
}

/// Pattern bytes for operation `tag`: pseudo-random, so a byte of one write rarely equals the
/// byte another write (or the zero fill) puts in the same place.
pub fn pattern(tag: u64, len: u64) -> Vec<u8> {
    let mut rng = SplitMix(tag.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xC0FF_EE00);
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

/// SplitMix64, for patterns and seeds that replay exactly.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_4761_CE4E_5B9B);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------------

/// The three VLUNs of one simulated machine, attached to one controller.
#[derive(Debug)]
pub struct Devices {
    pub ctl: Arc<FaultController>,
    pub source: Arc<CrashVlun>,
    pub target: Arc<CrashVlun>,
    pub journal: Arc<CrashVlun>,
}

/// What a power loss left on the three devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub source: Vec<u8>,
    pub target: Vec<u8>,
    pub journal: Vec<u8>,
}

impl Images {
    /// Lengths and CRC-32C of the three images: equal fingerprints, the same crash state.
    fn fingerprint(&self) -> [u32; 6] {
        let mut f = [0; 6];
        for (i, img) in [&self.source, &self.target, &self.journal]
            .iter()
            .enumerate()
        {
            f[2 * i] = img.len() as u32;
            f[2 * i + 1] = crc32c::crc32c(img);
        }
        f
    }
}

impl Devices {
    /// Blank devices for a new volume of `size` bytes.
    pub fn blank(size: u64) -> Self {
        let ctl = FaultController::new();
        Self {
            source: Arc::new(CrashVlun::new(&ctl, size)),
            target: Arc::new(CrashVlun::new(&ctl, 0)),
            journal: Arc::new(CrashVlun::new(&ctl, 0)),
            ctl,
        }
    }

    /// The restart: devices whose durable content is `img`, on a fresh controller.
    pub fn restart(img: Images) -> Self {
        let ctl = FaultController::new();
        Self {
            source: Arc::new(CrashVlun::from_image(&ctl, img.source)),
            target: Arc::new(CrashVlun::from_image(&ctl, img.target)),
            journal: Arc::new(CrashVlun::from_image(&ctl, img.journal)),
            ctl,
        }
    }

    pub fn vluns(&self) -> Vluns {
        Vluns {
            source: Box::new(Arc::clone(&self.source)),
            target: Box::new(Arc::clone(&self.target)),
            journal: Box::new(Arc::clone(&self.journal)),
        }
    }

    fn check_clean(&self, when: &str) {
        check_clean(&*self.source, &*self.target, &*self.journal, when);
    }

    pub fn unsynced(&self) -> [usize; 3] {
        [
            self.source.unsynced_count(),
            self.target.unsynced_count(),
            self.journal.unsynced_count(),
        ]
    }

    /// What the power loss leaves, device by device, as `loss` decides.
    pub fn crash_images(&self, loss: Loss) -> Images {
        let devs = [&self.source, &self.target, &self.journal];
        let mut imgs = devs.iter().enumerate().map(|(i, d)| {
            let (mode, seed) = loss.mode_for(i, d.unsynced_count());
            d.crash_image(mode, seed)
        });
        Images {
            source: imgs.next().expect("source"),
            target: imgs.next().expect("target"),
            journal: imgs.next().expect("journal"),
        }
    }
}

/// How a power loss treats the writes not yet synced, on all three devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Every unsynced write lost.
    DropAll,
    /// Every unsynced write reached the media.
    KeepAll,
    /// The first half (in issue order) of each device's unsynced writes reached the media.
    KeepFirstHalf,
    /// Any subset, in any order, each possibly torn at 512-byte sectors.
    Random(u64),
    /// Each device differently: the seed picks one of the above per device.
    Mixed(u64),
}

impl Loss {
    /// The `CrashMode` and seed for device `dev` (0 source, 1 target, 2 journal).
    fn mode_for(self, dev: usize, unsynced: usize) -> (CrashMode, u64) {
        let salt = dev as u64 * 0x1000_0000_01B3;
        match self {
            Loss::DropAll => (CrashMode::DropAll, 0),
            Loss::KeepAll => (CrashMode::KeepAll, 0),
            Loss::KeepFirstHalf => (CrashMode::KeepFirst(unsynced / 2), 0),
            Loss::Random(seed) => (CrashMode::Random, seed ^ salt),
            Loss::Mixed(seed) => {
                let mut rng = SplitMix(seed ^ salt ^ 0x5EED);
                let mode = match rng.below(4) {
                    0 => CrashMode::DropAll,
                    1 => CrashMode::KeepAll,
                    2 => CrashMode::KeepFirst(rng.below(unsynced as u64 + 1) as usize),
                    _ => CrashMode::Random,
                };
                (mode, rng.next())
            }
        }
    }

    /// The losses tried at crash index `k`.
    pub fn all_for(k: u64) -> [Loss; 5] {
        let seed = k.wrapping_mul(0x9E37_79B9).wrapping_add(1);
        [
            Loss::DropAll,
            Loss::KeepAll,
            Loss::KeepFirstHalf,
            Loss::Random(seed),
            Loss::Mixed(seed),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------------------------

/// One write request as the oracle remembers it.
#[derive(Debug, Clone)]
pub struct Req {
    pub op: usize,
    pub off: u64,
    pub len: u64,
    /// `None`: zeroes.
    pub data: Option<Arc<[u8]>>,
    /// The epoch it was issued in: the seq of the newest snapshot created before it.
    pub epoch: u64,
}

impl Req {
    fn covers(&self, at: u64) -> bool {
        self.off <= at && at < self.off + self.len
    }

    fn overlaps(&self, other: &Req) -> bool {
        self.off < other.off + other.len && other.off < self.off + self.len
    }

    fn byte(&self, at: u64) -> u8 {
        self.data
            .as_ref()
            .map_or(0, |d| d[(at - self.off) as usize])
    }

    fn apply(&self, img: &mut [u8]) {
        let r = self.off as usize..(self.off + self.len) as usize;
        match &self.data {
            Some(d) => img[r].copy_from_slice(d),
            None => img[r].fill(0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapState {
    /// `snapshot_create` returned `Ok`: must exist and read exactly its image.
    Acked,
    /// `snapshot_create` was interrupted: may exist; if so, exactly its image.
    CreateInFlight,
    /// `snapshot_delete` returned `Ok`: must not come back.
    Deleted,
    /// `snapshot_delete` was interrupted: may still exist; if so, exactly its image.
    DeleteInFlight,
}

#[derive(Debug, Clone)]
pub struct SnapModel {
    pub name: &'static str,
    pub seq: Option<SnapshotSeq>,
    pub image: Arc<Vec<u8>>,
    pub state: SnapState,
}

/// What the user was promised, operation by operation.
#[derive(Debug, Clone)]
pub struct Model {
    pub chunk: u64,
    /// The volume with every acknowledged write.
    pub image: Vec<u8>,
    /// The volume as of the last completed flush.
    pub settled: Vec<u8>,
    /// Every write request issued, acknowledged or in flight, in order.
    pub writes: Vec<Req>,
    /// `writes[..durable]` are covered by a completed flush.
    pub durable: usize,
    pub epoch: u64,
    pub snaps: Vec<SnapModel>,
    /// Operations that returned (the failing one, if any, is `ops_done`).
    pub ops_done: usize,
    /// The operation that failed, if any.
    pub failed_op: Option<(usize, String)>,
}

impl Model {
    pub fn new(size: u64, chunk: u64) -> Self {
        Self {
            chunk,
            image: vec![0; size as usize],
            settled: vec![0; size as usize],
            writes: Vec::new(),
            durable: 0,
            epoch: 0,
            snaps: Vec::new(),
            ops_done: 0,
            failed_op: None,
        }
    }

    /// A flush completed: everything acknowledged so far is durable.
    pub fn settle(&mut self) {
        self.settled.clone_from(&self.image);
        self.durable = self.writes.len();
    }

    pub fn write(&mut self, req: Req, acked: bool) {
        if acked {
            req.apply(&mut self.image);
        }
        self.writes.push(req);
    }

    /// Writes after the last completed flush: each may or may not have survived.
    pub fn pending(&self) -> &[Req] {
        &self.writes[self.durable..]
    }

    fn snap_mut(&mut self, name: &str) -> &mut SnapModel {
        self.snaps
            .iter_mut()
            .find(|s| s.name == name)
            .expect("workload deletes a snapshot it created")
    }
}

// ---------------------------------------------------------------------------------------------
// Running a workload
// ---------------------------------------------------------------------------------------------

/// A workload run up to its end or its first failed operation.
#[derive(Debug)]
pub struct Run {
    pub model: Model,
    pub devices: Devices,
    /// I/O calls the workload made after the volume was created.
    pub ios: u64,
}

/// Creates the volume (never crashed: a creation that did not finish is not a volume), arms a
/// power loss at workload I/O index `crash_at`, and runs the workload until it ends or an
/// operation fails. The volume is then killed, never closed. With `background_destage`, the
/// power is cut right after the last operation returns, so the destager thread cannot run on.
pub fn run_workload(w: &Workload, crash_at: Option<u64>, background_destage: bool) -> Run {
    let dev = Devices::blank(w.size());
    let opts = w.options(background_destage);
    let mut vol = Some(
        Volume::create_on("crash", dev.vluns(), w.layout(), opts.clone()).expect("create volume"),
    );
    let base = dev.ctl.io_count();
    if let Some(k) = crash_at {
        dev.ctl.crash_at(base + k);
    }
    let mut m = Model::new(w.size(), u64::from(w.chunk_size));
    for (i, op) in w.ops.iter().enumerate() {
        let v = vol.as_ref().expect("volume open while ops run");
        let result: Result<(), snapvol_engine::Error> = match *op {
            Op::Write { off, len } | Op::Fua { off, len } => {
                let data: Arc<[u8]> = Arc::from(pattern(i as u64 + 1, len));
                let fua = matches!(op, Op::Fua { .. });
                let r = if fua {
                    v.write_fua(off, &data)
                } else {
                    v.write(off, &data)
                };
                let req = Req {
                    op: i,
                    off,
                    len,
                    data: Some(data),
                    epoch: m.epoch,
                };
                m.write(req, r.is_ok());
                if fua && r.is_ok() {
                    m.settle();
                }
                r
            }
            Op::Zero { off, len } | Op::Trim { off, len } => {
                let r = if matches!(op, Op::Zero { .. }) {
                    v.write_zeroes(off, len)
                } else {
                    v.trim(off, len)
                };
                let req = Req {
                    op: i,
                    off,
                    len,
                    data: None,
                    epoch: m.epoch,
                };
                m.write(req, r.is_ok());
                r
            }
            Op::Flush => v.flush().map(|()| m.settle()),
            Op::DestageAll => v.destage_all().map(|()| m.settle()),
            Op::Snap(name) => {
                let r = v.snapshot_create(name);
                let image = Arc::new(m.image.clone());
                match &r {
                    Ok(info) => {
                        m.epoch = info.seq.0;
                        m.settle();
                        m.snaps.push(SnapModel {
                            name,
                            seq: Some(info.seq),
                            image,
                            state: SnapState::Acked,
                        });
                    }
                    Err(_) => m.snaps.push(SnapModel {
                        name,
                        seq: None,
                        image,
                        state: SnapState::CreateInFlight,
                    }),
                }
                r.map(drop)
            }
            Op::Delete(name) => {
                let r = v.snapshot_delete(name);
                m.snap_mut(name).state = if r.is_ok() {
                    SnapState::Deleted
                } else {
                    SnapState::DeleteInFlight
                };
                r
            }
            Op::Reopen => {
                let v = vol.take().expect("open");
                match v.close() {
                    Ok(()) => {
                        m.settle();
                        match Volume::open_on("crash", dev.vluns(), opts.clone()) {
                            Ok(v) => {
                                vol = Some(v);
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            Op::Read { off, len } => {
                let mut buf = vec![0u8; len as usize];
                let r = v.read(off, &mut buf);
                if r.is_ok() {
                    let want = &m.image[off as usize..(off + len) as usize];
                    if let Some(at) = first_diff(&buf, want) {
                        panic!(
                            "op {i}: a read of the running volume differs from what was written \
                             at byte {:#x} (got {:#04x}, want {:#04x})",
                            off + at as u64,
                            buf[at],
                            want[at]
                        );
                    }
                }
                r
            }
        };
        match result {
            Ok(()) => m.ops_done = i + 1,
            Err(e) => {
                assert!(
                    dev.ctl.crashed(),
                    "op {i} {op:?} failed without a power loss: {e}"
                );
                m.failed_op = Some((i, e.to_string()));
                break;
            }
        }
    }
    let ios = dev.ctl.io_count() - base;
    if crash_at.is_none() {
        if let Some(v) = &vol {
            assert_running_volume(&m, v);
        }
    }
    dev.ctl.crash_now();
    if let Some(v) = vol {
        v.kill();
    }
    Run {
        model: m,
        devices: dev,
        ios,
    }
}

// ---------------------------------------------------------------------------------------------
// Judging a recovery
// ---------------------------------------------------------------------------------------------

/// Without a crash, the running volume reads exactly as the oracle says: the oracle is right
/// before it judges anything.
fn assert_running_volume(m: &Model, vol: &Volume) {
    if let Some(at) = first_diff(&read_all(vol, None), &m.image) {
        panic!("the running volume differs from the oracle at byte {at:#x}");
    }
    for s in &m.snaps {
        match (s.state, s.seq) {
            (SnapState::Acked, Some(seq)) => {
                if let Some(at) = first_diff(&read_all(vol, Some(seq)), &s.image) {
                    panic!("running snapshot {} differs at byte {at:#x}", s.name);
                }
            }
            (SnapState::Deleted, _) => {}
            other => panic!("snapshot {} in state {other:?} without a crash", s.name),
        }
    }
}

pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// `[from, to)` minus every range in `holes`, as sorted disjoint ranges.
fn subtract(from: u64, to: u64, holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut holes: Vec<_> = holes
        .iter()
        .filter(|&&(a, b)| a < to && from < b)
        .copied()
        .collect();
    holes.sort_unstable();
    let mut out = Vec::new();
    let mut pos = from;
    for (a, b) in holes {
        if a > pos {
            out.push((pos, a));
        }
        pos = pos.max(b);
    }
    if pos < to {
        out.push((pos, to));
    }
    out
}

fn read_all(vol: &Volume, snap: Option<SnapshotSeq>) -> Vec<u8> {
    let mut buf = vec![0u8; vol.size() as usize];
    match snap {
        None => vol.read(0, &mut buf).expect("read the live volume"),
        Some(s) => vol
            .read_snapshot(s, 0, &mut buf)
            .unwrap_or_else(|e| panic!("read snapshot {s}: {e}")),
    }
    buf
}

/// Runs the offline checker (`snapvol_engine::check`, without repair) on three devices and
/// demands a clean report.
pub fn check_clean(source: &dyn Vlun, target: &dyn Vlun, journal: &dyn Vlun, when: &str) {
    check_clean_but_torn(source, target, journal, &[], when);
}

/// As [`check_clean`], except that a superblock copy the power loss tore (`torn`: offsets of
/// copies whose bytes are a mix of what they held before and after an interrupted write) must
/// be reported, as I5 asks, and is the only problem allowed. format.md: "a torn new copy fails
/// its CRC and the old one wins"; recovery's next superblock write goes to that very copy.
pub fn check_clean_but_torn(
    source: &dyn Vlun,
    target: &dyn Vlun,
    journal: &dyn Vlun,
    torn: &[u64],
    when: &str,
) {
    let every_byte = snapvol_engine::check::CheckOptions {
        repair: false,
        data: true,
        journal_in_use: false,
    };
    let report = snapvol_engine::check::check_with(source, target, journal, every_byte)
        .unwrap_or_else(|e| panic!("check could not run {when}: {e}"));
    let torn_loc: Vec<String> = torn
        .iter()
        .map(|off| format!("superblock copy at {off:#x}"))
        .collect();
    let unexpected: Vec<_> = report
        .problems
        .iter()
        .filter(|p| !torn_loc.contains(&p.location))
        .collect();
    assert!(
        unexpected.is_empty(),
        "check is not clean {when}: {unexpected:?}"
    );
    for loc in &torn_loc {
        assert!(
            report.problems.iter().any(|p| &p.location == loc),
            "check did not report the {loc}, torn by the power loss {when} (I5)"
        );
    }
}

/// Offsets of the superblock copies that the power loss left torn in `img`: neither as they
/// were durably nor as the interrupted write made them, so a mix of the two.
pub fn torn_superblocks(dev: &Devices, img: &Images) -> Vec<u64> {
    let (durable, live) = (dev.target.durable_image(), dev.target.live_image());
    let block = |v: &[u8], off: usize| v.get(off..off + 4096).map(<[u8]>::to_vec);
    [0usize, 4096]
        .into_iter()
        .filter(|&off| {
            let got = block(&img.target, off);
            got != block(&durable, off) && got != block(&live, off)
        })
        .map(|off| off as u64)
        .collect()
}

/// The live volume after recovery: every byte holds its settled value or the value of a write
/// issued after the last completed flush; and each such write shows whole or not at all, judged
/// on the bytes no later write touches and that tell its data apart from every other candidate.
pub fn assert_live_volume(m: &Model, got: &[u8]) {
    const STRIDE: usize = 4096;
    let pending = m.pending();
    for (block, (g, s)) in got.chunks(STRIDE).zip(m.settled.chunks(STRIDE)).enumerate() {
        if g == s {
            continue;
        }
        for (i, (&g, &s)) in g.iter().zip(s).enumerate() {
            let at = (block * STRIDE + i) as u64;
            assert!(
                g == s || pending.iter().any(|r| r.covers(at) && r.byte(at) == g),
                "live byte {at:#x} reads {g:#04x}: neither its flushed value {s:#04x} nor the \
                 value of any write issued after the last completed flush ({} such writes; \
                 flushed data lost or corrupted)",
                pending.len()
            );
        }
    }
    for (i, r) in pending.iter().enumerate() {
        let range = r.off as usize..(r.off + r.len) as usize;
        let applied = match &r.data {
            Some(d) => got[range.clone()] == **d,
            None => got[range.clone()].iter().all(|&b| b == 0),
        };
        if applied {
            continue;
        }
        let later: Vec<_> = pending[i + 1..]
            .iter()
            .map(|q| (q.off, q.off + q.len))
            .collect();
        let earlier: Vec<&Req> = pending[..i].iter().filter(|q| q.overlaps(r)).collect();
        let telling = |at: u64| {
            let v = r.byte(at);
            v != m.settled[at as usize] && !earlier.iter().any(|q| q.covers(at) && q.byte(at) == v)
        };
        let visible = subtract(r.off, r.off + r.len, &later);
        let seen = visible
            .iter()
            .flat_map(|&(a, b)| a..b)
            .find(|&at| got[at as usize] == r.byte(at) && telling(at));
        let Some(seen) = seen else { continue };
        if let Some(torn) = visible
            .iter()
            .flat_map(|&(a, b)| a..b)
            .find(|&at| got[at as usize] != r.byte(at))
        {
            panic!(
                "torn request: write of op {} at {:#x}+{:#x} shows its data at {seen:#x} but \
                 not at {torn:#x} (reads {:#04x}, its data is {:#04x}); no later write touches \
                 either byte",
                r.op,
                r.off,
                r.len,
                got[torn as usize],
                r.byte(torn)
            );
        }
    }
}

/// Bounds on the preserved chunk copies the live snapshots need: for chunk `c`, snapshot `s`
/// needs a copy iff some write to `c` was issued in an epoch `>= s`; two such snapshots share
/// one copy iff no write to `c` has an epoch between them. Writes after the last flush may or
/// may not have survived: where the recovered volume cannot tell, both are allowed.
pub fn needed_copies(m: &Model, live: &[SnapshotSeq], got: &[u8]) -> (u64, u64) {
    let chunks = m.image.len() as u64 / m.chunk;
    let (settled, pending) = m.writes.split_at(m.durable);
    let count = |epochs: &[u64]| -> u64 {
        let mut groups: Vec<usize> = live
            .iter()
            .filter(|s| epochs.iter().any(|&e| e >= s.0))
            .map(|s| epochs.iter().filter(|&&e| e < s.0).count())
            .collect();
        groups.sort_unstable();
        groups.dedup();
        groups.len() as u64
    };
    let (mut lo, mut hi) = (0, 0);
    for c in 0..chunks {
        let (start, end) = (c * m.chunk, (c + 1) * m.chunk);
        let touches = |r: &&Req| r.off < end && start < r.off + r.len;
        let mut epochs: Vec<u64> = settled.iter().filter(touches).map(|r| r.epoch).collect();
        let p: Vec<&Req> = pending.iter().filter(touches).collect();
        let without = count(&epochs);
        if p.is_empty() {
            lo += without;
            hi += without;
            continue;
        }
        epochs.extend(p.iter().map(|r| r.epoch));
        let with = count(&epochs);
        let span = start as usize..end as usize;
        let survived = got[span.clone()] != m.settled[span]
            && (start..end).any(|at| {
                got[at as usize] != m.settled[at as usize] && p.iter().any(|r| r.covers(at))
            });
        lo += if survived { with } else { with.min(without) };
        hi += with.max(without);
    }
    (lo, hi)
}

/// What a recovery gave back, beyond what it must: to show the sweep covers both sides of
/// every "may".
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Some write after the last completed flush survived.
    pub unflushed_kept: bool,
    /// Some write after the last completed flush is missing.
    pub unflushed_lost: bool,
    /// A snapshot whose creation was interrupted: `Some(survived)`.
    pub interrupted_snapshot: Option<bool>,
    /// A snapshot whose deletion was interrupted: `Some(still there)`.
    pub interrupted_delete: Option<bool>,
}

/// What a recovered volume reads: the live volume and every snapshot.
struct Recovered {
    live: Vec<u8>,
    snaps: Vec<(SnapshotSeq, Vec<u8>)>,
    outcome: Outcome,
}

/// Everything a recovery must give back, judged on a volume just opened on crash images.
fn assert_recovered(m: &Model, vol: &Volume) -> Recovered {
    let live = read_all(vol, None);
    let infos = vol.snapshots();
    let mut snap_images = Vec::new();
    for info in &infos {
        let sm = m.snaps.iter().find(|s| s.name == info.name);
        let Some(sm) = sm else {
            panic!(
                "snapshot {} ({}) exists after recovery but was never created",
                info.name, info.seq
            );
        };
        let got = read_all(vol, Some(info.seq));
        match sm.state {
            SnapState::Deleted => panic!(
                "snapshot {} came back after its deletion was acknowledged",
                sm.name
            ),
            SnapState::Acked => assert_eq!(
                Some(info.seq),
                sm.seq,
                "snapshot {} changed its sequence number",
                sm.name
            ),
            SnapState::CreateInFlight => {
                // Its record is committed only after the flush that makes every earlier write
                // durable, so the live volume cannot be older than it (no write came after it).
                if let Some(at) = first_diff(&live, &sm.image) {
                    panic!(
                        "snapshot {} (creation interrupted) survived, but the live volume is not \
                         the image it holds: first difference at byte {at:#x}",
                        sm.name
                    );
                }
            }
            SnapState::DeleteInFlight => {}
        }
        if let Some(at) = first_diff(&got, &sm.image) {
            panic!(
                "snapshot {} ({:?}) reads {:#04x} at byte {at:#x} where it held {:#04x} when it \
                 was taken",
                sm.name, sm.state, got[at], sm.image[at]
            );
        }
        snap_images.push((info.seq, got));
    }
    for sm in &m.snaps {
        if sm.state == SnapState::Acked {
            assert!(
                infos.iter().any(|i| i.name == sm.name),
                "snapshot {} was acknowledged but is gone after recovery",
                sm.name
            );
        }
    }
    assert_live_volume(m, &live);
    let mut outcome = Outcome {
        unflushed_kept: live != m.settled,
        unflushed_lost: live != m.image,
        ..Outcome::default()
    };
    for sm in &m.snaps {
        let there = infos.iter().any(|i| i.name == sm.name);
        match sm.state {
            SnapState::CreateInFlight => outcome.interrupted_snapshot = Some(there),
            SnapState::DeleteInFlight => outcome.interrupted_delete = Some(there),
            _ => {}
        }
    }

    let info = vol.info();
    let live_seqs: Vec<_> = infos.iter().map(|i| i.seq).collect();
    let (lo, hi) = needed_copies(m, &live_seqs, &live);
    let used = info.target_used_bytes / m.chunk;
    assert!(
        lo <= used && used <= hi,
        "target holds {used} preserved chunks; the {} live snapshots need between {lo} and {hi} \
         (leaked or missing copies)",
        live_seqs.len()
    );
    Recovered {
        live,
        snaps: snap_images,
        outcome,
    }
}

/// Recovers from `img` and judges the result; then checks that a clean close keeps it, and that
/// deleting every snapshot gives all target space back.
///
/// `torn`: superblock copies the power loss tore (see [`torn_superblocks`]).
pub fn recover_and_check(w: &Workload, m: &Model, img: Images, torn: &[u64]) -> Outcome {
    let dev = Devices::restart(img);
    check_clean_but_torn(
        &*dev.source,
        &*dev.target,
        &*dev.journal,
        torn,
        "on the crash images, before recovery",
    );
    let opts = w.options(false);
    let vol = Volume::open_on("crash", dev.vluns(), opts.clone())
        .unwrap_or_else(|e| panic!("recovery failed: open_on returned {e}"));
    let Recovered {
        live,
        snaps,
        outcome,
    } = assert_recovered(m, &vol);
    vol.close()
        .unwrap_or_else(|e| panic!("close after recovery: {e}"));
    dev.check_clean("after recovery and a clean close");

    // What recovery gave back is now durable: a second open sees exactly the same.
    let vol = Volume::open_on("crash", dev.vluns(), opts)
        .unwrap_or_else(|e| panic!("reopen after recovery: {e}"));
    if let Some(at) = first_diff(&read_all(&vol, None), &live) {
        panic!("the live volume changed across a clean close after recovery, at byte {at:#x}");
    }
    for (seq, img) in &snaps {
        if let Some(at) = first_diff(&read_all(&vol, Some(*seq)), img) {
            panic!("snapshot {seq} changed across a clean close after recovery, at byte {at:#x}");
        }
    }
    for s in vol.snapshots() {
        vol.snapshot_delete(&s.name)
            .unwrap_or_else(|e| panic!("delete {} after recovery: {e}", s.name));
    }
    vol.destage_all()
        .unwrap_or_else(|e| panic!("destage_all after recovery: {e}"));
    let used = vol.info().target_used_bytes;
    assert_eq!(
        used, 0,
        "with every snapshot deleted and the cache destaged the target still holds {used} \
         bytes of preserved data (leaked target space)"
    );
    vol.close().unwrap_or_else(|e| panic!("final close: {e}"));
    dev.check_clean("after deleting every snapshot");
    outcome
}

// ---------------------------------------------------------------------------------------------
// Driving many crash points
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
pub struct Summary {
    /// Crash points judged: (k, loss) pairs whose images differ from those of the losses tried
    /// before at the same k (the same images would be the same test).
    pub points: u64,
    /// (k, loss) pairs skipped because they gave the images of an earlier loss at that k.
    pub duplicates: u64,
    pub failures: Vec<String>,
    /// Recoveries that kept some unflushed write / lost some.
    pub unflushed_kept: u64,
    pub unflushed_lost: u64,
    /// Interrupted snapshot creations that survived / did not.
    pub snapshot_kept: u64,
    pub snapshot_lost: u64,
    /// Interrupted snapshot deletions that took effect / did not.
    pub delete_done: u64,
    pub delete_undone: u64,
    /// Crash images with a torn superblock copy.
    pub torn_superblocks: u64,
}

impl Summary {
    fn count(&mut self, o: Outcome) {
        self.unflushed_kept += u64::from(o.unflushed_kept);
        self.unflushed_lost += u64::from(o.unflushed_lost);
        match o.interrupted_snapshot {
            Some(true) => self.snapshot_kept += 1,
            Some(false) => self.snapshot_lost += 1,
            None => {}
        }
        match o.interrupted_delete {
            Some(true) => self.delete_undone += 1,
            Some(false) => self.delete_done += 1,
            None => {}
        }
    }

    /// Adds another summary's counts and failures.
    pub fn absorb(&mut self, o: Summary) {
        self.points += o.points;
        self.duplicates += o.duplicates;
        self.failures.extend(o.failures);
        self.unflushed_kept += o.unflushed_kept;
        self.unflushed_lost += o.unflushed_lost;
        self.snapshot_kept += o.snapshot_kept;
        self.snapshot_lost += o.snapshot_lost;
        self.delete_done += o.delete_done;
        self.delete_undone += o.delete_undone;
        self.torn_superblocks += o.torn_superblocks;
    }

    /// One line on what the recoveries gave back.
    pub fn outcomes(&self) -> String {
        format!(
            "unflushed writes kept in {} / lost in {} recoveries; interrupted snapshots kept {} / \
             lost {}; interrupted deletes done {} / undone {}; torn superblock copies {}",
            self.unflushed_kept,
            self.unflushed_lost,
            self.snapshot_kept,
            self.snapshot_lost,
            self.delete_done,
            self.delete_undone,
            self.torn_superblocks
        )
    }
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

const WORKER_PREFIX: &str = "crashkit-";

/// Panics on the harness's worker threads are caught and reported as failures with their
/// location; they are not printed as they happen (a failing run would print thousands).
fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let ours = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with(WORKER_PREFIX));
            if ours {
                let msg = payload_text(info.payload());
                let loc = info
                    .location()
                    .map(|l| format!(" ({}:{})", l.file(), l.line()))
                    .unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg}{loc}")));
            } else {
                prev(info);
            }
        }));
    });
}

fn payload_text(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

/// Runs `f`, turning a panic into `Err(message with location)`.
pub fn catching<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_quiet_hook();
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        LAST_PANIC
            .with(|l| l.borrow_mut().take())
            .unwrap_or_else(|| payload_text(&*p))
    })
}

/// Crashes `w` at I/O index `k`, then judges every loss in `losses` whose images differ from
/// the previous ones. Returns (points judged, duplicates, failures).
///
/// `deterministic_ios`: the workload's I/O count without a crash, when every run issues the
/// same I/O (no background destager); a crash index below it must then stop the workload.
pub fn crash_at(
    w: &Workload,
    k: u64,
    losses: &[Loss],
    background: bool,
    deterministic_ios: Option<u64>,
) -> Summary {
    let mut out = Summary::default();
    let run = match catching(|| run_workload(w, Some(k), background)) {
        Ok(run) => run,
        Err(msg) => {
            out.points = 1;
            out.failures
                .push(format!("{} k={k}: workload: {msg}", w.name));
            return out;
        }
    };
    if let Some(n) = deterministic_ios {
        if k < n && run.model.failed_op.is_none() {
            out.points = 1;
            out.failures.push(format!(
                "{} k={k}: the workload issued {} I/O calls and finished; the dry run issued {n} \
                 (not deterministic)",
                w.name, run.ios
            ));
            return out;
        }
    }
    let mut seen: Vec<[u32; 6]> = Vec::new();
    let stopped = match &run.model.failed_op {
        Some((i, e)) => format!("op {i} failed: {e}"),
        None => "the workload finished".to_owned(),
    };
    for &loss in losses {
        let img = run.devices.crash_images(loss);
        let fingerprint = img.fingerprint();
        if seen.contains(&fingerprint) {
            out.duplicates += 1;
            continue;
        }
        seen.push(fingerprint);
        out.points += 1;
        let torn = torn_superblocks(&run.devices, &img);
        out.torn_superblocks += u64::from(!torn.is_empty());
        match catching(|| recover_and_check(w, &run.model, img, &torn)) {
            Ok(outcome) => out.count(outcome),
            Err(msg) => out.failures.push(format!(
                "{} k={k} {loss:?} ({stopped}; unsynced s/t/j {:?}): {msg}",
                w.name,
                run.devices.unsynced()
            )),
        }
    }
    out
}

/// Every crash point copies the 4 MiB journal image twice (`crash_image`, then `from_image`),
/// some 20,000 times a run. glibc hands freed buffers that size back to the kernel and
/// page-faults them in again on the next copy, which made the sweep spend two thirds of its
/// time in the kernel. Keeping freed memory in the process halves the run time.
fn keep_freed_memory() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        #[allow(unsafe_code)]
        // SAFETY: `mallopt` only sets allocator tunables (under glibc's own lock); it touches
        // no memory of ours and is valid to call at any time from any thread.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        }
    });
}

/// How many worker threads to use: the machine's cores, at least 2, at most 4.
pub fn workers() -> usize {
    if let Some(n) = std::env::var("CRASHKIT_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .clamp(2, 4)
}

/// Judges every crash index in `ks`, spread over worker threads. Stops early after a few
/// failures (they are usually the same bug).
/// `deterministic_ios` as for [`crash_at`].
pub fn sweep(
    w: &Workload,
    ks: &[u64],
    background: bool,
    deterministic_ios: Option<u64>,
) -> Summary {
    const MAX_FAILURES: usize = 6;
    keep_freed_memory();
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Summary::default());
    std::thread::scope(|scope| {
        for t in 0..workers() {
            std::thread::Builder::new()
                .name(format!("{WORKER_PREFIX}{t}"))
                .spawn_scoped(scope, || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&k) = ks.get(i) else { break };
                    if out.lock().expect("summary").failures.len() >= MAX_FAILURES {
                        break;
                    }
                    let one = crash_at(w, k, &Loss::all_for(k), background, deterministic_ios);
                    out.lock().expect("summary").absorb(one);
                })
                .expect("spawn crash worker");
        }
    });
    let mut s = out.into_inner().expect("summary");
    s.failures.sort();
    s
}

/// Runs `w` without a crash: its I/O count, and a sanity check of the script and the oracle.
pub fn dry_run(w: &Workload, background: bool) -> u64 {
    w.validate();
    let run = run_workload(w, None, background);
    assert!(
        run.model.failed_op.is_none(),
        "{}: the workload fails without a crash",
        w.name
    );
    assert_eq!(run.model.ops_done, w.ops.len());
    run.ios
}
