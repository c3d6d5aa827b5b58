//! A store: the volumes users name, each a descriptor (where its VLUNs are) and a lock kept
//! by the store's [`Catalog`] — a directory (`STORE/VOL/volume.json`, see
//! [`crate::catalog::DirCatalog`]) or a backend's pool (`--store rbd:POOL`).
//!
//! Everything about the volume except where its VLUNs are lives in the target VLUN's
//! superblock, so a descriptor cannot disagree with its own data.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, DirCatalog, Role};
use crate::check::{self, CheckOptions, CheckReport};
use crate::error::{Error, Result};
use crate::journal::{DEFAULT_JOURNAL_SIZE, RING_OFFSET};
use crate::location::Location;
use crate::names::validate_name;
use crate::paths::VolumePaths;
use crate::units::{Geometry, WriteMode, DEFAULT_CHUNK};
use crate::volume::{Layout, Volume, VolumeOptions};

/// Default size of the write-back cache in RAM.
pub const DEFAULT_CACHE_SIZE: u64 = 128 << 20;

/// Where a volume's VLUNs live, as its descriptor records them: each a [`Location`] as users
/// write it, or an entry relative to the store that its catalog resolves.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VolumeConfig {
    source: String,
    target: String,
    journal: String,
}

impl VolumeConfig {
    fn paths(&self, catalog: &dyn Catalog, volume: &str) -> VolumePaths {
        VolumePaths {
            source: catalog.resolve(volume, &self.source),
            target: catalog.resolve(volume, &self.target),
            journal: catalog.resolve(volume, &self.journal),
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
    /// How write requests are made durable.
    pub write_mode: WriteMode,
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
            write_mode: WriteMode::Atomic,
        }
    }
}

/// The volumes of one store.
#[derive(Debug, Clone)]
pub struct Store {
    catalog: Arc<dyn Catalog>,
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
    /// A store in the directory `root`, created on the first `create`.
    pub fn new(root: impl Into<std::path::PathBuf>) -> Self {
        Self::with_catalog(Arc::new(DirCatalog::new(root)))
    }

    /// The store users name `spec`: a directory, or `scheme:NAME` for a store kept by a
    /// registered backend (`rbd:POOL`).
    pub fn at(spec: &Path) -> Result<Self> {
        let Some(text) = spec.to_str() else {
            return Ok(Self::new(spec));
        };
        match Location::parse(text) {
            Location::Path(path) => Ok(Self::new(path)),
            Location::Backend { scheme, name } => Ok(Self::with_catalog(
                crate::location::backend(&scheme)?
                    .catalog(&name)
                    .map_err(|e| Error::file(text, e))?,
            )),
        }
    }

    /// A store kept by `catalog`.
    pub fn with_catalog(catalog: Arc<dyn Catalog>) -> Self {
        Self { catalog }
    }

    /// The store as users name it (a directory, or `rbd:POOL`), for messages.
    pub fn name(&self) -> String {
        self.catalog.name()
    }

    /// Makes the store ready to hold volumes (creates its directory).
    pub fn prepare(&self) -> Result<()> {
        self.catalog.prepare()
    }

    /// The control socket through which commands reach a `snapvol serve` of this store on
    /// this host.
    pub fn control_socket(&self) -> std::path::PathBuf {
        self.catalog.control_socket()
    }

    /// Whether other hosts may hold this store's volumes (see [`Catalog::shared`]).
    pub fn shared(&self) -> bool {
        self.catalog.shared()
    }

    /// The control socket of the server on this host that holds `volume`, if one may.
    pub fn server_socket(&self, volume: &str) -> Option<std::path::PathBuf> {
        self.catalog.server_socket(volume)
    }

    /// Whether a volume of this name exists.
    pub fn exists(&self, name: &str) -> Result<bool> {
        validate_name(name)?;
        self.catalog.exists(name)
    }

