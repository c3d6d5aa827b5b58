//! Errors of the engine: a stable kind, the context a user needs, and the cause. It decides
//! nothing: whether an error fails the volume or only its request is the volume's call
//! (`Inner::fail`); [`Error::errno`] only maps a kind to what NBD and the CLI report.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which VLUN (or other file) an I/O error happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The live volume's data.
    Source,
    /// The snapshot store.
    Target,
    /// The persistent cache journal.
    Journal,
    /// Anything else (lock file, configuration).
    Other,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Source => "source VLUN",
            Device::Target => "target VLUN",
            Device::Journal => "cache journal",
            Device::Other => "file",
        })
    }
}

/// Everything that can go wrong in the engine.
///
/// The variants are stable kinds that callers (the CLI, the NBD server) map to exit codes and
/// protocol errors; the payloads carry the context a person needs to act on the error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a VLUN or a store file failed.
    #[error("{op} on {device} at offset {offset:#x} failed: {source}")]
    Io {
        /// What the engine was doing.
        op: &'static str,
        /// Which device.
        device: Device,
        /// Byte offset of the failed operation.
        offset: u64,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// An I/O error on a store file (configuration, lock, directory).
    #[error("{path}: {source}")]
    File {
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A structure on a VLUN (metadata, the journal, preserved data) failed a checksum or a
    /// consistency rule.
    #[error("damage found in the {location}: {detail}")]
    Corrupt {
        /// Where: a structure name and a byte offset in the target VLUN.
        location: String,
        /// What is wrong.
        detail: String,
    },
    /// The target VLUN cannot hold the preservation this write needs.
    #[error("no space left in the snapshot store (target VLUN): {detail}")]
    NoSpace {
        /// Capacity figures.
        detail: String,
    },
    /// The file system (or device) holding a VLUN has no space for what a request needs. The
    /// request changed nothing, the volume goes on, and the same request succeeds once space
    /// is freed there.
    #[error("no space left on the file system holding the {device} ({detail}); nothing was changed: free space there and try again")]
    DeviceFull {
        /// Which VLUN.
        device: Device,
        /// What needed the space.
        detail: String,
    },
    /// The cache journal has no room for an append even after everything in it was destaged:
    /// the append is refused and nothing in the journal is overwritten.
    #[error("the cache journal has no room for {needed} bytes of records ({free} bytes free)")]
    JournalFull {
        /// Bytes of the ring the append needs (a skipped ring end included).
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// A request reaches past the end of the volume.
    #[error("request at offset {offset:#x} length {len:#x} is beyond the end of the volume ({size:#x} bytes)")]
    OutOfBounds {
        /// Start of the request.
        offset: u64,
        /// Length of the request.
        len: u64,
        /// Volume size.
        size: u64,
    },
    /// A volume of that name already exists.
    #[error("volume '{0}' already exists")]
    VolumeExists(String),
    /// No volume of that name.
    #[error("volume '{0}' not found")]
    VolumeNotFound(String),
    /// A snapshot of that name already exists.
    #[error("snapshot '{0}' already exists")]
    SnapshotExists(String),
    /// No snapshot of that name.
    #[error("snapshot '{0}' not found")]
    SnapshotNotFound(String),
    /// A volume or snapshot name is not acceptable.
    #[error("invalid name '{name}': {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A parameter is out of its allowed range.
    #[error("{0}")]
    InvalidArgument(String),
    /// Another process holds the volume open.
    #[error("volume '{volume}' is in use by {holder}")]
    Locked {
        /// The volume.
        volume: String,
        /// Who holds the lock, as recorded in the lock file.
        holder: String,
    },
    /// The volume was opened read-only (it is being looked at, not served).
    #[error("volume '{0}' is open read-only")]
    ReadOnly(String),
    /// An earlier I/O error left the volume in an unknown state; it refuses writes until it is
    /// closed and reopened.
    #[error("volume refuses writes after an earlier I/O error ({0}); close and reopen it")]
    Failed(String),
}

impl Error {
    pub(crate) fn io(op: &'static str, device: Device, offset: u64, source: io::Error) -> Self {
        Error::Io {
            op,
            device,
            offset,
            source,
        }
    }

    /// An I/O error, or — when the file system said it has no space (`ENOSPC`, `EDQUOT`) —
    /// [`Error::DeviceFull`], which costs the request and not the volume.
    pub(crate) fn io_or_full(
        op: &'static str,
        device: Device,
        offset: u64,
        source: io::Error,
    ) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::DeviceFull {
                device,
                detail: format!("{op} at {offset:#x}"),
            },
            _ => Error::io(op, device, offset, source),
        }
    }

    /// An error of a store file or object at `path` (a file, or what a backend names).
    pub fn file(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::File {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(location: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            location: location.into(),
            detail: detail.into(),
        }
    }

    /// The errno a block-device protocol should report for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NoSpace { .. } | Error::DeviceFull { .. } => libc::ENOSPC,
            Error::ReadOnly(_) => libc::EPERM,
            Error::OutOfBounds { .. } | Error::InvalidArgument(_) | Error::InvalidName { .. } => {
                libc::EINVAL
            }
            _ => libc::EIO,
        }
    }
}
