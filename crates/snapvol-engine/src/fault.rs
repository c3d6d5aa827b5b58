//! Fault-injecting VLUNs for crash and error tests.
//!
//! The engine's crash argument (docs/format.md) says what each step of a commit leaves on
//! the media if the power fails right after it. These types let a test *produce* those
//! states instead of trusting the argument:
//!
//! - [`FaultController`] gives every I/O call (`read_at`, `write_at`, `sync`, `punch_zero`,
//!   `set_len`) of every VLUN attached to it one global, 0-based index. Armed with
//!   [`FaultController::crash_at`], it simulates a **power loss**: the I/O with that index and
//!   every later one fails with no effect, on all attached VLUNs at once, the way a machine
//!   that lost power stops talking to all of its disks. Armed with
//!   [`FaultController::fail_at`], it simulates a **transient media error**: one I/O fails
//!   with `EIO` and no effect, and the device carries on, which is what the engine must
//!   answer with "close and reopen" rather than a guess.
//! - [`CrashVlun`] is an in-memory device with a volatile write cache. It keeps the *live*
//!   image (what reads return), the *durable* image (what the last successful `sync` made
//!   safe) and the unsynced operations in between. [`CrashVlun::crash_image`] returns what a
//!   power loss would leave on the media: the durable image plus unsynced writes dropped
//!   ([`CrashMode::DropAll`]), all kept ([`CrashMode::KeepAll`]), an in-order prefix kept
//!   ([`CrashMode::KeepFirst`]), or any subset applied in any order with each write possibly
//!   torn at 512-byte sector boundaries ([`CrashMode::Random`]). A test reopens the engine
//!   on that image with [`CrashVlun::from_image`] and runs the checker.
//! - [`CrashVlun::flip_byte`] simulates **silent corruption** (bit rot, a misdirected write)
//!   so tests can show that damaged metadata is reported as corrupt, not trusted.
//! - [`FaultyVlun`] attaches any other VLUN (a `FileVlun`, a `MemVlun`) to a controller, for
//!   error injection where crash images are not needed.
//!
//! ## The media model
//!
//! A 512-byte sector is the unit of atomicity: after a crash each aligned sector holds a
//! version it really had at some point since the last sync, never a mix of two. An unsynced
//! write captures the *whole* sectors it touched as they read right after it, so a write
//! that covers part of a sector brings back the rest of that sector as it was then, like a
//! page cache or a drive doing read-modify-write. Writes to the same sector may reach the
//! media in any order (the drive's cache may write back an older version and lose the
//! newer one). A sync that returns `Ok` makes every write that returned before it durable.
//! A punched range reads as zero; a punch and a `set_len` are unsynced operations like
//! writes, each kept or lost by a crash.

use std::fmt;
use std::io;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::vlun::Vlun;

/// Bytes in a sector, the unit a crash never splits.
pub const SECTOR_SIZE: u64 = 512;

/// `SECTOR_SIZE` for indexing into in-memory images.
const SECTOR: usize = 512;

/// The message of the error every I/O returns once the controller has crashed.
pub const POWER_LOSS_MESSAGE: &str = "simulated power loss";

/// Whether `err` is the error a crashed [`FaultController`] returns.
pub fn is_power_loss(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Other && err.to_string() == POWER_LOSS_MESSAGE
}

fn power_loss() -> io::Error {
    io::Error::other(POWER_LOSS_MESSAGE)
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// One kind of counted I/O call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// `read_at`.
    Read,
    /// `write_at`.
    Write,
    /// `sync`.
    Sync,
    /// `punch_zero`.
    PunchZero,
    /// `set_len`.
    SetLen,
    /// `reserve_space`.
    ReserveSpace,
}

impl IoOp {
    const ALL: [IoOp; 6] = [
        IoOp::Read,
        IoOp::Write,
        IoOp::Sync,
        IoOp::PunchZero,
        IoOp::SetLen,
        IoOp::ReserveSpace,
    ];

    fn slot(self) -> usize {
        match self {
            IoOp::Read => 0,
            IoOp::Write => 1,
            IoOp::Sync => 2,
            IoOp::PunchZero => 3,
            IoOp::SetLen => 4,
            IoOp::ReserveSpace => 5,
        }
    }
}

/// Which I/O calls an index given to [`FaultController::fail_at`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpFilter {
    /// Every I/O call: the index is the global one, as in [`FaultController::crash_at`].
    Any,
    /// `read_at` only.
    Reads,
    /// Calls that change the image: `write_at`, `punch_zero` and `set_len`.
    Writes,
    /// Calls that need space on the device: `write_at`, `set_len` and `reserve_space` (where a
    /// file system that is full says `ENOSPC`).
    NeedSpace,
    /// `sync` only.
    Syncs,
    /// One kind of call only.
    Only(IoOp),
}

impl OpFilter {
    /// Whether this filter counts `op`.
    pub fn matches(self, op: IoOp) -> bool {
        match self {
            OpFilter::Any => true,
            OpFilter::Reads => op == IoOp::Read,
            OpFilter::Writes => matches!(op, IoOp::Write | IoOp::PunchZero | IoOp::SetLen),
            OpFilter::NeedSpace => {
                matches!(op, IoOp::Write | IoOp::SetLen | IoOp::ReserveSpace)
            }
            OpFilter::Syncs => op == IoOp::Sync,
            OpFilter::Only(only) => op == only,
        }
    }
}

