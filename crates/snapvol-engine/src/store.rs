//! A store: a directory holding one sub-directory per volume.
//!
//! ```text
//! STORE/
//!   VOL/
//!     volume.json   where the VLUNs live (paths relative to VOL/ or absolute, or backend
//!                   locations such as rbd:pool/image)
//!     source.raw    the source VLUN (default location): byte for byte the live volume
//!     target.svt    the target VLUN (default location): superblocks, metadata, preserved chunks
//!     journal.svj   the persistent cache journal (default location)
//!     lock          held with flock(2) by the process that has the volume open
//! ```
//!
//! Everything about the volume except where its files are lives in the target VLUN's
//! superblock, so a volume directory cannot disagree with its own data.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::check::{self, CheckOptions, CheckReport};
use crate::error::{Error, Result};
use crate::journal::{DEFAULT_JOURNAL_SIZE, RING_OFFSET};
use crate::location::Location;
use crate::names::validate_name;
use crate::paths::VolumePaths;
use crate::units::{Geometry, DEFAULT_CHUNK};
use crate::volume::{Layout, Volume, VolumeOptions};

/// Default size of the write-back cache in RAM.
pub const DEFAULT_CACHE_SIZE: u64 = 128 << 20;

const CONFIG_FILE: &str = "volume.json";
const LOCK_FILE: &str = "lock";
const DEFAULT_SOURCE: &str = "source.raw";
const DEFAULT_TARGET: &str = "target.svt";
const DEFAULT_JOURNAL: &str = "journal.svj";

/// Where a volume's VLUNs live, as recorded in `volume.json`: each a [`Location`] as users
/// write it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VolumeConfig {
    source: String,
    target: String,
    journal: String,
}

impl VolumeConfig {
    fn paths(&self, dir: &Path) -> VolumePaths {
        let at = |s: &str| Location::parse(s).relative_to(dir);
        VolumePaths {
            source: at(&self.source),
            target: at(&self.target),
            journal: at(&self.journal),
        }
    }
}

/// What `create` needs to know.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Volume size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Put the source VLUN here (a file, a block device or a backend location) instead of
    /// inside the store.
    pub source: Option<Location>,
    /// Put the target VLUN here (a file, a block device or a backend location) instead of
    /// inside the store.
    pub target: Option<Location>,
    /// Cap on the target VLUN's size; `None` lets a target file grow as needed.
    pub target_size: Option<u64>,
    /// Put the cache journal here (a faster device, or a backend location) instead of inside
    /// the store.
    pub cache: Option<Location>,
    /// Size of the cache journal's ring.
    pub journal_size: u64,
}

impl CreateOptions {
    /// Options for a volume of `size` bytes with every other setting at its default.
    pub fn new(size: u64) -> Self {
        Self {
            size,
            chunk_size: DEFAULT_CHUNK,
            source: None,
            target: None,
            target_size: None,
            cache: None,
            journal_size: DEFAULT_JOURNAL_SIZE,
        }
    }
}

/// A directory of volumes.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Splits `VOL@SNAP` into its parts, validating both names.
pub fn parse_snapshot_name(spec: &str) -> Result<(&str, &str)> {
    match spec.split_once('@') {
        Some((vol, snap)) => {
            validate_name(vol)?;
            validate_name(snap)?;
            Ok((vol, snap))
        }
        None => Err(Error::InvalidName {
            name: spec.to_owned(),
            reason: "a snapshot is named VOL@SNAP",
        }),
    }
}

/// Splits `VOL` or `VOL@SNAP`, validating the names.
pub fn parse_volume_or_snapshot(spec: &str) -> Result<(&str, Option<&str>)> {
    if spec.contains('@') {
        let (v, s) = parse_snapshot_name(spec)?;
        Ok((v, Some(s)))
    } else {
        validate_name(spec)?;
        Ok((spec, None))
    }
}

impl Store {
    /// A store rooted at `root`. The directory is created on the first `create`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn volume_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Whether a volume of this name exists.
    pub fn exists(&self, name: &str) -> bool {
        self.volume_dir(name).join(CONFIG_FILE).is_file()
    }

