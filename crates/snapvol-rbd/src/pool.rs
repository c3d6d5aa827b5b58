//! A store kept in a RADOS pool (`--store rbd:POOL`): nothing of a volume stays on a host.
//!
//! ```text
//! pool POOL
//!   snapvol.volume.VOL    object: the volume's descriptor (volume.json in a directory store),
//!                         written last by a creation, so a volume without it does not exist
//!   snapvol.lock.VOL      object carrying the RADOS lock "snapvol": exclusive with a lease
//!                         for the one process that writes the volume, shared for readers
//!   snapvol.holder.VOL    object: who holds the exclusive lock (host, pid, command, client,
//!                         address, control socket); removed when it lets go cleanly
//!   snapvol.VOL.source    RBD image: the source VLUN (default location)
//!   snapvol.VOL.target    RBD image: the target VLUN (default location)
//!   snapvol.VOL.journal   RBD image: the persistent cache journal (default location)
//! ```
//!
//! # One writer, and failover
//! The exclusive lock is a lease of [`LEASE`], renewed every [`RENEW_EVERY`] by a thread of
//! the holder. A holder that dies stops renewing, the lease runs out, and the next process to
//! lock the volume takes it over: it finds the holder record the dead process left, fences
//! that client with an OSD blocklist entry (so that nothing it still has in flight, nor
//! anything it might send if it was only stalled, can reach the volume's images again),
//! records itself, and only then opens the volume, which replays the journal. A holder whose
//! renewal fails (the lease was lost, the client was blocklisted) marks its lock lost, and the
//! engine refuses every later request on the volume.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use snapvol_engine::catalog::{locked, this_process};
use snapvol_engine::{Catalog, Error as EngineError, Hold, Location, Role, VolumeLock};

use crate::backend::{Connector, SCHEME};
use crate::error::Error;
use crate::rados::IoCtx;

/// How long an exclusive lock outlives its last renewal: a dead holder's volume can be taken
/// over this long after it died.
pub const LEASE: Duration = Duration::from_secs(15);
/// How often the holder renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// The RADOS lock's name on each lock object.
const LOCK_NAME: &str = "snapvol";
/// The tag of the shared (reader) lock.
const READERS: &str = "readers";

/// A store in a RADOS pool; see the module documentation.
#[derive(Debug)]
pub struct PoolCatalog {
    connector: Arc<Connector>,
    pool: String,
}

/// Who holds a volume, as its holder recorded it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    /// The host it runs on.
    pub host: String,
    /// The process: pid and command line.
    pub process: String,
    /// Its RADOS client (`client.<instance id>`).
    pub client: String,
    /// Its RADOS address, which a takeover blocklists.
    pub address: String,
    /// The control socket through which commands on its host reach it.
    pub socket: PathBuf,
}

impl Holder {
    fn describe(&self) -> String {
        format!("{} on host {} ({})", self.process, self.host, self.client)
    }
}

fn descriptor_oid(volume: &str) -> String {
    format!("snapvol.volume.{volume}")
}

fn lock_oid(volume: &str) -> String {
    format!("snapvol.lock.{volume}")
}

fn holder_oid(volume: &str) -> String {
    format!("snapvol.holder.{volume}")
}

/// This host's name, as holder records give it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// Where the control sockets of servers of pool stores on this host are:
/// `$SNAPVOL_RUN_DIR`, else `/run/snapvol`.
pub fn run_dir() -> PathBuf {
    std::env::var_os("SNAPVOL_RUN_DIR").map_or_else(|| PathBuf::from("/run/snapvol"), PathBuf::from)
}

/// A Ceph error as the engine reports it (the message names the call and the object).
fn engine(e: Error) -> EngineError {
    EngineError::file("ceph", std::io::Error::from(e))
}

impl PoolCatalog {
    /// The store in `pool`, reached through the process's connection.
    pub(crate) fn new(connector: Arc<Connector>, pool: &str) -> Self {
        Self {
            connector,
            pool: pool.to_owned(),
        }
    }

    /// The pool handle of the process's connection now (a new one after this client was
    /// fenced).
    fn io(&self) -> Result<IoCtx, EngineError> {
        self.connector.ioctx(&self.pool).map_err(engine)
    }

    /// `e`, from a call through `io`, for the engine; a fenced client is noted, so that the
    /// next call connects anew.
    fn err(&self, io: &IoCtx, e: Error) -> EngineError {
        self.connector.fenced(io.cluster(), &e);
        engine(e)
    }

