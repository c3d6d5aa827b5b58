//! Where a volume's devices are, and opening them as a set. It knows locations, not formats:
//! nothing here reads a byte of a device.

use crate::error::{Error, Result};
use crate::location::Location;
use crate::units::Geometry;
use crate::vlun::Vlun;

/// The devices a volume lives on.
#[derive(Debug)]
pub struct Vluns {
    /// The live volume's data.
    pub source: Box<dyn Vlun>,
    /// The snapshot store.
    pub target: Box<dyn Vlun>,
    /// The persistent cache journal.
    pub journal: Box<dyn Vlun>,
}

/// Where a volume's devices are: files, block devices, or devices of a backend.
#[derive(Debug, Clone)]
pub struct VolumePaths {
    /// Source VLUN.
    pub source: Location,
    /// Target VLUN.
    pub target: Location,
    /// Cache journal.
    pub journal: Location,
}

impl VolumePaths {
    /// Creates the three devices (files and backend devices are made new; an existing block
    /// device is used as it is). On failure, the backend devices this call made are removed
    /// again.
    pub(crate) fn create(&self, geo: Geometry) -> Result<Vluns> {
        let source = self.source.create(geo.size)?;
        let made = |upto: &[&Location]| {
            for loc in upto.iter().filter(|l| !l.is_path()) {
                let _ = loc.remove();
            }
        };
        let len = source
            .len()
            .map_err(|e| Error::file(self.source.to_string(), e))
            .inspect_err(|_| made(&[&self.source]))?;
        if len < geo.size {
            made(&[&self.source]);
            return Err(Error::InvalidArgument(format!(
                "source {} holds {len} bytes, less than the volume size {}",
                self.source, geo.size
            )));
        }
        let target = self
            .target
            .create(0)
            .inspect_err(|_| made(&[&self.source]))?;
        let journal = self
            .journal
            .create(0)
            .inspect_err(|_| made(&[&self.source, &self.target]))?;
        Ok(Vluns {
            source,
            target,
            journal,
        })
    }

    /// Removes the devices that live in a backend (files are the store's business).
    pub(crate) fn remove_backend_devices(&self) {
        for loc in [&self.source, &self.target, &self.journal] {
            if !loc.is_path() {
                if let Err(e) = loc.remove() {
                    tracing::warn!(device = %loc, error = %e, "could not remove a device of a volume whose creation failed");
                }
            }
        }
    }

    /// The devices, opened for reading only.
    pub(crate) fn open_read_only(&self) -> Result<Vluns> {
        Ok(Vluns {
            source: self.source.open_read_only()?,
            target: self.target.open_read_only()?,
            journal: self.journal.open_read_only()?,
        })
    }

    pub(crate) fn open(&self) -> Result<Vluns> {
        Ok(Vluns {
            source: self.source.open()?,
            target: self.target.open()?,
            journal: self.journal.open()?,
        })
    }
}
