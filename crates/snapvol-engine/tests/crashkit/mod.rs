//! The crash-point harness: run a scripted workload on crash-simulating VLUNs, cut the power at
//! one I/O index, take what the media would hold, recover, and judge the result against an
//! oracle of what the user was promised (DESIGN.md I1–I6, "Semantics").
//!
//! The oracle knows, for every byte of the live volume, the value it was *settled* to by the
//! last completed FLUSH (a flush, a FUA write, a snapshot create, `destage_all` or a clean
//! close that returned `Ok`), and the writes issued after it, each of which may or may not
//! have survived, but only whole. Every snapshot whose creation returned `Ok` is an exact image.
//! In write mode throughput a data write of at least a chunk (not FUA) may skip the journal:
//! until a completed FLUSH, snapshot create, `destage_all` or clean close follows it, each of
//! its bytes may be new or old (a FUA write of another request does not make it durable).
//!
//! `workload` holds the scripted workloads, `devices` the crash-simulating VLUNs and the crash
//! images, `oracle` the model of what was promised, `run` a workload run up to a crash,
//! `judge` the verdict on a recovery, and `sweep` the drive over many crash points.

mod devices;
mod judge;
mod oracle;
mod run;
mod sweep;
mod workload;

pub use devices::{Devices, Images, Loss};
pub use judge::{
    assert_live_volume, check_clean_but_torn, needed_copies, recover_and_check, torn_superblocks,
    Outcome,
};
pub use oracle::{Model, Req};
pub use run::run_workload;
pub use sweep::{catching, crash_at, dry_run, sweep, Summary};
pub use workload::{pattern, Op, SplitMix, Workload};

pub const KIB: u64 = 1024;
/// The journal ring every workload uses (the engine's minimum).
pub const JOURNAL_SIZE: u64 = 4 << 20;
