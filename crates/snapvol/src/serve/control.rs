//! The control socket: while `snapvol serve` holds a store, management commands from other
//! `snapvol` processes reach it through `STORE/control.sock`, so a snapshot of a volume under
//! live I/O is taken by the process that owns the volume's cache.
//!
//! The protocol is one JSON request per connection, one line, answered by one JSON line.
//!
//! Whoever can connect can take and delete snapshots, so the socket is its owner's alone
//! (mode 0600). Even so, one stuck or misbehaving client must not keep management from the
//! others: each connection is served on a thread of its own, at most [`MAX_CONNECTIONS`] at
//! once; a request must be at most [`MAX_REQUEST`] bytes and arrive whole within
//! [`REQUEST_DEADLINE`] of connecting, or the connection is answered with an error and closed.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, Permissions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use snapvol_engine::{Error, Store};

use super::devices::StoreExports;

/// Control connections served at once; one more is answered "too many control connections"
/// and closed. Management commands are short and few, so this is only reached by a client
/// that opens connections and leaves them, each of which [`REQUEST_DEADLINE`] ends.
pub const MAX_CONNECTIONS: usize = 64;

/// Longest request line, in bytes. Real requests are a few hundred bytes (names are short);
/// a client sending more without a newline is answered `bad_request` once this much is read,
/// so it cannot make the server buffer without bound.
pub const MAX_REQUEST: usize = 1 << 20;

/// Time from connecting to a complete request line. A total, not a limit on each read: a
/// client trickling one byte at a time is cut off too.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Time the client has to take the answer; a client that does not read it is abandoned.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Time the client of an export has to take each piece of the image (it may be writing the
/// previous one to a slow disk).
pub(super) const STREAM_TIMEOUT: Duration = Duration::from_secs(120);

/// The control socket of the server on this host that holds the volume `req` is about.
fn socket_for(store: &Store, req: &Request) -> Option<PathBuf> {
    store.server_socket(req.volume())
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
    /// `snapvol check VOL` (without `--repair`): answered with a `CheckReport` of the volume
    /// as it is durably, checked while it stays served.
    Check {
        /// The volume.
        volume: String,
        /// Also verify every preserved chunk against its checksum.
        #[serde(default)]
        data: bool,
    },
    /// `snapvol diff VOL@FROM [VOL@TO]`: answered with the diff.
    Diff {
        /// The volume.
        volume: String,
        /// The older snapshot.
        from: String,
        /// The newer snapshot, or `None` for the live volume.
        to: Option<String>,
    },
    /// `snapvol snapshot rollback VOL@SNAP`: answered with a `RollbackReport`.
    Rollback {
        /// The volume.
        volume: String,
        /// The snapshot.
        snapshot: String,
        /// Roll back even with clients connected to the live export.
        #[serde(default)]
        force: bool,
    },
    /// `snapvol export VOL[@SNAP] FILE`: answered with `{"size": BYTES}`, then the image as
    /// the frames of [`super::image_stream`].
    Export {
        /// The volume.
        volume: String,
        /// The snapshot, or `None` for the live volume.
        snapshot: Option<String>,
    },
    /// `snapvol export VOL[@TO] FILE --from VOL@FROM`: see [`super::diff_socket`].
    ExportDiff {
        /// The volume.
        volume: String,
        /// The from-snapshot.
        from: String,
        /// The to-snapshot, or `None` for the live volume.
        to: Option<String>,
    },
    /// `snapvol import-diff VOL FILE`: see [`super::diff_socket`].
    ImportDiff {
        /// The volume.
        volume: String,
        /// Apply even if the live volume changed since the from-snapshot.
        #[serde(default)]
        force: bool,
    },
}

