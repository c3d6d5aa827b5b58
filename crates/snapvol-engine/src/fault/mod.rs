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
//!
//! ## Where each kind lives
//!
//! This file owns the [`FaultController`]: the one count of every attached VLUN's I/O, and
//! the one place (`admit`) that decides whether a call proceeds, crashes or fails, in that
//! order. It must not hold what a kind arms or simulates; each kind has a file, and what
//! tests use is re-exported here, so every path stays `fault::X`:
//!
//! - `power.rs`: power loss ([`FaultController::crash_at`]) and the crash images of a
//!   [`CrashVlun`] ([`CrashMode`]);
//! - `eio.rs`: one-shot errors ([`FaultController::fail_at`], [`OpFilter`]) and
//!   [`FaultyVlun`], which attaches any other VLUN;
//! - `space.rs`: a full file system ([`FaultController::fill_up`]) and which blocks of a
//!   [`CrashVlun`] have space behind them;
//! - `flip.rs`: silent corruption ([`CrashVlun::flip_byte`]);
//! - `crash_vlun.rs`: the [`CrashVlun`] device itself, its images and its `Vlun` calls;
//! - `media.rs`: the media model above, as unsynced operations recorded sector by sector.

use std::io;
use std::sync::Arc;

use parking_lot::Mutex;

mod crash_vlun;
mod eio;
mod flip;
mod media;
mod power;
mod space;

pub use crash_vlun::CrashVlun;
pub use eio::{FaultyVlun, OpFilter};
pub use power::{is_power_loss, CrashMode, POWER_LOSS_MESSAGE};

use power::power_loss;

/// Bytes in a sector, the unit a crash never splits.
pub const SECTOR_SIZE: u64 = 512;

/// `SECTOR_SIZE` for indexing into in-memory images.
const SECTOR: usize = 512;

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

/// What `len` bytes at `offset` read as, for the tests of every kind.
#[cfg(test)]
fn read(v: &dyn crate::vlun::Vlun, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0xEE; len];
    v.read_at(&mut buf, offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vlun::{MemVlun, Vlun};

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
}
