//! Where one VLUN lives: a file or block device, or a device that a registered backend
//! provides, written `SCHEME:NAME` (`rbd:pool/image` for an image in a Ceph pool).
//!
//! The engine knows no backend but files. Others (the Ceph one lives in its own crate and
//! loads Ceph's libraries at run time) register themselves under their scheme with
//! [`register_backend`]; a location naming a scheme nobody registered is an error that says
//! which schemes this build knows. A relative file name with a colon before any slash reads
//! as a scheme: write it `./name`.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::vlun::{FileVlun, Vlun};

/// A provider of VLUNs by name, such as the images of a Ceph pool.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Creates the VLUN `name`, `size` bytes long (a length that may grow), failing with
    /// `AlreadyExists` when it exists.
    fn create(&self, name: &str, size: u64) -> io::Result<Box<dyn Vlun>>;
    /// Opens the existing VLUN `name`; with `read_only`, nothing may be written through it.
    fn open(&self, name: &str, read_only: bool) -> io::Result<Box<dyn Vlun>>;
    /// Removes the VLUN `name`.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// The store named `name` kept by this backend (`--store scheme:NAME`), for backends
    /// that can keep one.
    fn catalog(&self, name: &str) -> io::Result<Arc<dyn Catalog>> {
        let _ = name;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this backend cannot keep a store: use a directory",
        ))
    }
}

static BACKENDS: RwLock<BTreeMap<String, Arc<dyn Backend>>> = RwLock::new(BTreeMap::new());

/// Makes `scheme:` locations mean VLUNs of `backend` (replacing an earlier registration).
pub fn register_backend(scheme: &str, backend: Arc<dyn Backend>) {
    BACKENDS
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(scheme.to_owned(), backend);
}

pub(crate) fn backend(scheme: &str) -> Result<Arc<dyn Backend>> {
    let backends = BACKENDS.read().unwrap_or_else(|e| e.into_inner());
    backends.get(scheme).cloned().ok_or_else(|| {
        let known: Vec<String> = backends.keys().map(|s| format!("{s}:")).collect();
        Error::InvalidArgument(format!(
            "no backend for '{scheme}:' locations in this build (known: {}); \
             a file name with a colon is written ./NAME",
            if known.is_empty() {
                "files only".to_owned()
            } else {
                known.join(", ")
            }
        ))
    })
}

/// Where one VLUN lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A file or a block device.
    Path(PathBuf),
    /// VLUN `name` of the backend registered for `scheme`.
    Backend {
        /// Such as `rbd`.
        scheme: String,
        /// What the backend calls it, such as `pool/image`.
        name: String,
    },
}

impl Location {
    /// Reads a location as users write it: `SCHEME:NAME` when what precedes the first colon
    /// is a scheme (two or more lowercase letters, digits, `+`, `-` or `.`, starting with a
    /// letter, and no slash before it), a path otherwise.
    pub fn parse(s: &str) -> Self {
        if let Some((scheme, name)) = s.split_once(':') {
            let is_scheme = scheme.len() >= 2
                && scheme.starts_with(|c: char| c.is_ascii_lowercase())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            if is_scheme {
                return Location::Backend {
                    scheme: scheme.to_owned(),
                    name: name.to_owned(),
                };
            }
        }
        Location::Path(PathBuf::from(s))
    }

    /// This location seen from directory `dir`: a relative path is joined to it.
    pub fn relative_to(&self, dir: &Path) -> Self {
        match self {
            Location::Path(p) => Location::Path(dir.join(p)),
            other => other.clone(),
        }
    }

    /// Whether this is a file or device path (the engine's own kind of VLUN).
    pub fn is_path(&self) -> bool {
        matches!(self, Location::Path(_))
    }

    fn error(&self, e: io::Error) -> Error {
        match self {
            Location::Path(p) => Error::file(p, e),
            other => Error::file(other.to_string(), e),
        }
    }

    /// Creates the VLUN with a length of at least `size` bytes (a file is created or
    /// extended; an existing device is used as it is).
    pub fn create(&self, size: u64) -> Result<Box<dyn Vlun>> {
        match self {
            Location::Path(p) => Ok(Box::new(
                FileVlun::create(p, size).map_err(|e| self.error(e))?,
            )),
            Location::Backend { scheme, name } => backend(scheme)?
                .create(name, size)
                .map_err(|e| self.error(e)),
        }
    }

    /// Opens the existing VLUN for reading and writing.
    pub fn open(&self) -> Result<Box<dyn Vlun>> {
        match self {
            Location::Path(p) => Ok(Box::new(FileVlun::open(p).map_err(|e| self.error(e))?)),
            Location::Backend { scheme, name } => backend(scheme)?
                .open(name, false)
                .map_err(|e| self.error(e)),
        }
    }

    /// Opens the existing VLUN so that nothing can be written through it.
    pub fn open_read_only(&self) -> Result<Box<dyn Vlun>> {
        match self {
            Location::Path(p) => Ok(Box::new(
                FileVlun::open_read_only(p).map_err(|e| self.error(e))?,
            )),
            Location::Backend { scheme, name } => {
                backend(scheme)?.open(name, true).map_err(|e| self.error(e))
            }
        }
    }

    /// Removes the VLUN (a file is deleted; a missing one is no error).
    pub fn remove(&self) -> Result<()> {
        match self {
            Location::Path(p) => match std::fs::remove_file(p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(self.error(e)),
                _ => Ok(()),
            },
            Location::Backend { scheme, name } => match backend(scheme)?.remove(name) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(self.error(e)),
                _ => Ok(()),
            },
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Path(p) => write!(f, "{}", p.display()),
            Location::Backend { scheme, name } => write!(f, "{scheme}:{name}"),
        }
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Self {
        Location::Path(p)
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Self {
        Location::Path(p.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheme_before_the_first_colon_names_a_backend_and_anything_else_is_a_path() {
        let rbd = Location::parse("rbd:pool/image");
        assert_eq!(
            rbd,
            Location::Backend {
                scheme: "rbd".into(),
                name: "pool/image".into()
            }
        );
        assert_eq!(rbd.to_string(), "rbd:pool/image");
        for path in [
            "/dev/sdb",
            "source.raw",
            "./rbd:x",
            "dir/a:b",
            "C:x",
            "Rbd:x",
            "9p:x",
        ] {
            assert_eq!(Location::parse(path), Location::Path(path.into()), "{path}");
        }
        assert_eq!(
            Location::parse("source.raw").relative_to(Path::new("/s/v")),
            Location::Path("/s/v/source.raw".into())
        );
        assert_eq!(rbd.relative_to(Path::new("/s/v")), rbd);
    }

    #[test]
    fn an_unregistered_scheme_is_an_error_that_says_what_this_build_knows() {
        let e = Location::parse("nosuch:x").open().unwrap_err().to_string();
        assert!(e.contains("no backend for 'nosuch:' locations"), "{e}");
        assert!(e.contains("./NAME"), "{e}");
    }
}
