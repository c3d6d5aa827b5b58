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
    connector: Arc<Connector>,
}

/// The process's connection to the cluster, made on first use and made again after the
/// cluster fenced it: a blocklisted client can never be used again, but the process can
/// connect as a new client (with a new address) and go on, as a standby for what it lost.
#[derive(Debug)]
pub(crate) struct Connector {
    conf: Option<PathBuf>,
    id: String,
    state: Mutex<Connection>,
}

#[derive(Debug, Default)]
struct Connection {
    cluster: Option<Cluster>,
    pools: HashMap<String, IoCtx>,
}

impl Connector {
    /// The connection, made now if there is none.
    pub(crate) fn cluster(&self) -> Result<Cluster> {
        let mut state = self.state.lock();
        self.connected(&mut state)
    }

    fn connected(&self, state: &mut Connection) -> Result<Cluster> {
        if let Some(c) = &state.cluster {
            return Ok(c.clone());
        }
        let c = Cluster::connect(self.conf.as_deref(), &self.id)?;
        state.cluster = Some(c.clone());
        Ok(c)
    }

    /// The handle on `pool`, shared by every image of it.
    pub(crate) fn ioctx(&self, pool: &str) -> Result<IoCtx> {
        let mut state = self.state.lock();
        if let Some(io) = state.pools.get(pool) {
            return Ok(io.clone());
        }
        let io = self.connected(&mut state)?.ioctx(pool)?;
        state.pools.insert(pool.to_owned(), io.clone());
        Ok(io)
    }

    /// Notes that `e`, from a call through `cluster`, may say the cluster fenced this client
    /// (`ESHUTDOWN`, Ceph's `EBLOCKLISTED`): then the next use connects anew. Images and
    /// locks of the old connection stay fenced; whoever holds them finds out by themselves.
    pub(crate) fn fenced(&self, cluster: &Cluster, e: &Error) {
        if e.errno() != Some(libc::ESHUTDOWN) {
            return;
        }
        let mut state = self.state.lock();
        if state.cluster.as_ref().is_some_and(|c| c.is(cluster)) {
            tracing::warn!(
                client = %cluster.client_name(),
                "this process's Ceph client was fenced (blocklisted): connecting again as a new client"
            );
            *state = Connection::default();
        }
    }
}

impl RbdBackend {
    /// A backend that will connect as `client.<id>` with configuration `conf` (else
    /// `$CEPH_CONF`, else Ceph's default search).
    pub fn new(conf: Option<PathBuf>, id: String) -> Self {
        Self {
            connector: Arc::new(Connector {
                conf,
                id,
                state: Mutex::new(Connection::default()),
            }),
        }
    }

    /// The connection, made now if there is none.
    pub fn cluster(&self) -> Result<Cluster> {
        self.connector.cluster()
    }

    /// The handle on `pool`, shared by every image of it.
    pub fn ioctx(&self, pool: &str) -> Result<IoCtx> {
        self.connector.ioctx(pool)
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
        // Connect now, so that a store that cannot be reached fails here, with the reason.
        self.ioctx(name)?;
        Ok(Arc::new(PoolCatalog::new(self.connector.clone(), name)))
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