impl Request {
    /// The volume the request is about.
    pub fn volume(&self) -> &str {
        match self {
            Request::Info { volume }
            | Request::SnapshotCreate { volume, .. }
            | Request::SnapshotDelete { volume, .. }
            | Request::SnapshotList { volume }
            | Request::Check { volume, .. }
            | Request::Diff { volume, .. }
            | Request::Rollback { volume, .. }
            | Request::Export { volume, .. }
            | Request::ExportDiff { volume, .. }
            | Request::ImportDiff { volume, .. } => volume,
        }
    }
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
        /// The engine error's kind, for the client to rebuild it, or the server's own:
        /// `bad_request` (malformed or too long), `timeout` (not complete in time), `busy`
        /// (too many control connections).
        kind: String,
        /// The name it concerns, for kinds that carry one.
        name: Option<String>,
        /// The message to show.
        message: String,
    },
}

impl Response {
    /// An error of the server's own (not the engine's) with its kind.
    fn error(kind: &str, message: String) -> Self {
        Response::Error {
            kind: kind.to_owned(),
            name: None,
            message,
        }
    }

    /// A failure of the binary's own code: the engine error it wraps, or its message.
    pub(super) fn from_anyhow(e: anyhow::Error) -> Self {
        match e.downcast::<Error>() {
            Ok(e) => Self::from_error(e),
            Err(e) => Self::error("other", crate::output::error_message(&e)),
        }
    }

    pub(super) fn from_error(e: Error) -> Self {
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
            Request::Check { volume, data } => json(&exports.volume(&volume)?.check(data)?),
            Request::Diff { volume, from, to } => {
                let vol = exports.volume(&volume)?;
                let diff = crate::commands::diff::compute(&vol, &volume, &from, to.as_deref())
                    .map_err(engine_error)?;
                json(&diff)
            }
            Request::Rollback {
                volume,
                snapshot,
                force,
            } => {
                let vol = exports.volume(&volume)?;
                let clients = exports.live_clients(&volume);
                if clients > 0 && !force {
                    return Err(Error::InvalidArgument(format!(
                        "{volume} has {clients} client connection{} to its live export: a \
                         rollback would change the disk under {}; disconnect {} first, or \
                         use --force",
                        if clients == 1 { "" } else { "s" },
                        if clients == 1 { "it" } else { "them" },
                        if clients == 1 { "it" } else { "them" },
                    )));
                }
                let seq = vol.snapshot_seq(&snapshot)?;
                let report = vol.rollback(seq, &mut |_, _| {})?;
                tracing::info!(volume = %volume, snapshot = %snapshot, rewritten_bytes = report.rewritten_bytes, forced_with_clients = clients, "rolled back through the control socket");
                json(&report)
            }
            Request::Export { .. } | Request::ExportDiff { .. } | Request::ImportDiff { .. } => {
                unreachable!("streams are answered in serve_one")
            }
        })
    })();
    match result {
        Ok(value) => Response::Ok { value },
        Err(e) => Response::from_error(e),
    }
}

/// An error of a command's shared code run in the server, as the engine error it carries
/// (so its kind reaches the client) or as a message.
fn engine_error(e: anyhow::Error) -> Error {
    match e.downcast::<Error>() {
        Ok(e) => e,
        Err(e) => Error::InvalidArgument(crate::output::error_message(&e)),
    }
}

fn json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// The listening side, run by `serve`.
pub struct ControlServer {
    path: PathBuf,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The listening socket, to wake the accept loop at `stop` whatever became of the path.
    waker: Option<OwnedFd>,
}

/// State shared by the accept loop, the connection threads and `stop`.
#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    conns: Mutex<Conns>,
    /// Signalled when a connection ends.
    ended: Condvar,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    /// A clone of every live connection's socket, to cut its read short at `stop`.
    live: HashMap<u64, UnixStream>,
    /// When a refused connection was last logged: a flood of them logs once a second.
    last_refusal_warning: Option<Instant>,
}