    /// The holder record of `volume`, if there is one.
    pub fn holder(&self, volume: &str) -> Result<Option<Holder>, EngineError> {
        let io = self.io()?;
        match io.read(&holder_oid(volume)) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(self.err(&io, e)),
        }
    }

    /// The control socket of this process, were it to serve this store.
    fn my_socket(&self) -> PathBuf {
        run_dir().join(format!(
            "{SCHEME}.{}.{}.sock",
            self.pool,
            std::process::id()
        ))
    }

    fn lock_exclusive(&self, volume: &str) -> Result<VolumeLock, EngineError> {
        let io = &self.io()?;
        let cluster = io.cluster().clone();
        let cookie = format!("{}.{}", cluster.instance_id(), unique());
        let oid = lock_oid(volume);
        match io.lock_exclusive(&oid, LOCK_NAME, &cookie, &this_process(), Some(LEASE)) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EBUSY) => {
                return Err(self.held_by(volume));
            }
            Err(e) => return Err(self.err(io, e)),
        }
        let mut hold = LeaseHold::start(io.clone(), volume, oid, cookie, None);
        let me = Holder {
            host: host_name(),
            process: this_process(),
            client: cluster.client_name(),
            address: cluster.instance_addr().map_err(|e| self.err(io, e))?,
            socket: self.my_socket(),
        };
        // A record left behind is a holder that did not let go: it died, or stalled past its
        // lease. It is fenced before anything of the volume is touched.
        if let Some(before) = self.holder(volume)? {
            if before.client != me.client {
                tracing::warn!(
                    volume,
                    holder = %before.describe(),
                    address = %before.address,
                    "taking over a volume whose holder did not let go: fencing it with a blocklist entry"
                );
                cluster
                    .blocklist_add(&before.address, 0)
                    .map_err(|e| self.err(io, e))?;
            }
        }
        io.write_full(
            &holder_oid(volume),
            &serde_json::to_vec(&me).expect("holder serializes"),
        )
        .map_err(|e| self.err(io, e))?;
        hold.recorded = true;
        Ok(VolumeLock::new(Box::new(hold)))
    }

    fn lock_shared(&self, volume: &str) -> Result<VolumeLock, EngineError> {
        let io = &self.io()?;
        let cookie = format!("{}.{}", io.cluster().instance_id(), unique());
        let oid = lock_oid(volume);
        match io.lock_shared(
            &oid,
            LOCK_NAME,
            &cookie,
            READERS,
            &this_process(),
            Some(LEASE),
        ) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EBUSY) => return Err(self.held_by(volume)),
            Err(e) => return Err(self.err(io, e)),
        }
        Ok(VolumeLock::new(Box::new(LeaseHold::start(
            io.clone(),
            volume,
            oid,
            cookie,
            Some(READERS),
        ))))
    }

    /// [`EngineError::Locked`] naming whoever holds `volume`.
    fn held_by(&self, volume: &str) -> EngineError {
        let holder = self
            .holder(volume)
            .ok()
            .flatten()
            .map_or_else(|| "another process".to_owned(), |h| h.describe());
        locked(volume, &holder)
    }
}

/// A number no other lock of this process uses.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (n << 48) ^ u64::from(std::process::id())
}

impl Catalog for PoolCatalog {
    fn name(&self) -> String {
        format!("{SCHEME}:{}", self.pool)
    }

    fn prepare(&self) -> Result<(), EngineError> {
        self.io().map(drop)
    }

    fn list(&self) -> Result<Vec<String>, EngineError> {
        let io = self.io()?;
        let mut names: Vec<String> = io
            .list_objects()
            .map_err(|e| self.err(&io, e))?
            .into_iter()
            .filter_map(|o| o.strip_prefix("snapvol.volume.").map(str::to_owned))
            .filter(|n| snapvol_engine::validate_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    fn exists(&self, volume: &str) -> Result<bool, EngineError> {
        let io = self.io()?;
        match io.stat(&descriptor_oid(volume)) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(self.err(&io, e)),
        }
    }

    fn reserve(&self, volume: &str) -> Result<VolumeLock, EngineError> {
        if self.exists(volume)? {
            return Err(EngineError::VolumeExists(volume.to_owned()));
        }
        let lock = self.lock_exclusive(volume)?;
        // Checked again under the lock: another host may have created it meanwhile.
        if self.exists(volume)? {
            return Err(EngineError::VolumeExists(volume.to_owned()));
        }
        Ok(lock)
    }

    fn unreserve(&self, volume: &str) {
        if let Ok(io) = self.io() {
            let _ = io.remove(&holder_oid(volume));
            let _ = io.remove(&lock_oid(volume));
        }
    }

    fn default_location(&self, volume: &str, role: Role) -> String {
        let role = match role {
            Role::Source => "source",
            Role::Target => "target",
            Role::Journal => "journal",
        };
        format!("snapvol.{volume}.{role}")
    }

    fn resolve(&self, _volume: &str, written: &str) -> Location {
        match Location::parse(written) {
            // A bare name is an image of this pool.
            Location::Path(p) if p.is_relative() && !written.contains('/') => Location::Backend {
                scheme: SCHEME.to_owned(),
                name: format!("{}/{written}", self.pool),
            },
            other => other,
        }
    }

    fn read_descriptor(&self, volume: &str) -> Result<Vec<u8>, EngineError> {
        let io = self.io()?;
        match io.read(&descriptor_oid(volume)) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.errno() == Some(libc::ENOENT) => {
                Err(EngineError::VolumeNotFound(volume.to_owned()))
            }
            Err(e) => Err(self.err(&io, e)),
        }
    }