#[derive(Debug, Default)]
struct ControlState {
    /// Global index the next I/O call gets; also the number of calls so far.
    next: u64,
    /// Calls so far per [`IoOp::slot`].
    per_op: [u64; 6],
    crash_at: Option<u64>,
    crashed: bool,
    /// Armed one-shot errors: (index among matching calls, filter, errno).
    fail_points: Vec<(u64, OpFilter, i32)>,
    /// While set, every call that needs space fails with `ENOSPC` (a full file system).
    full: bool,
    injected: u64,
}

impl ControlState {
    fn matching(&self, filter: OpFilter) -> u64 {
        IoOp::ALL
            .iter()
            .filter(|op| filter.matches(**op))
            .map(|op| self.per_op[op.slot()])
            .sum()
    }
}

/// Counts the I/O of every VLUN attached to it and decides which call fails.
///
/// Shared through an `Arc` by all the VLUNs of one simulated machine; thread-safe. Indices
/// are 0-based and count every call, failed ones included: [`FaultController::io_count`] is
/// the index the next call will get.
#[derive(Debug, Default)]
pub struct FaultController {
    state: Mutex<ControlState>,
}

impl FaultController {
    /// A controller with nothing armed, ready to share between VLUNs.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Arms a power loss: the I/O with global index `index` and every later one fail with
    /// "simulated power loss" and have no effect. An index already passed crashes the next
    /// call. Replaces an earlier `crash_at` that has not fired yet.
    pub fn crash_at(&self, index: u64) {
        self.state.lock().crash_at = Some(index);
    }

    /// Crashes now: every later I/O fails.
    pub fn crash_now(&self) {
        self.state.lock().crashed = true;
    }

    /// Arms one `EIO`: the `index`-th call (0-based, counted since the controller was made)
    /// among those `filter` counts fails once with `EIO` and no effect; later calls proceed.
    /// An index already passed never fires. Several fail points may be armed at once.
    pub fn fail_at(&self, index: u64, filter: OpFilter) {
        self.fail_at_with(index, filter, libc::EIO);
    }

    /// As [`FaultController::fail_at`], with the error number `errno` (`ENOSPC`, say).
    pub fn fail_at_with(&self, index: u64, filter: OpFilter, errno: i32) {
        self.state.lock().fail_points.push((index, filter, errno));
    }

    /// Fills the file system up: from now on, until [`FaultController::free_space`],
    /// `reserve_space` fails with `ENOSPC`, and so does a write to a [`CrashVlun`] that
    /// touches a block with no space behind it (past its end, never written or reserved, or
    /// punched or discarded since); writes into blocks it holds go on, as on a full file
    /// system (its allocated blocks are still there to overwrite).
    pub fn fill_up(&self) {
        self.state.lock().full = true;
    }

    /// Whether [`FaultController::fill_up`] is in force.
    pub fn is_full(&self) -> bool {
        self.state.lock().full
    }

    /// Frees space again after [`FaultController::fill_up`].
    pub fn free_space(&self) {
        self.state.lock().full = false;
    }

    /// Removes the armed crash (unless it already happened) and every armed `EIO`.
    pub fn disarm(&self) {
        let mut st = self.state.lock();
        st.crash_at = None;
        st.fail_points.clear();
    }

    /// I/O calls so far, on all attached VLUNs; the global index of the next one.
    pub fn io_count(&self) -> u64 {
        self.state.lock().next
    }

    /// Calls so far among those `filter` counts; the index [`FaultController::fail_at`]
    /// would give the next such call.
    pub fn op_count(&self, filter: OpFilter) -> u64 {
        self.state.lock().matching(filter)
    }

    /// Whether the simulated power loss has happened.
    pub fn crashed(&self) -> bool {
        self.state.lock().crashed
    }

    /// `EIO` errors injected so far by [`FaultController::fail_at`].
    pub fn faults_injected(&self) -> u64 {
        self.state.lock().injected
    }

