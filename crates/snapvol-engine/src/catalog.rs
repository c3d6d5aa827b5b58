//! Where a store keeps what it knows about its volumes besides their data: each volume's
//! descriptor (where its VLUNs are) and the lock that lets one process at a time write it.
//!
//! Two kinds of store share this interface. A directory on a local file system
//! ([`DirCatalog`]: `STORE/VOL/volume.json` and `flock(2)` on `STORE/VOL/lock`), and a store
//! kept in a backend such as a RADOS pool (`--store rbd:POOL`), which the backend provides
//! through [`crate::Backend::catalog`]: there the descriptor is an object, the lock a
//! cluster lock with a lease, and nothing of a volume stays on a host's disk.
//!
//! The [`crate::Store`] does the rest (creation order, opening, checking) the same way for
//! both.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::location::Location;

/// The three VLUNs of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The live volume's data.
    Source,
    /// The snapshot store.
    Target,
    /// The persistent cache journal.
    Journal,
}

/// Something that holds a volume's lock for as long as it lives; dropping it lets go.
pub trait Hold: Send + Sync + fmt::Debug {
    /// `None` while the lock is held; once it has been lost (a lease that could not be
    /// renewed, a lock that another host broke), why. A holder that has lost its lock must not
    /// write to the volume again.
    fn lost(&self) -> Option<String> {
        None
    }
}

/// The lock on a volume, held for as long as the volume is open: exclusive for the one process
/// that may write, shared among readers.
#[derive(Debug)]
pub struct VolumeLock {
    hold: Box<dyn Hold>,
}

impl VolumeLock {
    /// Wraps a catalog's hold.
    pub fn new(hold: Box<dyn Hold>) -> Self {
        Self { hold }
    }

    /// See [`Hold::lost`].
    pub fn lost(&self) -> Option<String> {
        self.hold.lost()
    }
}

/// The descriptors and locks of a store's volumes. Volume names given to it are valid
/// ([`crate::validate_name`]); the store checks them first.
pub trait Catalog: Send + Sync + fmt::Debug {
    /// The store as users name it: a directory, or `scheme:NAME`.
    fn name(&self) -> String;

    /// Makes the store ready to hold volumes (creates the directory); idempotent.
    fn prepare(&self) -> Result<()>;

    /// Names of the volumes whose creation completed (their descriptor is written), sorted.
    fn list(&self) -> Result<Vec<String>>;

    /// Whether `volume` exists (its creation completed).
    fn exists(&self, volume: &str) -> Result<bool>;

    /// Claims the name `volume` for a creation and locks it exclusively: fails with
    /// [`Error::VolumeExists`] when the name is taken, even by a creation in progress.
    fn reserve(&self, volume: &str) -> Result<VolumeLock>;

    /// Gives up a reservation whose creation failed, leaving nothing of it.
    fn unreserve(&self, volume: &str);

    /// How the descriptor of a new volume records the default location of a VLUN; turned
    /// into a location by [`Catalog::resolve`].
    fn default_location(&self, volume: &str, role: Role) -> String;

    /// The location a descriptor's entry means (entries relative to the store are resolved
    /// here).
    fn resolve(&self, volume: &str, written: &str) -> Location;

    /// The descriptor of `volume` ([`Error::VolumeNotFound`] when it does not exist).
    fn read_descriptor(&self, volume: &str) -> Result<Vec<u8>>;

    /// Writes the descriptor of `volume` durably and atomically: the last step of a creation,
    /// after which the volume exists.
    fn write_descriptor(&self, volume: &str, bytes: &[u8]) -> Result<()>;

    /// Locks `volume`: exclusively to write it, shared to look at it. Fails with
    /// [`Error::Locked`] (naming the holder) when another process holds it the other way.
    fn lock(&self, volume: &str, exclusive: bool) -> Result<VolumeLock>;

    /// Removes the descriptor and whatever else the catalog keeps of `volume` (its VLUNs
    /// have been removed, or are the user's own devices); the caller holds its lock.
    fn remove(&self, volume: &str) -> Result<()>;

    /// The Unix socket on which a `snapvol serve` of this store in this process listens for
    /// the other commands of this host.
    fn control_socket(&self) -> PathBuf;

    /// Whether other processes, perhaps on other hosts, may hold this store's volumes while a
    /// server runs: `serve` then stands by for the volumes it cannot lock, and takes them
    /// over when their holder goes, instead of refusing to start.
    fn shared(&self) -> bool {
        false
    }

    /// The control socket of the server on this host that holds `volume`, if one may
    /// (commands go there when they find the volume locked).
    fn server_socket(&self, volume: &str) -> Option<PathBuf> {
        let _ = volume;
        Some(self.control_socket())
    }
}

const CONFIG_FILE: &str = "volume.json";
const LOCK_FILE: &str = "lock";
/// Name of the control socket inside a directory store.
pub const CONTROL_SOCKET: &str = "control.sock";

/// A store in a directory:
///
/// ```text
/// STORE/
///   control.sock    the control socket of a `snapvol serve` of this store
///   VOL/
///     volume.json   where the VLUNs live (paths relative to VOL/ or absolute, or backend
///                   locations such as rbd:pool/image)
///     source.raw    the source VLUN (default location): byte for byte the live volume
///     target.svt    the target VLUN (default location): superblocks, metadata, preserved chunks
///     journal.svj   the persistent cache journal (default location)
///     lock          held with flock(2) by the process that has the volume open
/// ```
#[derive(Debug, Clone)]
pub struct DirCatalog {
    root: PathBuf,
}