    fn write_descriptor(&self, volume: &str, bytes: &[u8]) -> Result<(), EngineError> {
        let io = self.io()?;
        io.write_full(&descriptor_oid(volume), bytes)
            .map_err(|e| self.err(&io, e))
    }

    fn lock(&self, volume: &str, exclusive: bool) -> Result<VolumeLock, EngineError> {
        if exclusive {
            self.lock_exclusive(volume)
        } else {
            self.lock_shared(volume)
        }
    }

    fn remove(&self, volume: &str) -> Result<(), EngineError> {
        let io = &self.io()?;
        io.remove(&descriptor_oid(volume))
            .map_err(|e| self.err(io, e))?;
        let _ = io.remove(&holder_oid(volume));
        // The lock object goes last; the caller's lock on it is released with it.
        let _ = io.remove(&lock_oid(volume));
        Ok(())
    }

    fn control_socket(&self) -> PathBuf {
        self.my_socket()
    }

    fn shared(&self) -> bool {
        true
    }

    /// The holder's socket when the holder runs on this host.
    fn server_socket(&self, volume: &str) -> Option<PathBuf> {
        let holder = self.holder(volume).ok().flatten()?;
        (holder.host == host_name()).then_some(holder.socket)
    }
}

/// A lock with a lease, kept by a renewing thread until dropped.
#[derive(Debug)]
struct LeaseHold {
    io: IoCtx,
    oid: String,
    cookie: String,
    /// Whether this hold wrote the holder record (exclusive holds), to remove on release.
    recorded: bool,
    volume: String,
    shared: Arc<Lease>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

/// What the holder and its renewing thread share. `lost` is read on every request of the
/// volume, so it is an atomic, not behind the mutex a renewal may hold for a round trip.
#[derive(Debug, Default)]
struct Lease {
    lost: AtomicBool,
    why: Mutex<Option<String>>,
    stop: Mutex<bool>,
    wake: Condvar,
}

impl LeaseHold {
    fn start(
        io: IoCtx,
        volume: &str,
        oid: String,
        cookie: String,
        tag: Option<&'static str>,
    ) -> Self {
        let shared = Arc::new(Lease::default());
        let renewer = {
            let (io, oid, cookie, shared) =
                (io.clone(), oid.clone(), cookie.clone(), shared.clone());
            let volume = volume.to_owned();
            std::thread::Builder::new()
                .name(format!("lease-{volume}"))
                .spawn(move || renew(&io, &volume, &oid, &cookie, tag, &shared))
                .ok()
        };
        if renewer.is_none() {
            shared.lose("no thread could be started to renew its lease".to_owned());
        }
        Self {
            io,
            oid,
            cookie,
            recorded: false,
            volume: volume.to_owned(),
            shared,
            renewer,
        }
    }
}

impl Lease {
    fn lose(&self, why: String) {
        *self.why.lock() = Some(why);
        self.lost.store(true, Ordering::SeqCst);
    }
}

/// Renews the lease every [`RENEW_EVERY`] until told to stop; a failed renewal loses the lock.
fn renew(io: &IoCtx, volume: &str, oid: &str, cookie: &str, tag: Option<&str>, lease: &Lease) {
    loop {
        {
            let mut stop = lease.stop.lock();
            if !*stop {
                lease.wake.wait_for(&mut stop, RENEW_EVERY);
            }
            if *stop {
                return;
            }
        }
        let desc = this_process();
        let renewed = match tag {
            None => io.renew_lock_exclusive(oid, LOCK_NAME, cookie, &desc, Some(LEASE)),
            Some(tag) => io.renew_lock_shared(oid, LOCK_NAME, cookie, tag, &desc, Some(LEASE)),
        };
        if let Err(e) = renewed {
            tracing::error!(volume, error = %e, "lost the lock on the volume: its lease could not be renewed");
            lease.lose(format!(
                "its lease could not be renewed ({e}); another host may hold it now"
            ));
            return;
        }
    }
}

impl Hold for LeaseHold {
    fn lost(&self) -> Option<String> {
        if self.shared.lost.load(Ordering::Relaxed) {
            self.shared.why.lock().clone()
        } else {
            None
        }
    }
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        if self.shared.lost.load(Ordering::SeqCst) {
            return; // someone else's now: touch nothing
        }
        if self.recorded {
            let _ = self.io.remove(&holder_oid(&self.volume));
        }
        if let Err(e) = self.io.unlock(&self.oid, LOCK_NAME, &self.cookie) {
            tracing::warn!(volume = %self.volume, error = %e, "releasing the volume's lock failed; it expires on its own");
        }
    }
}