impl ControlServer {
    /// Listens on the store's control socket. A socket file nobody answers on is stale (a
    /// server that was killed) and is replaced; a live one means another server holds the
    /// store.
    pub fn start(store: &Store, exports: Arc<StoreExports>) -> anyhow::Result<Self> {
        let path = store.control_socket();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                anyhow::bail!(
                    "another snapvol serve answers on {}; one server per store",
                    path.display()
                );
            }
            std::fs::remove_file(&path)?;
        }
        let listener = bind_owner_only(&path)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
        let waker = listener.try_clone().ok().map(OwnedFd::from);
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(&listener, &accepting, &exports))?;
        Ok(Self {
            path,
            shared,
            thread: Some(thread),
            waker,
        })
    }

    /// Stops listening, cuts short the requests still being read, waits for those being
    /// answered, and removes the socket file.
    pub fn stop(mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop: shutting the listening socket down makes a blocked accept
        // return on Linux; connecting to the path covers the rest, unless the socket file was
        // deleted while the server ran (then only the shutdown wakes it).
        if let Some(fd) = &self.waker {
            let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
        }
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut conns = self.shared.conns.lock();
        for s in conns.live.values() {
            let _ = s.shutdown(Shutdown::Read);
        }
        while !conns.live.is_empty() {
            self.shared.ended.wait(&mut conns);
        }
        drop(conns);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a Unix socket at `path` that only its owner can connect to. The socket is bound in
/// a new directory of mode 0700, made 0600, then moved into place: binding at `path` and then
/// changing the mode would leave a moment in which the socket has the umask's mode (0775
/// under a umask of 002) and anyone of the group could connect.
fn bind_owner_only(path: &Path) -> io::Result<UnixListener> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // '+' is not allowed in volume names, so this is never a volume's directory. Short, so the
    // temporary path is not much longer than `path` (a socket address holds 107 bytes).
    let private = dir.join(format!(".ctl+{}", std::process::id()));
    let temporary = private.join("s");
    // Left by a server with this process id that was killed while binding.
    let _ = fs::remove_file(&temporary);
    let _ = fs::remove_dir(&private);
    DirBuilder::new().mode(0o700).create(&private)?;
    let bound = UnixListener::bind(&temporary).and_then(|l| {
        fs::set_permissions(&temporary, Permissions::from_mode(0o600))?;
        fs::rename(&temporary, path)?;
        Ok(l)
    });
    let _ = fs::remove_file(&temporary);
    let _ = fs::remove_dir(&private);
    bound
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>, exports: &Arc<StoreExports>) {
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => admit(shared, exports, stream),
            Err(e) => {
                // E.g. out of file descriptors: wait a little rather than spin.
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Serves `stream` on a thread of its own, or refuses it when [`MAX_CONNECTIONS`] are served.
fn admit(shared: &Arc<Shared>, exports: &Arc<StoreExports>, stream: UnixStream) {
    let connected = Instant::now();
    let clone = match stream.try_clone() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot serve a control connection");
            return;
        }
    };
    let id = {
        let mut conns = shared.conns.lock();
        if conns.live.len() >= MAX_CONNECTIONS {
            let now = Instant::now();
            if conns
                .last_refusal_warning
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                conns.last_refusal_warning = Some(now);
                tracing::warn!(
                    limit = MAX_CONNECTIONS,
                    "too many control connections: refused one"
                );
            }
            None
        } else {
            let id = conns.next_id;
            conns.next_id += 1;
            conns.live.insert(id, clone);
            Some(id)
        }
    };
    let Some(id) = id else {
        // Answered without blocking the accept loop: a fresh socket's buffer takes it whole,
        // and a full one means the client is not listening anyway.
        let _ = stream.set_nonblocking(true);
        send(
            &stream,
            &Response::error(
                "busy",
                format!("too many control connections (at most {MAX_CONNECTIONS}); try again"),
            ),
        );
        return;
    };
    let (shared2, exports) = (shared.clone(), exports.clone());
    let spawned = std::thread::Builder::new()
        .name("control-conn".into())
        .spawn(move || {
            let _guard = ConnGuard {
                shared: &shared2,
                id,
            };
            serve_one(&exports, &stream, connected);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a control connection thread");
        end(shared, id);
    }
}

fn end(shared: &Shared, id: u64) {
    shared.conns.lock().live.remove(&id);
    shared.ended.notify_all();
}

/// Ends a connection however its thread ends, panics included.
struct ConnGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        end(self.shared, self.id);
    }
}

