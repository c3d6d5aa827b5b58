//! The engine's `rbd:` locations: `rbd:POOL/IMAGE` names image IMAGE of pool POOL.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use snapvol_engine::vlun::Vlun;
use snapvol_engine::{Backend, Catalog};

use crate::error::{Error, Result};
use crate::pool::PoolCatalog;
use crate::rados::{Cluster, IoCtx};
use crate::rbd::RbdImage;

/// The scheme this backend registers: locations are written `rbd:POOL/IMAGE`.
pub const SCHEME: &str = "rbd";

/// A pool and an image in it, as `rbd:` locations name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSpec<'a> {
    /// The pool.
    pub pool: &'a str,
    /// The image in the pool.
    pub image: &'a str,
}

impl<'a> ImageSpec<'a> {
    /// Reads `POOL/IMAGE`: both parts non-empty, and exactly one slash (namespaces, written
    /// `POOL/NAMESPACE/IMAGE` by the rbd tool, are not supported).
    pub fn parse(name: &'a str) -> Result<Self> {
        let invalid = |rule| Error::InvalidName {
            what: "RBD location",
            name: format!("{SCHEME}:{name}"),
            rule,
        };
        let (pool, image) = name
            .split_once('/')
            .ok_or_else(|| invalid("write it rbd:POOL/IMAGE"))?;
        if pool.is_empty() {
            return Err(invalid("the pool name is empty (write it rbd:POOL/IMAGE)"));
        }
        if image.is_empty() {
            return Err(invalid("the image name is empty (write it rbd:POOL/IMAGE)"));
        }
        if image.contains('/') {
            return Err(invalid(
                "only one slash: rbd:POOL/IMAGE (RBD namespaces are not supported)",
            ));
        }
        Ok(Self { pool, image })
    }
}

/// The engine's [`Backend`] for `rbd:POOL/IMAGE` locations.
///
/// It connects on first use, not when registered, so that a build or a command that never
/// touches Ceph never needs its libraries or a cluster; a failed connection is retried on the
/// next use. All images share the one connection and one pool handle per pool.
#[derive(Debug)]
pub struct RbdBackend {
    conf: Option<PathBuf>,
    id: String,
    state: Mutex<Connection>,
}

#[derive(Debug, Default)]
struct Connection {
    cluster: Option<Cluster>,
    pools: HashMap<String, IoCtx>,
}

impl RbdBackend {
    /// A backend that will connect as `client.<id>` with configuration `conf` (else
    /// `$CEPH_CONF`, else Ceph's default search).
    pub fn new(conf: Option<PathBuf>, id: String) -> Self {
        Self {
            conf,
            id,
            state: Mutex::new(Connection::default()),
        }
    }

    /// The connection, made now if this is the first use.
    pub fn cluster(&self) -> Result<Cluster> {
        let mut state = self.state.lock();
        Self::connected(&mut state, self)
    }

    fn connected(state: &mut Connection, me: &Self) -> Result<Cluster> {
        if let Some(c) = &state.cluster {
            return Ok(c.clone());
        }
        let c = Cluster::connect(me.conf.as_deref(), &me.id)?;
        state.cluster = Some(c.clone());
        Ok(c)
    }

    /// The handle on `pool`, shared by every image of it.
    pub fn ioctx(&self, pool: &str) -> Result<IoCtx> {
        let mut state = self.state.lock();
        if let Some(io) = state.pools.get(pool) {
            return Ok(io.clone());
        }
        let io = Self::connected(&mut state, self)?.ioctx(pool)?;
        state.pools.insert(pool.to_owned(), io.clone());
        Ok(io)
    }

    fn create_image(&self, name: &str, size: u64) -> Result<RbdImage> {
        let spec = ImageSpec::parse(name)?;
        let io = self.ioctx(spec.pool)?;
        io.create_image(spec.image, size)?;
        RbdImage::open(&io, spec.image, false)
    }

    fn open_image(&self, name: &str, read_only: bool) -> Result<RbdImage> {
        let spec = ImageSpec::parse(name)?;
        RbdImage::open(&self.ioctx(spec.pool)?, spec.image, read_only)
    }

    fn remove_image(&self, name: &str) -> Result<()> {
        let spec = ImageSpec::parse(name)?;
        self.ioctx(spec.pool)?.remove_image(spec.image)
    }
}

impl Backend for RbdBackend {
    fn create(&self, name: &str, size: u64) -> io::Result<Box<dyn Vlun>> {
        Ok(Box::new(self.create_image(name, size)?))
    }

    fn open(&self, name: &str, read_only: bool) -> io::Result<Box<dyn Vlun>> {
        Ok(Box::new(self.open_image(name, read_only)?))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        Ok(self.remove_image(name)?)
    }

    /// `--store rbd:POOL`: a store kept in the pool (see [`PoolCatalog`]).
    fn catalog(&self, name: &str) -> io::Result<Arc<dyn Catalog>> {
        if name.is_empty() || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("'{SCHEME}:{name}' is not a pool: a store in Ceph is written --store {SCHEME}:POOL"),
            ));
        }
        Ok(Arc::new(PoolCatalog::new(self.ioctx(name)?)))
    }
}

/// Makes `rbd:POOL/IMAGE` locations work in this process: registers an [`RbdBackend`] that
/// connects as `client.<id>` with configuration `conf` (else `$CEPH_CONF`, else Ceph's
/// default search) the first time such a location is used. Costs nothing until then, and
/// needs neither Ceph's libraries nor a cluster until then.
pub fn register(conf: Option<PathBuf>, id: String) -> Arc<RbdBackend> {
    let backend = Arc::new(RbdBackend::new(conf, id));
    snapvol_engine::register_backend(SCHEME, backend.clone());
    backend
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rbd_location_is_a_pool_and_an_image_and_nothing_else() {
        assert_eq!(
            ImageSpec::parse("rbd/vol-1.source").unwrap(),
            ImageSpec {
                pool: "rbd",
                image: "vol-1.source"
            }
        );
        for (bad, says) in [
            ("image", "rbd:POOL/IMAGE"),
            ("/image", "pool name is empty"),
            ("pool/", "image name is empty"),
            ("pool/ns/image", "only one slash"),
            ("", "rbd:POOL/IMAGE"),
        ] {
            let e = ImageSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.contains(&format!("'rbd:{bad}'")), "{bad}: {e}");
        }
    }
}