    /// Names of all volumes, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        self.catalog.list()
    }

    /// Creates a volume and returns it open.
    pub fn create(&self, name: &str, opts: &CreateOptions, vopts: VolumeOptions) -> Result<Volume> {
        validate_name(name)?;
        let geometry = Geometry::new(opts.size, opts.chunk_size)?;
        let lock = self.catalog.reserve(name)?;
        let result = (|| {
            let location = |given: &Option<Location>, role: Role| {
                given.as_ref().map_or_else(
                    || self.catalog.default_location(name, role),
                    Location::to_string,
                )
            };
            let config = VolumeConfig {
                source: location(&opts.source, Role::Source),
                target: location(&opts.target, Role::Target),
                journal: location(&opts.cache, Role::Journal),
            };
            let layout = Layout {
                geometry,
                target_cap: opts.target_size,
                journal_size: opts.journal_size,
                write_mode: opts.write_mode,
            };
            let paths = config.paths(&*self.catalog, name);
            let volume = Volume::create(name, &paths, layout, vopts, lock)?;
            // The descriptor is written last: a volume without it is a creation that did not
            // finish, and `exists` does not count it.
            let descriptor = serde_json::to_vec_pretty(&config).expect("config serializes");
            if let Err(e) = self.catalog.write_descriptor(name, &descriptor) {
                drop(volume);
                paths.remove_backend_devices();
                return Err(e);
            }
            Ok(volume)
        })();
        if result.is_err() {
            self.catalog.unreserve(name);
        }
        result
    }

    /// Opens an existing volume, taking its lock.
    pub fn open(&self, name: &str, vopts: VolumeOptions) -> Result<Volume> {
        let paths = self.paths(name)?;
        let lock = self.catalog.lock(name, true)?;
        Volume::open(name, &paths, vopts, lock)
    }

    /// Opens an existing volume for reading only: nothing is written to any of its files (a
    /// volume left by a crash has its journal replayed in RAM only), so it works on a store
    /// mounted read-only. Takes the volume's lock shared, so readers never exclude each other
    /// and fail with [`Error::Locked`] while a writer has the volume open.
    pub fn open_read_only(&self, name: &str) -> Result<Volume> {
        let paths = self.paths(name)?;
        let lock = self.catalog.lock(name, false)?;
        Volume::open_read_only(name, &paths, lock)
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
        let paths = self.paths(name)?;
        let _lock = self.catalog.lock(name, opts.repair)?;
        check_paths(name, &paths, opts)
    }

    /// Where the VLUNs of an existing volume are, from its descriptor.
    pub fn paths(&self, name: &str) -> Result<VolumePaths> {
        validate_name(name)?;
        let bytes = self.catalog.read_descriptor(name)?;
        let config: VolumeConfig = serde_json::from_slice(&bytes).map_err(|e| {
            Error::corrupt(
                format!("the descriptor of volume '{name}' in {}", self.name()),
                e.to_string(),
            )
        })?;
        Ok(config.paths(&*self.catalog, name))
    }

    /// Removes a volume: its descriptor and the VLUNs that live in the store or a backend
    /// (the user's own files and block devices outside the store are left alone).
    pub fn destroy(&self, name: &str) -> Result<()> {
        let paths = self.paths(name)?;
        let _lock = self.catalog.lock(name, true)?;
        for loc in [&paths.source, &paths.target, &paths.journal] {
            if !loc.is_path() {
                loc.remove()?;
            }
        }
        self.catalog.remove(name)
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

    #[test]
    fn a_store_is_a_directory_unless_it_names_a_backend() {
        let dir = Store::at(Path::new("./a:b")).unwrap();
        assert_eq!(dir.name(), "./a:b");
        assert_eq!(dir.control_socket(), Path::new("./a:b/control.sock"));
        assert_eq!(
            Store::at(Path::new("/srv/volumes")).unwrap().name(),
            "/srv/volumes"
        );
        let err = Store::at(Path::new("nosuch:pool")).unwrap_err().to_string();
        assert!(err.contains("no backend for 'nosuch:'"), "{err}");
    }
}