impl DirCatalog {
    /// The store rooted at `root` (created by [`Catalog::prepare`] or the first creation).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn dir(&self, volume: &str) -> PathBuf {
        self.root.join(volume)
    }
}

impl Catalog for DirCatalog {
    fn name(&self) -> String {
        self.root.display().to_string()
    }

    fn prepare(&self) -> Result<()> {
        fs::create_dir_all(&self.root).map_err(|e| Error::file(&self.root, e))
    }

    fn list(&self) -> Result<Vec<String>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::file(&self.root, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::file(&self.root, e))?;
            if let Some(name) = entry.file_name().to_str() {
                if crate::validate_name(name).is_ok() && self.exists(name)? {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn exists(&self, volume: &str) -> Result<bool> {
        Ok(self.dir(volume).join(CONFIG_FILE).is_file())
    }

    fn reserve(&self, volume: &str) -> Result<VolumeLock> {
        self.prepare()?;
        let dir = self.dir(volume);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::VolumeExists(volume.to_owned()))
            }
            Err(e) => return Err(Error::file(&dir, e)),
        }
        FlockHold::acquire(volume, &dir)
            .map(|h| VolumeLock::new(Box::new(h)))
            .inspect_err(|_| self.unreserve(volume))
    }

    fn unreserve(&self, volume: &str) {
        // Leave nothing half-made behind in the store (external devices are left alone).
        let _ = fs::remove_dir_all(self.dir(volume));
    }

    fn default_location(&self, _volume: &str, role: Role) -> String {
        match role {
            Role::Source => "source.raw",
            Role::Target => "target.svt",
            Role::Journal => "journal.svj",
        }
        .to_owned()
    }

    fn resolve(&self, volume: &str, written: &str) -> Location {
        Location::parse(written).relative_to(&self.dir(volume))
    }

    fn read_descriptor(&self, volume: &str) -> Result<Vec<u8>> {
        if !self.exists(volume)? {
            return Err(Error::VolumeNotFound(volume.to_owned()));
        }
        let path = self.dir(volume).join(CONFIG_FILE);
        fs::read(&path).map_err(|e| Error::file(&path, e))
    }

    fn write_descriptor(&self, volume: &str, bytes: &[u8]) -> Result<()> {
        write_atomically(&self.dir(volume).join(CONFIG_FILE), bytes)
    }

    fn lock(&self, volume: &str, exclusive: bool) -> Result<VolumeLock> {
        let dir = self.dir(volume);
        let hold = if exclusive {
            FlockHold::acquire(volume, &dir)?
        } else {
            FlockHold::acquire_shared(volume, &dir)?
        };
        Ok(VolumeLock::new(Box::new(hold)))
    }

    fn remove(&self, volume: &str) -> Result<()> {
        let dir = self.dir(volume);
        fs::remove_dir_all(&dir).map_err(|e| Error::file(&dir, e))
    }

    fn control_socket(&self) -> PathBuf {
        self.root.join(CONTROL_SOCKET)
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old content or the new: a
/// synced temporary file renamed over it, then the directory synced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| Error::file(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::file(&tmp, e))?;
    f.sync_all().map_err(|e| Error::file(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::file(path, e))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// `flock(2)` on `VOL/lock`. The kernel releases it when the process dies, so a crash never
/// leaves a stale lock; the file's content (the writer's pid and command) only serves the
/// error message. Readers write nothing, not even there.
#[derive(Debug)]
struct FlockHold {
    file: File,
    exclusive: bool,
}

impl FlockHold {
    fn acquire(volume: &str, dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::file(&path, e))?;
        if !crate::vlun::try_lock_exclusive(&file).map_err(|e| Error::file(&path, e))? {
            return Err(Self::held(volume, file));
        }
        file.set_len(0).map_err(|e| Error::file(&path, e))?;
        file.rewind().map_err(|e| Error::file(&path, e))?;
        file.write_all(this_process().as_bytes())
            .map_err(|e| Error::file(&path, e))?;
        Ok(Self {
            file,
            exclusive: true,
        })
    }

    fn acquire_shared(volume: &str, dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let file = File::open(&path).map_err(|e| Error::file(&path, e))?;
        if !crate::vlun::try_lock_shared(&file).map_err(|e| Error::file(&path, e))? {
            return Err(Self::held(volume, file));
        }
        Ok(Self {
            file,
            exclusive: false,
        })
    }

    /// The error for a lock another process holds, naming the writer if it said who it is.
    fn held(volume: &str, mut file: File) -> Error {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        locked(volume, &holder)
    }
}

impl Hold for FlockHold {}

impl Drop for FlockHold {
    fn drop(&mut self) {
        if self.exclusive {
            let _ = self.file.set_len(0);
        }
    }
}

/// This process as a lock holder names itself: its pid and command line.
pub fn this_process() -> String {
    format!(
        "process {} ({})",
        std::process::id(),
        std::env::args().collect::<Vec<_>>().join(" ")
    )
}

/// [`Error::Locked`] for `volume`, held by `holder` as it described itself (if it did).
pub fn locked(volume: &str, holder: &str) -> Error {
    let holder = holder.trim();
    Error::Locked {
        volume: volume.to_owned(),
        holder: if holder.is_empty() {
            "another process".to_owned()
        } else {
            holder.to_owned()
        },
    }
}
