//! snapvol's engine: a live volume (the source VLUN) kept as a plain raw image, and a shared
//! snapshot store (the target VLUN) where the original of each overwritten chunk is preserved
//! **once**, however many snapshots need it.
//!
//! Layers, bottom up: [`units`], [`error`] and [`names`]; [`vlun`] (positional I/O) and
//! [`paths`]; [`format`](mod@format) (bytes on disk) and [`journal`] (the persistent cache
//! journal); [`metadata`] (snapshot table, shared preservation index, allocator); [`cache`]
//! (write-back cache with dirty designations); [`destage`] (batch planning); the reader of the
//! metadata log that open and [`check`] share; [`volume`] (the public API); [`store`] (a
//! directory of volumes). A module imports only from the layers below it.
//! `docs/architecture.md` follows a write and a snapshot read through them.

pub mod cache;
pub mod catalog;
mod chain;
pub mod check;
pub mod destage;
pub mod error;
pub mod fault;
pub mod format;
pub mod journal;
pub mod location;
pub mod metadata;
pub mod names;
pub mod paths;
pub mod stats;
pub mod store;
pub mod units;
pub mod vlun;
pub mod volume;

pub use catalog::{Catalog, Hold, Role, VolumeLock};
pub use error::{Error, Result};
pub use location::{register_backend, Backend, Location};
pub use names::validate_name;
pub use paths::{Vluns, VolumePaths};
pub use stats::VolumeMetrics;
pub use store::{
    parse_snapshot_name, parse_volume_or_snapshot, CreateOptions, Store, DEFAULT_CACHE_SIZE,
};
pub use units::WriteMode;
pub use volume::{
    ChangeGuard, Layout, RollbackReport, SnapshotInfo, Volume, VolumeInfo, VolumeOptions,
};