/// Why no request line was read.
#[derive(Debug)]
enum ReadFailure {
    /// The client closed the connection without sending anything.
    Closed,
    /// More than [`MAX_REQUEST`] bytes without a newline.
    TooLong,
    /// [`REQUEST_DEADLINE`] passed first.
    TimedOut,
    /// The socket failed.
    Io(io::Error),
}

/// Reads the request line (without its newline). A line cut by the end of the stream counts
/// as whole, as it did when the server used `read_line`.
fn read_request(stream: &UnixStream, deadline: Instant) -> Result<Vec<u8>, ReadFailure> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadFailure::TimedOut);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(ReadFailure::Io)?;
        let n = match (&*stream).read(&mut chunk) {
            Ok(0) if line.is_empty() => return Err(ReadFailure::Closed),
            Ok(0) => return Ok(line),
            Ok(n) => n,
            // The read timed out (EAGAIN) or was interrupted: the loop checks the deadline.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(ReadFailure::Io(e)),
        };
        let newline = chunk[..n].iter().position(|&b| b == b'\n');
        line.extend_from_slice(&chunk[..newline.unwrap_or(n)]);
        if line.len() > MAX_REQUEST {
            return Err(ReadFailure::TooLong);
        }
        if newline.is_some() {
            return Ok(line);
        }
    }
}

fn serve_one(exports: &StoreExports, stream: &UnixStream, connected: Instant) {
    let response = match read_request(stream, connected + REQUEST_DEADLINE) {
        Ok(line) if line.iter().all(u8::is_ascii_whitespace) => return,
        Ok(line) => match serde_json::from_slice::<Request>(&line) {
            Ok(Request::Export { volume, snapshot }) => {
                return stream_export(exports, stream, &volume, snapshot.as_deref())
            }
            Ok(Request::ExportDiff { volume, from, to }) => {
                return super::diff_socket::serve_export(exports, stream, &volume, &from, to)
            }
            Ok(Request::ImportDiff { volume, force }) => {
                return super::diff_socket::serve_import(exports, stream, &volume, force)
            }
            Ok(req) => handle(exports, req),
            Err(e) => Response::error("bad_request", format!("bad control request: {e}")),
        },
        Err(ReadFailure::Closed) => return,
        Err(ReadFailure::TooLong) => {
            tracing::warn!(limit = MAX_REQUEST, "control request too long: refused");
            Response::error(
                "bad_request",
                format!("control request longer than {MAX_REQUEST} bytes"),
            )
        }
        Err(ReadFailure::TimedOut) => {
            tracing::warn!("control request not complete in time: closing the connection");
            Response::error(
                "timeout",
                format!(
                    "no complete control request within {} s of connecting",
                    REQUEST_DEADLINE.as_secs()
                ),
            )
        }
        Err(ReadFailure::Io(e)) => {
            tracing::debug!(error = %e, "reading a control request failed");
            return;
        }
    };
    let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
    send(stream, &response);
}

/// Answers an export: the image's size, then the image in frames, read piece by piece from
/// the served volume (a snapshot's reads never see writes made after it). A read that fails
/// (EIO, or the snapshot deleted meanwhile) ends the stream with an error frame, so the client
/// never takes a short image for a whole one.
fn stream_export(
    exports: &StoreExports,
    stream: &UnixStream,
    volume: &str,
    snapshot: Option<&str>,
) {
    use super::image_stream::{write_data, write_end, write_error};
    use crate::transfer::{pieces, PIECE};
    let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
    let opened = exports.volume(volume).and_then(|vol| {
        let seq = snapshot.map(|s| vol.snapshot_seq(s)).transpose()?;
        Ok((vol, seq))
    });
    let (vol, seq) = match opened {
        Ok(found) => found,
        Err(e) => return send(stream, &Response::from_error(e)),
    };
    let size = vol.size();
    send(
        stream,
        &Response::Ok {
            value: serde_json::json!({ "size": size }),
        },
    );
    let _ = stream.set_write_timeout(Some(STREAM_TIMEOUT));
    let mut out = stream;
    let mut buf = vec![0u8; PIECE];
    for (offset, n) in pieces(size, PIECE) {
        let piece = &mut buf[..n];
        let read = match seq {
            Some(s) => vol.read_snapshot(s, offset, piece),
            None => vol.read(offset, piece),
        };
        if let Err(e) = read {
            tracing::warn!(volume, snapshot, offset, error = %e, "export through the control socket failed");
            let answer = serde_json::to_vec(&Response::from_error(e)).unwrap_or_default();
            let _ = write_error(&mut out, &answer);
            return;
        }
        if write_data(&mut out, piece).is_err() {
            return; // The client went away.
        }
    }
    let _ = write_end(&mut out);
}

