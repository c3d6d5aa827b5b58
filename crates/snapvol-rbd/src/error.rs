//! Errors: Ceph's libraries missing, a Ceph call that failed (with its `errno`), or a name
//! that cannot be right.

use std::io;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the package manager is asked for when the libraries are missing.
pub const INSTALL_HINT: &str =
    "Ceph's client libraries are not installed: apt-get install librbd1 librados2 \
     (and ceph-common for the rbd tool)";

/// Everything that can go wrong talking to Ceph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `librados.so.2` or `librbd.so.1` could not be loaded.
    #[error("{INSTALL_HINT} (loading {library}: {reason})")]
    NotInstalled {
        /// The library file that failed to load.
        library: &'static str,
        /// What the dynamic loader said.
        reason: String,
    },
    /// A library loaded but lacks a function this crate needs: it is older than Ceph 16.2.
    #[error(
        "{library} has no {symbol}: Ceph's client libraries are older than 16.2 (Pacific) \
         ({reason})"
    )]
    MissingSymbol {
        /// The library file.
        library: &'static str,
        /// The C function that is missing.
        symbol: &'static str,
        /// What the dynamic loader said.
        reason: String,
    },
    /// A call into librados or librbd answered a negative `errno`.
    #[error("{op} {target}: {source}")]
    Ceph {
        /// The C function, such as `rbd_open`.
        op: &'static str,
        /// What it was called on: a pool, `pool/image`, an object, a lock.
        target: String,
        /// The `errno`, as a raw OS error.
        #[source]
        source: io::Error,
    },
    /// A name that Ceph would refuse or misread (such as one holding a NUL byte), or a
    /// location that is not `POOL/IMAGE`.
    #[error("invalid {what} '{name}': {rule}")]
    InvalidName {
        /// What kind of name: "image location", "object name".
        what: &'static str,
        /// The name as given.
        name: String,
        /// The rule it breaks.
        rule: &'static str,
    },
}

impl Error {
    /// A failed call into Ceph's libraries.
    pub(crate) fn ceph(op: &'static str, target: impl Into<String>, errno: i32) -> Self {
        Error::Ceph {
            op,
            target: target.into(),
            source: io::Error::from_raw_os_error(errno),
        }
    }

    /// The `errno` of a failed Ceph call (`None` for the other kinds).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Ceph { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// For callers that speak `io::Error` (the engine's [`snapvol_engine::Backend`]): the kind
/// follows the `errno` (`EEXIST` is `AlreadyExists`, `ENOENT` is `NotFound`), the message keeps
/// the operation and its target, and [`Error`] stays reachable as the inner error.
impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Ceph { source, .. } => source.kind(),
            Error::NotInstalled { .. } | Error::MissingSymbol { .. } => io::ErrorKind::Unsupported,
            Error::InvalidName { .. } => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}
