//! Where a volume's devices are, and opening them as a set. It knows file names, not formats:
//! nothing here reads a byte of a device.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::units::Geometry;
use crate::vlun::{FileVlun, Vlun};

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

/// Where a volume's devices are, as files or block devices.
#[derive(Debug, Clone)]
pub struct VolumePaths {
    /// Source VLUN.
    pub source: PathBuf,
    /// Target VLUN.
    pub target: PathBuf,
    /// Cache journal.
    pub journal: PathBuf,
}

impl VolumePaths {
    pub(crate) fn create(&self, geo: Geometry) -> Result<Vluns> {
        let src =
            FileVlun::create(&self.source, geo.size).map_err(|e| Error::file(&self.source, e))?;
        let len = src.len().map_err(|e| Error::file(&self.source, e))?;
        if len < geo.size {
            return Err(Error::InvalidArgument(format!(
                "source {} holds {len} bytes, less than the volume size {}",
                self.source.display(),
                geo.size
            )));
        }
        let tgt = FileVlun::create(&self.target, 0).map_err(|e| Error::file(&self.target, e))?;
        let jnl = FileVlun::create(&self.journal, 0).map_err(|e| Error::file(&self.journal, e))?;
        Ok(Vluns {
            source: Box::new(src),
            target: Box::new(tgt),
            journal: Box::new(jnl),
        })
    }

    /// The devices, opened for reading only.
    pub(crate) fn open_read_only(&self) -> Result<Vluns> {
        let open = |p: &Path| FileVlun::open_read_only(p).map_err(|e| Error::file(p, e));
        Ok(Vluns {
            source: Box::new(open(&self.source)?),
            target: Box::new(open(&self.target)?),
            journal: Box::new(open(&self.journal)?),
        })
    }

    pub(crate) fn open(&self) -> Result<Vluns> {
        let open = |p: &Path| FileVlun::open(p).map_err(|e| Error::file(p, e));
        Ok(Vluns {
            source: Box::new(open(&self.source)?),
            target: Box::new(open(&self.target)?),
            journal: Box::new(open(&self.journal)?),
        })
    }
}