/// Writes `response` as one line; a client that went away or does not read is not our
/// problem.
pub(super) fn send(stream: &UnixStream, response: &Response) {
    if let Ok(mut text) = serde_json::to_string(response) {
        text.push('\n');
        let _ = (&*stream).write_all(text.as_bytes());
    }
}

/// Sends `req` to the server holding `store`; `None` when no server answers there.
pub fn request(store: &Store, req: &Request) -> anyhow::Result<Option<Response>> {
    let Some(path) = socket_for(store, req) else {
        return Ok(None);
    };
    let Ok(mut stream) = UnixStream::connect(&path) else {
        return Ok(None);
    };
    let mut text = serde_json::to_string(req)?;
    text.push('\n');
    // A server with too many connections answers without reading and closes, so the write
    // may fail while its answer waits to be read: the answer, when there is one, says more.
    let sent = stream.write_all(text.as_bytes());
    let mut line = String::new();
    let read = BufReader::new(&stream).read_line(&mut line);
    if line.trim().is_empty() {
        sent?;
        read?;
        anyhow::bail!(
            "the server on {} closed the control connection",
            path.display()
        );
    }
    Ok(Some(serde_json::from_str(&line)?))
}

/// An image coming from the server: its size, then frames to read with
/// [`super::image_stream::read_frame`].
pub struct ImageStream {
    /// The image's size in bytes.
    pub size: u64,
    /// The rest of the connection.
    pub frames: BufReader<UnixStream>,
}

/// Asks the server holding `store` for the image of `volume` (or of its snapshot); `None`
/// when no server answers there. An error answer (no such volume or snapshot) is returned
/// before any of the image is sent.
pub fn export(
    store: &Store,
    volume: &str,
    snapshot: Option<&str>,
) -> anyhow::Result<Option<ImageStream>> {
    let req = Request::Export {
        volume: volume.to_owned(),
        snapshot: snapshot.map(str::to_owned),
    };
    let Some((value, frames)) = converse(store, &req)? else {
        return Ok(None);
    };
    let size = value["size"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("the server's export answer has no size: {value}"))?;
    Ok(Some(ImageStream { size, frames }))
}

/// Sends `req` and reads the answer line of a request that goes on streaming: the answer's
/// value and the rest of the connection; `None` when no server answers on the store's socket.
/// An error answer is returned as the error.
pub fn converse(
    store: &Store,
    req: &Request,
) -> anyhow::Result<Option<(serde_json::Value, BufReader<UnixStream>)>> {
    let Some(path) = socket_for(store, req) else {
        return Ok(None);
    };
    let Ok(mut stream) = UnixStream::connect(&path) else {
        return Ok(None);
    };
    let mut text = serde_json::to_string(req)?;
    text.push('\n');
    let sent = stream.write_all(text.as_bytes());
    let mut rest = BufReader::with_capacity(1 << 20, stream);
    let mut line = String::new();
    let read = (&mut rest).take(MAX_REQUEST as u64).read_line(&mut line);
    if line.trim().is_empty() {
        sent?;
        read?;
        anyhow::bail!(
            "the server on {} closed the control connection",
            path.display()
        );
    }
    let response: Response = serde_json::from_str(&line)?;
    Ok(Some((response.into_result()?, rest)))
}

/// Whether the socket at `path` is answered.
pub fn is_live(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}
