//! What NBD clients asked of each volume, counted as the requests are answered: requests,
//! bytes, errors and latency, for the live export and the snapshot exports apart, and the
//! connections attached to each. `--metrics` publishes them (`metrics/collect.rs`).
//!
//! The counting is on every request's path, so it is relaxed atomics only: a device holds its
//! volume's counters from its creation, and [`ExportIo::record`] adds to them without a lock
//! or a lookup.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use snapvol_engine::stats::Histogram;
use snapvol_nbd::transmission::frame::Command;
use snapvol_nbd::{Errno, RequestDone};

/// Which of a volume's exports: `VOL` or one of its `VOL@SNAP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    Live,
    Snapshot,
}

impl ExportKind {
    pub const ALL: [ExportKind; 2] = [ExportKind::Live, ExportKind::Snapshot];

    /// The `export` label.
    pub fn label(self) -> &'static str {
        match self {
            ExportKind::Live => "live",
            ExportKind::Snapshot => "snapshot",
        }
    }
}

/// A request type as counted: one per NBD command, and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
    BlockStatus,
    Cache,
    Other,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Trim,
        Op::WriteZeroes,
        Op::BlockStatus,
        Op::Cache,
        Op::Other,
    ];
    /// The operations whose request length is data moved (bytes counted).
    pub const WITH_BYTES: [Op; 4] = [Op::Read, Op::Write, Op::Trim, Op::WriteZeroes];
    /// The operations whose latency is kept.
    pub const TIMED: [Op; 3] = [Op::Read, Op::Write, Op::Flush];

    fn of(c: Command) -> Op {
        match c {
            Command::Read => Op::Read,
            Command::Write => Op::Write,
            Command::Flush => Op::Flush,
            Command::Trim => Op::Trim,
            Command::WriteZeroes => Op::WriteZeroes,
            Command::BlockStatus => Op::BlockStatus,
            Command::Cache => Op::Cache,
            Command::Disc | Command::Unknown(_) => Op::Other,
        }
    }

    /// The `op` label.
    pub fn label(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Trim => "trim",
            Op::WriteZeroes => "write_zeroes",
            Op::BlockStatus => "block_status",
            Op::Cache => "cache",
            Op::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The `errno` labels: every error the NBD spec defines, then anything else.
pub fn errno_labels() -> impl Iterator<Item = &'static str> {
    Errno::ALL.iter().map(|e| e.name()).chain(["other"])
}

/// One export kind's counters of one volume.
#[derive(Debug, Default)]
pub struct ExportIo {
    /// Devices in existence: one per connection using an export of this kind (see
    /// `StoreExports::live_clients`).
    attached: AtomicUsize,
    /// Requests answered, by [`Op`], errors included.
    requests: [AtomicU64; Op::ALL.len()],
    /// Bytes of the requests answered with success, by [`Op`].
    bytes: [AtomicU64; Op::ALL.len()],
    /// Error replies by [`errno_labels`].
    errors: [AtomicU64; Errno::ALL.len() + 1],
    /// Latency of [`Op::TIMED`], from the request read to its reply written.
    latency: [Histogram; Op::TIMED.len()],
}

impl ExportIo {
    /// Counts one answered request.
    pub fn record(&self, done: &RequestDone) {
        let op = Op::of(done.command);
        self.requests[op.index()].fetch_add(1, Ordering::Relaxed);
        match done.error {
            None => {
                if Op::WITH_BYTES.contains(&op) {
                    self.bytes[op.index()].fetch_add(u64::from(done.length), Ordering::Relaxed);
                }
            }
            Some(e) => {
                let i = Errno::ALL
                    .iter()
                    .position(|&k| k == e)
                    .unwrap_or(Errno::ALL.len());
                self.errors[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(t) = Op::TIMED.iter().position(|&o| o == op) {
            self.latency[t].observe(done.elapsed);
        }
    }

    pub fn attached(&self) -> usize {
        self.attached.load(Ordering::SeqCst)
    }

    pub fn requests(&self, op: Op) -> u64 {
        self.requests[op.index()].load(Ordering::Relaxed)
    }

    pub fn bytes(&self, op: Op) -> u64 {
        self.bytes[op.index()].load(Ordering::Relaxed)
    }

    /// Error replies, in the order of [`errno_labels`].
    pub fn errors(&self) -> impl Iterator<Item = u64> + '_ {
        self.errors.iter().map(|c| c.load(Ordering::Relaxed))
    }

    /// The latency histogram of a [`Op::TIMED`] operation.
    pub fn latency(&self, op: Op) -> Option<&Histogram> {
        Op::TIMED
            .iter()
            .position(|&o| o == op)
            .map(|i| &self.latency[i])
    }
}

/// A volume's counters, kept by the catalogue for as long as the server runs (a volume closed
/// and opened again keeps counting where it was).
#[derive(Debug, Default)]
pub struct VolumeIo {
    live: ExportIo,
    snapshot: ExportIo,
}

impl VolumeIo {
    pub fn export(&self, kind: ExportKind) -> &ExportIo {
        match kind {
            ExportKind::Live => &self.live,
            ExportKind::Snapshot => &self.snapshot,
        }
    }
}

/// A device's hold on its volume's counters of its export kind: counted as attached from its
/// creation to its drop.
#[derive(Debug)]
pub struct Attached {
    io: Arc<VolumeIo>,
    kind: ExportKind,
}

impl Attached {
    pub fn new(io: Arc<VolumeIo>, kind: ExportKind) -> Self {
        io.export(kind).attached.fetch_add(1, Ordering::SeqCst);
        Attached { io, kind }
    }

    /// Counts one answered request.
    pub fn record(&self, done: &RequestDone) {
        self.io.export(self.kind).record(done);
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.io
            .export(self.kind)
            .attached
            .fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn done(command: Command, length: u32, error: Option<Errno>) -> RequestDone {
        RequestDone {
            command,
            length,
            error,
            elapsed: Duration::from_micros(300),
        }
    }

    #[test]
    fn requests_count_always_bytes_on_success_and_errors_by_errno() {
        let io = Arc::new(VolumeIo::default());
        let a = Attached::new(io.clone(), ExportKind::Live);
        a.record(&done(Command::Write, 4096, None));
        a.record(&done(Command::Write, 512, Some(Errno::ENOSPC)));
        a.record(&done(Command::Read, 1000, None));
        a.record(&done(Command::Flush, 0, None));
        a.record(&done(Command::Unknown(77), 0, Some(Errno::EINVAL)));
        let live = io.export(ExportKind::Live);
        assert_eq!(live.attached(), 1);
        assert_eq!(live.requests(Op::Write), 2);
        assert_eq!(live.bytes(Op::Write), 4096);
        assert_eq!(live.bytes(Op::Read), 1000);
        assert_eq!(live.requests(Op::Other), 1);
        let errors: Vec<(&str, u64)> = errno_labels().zip(live.errors()).collect();
        assert!(errors.contains(&("ENOSPC", 1)) && errors.contains(&("EINVAL", 1)));
        assert_eq!(errors.iter().map(|e| e.1).sum::<u64>(), 2);
        assert_eq!(live.latency(Op::Write).unwrap().snapshot().count(), 2);
        assert!(live.latency(Op::Trim).is_none());
        assert_eq!(io.export(ExportKind::Snapshot).requests(Op::Write), 0);
        drop(a);
        assert_eq!(live.attached(), 0);
    }
}
