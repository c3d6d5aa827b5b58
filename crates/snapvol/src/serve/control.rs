//! The control socket: while `snapvol serve` holds a store, management commands from other
//! `snapvol` processes reach it through `STORE/control.sock`, so a snapshot of a volume under
//! live I/O is taken by the process that owns the volume's cache.
//!
//! The protocol is one JSON request per connection, one line, answered by one JSON line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snapvol_engine::{Error, Store};

use super::devices::StoreExports;

/// Name of the control socket inside the store.
pub const SOCKET: &str = "control.sock";

/// Where the control socket of `store` is.
pub fn socket_path(store: &Store) -> PathBuf {
    store.root().join(SOCKET)
}

/// A management request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// `snapvol info VOL`.
    Info {
        /// The volume.
        volume: String,
    },
    /// `snapvol snapshot create VOL@SNAP`.
    SnapshotCreate {
        /// The volume.
        volume: String,
        /// The snapshot.
        snapshot: String,
    },
    /// `snapvol snapshot delete VOL@SNAP`.
    SnapshotDelete {
        /// The volume.
        volume: String,
        /// The snapshot.
        snapshot: String,
    },
    /// `snapvol snapshot list VOL`.
    SnapshotList {
        /// The volume.
        volume: String,
    },
}

/// The answer to a request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    /// Done; the value depends on the request.
    Ok {
        /// `VolumeInfo`, `SnapshotInfo`, a list of `SnapshotInfo`, or null.
        value: serde_json::Value,
    },
    /// Refused or failed.
    Error {
        /// The engine error's kind, for the client to rebuild it.
        kind: String,
        /// The name it concerns, for kinds that carry one.
        name: Option<String>,
        /// The message to show.
        message: String,
    },
}

impl Response {
    fn from_error(e: Error) -> Self {
        let (kind, name) = match &e {
            Error::SnapshotExists(n) => ("snapshot_exists", Some(n.clone())),
            Error::SnapshotNotFound(n) => ("snapshot_not_found", Some(n.clone())),
            Error::VolumeNotFound(n) => ("volume_not_found", Some(n.clone())),
            Error::NoSpace { .. } => ("no_space", None),
            _ => ("other", None),
        };
        Response::Error {
            kind: kind.to_owned(),
            name,
            message: e.to_string(),
        }
    }

    /// The value, or the error rebuilt as the engine error it was where it has a kind.
    pub fn into_result(self) -> anyhow::Result<serde_json::Value> {
        match self {
            Response::Ok { value } => Ok(value),
            Response::Error {
                kind,
                name,
                message,
            } => Err(match (kind.as_str(), name) {
                ("snapshot_exists", Some(n)) => Error::SnapshotExists(n).into(),
                ("snapshot_not_found", Some(n)) => Error::SnapshotNotFound(n).into(),
                ("volume_not_found", Some(n)) => Error::VolumeNotFound(n).into(),
                _ => anyhow::anyhow!("{message}"),
            }),
        }
    }
}

fn handle(exports: &StoreExports, req: Request) -> Response {
    let result = (|| -> Result<serde_json::Value, Error> {
        Ok(match req {
            Request::Info { volume } => json(&exports.volume(&volume)?.info()),
            Request::SnapshotCreate { volume, snapshot } => {
                let info = exports.volume(&volume)?.snapshot_create(&snapshot)?;
                tracing::info!(snapshot = %format!("{volume}@{snapshot}"), "snapshot created through the control socket");
                json(&info)
            }
            Request::SnapshotDelete { volume, snapshot } => {
                exports.volume(&volume)?.snapshot_delete(&snapshot)?;
                serde_json::Value::Null
            }
            Request::SnapshotList { volume } => json(&exports.volume(&volume)?.snapshots()),
        })
    })();
    match result {
        Ok(value) => Response::Ok { value },
        Err(e) => Response::from_error(e),
    }
}

fn json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// The listening side, run by `serve`.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Listens on the store's control socket. A socket file nobody answers on is stale (a
    /// server that was killed) and is replaced; a live one means another server holds the
    /// store.
    pub fn start(store: &Store, exports: Arc<StoreExports>) -> anyhow::Result<Self> {
        let path = socket_path(store);
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                anyhow::bail!(
                    "another snapvol serve answers on {}; one server per store",
                    path.display()
                );
            }
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    match conn {
                        Ok(stream) => serve_one(&exports, stream),
                        Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
                    }
                }
            })?;
        Ok(Self {
            path,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops listening and removes the socket file.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_one(exports: &StoreExports, stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
        return;
    }
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(req) => handle(exports, req),
        Err(e) => Response::Error {
            kind: "bad_request".into(),
            name: None,
            message: format!("bad control request: {e}"),
        },
    };
    let mut out = &stream;
    if let Ok(mut text) = serde_json::to_string(&response) {
        text.push('\n');
        let _ = out.write_all(text.as_bytes());
    }
}

/// Sends `req` to the server holding `store`; `None` when no server answers there.
pub fn request(store: &Store, req: &Request) -> anyhow::Result<Option<Response>> {
    let path = socket_path(store);
    let Ok(mut stream) = UnixStream::connect(&path) else {
        return Ok(None);
    };
    let mut text = serde_json::to_string(req)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    if line.trim().is_empty() {
        anyhow::bail!(
            "the server on {} closed the control connection",
            path.display()
        );
    }
    Ok(Some(serde_json::from_str(&line)?))
}

/// Whether the socket at `path` is answered.
pub fn is_live(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}
