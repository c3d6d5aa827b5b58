//! The volume and its snapshots as NBD block devices, and the catalogue that finds them by
//! export name (`VOL` read-write, `VOL@SNAP` read-only).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use snapvol_engine::units::SnapshotSeq;
use snapvol_engine::{parse_volume_or_snapshot, Error, Store, Volume, VolumeOptions};
use snapvol_nbd::proto::{NBD_STATE_HOLE, NBD_STATE_ZERO};
use snapvol_nbd::{BlockDevice, DevError, Export, Exports, Extent};

/// Maps an engine error to the errno an NBD client sees.
fn dev_err(e: Error) -> DevError {
    match e.errno() {
        libc::ENOSPC => DevError::no_space(e.to_string()),
        libc::EINVAL => DevError::invalid(e.to_string()),
        _ => DevError::io(e.to_string()),
    }
}

/// `base:allocation` of a volume or snapshot: holes where nothing was ever written (or was
/// trimmed), so clients such as `nbdcopy` and `qemu-img convert` skip them.
fn allocation(
    vol: &Volume,
    snap: Option<SnapshotSeq>,
    offset: u64,
    len: u32,
) -> Result<Vec<Extent>, DevError> {
    let runs = vol
        .allocation(snap, offset, u64::from(len))
        .map_err(dev_err)?;
    Ok(runs
        .into_iter()
        .map(|(n, data)| {
            let flags = if data {
                0
            } else {
                NBD_STATE_HOLE | NBD_STATE_ZERO
            };
            Extent::new(n as u32, flags)
        })
        .collect())
}

/// The live volume, read-write.
pub struct LiveDevice {
    vol: Arc<Volume>,
}

impl BlockDevice for LiveDevice {
    fn size(&self) -> u64 {
        self.vol.size()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        self.vol.read(offset, buf).map_err(dev_err)
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DevError> {
        if fua {
            self.vol.write_fua(offset, data)
        } else {
            self.vol.write(offset, data)
        }
        .map_err(dev_err)
    }

    fn flush(&self) -> Result<(), DevError> {
        self.vol.flush().map_err(dev_err)
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DevError> {
        self.vol.trim(offset, len).map_err(dev_err)?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), DevError> {
        self.vol.write_zeroes(offset, len).map_err(dev_err)?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, DevError> {
        allocation(&self.vol, None, offset, len)
    }

    /// One cache and one journal serve every connection: a FLUSH on any of them covers the
    /// writes of all.
    fn multi_conn_safe(&self) -> bool {
        true
    }
}

/// A snapshot, read-only. Reads fail once the snapshot is deleted (never stale data).
pub struct SnapshotDevice {
    vol: Arc<Volume>,
    seq: SnapshotSeq,
}

impl BlockDevice for SnapshotDevice {
    fn size(&self) -> u64 {
        self.vol.size()
    }

    fn read_only(&self) -> bool {
        true
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        self.vol
            .read_snapshot(self.seq, offset, buf)
            .map_err(dev_err)
    }

    fn write(&self, _offset: u64, _data: &[u8], _fua: bool) -> Result<(), DevError> {
        Err(DevError::permission("snapshots are read-only"))
    }

    fn flush(&self) -> Result<(), DevError> {
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, DevError> {
        allocation(&self.vol, Some(self.seq), offset, len)
    }
}

/// Every volume of the store, opened once and shared by the NBD server and the control
/// socket. A volume created while serving is opened the first time a client asks for it.
pub struct StoreExports {
    store: Store,
    volumes: RwLock<BTreeMap<String, Arc<Volume>>>,
}

impl StoreExports {
    /// A catalogue over `store`, with the volumes opened so far.
    pub fn new(store: Store, volumes: BTreeMap<String, Arc<Volume>>) -> Self {
        Self {
            store,
            volumes: RwLock::new(volumes),
        }
    }

    /// The open volume `name`, opening it if the store has it and nobody else holds it.
    pub fn volume(&self, name: &str) -> Result<Arc<Volume>, Error> {
        if let Some(v) = self.volumes.read().get(name) {
            return Ok(v.clone());
        }
        let mut volumes = self.volumes.write();
        if let Some(v) = volumes.get(name) {
            return Ok(v.clone());
        }
        let v = Arc::new(self.store.open(name, VolumeOptions::default())?);
        tracing::info!(volume = name, "volume opened for serving");
        volumes.insert(name.to_owned(), v.clone());
        Ok(v)
    }

    /// The volumes being served, by name.
    pub fn volumes(&self) -> Vec<(String, Arc<Volume>)> {
        self.volumes
            .read()
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    /// Gives the volumes back (for a clean shutdown).
    pub fn take_volumes(&self) -> BTreeMap<String, Arc<Volume>> {
        std::mem::take(&mut *self.volumes.write())
    }

    fn export(&self, name: &str) -> Result<Export, Error> {
        let (vol_name, snap) = parse_volume_or_snapshot(name)?;
        let vol = self.volume(vol_name)?;
        Ok(match snap {
            None => Export::new(
                Arc::new(LiveDevice { vol: vol.clone() }),
                format!("snapvol volume {vol_name}"),
            ),
            Some(s) => {
                let info = vol.snapshot(s)?;
                Export::new(
                    Arc::new(SnapshotDevice {
                        vol: vol.clone(),
                        seq: info.seq,
                    }),
                    format!("snapvol snapshot {vol_name}@{s} (read-only)"),
                )
            }
        })
    }
}

impl Exports for StoreExports {
    fn lookup(&self, name: &str) -> Option<Export> {
        // The default export (empty name) is the volume when the store has exactly one.
        let name = if name.is_empty() {
            let names = self.store.list().ok()?;
            match names.as_slice() {
                [only] => only.clone(),
                _ => return None,
            }
        } else {
            name.to_owned()
        };
        match self.export(&name) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::info!(export = %name, error = %e, "export not available");
                None
            }
        }
    }

    fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for name in self.store.list().unwrap_or_default() {
            // A volume that cannot be opened is not an export.
            let Ok(vol) = self.volume(&name) else {
                continue;
            };
            names.push(name.clone());
            names.extend(
                vol.snapshots()
                    .into_iter()
                    .map(|s| format!("{name}@{}", s.name)),
            );
        }
        names
    }
}