    /// Gives the call `op` its index and says whether it may proceed.
    fn admit(&self, op: IoOp) -> io::Result<()> {
        let mut st = self.state.lock();
        let index = st.next;
        st.next += 1;
        // A call's index among those a filter counts is the count before it.
        let fail_point = st
            .fail_points
            .iter()
            .position(|&(at, filter, _)| filter.matches(op) && st.matching(filter) == at);
        st.per_op[op.slot()] += 1;
        if st.crash_at.is_some_and(|at| index >= at) {
            st.crashed = true;
        }
        if st.crashed {
            return Err(power_loss());
        }
        if let Some(i) = fail_point {
            let (_, _, errno) = st.fail_points.swap_remove(i);
            st.injected += 1;
            return Err(io::Error::from_raw_os_error(errno));
        }
        if st.full && op == IoOp::ReserveSpace {
            st.injected += 1;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    /// Fails when crashed, without counting: for calls outside the counted set (`len`).
    fn check_alive(&self) -> io::Result<()> {
        if self.state.lock().crashed {
            Err(power_loss())
        } else {
            Ok(())
        }
    }
}

/// Which unsynced operations a simulated power loss lets reach the media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashMode {
    /// None: the image is exactly the durable one.
    DropAll,
    /// All of them, whole, in order: the image equals the live one.
    KeepAll,
    /// The first `n` of them, whole, in order: an in-order write-back cache that lost its tail.
    KeepFirst(usize),
    /// Each independently kept or lost, the kept ones applied in a random order, and each kept
    /// one possibly torn (only some of its sectors applied). Decided by the seed.
    Random,
}

/// A piece of an unsynced operation, starting on a sector boundary.
#[derive(Clone)]
enum Segment {
    /// Whole sectors as they read right after the operation (the last one may stop at the end
    /// of the image).
    Bytes { start: usize, data: Vec<u8> },
    /// Whole sectors of zeroes, from a punch.
    Zeros { start: usize, len: usize },
}

/// An operation since the last successful sync.
#[derive(Clone)]
enum Pending {
    Sectors(Vec<Segment>),
    SetLen(usize),
}

impl Pending {
    /// Applies the operation to `img`; with `tear`, each sector only if a coin says so.
    fn apply(&self, img: &mut Vec<u8>, mut tear: Option<&mut SplitMix64>) {
        match self {
            Pending::SetLen(len) => img.resize(*len, 0),
            Pending::Sectors(segments) => {
                for seg in segments {
                    match seg {
                        Segment::Bytes { start, data } => {
                            for (i, sector) in data.chunks(SECTOR).enumerate() {
                                if tear.as_deref_mut().is_some_and(|rng| !rng.coin()) {
                                    continue;
                                }
                                let at = start + i * SECTOR;
                                let end = at + sector.len();
                                if img.len() < end {
                                    img.resize(end, 0);
                                }
                                img[at..end].copy_from_slice(sector);
                            }
                        }
                        Segment::Zeros { start, len } => {
                            let mut at = *start;
                            while at < start + len {
                                let end = (at + SECTOR).min(start + len);
                                let keep = tear.as_deref_mut().is_none_or(SplitMix64::coin);
                                // Past the end of the image a sector already reads as zero.
                                if keep && at < img.len() {
                                    let end = end.min(img.len());
                                    img[at..end].fill(0);
                                }
                                at = end;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The segments that record a change to `[offset, end)` of `live` (already applied), widened
/// to whole sectors. With `zeros`, whole sectors inside the range are recorded as zeroes
/// rather than copied.
fn capture(live: &[u8], offset: usize, end: usize, zeros: bool) -> Vec<Segment> {
    let down = |x: usize| x / SECTOR * SECTOR;
    let up = |x: usize| x.div_ceil(SECTOR) * SECTOR;
    let first = down(offset);
    let last = up(end).min(live.len());
    let bytes = |a: usize, b: usize| Segment::Bytes {
        start: a,
        data: live[a..b].to_vec(),
    };
    let (inner_start, inner_end) = (up(offset), down(end));
    if !zeros || inner_start >= inner_end {
        return vec![bytes(first, last)];
    }
    let mut segs = Vec::with_capacity(3);
    if first < inner_start {
        segs.push(bytes(first, inner_start));
    }
    segs.push(Segment::Zeros {
        start: inner_start,
        len: inner_end - inner_start,
    });
    if inner_end < last {
        segs.push(bytes(inner_end, last));
    }
    segs
}

/// SplitMix64: a tiny deterministic generator, so a failing seed replays exactly.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_4761_CE4E_5B9B);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// A value in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        // The modulo bias is irrelevant for choosing crash states.
        (self.next_u64() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

struct Images {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    /// Which [`FS_BLOCK`]s have space behind them, as a file system's allocated blocks: written
    /// or reserved, and not punched or discarded since. Past its end: none.
    backed: Vec<bool>,
}

/// The unit in which a [`CrashVlun`] tracks which of its bytes have space behind them.
const FS_BLOCK: usize = 4096;

impl Images {
    /// Whether writing `[start, end)` needs space the device does not hold yet.
    fn needs_space(&self, start: usize, end: usize) -> bool {
        (start / FS_BLOCK..end.div_ceil(FS_BLOCK))
            .any(|b| !self.backed.get(b).copied().unwrap_or(false))
    }

    /// Gives `[start, end)` space (every block it touches).
    fn back(&mut self, start: usize, end: usize) {
        let blocks = start / FS_BLOCK..end.div_ceil(FS_BLOCK);
        if self.backed.len() < blocks.end {
            self.backed.resize(blocks.end, false);
        }
        self.backed[blocks].fill(true);
    }

    /// Takes the space of the blocks wholly inside `[start, end)` away (a hole).
    fn unback(&mut self, start: usize, end: usize) {
        let blocks = start.div_ceil(FS_BLOCK)..(end / FS_BLOCK).min(self.backed.len());
        if blocks.start < blocks.end {
            self.backed[blocks].fill(false);
        }
    }
}

/// An in-memory VLUN with a volatile write cache, attached to a [`FaultController`].
///
/// Reads see the live image; [`CrashVlun::crash_image`] tells what a power loss would leave.
/// Invariant: the durable image with every unsynced operation applied in order is the live
/// image.
pub struct CrashVlun {
    controller: Arc<FaultController>,
    fixed: Option<usize>,
    images: RwLock<Images>,
}

impl fmt::Debug for CrashVlun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let im = self.images.read();
        f.debug_struct("CrashVlun")
            .field("live_len", &im.live.len())
            .field("durable_len", &im.durable.len())
            .field("unsynced", &im.pending.len())
            .field("fixed", &self.fixed)
            .finish_non_exhaustive()
    }
}

impl CrashVlun {
    /// A device holding `bytes`; `backed` says whether they have space behind them.
    fn with_image(
        controller: &Arc<FaultController>,
        bytes: Vec<u8>,
        fixed: bool,
        backed: bool,
    ) -> Self {
        Self {
            controller: Arc::clone(controller),
            fixed: fixed.then_some(bytes.len()),
            images: RwLock::new(Images {
                backed: vec![backed; bytes.len().div_ceil(FS_BLOCK)],
                live: bytes.clone(),
                durable: bytes,
                pending: Vec::new(),
            }),
        }
    }

    /// A growable device of `len` zero bytes, all durable (like `MemVlun::new`): a sparse file,
    /// none of whose blocks has space behind it until written or reserved.
    ///
    /// # Panics
    /// If `len` does not fit in memory's address range.
    pub fn new(controller: &Arc<FaultController>, len: u64) -> Self {
        let len = usize::try_from(len).expect("CrashVlun length fits in usize");
        Self::with_image(controller, vec![0; len], false, false)
    }

    /// A device of `len` zero bytes that cannot grow, like a block device (`MemVlun::fixed`).
    ///
    /// # Panics
    /// If `len` does not fit in memory's address range.
    pub fn fixed(controller: &Arc<FaultController>, len: u64) -> Self {
        let len = usize::try_from(len).expect("CrashVlun length fits in usize");
        Self::with_image(controller, vec![0; len], true, true)
    }

    /// A growable device whose durable content is `bytes`: the restart after a crash. Every
    /// block of it counts as having space behind it.
    pub fn from_image(controller: &Arc<FaultController>, bytes: Vec<u8>) -> Self {
        Self::with_image(controller, bytes, false, true)
    }

    /// A fixed-size device whose durable content is `bytes`.
    pub fn from_image_fixed(controller: &Arc<FaultController>, bytes: Vec<u8>) -> Self {
        Self::with_image(controller, bytes, true, true)
    }

    /// Zeroes what `[start, end)` covers of the image, as an unsynced operation, and on a
    /// growable device takes the space of its whole blocks away (a hole).
    fn zero(&self, im: &mut Images, start: usize, end: usize) {
        let end = end.min(im.live.len());
        if start >= end {
            return;
        }
        im.live[start..end].fill(0);
        if self.fixed.is_none() {
            im.unback(start, end);
        }
        let segs = capture(&im.live, start, end, true);
        im.pending.push(Pending::Sectors(segs));
    }

    /// The controller this device reports to.
    pub fn controller(&self) -> &Arc<FaultController> {
        &self.controller
    }

    /// A copy of what reads return now.
    pub fn live_image(&self) -> Vec<u8> {
        self.images.read().live.clone()
    }

    /// A copy of what the last successful sync made durable.
    pub fn durable_image(&self) -> Vec<u8> {
        self.images.read().durable.clone()
    }

    /// Operations (writes, punches, length changes) since the last successful sync.
    pub fn unsynced_count(&self) -> usize {
        self.images.read().pending.len()
    }

    /// What a power loss now would leave on the media, as chosen by `mode`; `rng_seed` makes
    /// [`CrashMode::Random`] reproducible and is ignored by the other modes. Does not change
    /// the device and counts no I/O.
    pub fn crash_image(&self, mode: CrashMode, rng_seed: u64) -> Vec<u8> {
        let im = self.images.read();
        let mut img = im.durable.clone();
        match mode {
            CrashMode::DropAll => {}
            CrashMode::KeepAll | CrashMode::KeepFirst(_) => {
                let n = match mode {
                    CrashMode::KeepFirst(n) => n,
                    _ => im.pending.len(),
                };
                for op in im.pending.iter().take(n) {
                    op.apply(&mut img, None);
                }
            }
            CrashMode::Random => {
                let mut rng = SplitMix64(rng_seed);
                let mut order: Vec<usize> = (0..im.pending.len()).collect();
                rng.shuffle(&mut order);
                for i in order {
                    if !rng.coin() {
                        continue;
                    }
                    let torn = rng.coin();
                    im.pending[i].apply(&mut img, torn.then_some(&mut rng));
                }
            }
        }
        img
    }

    /// Corrupts the byte at `offset` by XOR with `mask`, as bit rot would: in the live image,
    /// the durable image and every unsynced write that covers it, so the damage shows in reads
    /// and in every crash image (unless a later punch or truncation zeroes the byte). Counts
    /// no I/O and works after a crash.
    ///
    /// # Errors
    /// `InvalidInput` if `offset` lies past the end of both the live and the durable image.
    pub fn flip_byte(&self, offset: u64, mask: u8) -> io::Result<()> {
        let at = usize::try_from(offset).map_err(|_| invalid("offset out of range"))?;
        let mut im = self.images.write();
        if at >= im.live.len() && at >= im.durable.len() {
            return Err(invalid("offset past the end of the image"));
        }
        let Images {
            live,
            durable,
            pending,
            ..
        } = &mut *im;
        for img in [live, durable] {
            if let Some(b) = img.get_mut(at) {
                *b ^= mask;
            }
        }
        for op in pending.iter_mut() {
            if let Pending::Sectors(segments) = op {
                for seg in segments {
                    if let Segment::Bytes { start, data } = seg {
                        if let Some(b) = at.checked_sub(*start).and_then(|i| data.get_mut(i)) {
                            *b ^= mask;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// `[offset, offset + len)` as in-memory indices, or `InvalidInput`.
fn range(offset: u64, len: usize) -> io::Result<(usize, usize)> {
    let start = usize::try_from(offset).map_err(|_| invalid("offset out of range"))?;
    let end = start
        .checked_add(len)
        .ok_or_else(|| invalid("offset + length overflows"))?;
    Ok((start, end))
}

impl Vlun for CrashVlun {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let im = self.images.read();
        self.controller.admit(IoOp::Read)?;
        let (start, end) = range(offset, buf.len())?;
        let have = end.min(im.live.len()).saturating_sub(start);
        if have > 0 {
            buf[..have].copy_from_slice(&im.live[start..start + have]);
        }
        buf[have..].fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut im = self.images.write();
        self.controller.admit(IoOp::Write)?;
        let (start, end) = range(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        // Growing a fixed device, or writing where no space is held on a full file system,
        // is refused before anything changes.
        if self.fixed.is_some_and(|len| end > len)
            || self.controller.is_full() && im.needs_space(start, end)
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if end > im.live.len() {
            im.live.resize(end, 0);
        }
        if self.fixed.is_none() {
            im.back(start, end);
        }
        im.live[start..end].copy_from_slice(buf);
        let segs = capture(&im.live, start, end, false);
        im.pending.push(Pending::Sectors(segs));
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut im = self.images.write();
        self.controller.admit(IoOp::Sync)?;
        let Images {
            durable, pending, ..
        } = &mut *im;
        for op in pending.drain(..) {
            op.apply(durable, None);
        }
        debug_assert!(
            im.durable == im.live,
            "replaying unsynced ops rebuilds the live image"
        );
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.controller.check_alive()?;
        Ok(self.images.read().live.len() as u64)
    }

    fn growable(&self) -> bool {
        self.fixed.is_none()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut im = self.images.write();
        self.controller.admit(IoOp::SetLen)?;
        if self.fixed.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "fixed-size VLUN",
            ));
        }
        let len = usize::try_from(len).map_err(|_| invalid("length out of range"))?;
        im.live.resize(len, 0);
        let blocks = im.backed.len().min(len.div_ceil(FS_BLOCK));
        im.backed.truncate(blocks);
        im.pending.push(Pending::SetLen(len));
        Ok(())
    }

    /// Zeroes the range. Like hole punching on a regular file (`FALLOC_FL_KEEP_SIZE`) it never
    /// grows a growable device; on a fixed one, like writing zeroes to a block device, a range
    /// past the end fails with `ENOSPC`.
    fn punch_zero(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut im = self.images.write();
        self.controller.admit(IoOp::PunchZero)?;
        let len = usize::try_from(len).map_err(|_| invalid("length out of range"))?;
        let (start, end) = range(offset, len)?;
        if self.fixed.is_some() && end > im.live.len() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.zero(&mut im, start, end);
        Ok(())
    }

    /// A counted call that fails as armed, or with `ENOSPC` while the controller says the
    /// space is full; otherwise later writes to the range (of a growable device) need no
    /// more space, as after `fallocate(KEEP_SIZE)`.
    fn reserve_space(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut im = self.images.write();
        self.controller.admit(IoOp::ReserveSpace)?;
        let len = usize::try_from(len).map_err(|_| invalid("length out of range"))?;
        let (start, end) = range(offset, len)?;
        if self.fixed.is_none() {
            im.back(start, end);
        }
        Ok(())
    }

    /// Zeroes the range (what it then reads is up to the device; zeroes are one such
    /// answer) and, on a growable device, takes the space of its whole blocks away, as a
    /// hole punched in a file.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut im = self.images.write();
        self.controller.check_alive()?;
        let len = usize::try_from(len).map_err(|_| invalid("length out of range"))?;
        let (start, end) = range(offset, len)?;
        self.zero(&mut im, start, end);
        Ok(())
    }
}

/// Any VLUN attached to a [`FaultController`]: its calls are counted and fail as armed, with
/// no effect on the inner VLUN. It keeps no crash image; use [`CrashVlun`] for that.
#[derive(Debug)]
pub struct FaultyVlun<V> {
    controller: Arc<FaultController>,
    inner: V,
}

impl<V: Vlun> FaultyVlun<V> {
    /// Attaches `inner` to `controller`.
    pub fn new(controller: &Arc<FaultController>, inner: V) -> Self {
        Self {
            controller: Arc::clone(controller),
            inner,
        }
    }

    /// The wrapped VLUN, for inspection without counting.
    pub fn inner(&self) -> &V {
        &self.inner
    }

    /// Detaches the wrapped VLUN.
    pub fn into_inner(self) -> V {
        self.inner
    }
}

impl<V: Vlun> Vlun for FaultyVlun<V> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.controller.admit(IoOp::Read)?;
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.controller.admit(IoOp::Write)?;
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.controller.admit(IoOp::Sync)?;
        self.inner.sync()
    }
    fn len(&self) -> io::Result<u64> {
        self.controller.check_alive()?;
        self.inner.len()
    }
    fn growable(&self) -> bool {
        self.inner.growable()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.controller.admit(IoOp::SetLen)?;
        self.inner.set_len(len)
    }
    /// One counted call, whatever the inner VLUN does to carry it out.
    fn punch_zero(&self, offset: u64, len: u64) -> io::Result<()> {
        self.controller.admit(IoOp::PunchZero)?;
        self.inner.punch_zero(offset, len)
    }
    fn growth_room(&self) -> Option<u64> {
        self.inner.growth_room()
    }
    /// One counted call; fails with `ENOSPC` while the controller says the space is full.
    fn reserve_space(&self, offset: u64, len: u64) -> io::Result<()> {
        self.controller.admit(IoOp::ReserveSpace)?;
        self.inner.reserve_space(offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.controller.check_alive()?;
        self.inner.discard(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vlun::MemVlun;

    const S: usize = SECTOR;

    fn read(v: &dyn Vlun, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0xEE; len];
        v.read_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Asserts that every sector of `img` is the same sector of one of `versions`.
    fn each_sector_is_one_of(img: &[u8], versions: &[&[u8]], what: &str) {
        for (i, sector) in img.chunks(S).enumerate() {
            let from = i * S..i * S + sector.len();
            assert!(
                versions.iter().any(|v| v.get(from.clone()) == Some(sector)),
                "{what}: sector {i} is a mix that never existed"
            );
        }
    }

    #[test]
    fn unsynced_writes_can_vanish() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 4 * S as u64);
        v.write_at(&[7; 100], 0).expect("write");
        assert_eq!(
            read(&v, 0, 100).expect("read"),
            vec![7; 100],
            "reads see it"
        );

        assert_eq!(v.crash_image(CrashMode::DropAll, 0), vec![0; 4 * S]);
        assert_eq!(v.crash_image(CrashMode::KeepAll, 0), v.live_image());
        let lost = (0..64)
            .filter(|&seed| v.crash_image(CrashMode::Random, seed)[0] == 0)
            .count();
        assert!(
            lost > 0 && lost < 64,
            "Random keeps some, loses some ({lost}/64 lost)"
        );
    }

    #[test]
    fn any_subset_of_unsynced_writes_may_survive_not_just_a_prefix() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 3 * S as u64);
        v.write_at(&[1; S], 0).expect("write");
        v.write_at(&[2; S], S as u64).expect("write");
        v.write_at(&[3; S], 0).expect("rewrite of sector 0");
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let img = v.crash_image(CrashMode::Random, seed);
            seen.insert((img[0], img[S]));
        }
        // Sector 0 may hold the durable zeroes or either version, whatever sector 1 holds:
        // a newer write can be lost while an older one, or a later one elsewhere, survives.
        let all: std::collections::BTreeSet<_> = [0, 1, 3]
            .into_iter()
            .flat_map(|a| [(a, 0), (a, 2)])
            .collect();
        assert_eq!(seen, all);
    }

    #[test]
    fn synced_writes_survive_every_mode() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 0);
        v.write_at(&[1; 3 * S], 0).expect("write");
        v.set_len(8 * S as u64).expect("set_len");
        v.sync().expect("sync");
        assert_eq!(v.unsynced_count(), 0);
        assert_eq!(v.durable_image(), v.live_image());
        // Unsynced traffic elsewhere, even growth and a punch, must not disturb them.
        v.write_at(&[2; S], 5 * S as u64).expect("write");
        v.punch_zero(6 * S as u64, 2 * S as u64).expect("punch");
        v.write_at(&[3; 2 * S], 9 * S as u64)
            .expect("write past the end");

        let mut modes = vec![CrashMode::DropAll, CrashMode::KeepAll];
        modes.extend((0..=3).map(CrashMode::KeepFirst));
        for (mode, seed) in modes
            .into_iter()
            .map(|m| (m, 0))
            .chain((0..200).map(|s| (CrashMode::Random, s)))
        {
            let img = v.crash_image(mode, seed);
            assert_eq!(&img[..3 * S], &[1; 3 * S][..], "{mode:?} seed {seed}");
            assert!(
                img.len() >= 8 * S,
                "{mode:?} seed {seed}: synced length kept"
            );
        }
    }

    #[test]
    fn keep_all_is_the_live_image_and_keep_first_replays_in_order() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 2 * S as u64);
        v.write_at(&[1; 10], 3).expect("write");
        v.write_at(&[2; 2 * S], 700)
            .expect("write that grows the device");
        v.punch_zero(100, 2 * S as u64).expect("punch");
        v.set_len(S as u64 + 5).expect("shrink");
        v.set_len(4 * S as u64).expect("regrow");
        assert_eq!(read(&v, S as u64 + 5, 10).expect("read"), vec![0; 10]);

        assert_eq!(v.crash_image(CrashMode::KeepAll, 0), v.live_image());
        assert_eq!(v.crash_image(CrashMode::KeepFirst(0), 0), v.durable_image());
        let first = v.crash_image(CrashMode::KeepFirst(1), 0);
        assert_eq!(first.len(), 2 * S);
        assert_eq!(
            &first[..16],
            &[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
        );
        assert_eq!(v.crash_image(CrashMode::KeepFirst(5), 0), v.live_image());

        v.sync().expect("sync");
        assert_eq!(v.durable_image(), v.live_image());
    }

    #[test]
    fn a_torn_write_is_all_old_or_all_new_per_512_byte_sector() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 16 * S as u64);
        let old: Vec<u8> = (0..16 * S).map(|i| (i / S) as u8 + 1).collect();
        v.write_at(&old, 0).expect("write");
        v.sync().expect("sync");
        // Aligned, then unaligned and partly overlapping.
        v.write_at(&[0xAB; 8 * S], 0).expect("write");
        let after_first = v.live_image();
        v.write_at(&[0xCD; 3 * S], 7 * S as u64 + 100)
            .expect("write");
        let new = v.live_image();

        let (mut torn, mut whole) = (0, 0);
        for seed in 0..500 {
            let img = v.crash_image(CrashMode::Random, seed);
            each_sector_is_one_of(&img, &[&old, &after_first, &new], &format!("seed {seed}"));
            // Sectors 0..7 belong to the first write alone (the second rewrites sector 7).
            let first_new = img[..7 * S]
                .chunks(S)
                .filter(|s| s.iter().all(|&b| b == 0xAB))
                .count();
            match first_new {
                0 => {}
                7 => whole += 1,
                _ => torn += 1,
            }
        }
        assert!(torn > 0, "some crashes tear the 8-sector write");
        assert!(whole > 0, "some crashes keep it whole");
    }

    #[test]
    fn the_same_seed_gives_the_same_crash_image() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 0);
        for i in 0..20u8 {
            v.write_at(&[i; 3 * S], u64::from(i) * 2 * S as u64)
                .expect("write");
        }
        for seed in 0..20 {
            let a = v.crash_image(CrashMode::Random, seed);
            assert_eq!(a, v.crash_image(CrashMode::Random, seed), "seed {seed}");
        }
        assert_ne!(
            v.crash_image(CrashMode::Random, 1),
            v.crash_image(CrashMode::Random, 2)
        );
    }