    /// Names of all volumes, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::file(&self.root, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::file(&self.root, e))?;
            if let Some(name) = entry.file_name().to_str() {
                if validate_name(name).is_ok() && self.exists(name) {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Creates a volume and returns it open.
    pub fn create(&self, name: &str, opts: &CreateOptions, vopts: VolumeOptions) -> Result<Volume> {
        validate_name(name)?;
        let geometry = Geometry::new(opts.size, opts.chunk_size)?;
        let dir = self.volume_dir(name);
        fs::create_dir_all(&self.root).map_err(|e| Error::file(&self.root, e))?;
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::VolumeExists(name.to_owned()))
            }
            Err(e) => return Err(Error::file(&dir, e)),
        }
        let result = (|| {
            let lock = VolumeLock::acquire(name, &dir)?;
            let location = |given: &Option<Location>, default: &str| {
                given
                    .as_ref()
                    .map_or_else(|| default.to_owned(), Location::to_string)
            };
            let config = VolumeConfig {
                source: location(&opts.source, DEFAULT_SOURCE),
                target: location(&opts.target, DEFAULT_TARGET),
                journal: location(&opts.cache, DEFAULT_JOURNAL),
            };
            let layout = Layout {
                geometry,
                target_cap: opts.target_size,
                journal_size: opts.journal_size,
            };
            let volume = Volume::create(name, &config.paths(&dir), layout, vopts, lock)?;
            // The configuration file is written last: a volume directory without it is a
            // creation that did not finish, and `exists` does not count it.
            write_atomically(
                &dir.join(CONFIG_FILE),
                &serde_json::to_vec_pretty(&config).expect("config serializes"),
            )?;
            Ok(volume)
        })();
        if result.is_err() {
            // Leave nothing half-made behind in the store (external devices are left alone).
            let _ = fs::remove_dir_all(&dir);
        }
        result
    }

    /// Opens an existing volume, taking its lock.
    pub fn open(&self, name: &str, vopts: VolumeOptions) -> Result<Volume> {
        let (dir, config) = self.config(name)?;
        let lock = VolumeLock::acquire(name, &dir)?;
        Volume::open(name, &config.paths(&dir), vopts, lock)
    }

    /// Opens an existing volume for reading only: nothing is written to any of its files (a
    /// volume left by a crash has its journal replayed in RAM only), so it works on a store
    /// mounted read-only. Takes the volume's lock shared, so readers never exclude each other
    /// and fail with [`Error::Locked`] while a writer has the volume open.
    pub fn open_read_only(&self, name: &str) -> Result<Volume> {
        let (dir, config) = self.config(name)?;
        let lock = VolumeLock::acquire_shared(name, &dir)?;
        Volume::open_read_only(name, &config.paths(&dir), lock)
    }

    /// Checks a volume's devices (see [`crate::check`]) without changing them, unless
    /// `repair`. Takes the volume's lock (shared to look, exclusive to repair), so it fails
    /// with [`Error::Locked`] while the volume is open for writing elsewhere.
    pub fn check(&self, name: &str, repair: bool) -> Result<CheckReport> {
        self.check_with(
            name,
            CheckOptions {
                repair,
                ..Default::default()
            },
        )
    }

    /// [`Store::check`] with every option.
    pub fn check_with(&self, name: &str, opts: CheckOptions) -> Result<CheckReport> {
        let (dir, config) = self.config(name)?;
        let _lock = if opts.repair {
            VolumeLock::acquire(name, &dir)?
        } else {
            VolumeLock::acquire_shared(name, &dir)?
        };
        check_paths(name, &config.paths(&dir), opts)
    }

    /// The directory and configuration of an existing volume.
    fn config(&self, name: &str) -> Result<(PathBuf, VolumeConfig)> {
        validate_name(name)?;
        if !self.exists(name) {
            return Err(Error::VolumeNotFound(name.to_owned()));
        }
        let dir = self.volume_dir(name);
        let config_path = dir.join(CONFIG_FILE);
        let bytes = fs::read(&config_path).map_err(|e| Error::file(&config_path, e))?;
        let config = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(config_path.display().to_string(), e.to_string()))?;
        Ok((dir, config))
    }

    /// Removes a volume whose files live in the store (not used by the CLI yet; tests use it).
    pub fn destroy(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        let dir = self.volume_dir(name);
        let _lock = VolumeLock::acquire(name, &dir)?;
        fs::remove_dir_all(&dir).map_err(|e| Error::file(&dir, e))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
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

/// The lock on a volume directory, held for as long as the volume is open: exclusive for the
/// one process that may write, shared among readers.
///
/// `flock(2)` is released by the kernel when the process dies, so a crash never leaves a
/// stale lock; the file's content (the writer's pid and command) only serves the error
/// message. Readers write nothing, not even there.
#[derive(Debug)]
pub struct VolumeLock {
    file: File,
    exclusive: bool,
}

impl VolumeLock {
    fn acquire(name: &str, dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::file(&path, e))?;
        if !crate::vlun::try_lock_exclusive(&file).map_err(|e| Error::file(&path, e))? {
            return Err(Self::held(name, file));
        }
        let me = format!(
            "process {} ({})",
            std::process::id(),
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        file.set_len(0).map_err(|e| Error::file(&path, e))?;
        file.rewind().map_err(|e| Error::file(&path, e))?;
        file.write_all(me.as_bytes())
            .map_err(|e| Error::file(&path, e))?;
        Ok(Self {
            file,
            exclusive: true,
        })
    }

    fn acquire_shared(name: &str, dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let file = File::open(&path).map_err(|e| Error::file(&path, e))?;
        if !crate::vlun::try_lock_shared(&file).map_err(|e| Error::file(&path, e))? {
            return Err(Self::held(name, file));
        }
        Ok(Self {
            file,
            exclusive: false,
        })
    }

    /// The error for a lock another process holds, naming the writer if it said who it is.
    fn held(name: &str, mut file: File) -> Error {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        Error::Locked {
            volume: name.to_owned(),
            holder: if holder.is_empty() {
                "another process".to_owned()
            } else {
                holder.to_owned()
            },
        }
    }
}

impl Drop for VolumeLock {
    fn drop(&mut self) {
        if self.exclusive {
            let _ = self.file.set_len(0);
        }
    }
}

/// Checks the volume whose devices are at `paths`: opened read-only, unless `repair`. A
/// repair rewrites a damaged superblock copy from the good one (the target opened for
/// writing), then, if the cache journal holds damaged records that later appends follow,
/// salvages it: the volume is opened replaying every intact record and closed (so the
/// journal is empty and everything consistent), and each lost record is listed in
/// `repaired` with what it held.
fn check_paths(name: &str, paths: &VolumePaths, opts: CheckOptions) -> Result<CheckReport> {
    // Opened read-only, so a check cannot change a byte even by mistake.
    let source = paths.source.open_read_only()?;
    let journal = paths.journal.open_read_only()?;
    if !opts.repair {
        let target = paths.target.open_read_only()?;
        return check::check_with(&*source, &*target, &*journal, opts);
    }
    let target = paths.target.open()?;
    let mut report = check::check_with(&*source, &*target, &*journal, opts)?;
    let salvageable = report
        .problems
        .iter()
        .any(|p| p.repairable && p.location.starts_with("journal record"));
    if !salvageable {
        return Ok(report);
    }
    drop((source, target, journal));
    let options = VolumeOptions {
        background_destage: false,
        ..Default::default()
    };
    let (volume, lost) = Volume::open_salvaging_on(name, paths.open()?, options)?;
    volume.close()?;
    let mut repaired = std::mem::take(&mut report.repaired);
    repaired.push(format!(
        "cache journal: replayed every intact record; {} damaged record{} lost",
        lost.len(),
        if lost.len() == 1 { "" } else { "s" }
    ));
    for l in &lost {
        let at = l
            .pos
            .map_or(String::new(), |pos| format!(" at {:#x}", RING_OFFSET + pos));
        repaired.push(format!(
            "lost journal record {}{at}: {}",
            l.seq,
            check::describe_held(l.held)
        ));
    }
    let vluns = paths.open_read_only()?;
    let after = check::check_with(
        &*vluns.source,
        &*vluns.target,
        &*vluns.journal,
        CheckOptions {
            repair: false,
            ..opts
        },
    )?;
    Ok(after.after_repair(repaired))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_alphabet() {
        assert!(validate_name("vm-01.disk_a").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("a@b").is_err());
        assert!(validate_name("..").is_err());
        assert!(validate_name(&"x".repeat(129)).is_err());
        assert_eq!(parse_snapshot_name("v@s").unwrap(), ("v", "s"));
        assert!(parse_snapshot_name("v").is_err());
        assert!(parse_snapshot_name("v@").is_err());
        assert_eq!(parse_volume_or_snapshot("v").unwrap(), ("v", None));
    }
}