    #[test]
    fn a_crash_at_index_n_makes_io_n_and_later_fail_with_no_effect() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 0);
        v.write_at(b"kept", 0).expect("I/O 0");
        v.sync().expect("I/O 1");
        assert_eq!(ctl.io_count(), 2);
        ctl.crash_at(3);
        v.write_at(b"late", 0).expect("I/O 2 is before the crash");
        assert!(!ctl.crashed());

        let err = v.write_at(b"lost", 8).expect_err("I/O 3 crashes");
        assert!(is_power_loss(&err), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::Other);
        assert!(ctl.crashed());
        assert!(
            v.sync().is_err_and(|e| is_power_loss(&e)),
            "later I/O fails"
        );
        assert!(v.set_len(0).is_err());
        assert!(v.punch_zero(0, 4).is_err());
        assert_eq!(ctl.io_count(), 7, "failed calls are counted too");

        assert_eq!(v.live_image(), b"late", "the crashed write changed nothing");
        assert_eq!(
            v.durable_image(),
            b"kept",
            "the crashed sync changed nothing"
        );
        assert_eq!(v.crash_image(CrashMode::DropAll, 0), b"kept");
        assert_eq!(v.crash_image(CrashMode::KeepAll, 0), b"late");

        // Restart on what the power loss left, with a fresh controller.
        let ctl2 = FaultController::new();
        let restarted = CrashVlun::from_image(&ctl2, v.crash_image(CrashMode::DropAll, 0));
        assert_eq!(read(&restarted, 0, 4).expect("read"), b"kept");
        assert_eq!(restarted.crash_image(CrashMode::DropAll, 0), b"kept");
    }

    #[test]
    fn reads_after_a_crash_fail() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 16);
        read(&v, 0, 4).expect("alive");
        ctl.crash_at(ctl.io_count());
        let err = read(&v, 0, 4).expect_err("read after crash");
        assert!(is_power_loss(&err));
        assert!(v.len().is_err_and(|e| is_power_loss(&e)), "len too");
    }

    #[test]
    fn fail_at_injects_exactly_one_eio() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 0);
        // The second write (write index 1) fails; reads and syncs do not count towards it.
        ctl.fail_at(1, OpFilter::Writes);
        v.write_at(b"aaaa", 0).expect("write 0");
        read(&v, 0, 4).expect("reads are not counted");
        v.sync().expect("syncs are not counted");
        let err = v.write_at(b"bbbb", 0).expect_err("write 1 fails");
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        assert_eq!(v.live_image(), b"aaaa", "the failed write had no effect");
        assert_eq!(v.unsynced_count(), 0);
        v.write_at(b"cccc", 0).expect("write 2 proceeds");
        v.sync().expect("sync");
        assert_eq!(v.durable_image(), b"cccc");
        assert_eq!(ctl.faults_injected(), 1);
        assert!(!ctl.crashed());

        // A failed sync leaves the writes before it unsynced.
        ctl.fail_at(ctl.op_count(OpFilter::Syncs), OpFilter::Syncs);
        v.write_at(b"dddd", 0).expect("write");
        let err = v.sync().expect_err("sync fails");
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        assert_eq!(v.crash_image(CrashMode::DropAll, 0), b"cccc");
        v.sync().expect("the next sync works");
        assert_eq!(v.crash_image(CrashMode::DropAll, 0), b"dddd");
        assert_eq!(ctl.faults_injected(), 2);

        // Unfiltered indices are the global ones.
        ctl.fail_at(ctl.io_count() + 1, OpFilter::Any);
        read(&v, 0, 1).expect("this one");
        assert!(read(&v, 0, 1).is_err_and(|e| e.raw_os_error() == Some(libc::EIO)));
        read(&v, 0, 1).expect("and after");
        assert_eq!(ctl.faults_injected(), 3);
    }

    #[test]
    fn counting_is_global_across_two_vluns_on_one_controller() {
        let ctl = FaultController::new();
        let a = CrashVlun::new(&ctl, 0);
        let b = FaultyVlun::new(&ctl, MemVlun::new(0));
        a.write_at(b"x", 0).expect("a: 0");
        b.write_at(b"y", 0).expect("b: 1");
        a.sync().expect("a: 2");
        b.punch_zero(0, 1).expect("b: 3");
        assert_eq!(ctl.io_count(), 4);
        assert_eq!(ctl.op_count(OpFilter::Writes), 3);

        // The power loss hits both devices, whichever makes the crashing call.
        ctl.crash_at(5);
        read(&a, 0, 1).expect("a: 4");
        assert!(b.sync().is_err(), "b: 5 crashes");
        assert!(a.write_at(b"z", 0).is_err(), "a: 6 fails too");
        assert!(b.len().is_err());
        assert_eq!(a.live_image(), b"x");
    }

    #[test]
    fn concurrent_io_gets_distinct_indices() {
        let ctl = FaultController::new();
        let v = Arc::new(CrashVlun::new(&ctl, 0));
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let v = Arc::clone(&v);
                s.spawn(move || {
                    for i in 0..100u64 {
                        v.write_at(&[1; 8], (t * 100 + i) * 8).expect("write");
                    }
                });
            }
        });
        assert_eq!(ctl.io_count(), 400);
        assert_eq!(v.unsynced_count(), 400);
        assert_eq!(v.crash_image(CrashMode::KeepAll, 0), vec![1; 3200]);
    }

    #[test]
    fn a_flipped_byte_shows_in_reads_and_in_every_crash_image() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 2 * S as u64);
        v.write_at(&[0x10; 4], 0).expect("write");
        v.sync().expect("sync");
        v.write_at(&[0x20; 4], S as u64).expect("unsynced write");
        v.flip_byte(1, 0xFF).expect("flip durable byte");
        v.flip_byte(S as u64 + 2, 0x01)
            .expect("flip byte under an unsynced write");

        assert_eq!(read(&v, 0, 4).expect("read"), [0x10, 0xEF, 0x10, 0x10]);
        for seed in 0..50 {
            let img = v.crash_image(CrashMode::Random, seed);
            assert_eq!(img[1], 0xEF);
            assert!(img[S + 2] == 0x21 || img[S + 2] == 0x01, "seed {seed}");
        }
        assert_eq!(v.crash_image(CrashMode::KeepAll, 0), v.live_image());
        assert!(v.flip_byte(2 * S as u64, 1).is_err(), "past the end");
    }

    #[test]
    fn a_fixed_vlun_cannot_grow() {
        let ctl = FaultController::new();
        let v = CrashVlun::fixed(&ctl, 1024);
        assert!(!v.growable());
        let err = v.write_at(&[1; 8], 1020).expect_err("past the end");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert!(v.set_len(2048).is_err());
        assert!(v.punch_zero(1000, 100).is_err());
        assert_eq!(
            v.live_image(),
            vec![0; 1024],
            "failed calls changed nothing"
        );
        assert_eq!(v.len().expect("len"), 1024);

        let g = CrashVlun::new(&ctl, 1024);
        g.punch_zero(1000, 100)
            .expect("a punch past the end is clamped");
        assert_eq!(g.len().expect("len"), 1024, "and does not grow the device");
    }

    #[test]
    fn crash_and_memory_vluns_honour_the_same_contract() {
        let ctl = FaultController::new();
        for v in [
            Box::new(CrashVlun::new(&ctl, 16)) as Box<dyn Vlun>,
            Box::new(FaultyVlun::new(&ctl, MemVlun::new(16))),
        ] {
            v.write_at(b"hello", 10).expect("write");
            assert_eq!(read(&*v, 8, 8).expect("read"), b"\0\0hello\0");
            assert_eq!(read(&*v, 1 << 20, 4).expect("read"), [0; 4], "past the end");
            v.sync().expect("sync");
        }
    }

    #[test]
    fn a_full_file_system_refuses_writes_only_where_no_space_is_held() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 64 << 10);
        v.write_at(&[1; 4096], 0)
            .expect("write while there is space");
        v.reserve_space(16 << 10, 8 << 10).expect("reserve");
        ctl.fill_up();
        let enospc =
            |r: io::Result<()>| r.expect_err("refused").raw_os_error() == Some(libc::ENOSPC);
        v.write_at(&[2; 4096], 0)
            .expect("overwrite a written block");
        v.write_at(&[3; 8192], 16 << 10)
            .expect("write where space was reserved");
        assert!(
            enospc(v.write_at(&[4; 512], 8 << 10)),
            "a hole of the sparse file"
        );
        assert!(enospc(v.write_at(&[4; 512], 64 << 10)), "growing the file");
        assert!(enospc(v.reserve_space(32 << 10, 4096)), "reserving more");
        v.discard(16 << 10, 4096).expect("discard");
        assert!(enospc(v.write_at(&[5; 512], 16 << 10)), "a discarded block");
        v.write_at(&[5; 512], 20 << 10)
            .expect("the reserved block next to it");
        assert_eq!(
            read(&v, 8 << 10, 4).expect("read"),
            [0; 4],
            "refused writes changed nothing"
        );
        ctl.free_space();
        v.write_at(&[6; 512], 64 << 10).expect("space is back");
    }
}
