//! The server: listeners, one thread per connection, graceful shutdown.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tracing::{debug, info, warn};

use crate::exports::{Export, Exports};
use crate::handshake::{self, Haggled, HandshakeEnd, Negotiated, ServerHandshake};
use crate::stream::{Deadline, FrameReader, ServerTime, Stream};
use crate::tls::TlsAcceptor;
use crate::tls_stream;
use crate::transmission::{self, TransmissionEnd};

/// Default bound on requests in flight per connection (qemu's client sends up to 16).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;

/// Default bound on connections served at once: far more than clients open (nbdcopy opens up
/// to 4, every fio job one), while bounding the threads a flood of connections can start (a
/// reader and up to [`DEFAULT_MAX_IN_FLIGHT`] workers each).
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Default time a client has, from connecting, to finish the handshake. Clients do it in
/// milliseconds; a connection that has not entered transmission by then is closed, so that
/// neither a silent client nor one that sends a byte now and then holds a thread and a
/// connection slot for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A reply that cannot be sent for this long (the client stopped reading) ends the
/// connection, so that one stuck client cannot stall a graceful shutdown forever. Idle
/// connections in transmission have no read timeout: the kernel client may idle for hours.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the server allows its clients.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Connections served at once, over every listener.
    max_connections: usize,
    /// Requests in flight on one connection.
    max_in_flight: usize,
    /// Time from connecting to the end of the handshake.
    handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

/// Configures and binds a [`Server`].
pub struct ServerBuilder {
    exports: Arc<dyn Exports>,
    tcp: Option<SocketAddr>,
    unix: Option<PathBuf>,
    limits: Limits,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("tcp", &self.tcp)
            .field("unix", &self.unix)
            .field("limits", &self.limits)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl ServerBuilder {
    /// Listens on a TCP address (port 0 picks a free port; see [`Server::local_addr`]).
    pub fn tcp(mut self, addr: SocketAddr) -> Self {
        self.tcp = Some(addr);
        self
    }

    /// Listens on a Unix socket at `path`. A stale socket file (nobody listening) is
    /// replaced; any other existing file is an error.
    pub fn unix(mut self, path: impl Into<PathBuf>) -> Self {
        self.unix = Some(path.into());
        self
    }

    /// Bounds the requests in flight on one connection (default 16, at least 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.limits.max_in_flight = n.max(1);
        self
    }

    /// Bounds the connections served at once, TCP and Unix together (default
    /// [`DEFAULT_MAX_CONNECTIONS`], at least 1). A connection beyond the limit is closed at
    /// once, before the server's greeting, with a warning in the log; the connections already
    /// served are not affected.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.limits.max_connections = n.max(1);
        self
    }

    /// The time a client has from connecting to the end of the handshake (default
    /// [`HANDSHAKE_TIMEOUT`]); the connection is closed when it runs out, however steadily
    /// the client trickles bytes in.
    pub fn handshake_timeout(mut self, limit: Duration) -> Self {
        self.limits.handshake_timeout = limit;
        self
    }

    /// Requires TLS on every connection, TCP and Unix (proto.md's FORCEDTLS mode): a client
    /// must send `NBD_OPT_STARTTLS` first; other options get `NBD_REP_ERR_TLS_REQD`, and
    /// `NBD_OPT_EXPORT_NAME` closes the connection. Each handshake uses the credentials the
    /// acceptor holds at that moment, so replacing them through a clone of it takes effect
    /// for new connections while established ones carry on.
    pub fn tls(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Binds the listeners. At least one of TCP and Unix must be configured.
    pub fn bind(self) -> io::Result<Server> {
        if self.tcp.is_none() && self.unix.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the NBD server needs a TCP address or a Unix socket path",
            ));
        }
        let tcp = self.tcp.map(TcpListener::bind).transpose()?;
        let local_addr = tcp.as_ref().map(TcpListener::local_addr).transpose()?;
        let unix = self.unix.as_deref().map(bind_unix).transpose()?;
        Ok(Server {
            exports: self.exports,
            tcp,
            unix,
            local_addr,
            unix_path: self.unix,
            limits: self.limits,
            tls: self.tls,
            shared: Arc::new(Shared::default()),
        })
    }
}

fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let is_socket = std::fs::symlink_metadata(path)?.file_type().is_socket();
            if is_socket && UnixStream::connect(path).is_err() {
                debug!(path = %path.display(), "replacing a stale Unix socket");
                std::fs::remove_file(path)?;
                UnixListener::bind(path)
            } else {
                Err(e)
            }
        }
        other => other,
    }
}

/// An NBD server bound to its listeners, ready to [`serve`](Server::serve).
///
/// ```no_run
/// use std::sync::Arc;
/// use snapvol_nbd::{Export, ExportMap, MemDevice, Server};
///
/// let exports = Arc::new(ExportMap::new());
/// exports.insert("disk", Export::new(Arc::new(MemDevice::new(1 << 20)), "a disk"));
/// let server = Server::builder(exports)
///     .tcp("127.0.0.1:10809".parse().unwrap())
///     .bind()?;
/// let stop = server.shutdown_handle();
/// // ... stop.shutdown() from another thread or a signal handler ...
/// server.serve()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Server {
    exports: Arc<dyn Exports>,
    tcp: Option<TcpListener>,
    unix: Option<UnixListener>,
    local_addr: Option<SocketAddr>,
    unix_path: Option<PathBuf>,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("unix_path", &self.unix_path)
            .field("limits", &self.limits)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// State shared by the server, its acceptors, its connections and shutdown handles.
#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    stop_signal: Mutex<bool>,
    stop_cv: Condvar,
    conns: Mutex<Conns>,
    conns_cv: Condvar,
    refusals: Mutex<Refusals>,
    /// Connections closed for the limit since the server started.
    refused_total: AtomicU64,
}

/// Connections refused for the limit and not yet logged: a flood of them logs one warning a
/// second, not one per connection.
#[derive(Default)]
struct Refusals {
    last_warning: Option<Instant>,
    unlogged: u64,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    /// A clone of every live connection's socket, to stop its reads at shutdown.
    streams: HashMap<u64, Stream>,
}

/// Stops a running [`Server`]: it stops accepting, lets every connection finish the
/// requests it has in flight, flushes devices those connections wrote to, and returns.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

/// A running server's connections, counted for monitoring. Cheap to clone and to ask.
#[derive(Clone)]
pub struct ConnectionStats {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConnectionStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionStats")
            .field("open", &self.open())
            .field("refused", &self.refused())
            .finish()
    }
}

impl ConnectionStats {
    /// Connections open now, in their handshake or in transmission.
    pub fn open(&self) -> usize {
        self.shared.conns.lock().streams.len()
    }

    /// Connections closed unserved since the server started because `max_connections` were
    /// open.
    pub fn refused(&self) -> u64 {
        self.shared.refused_total.load(Ordering::Relaxed)
    }
}

impl ShutdownHandle {
    /// Asks the server to shut down; returns at once (the server's `serve` returns when
    /// the shutdown is complete). Calling it again does nothing.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        *self.shared.stop_signal.lock() = true;
        self.shared.stop_cv.notify_all();
    }

    /// True once [`shutdown`](ShutdownHandle::shutdown) was called.
    pub fn is_triggered(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }
}

impl Server {
    /// Starts configuring a server that serves `exports`.
    pub fn builder(exports: Arc<dyn Exports>) -> ServerBuilder {
        ServerBuilder {
            exports,
            tcp: None,
            unix: None,
            limits: Limits::default(),
            tls: None,
        }
    }

    /// The bound TCP address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The Unix socket path, if any.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix_path.as_deref()
    }

    /// A handle that stops [`serve`](Server::serve).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: self.shared.clone(),
        }
    }

    /// A handle that counts the server's connections.
    pub fn connection_stats(&self) -> ConnectionStats {
        ConnectionStats {
            shared: self.shared.clone(),
        }
    }

    /// Serves until the shutdown handle is triggered, then shuts down gracefully: stops
    /// accepting, stops reading new requests, finishes those in flight, flushes devices
    /// that were written to, closes the connections, removes the Unix socket file, returns.
    pub fn serve(mut self) -> io::Result<()> {
        let mut acceptors = Vec::new();
        // A second handle on each listening socket, to wake its acceptor at shutdown.
        let mut wakers: Vec<OwnedFd> = Vec::new();
        if let Some(l) = self.tcp.take() {
            wakers.push(l.try_clone()?.into());
            let ctx = self.conn_ctx();
            acceptors.push(thread::Builder::new().name("nbd-accept-tcp".into()).spawn(
                move || {
                    accept_loop(&ctx, || {
                        l.accept().map(|(s, _)| {
                            let _ = s.set_nodelay(true);
                            Stream::Tcp(s)
                        })
                    })
                },
            )?);
        }
        if let Some(l) = self.unix.take() {
            wakers.push(l.try_clone()?.into());
            let ctx = self.conn_ctx();
            acceptors.push(
                thread::Builder::new()
                    .name("nbd-accept-unix".into())
                    .spawn(move || {
                        accept_loop(&ctx, || l.accept().map(|(s, _)| Stream::Unix(s)))
                    })?,
            );
        }
        info!(tcp = ?self.local_addr, unix = ?self.unix_path, tls = self.tls.is_some(), "NBD server listening");

        {
            let mut stop = self.shared.stop_signal.lock();
            while !*stop {
                self.shared.stop_cv.wait(&mut stop);
            }
        }
        info!("NBD server shutting down");
        // Shutting a listening socket down makes a blocked accept return at once; connecting
        // to our own address as well covers systems where it does not (a deleted socket file
        // makes that fail, which is why it is not the only way).
        for fd in &wakers {
            let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
        }
        self.wake_acceptors();
        for a in acceptors {
            let _ = a.join();
        }
        // No new requests: a read shutdown makes each connection's reader see end of
        // stream after the requests it already received; those finish and are answered.
        {
            let conns = self.shared.conns.lock();
            for s in conns.streams.values() {
                s.shutdown(Shutdown::Read);
            }
        }
        {
            let mut conns = self.shared.conns.lock();
            if !conns.streams.is_empty() {
                info!(
                    tcp = ?self.local_addr,
                    unix = ?self.unix_path,
                    connections = conns.streams.len(),
                    "waiting for connections to finish their requests in flight"
                );
            }
            while !conns.streams.is_empty() {
                self.shared.conns_cv.wait(&mut conns);
            }
        }
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
        info!("NBD server stopped");
        Ok(())
    }

    /// Starts [`serve`](Server::serve) on a thread of its own.
    pub fn spawn(self) -> io::Result<RunningServer> {
        let handle = self.shutdown_handle();
        let local_addr = self.local_addr;
        let unix_path = self.unix_path.clone();
        let thread = thread::Builder::new()
            .name("nbd-server".into())
            .spawn(move || self.serve())?;
        Ok(RunningServer {
            handle,
            thread: Some(thread),
            local_addr,
            unix_path,
        })
    }

    fn conn_ctx(&self) -> ConnCtx {
        ConnCtx {
            shared: self.shared.clone(),
            exports: self.exports.clone(),
            limits: self.limits,
            tls: self.tls.clone(),
        }
    }

    /// Unblocks the acceptors' `accept` calls by connecting to our own listeners.
    fn wake_acceptors(&self) {
        if let Some(mut addr) = self.local_addr {
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                });
            }
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
        }
        if let Some(p) = &self.unix_path {
            let _ = UnixStream::connect(p);
        }
    }
}

/// A [`Server`] serving on its own thread; dropping it shuts the server down.
#[derive(Debug)]
pub struct RunningServer {
    handle: ShutdownHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
    local_addr: Option<SocketAddr>,
    unix_path: Option<PathBuf>,
}

impl RunningServer {
    /// The bound TCP address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The Unix socket path.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix_path.as_deref()
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// A handle that counts the server's connections.
    pub fn connection_stats(&self) -> ConnectionStats {
        ConnectionStats {
            shared: self.handle.shared.clone(),
        }
    }

    /// Shuts down gracefully and waits until the server has stopped.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> io::Result<()> {
        self.handle.shutdown();
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the NBD server thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// What an acceptor hands to each connection.
#[derive(Clone)]
struct ConnCtx {
    shared: Arc<Shared>,
    exports: Arc<dyn Exports>,
    limits: Limits,
    tls: Option<TlsAcceptor>,
}

fn accept_loop(ctx: &ConnCtx, accept: impl Fn() -> io::Result<Stream>) {
    loop {
        let stream = accept();
        // The handshake's time limit counts from here.
        let connected = Instant::now();
        if ctx.shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match stream {
            Ok(stream) => {
                // A clone to stop the connection's reads at shutdown. Without one (out of file
                // descriptors) the connection is closed, and the acceptor carries on.
                let clone = match stream.try_clone() {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "cannot record a new connection: closing it");
                        continue;
                    }
                };
                let id = match register(&ctx.shared, clone, ctx.limits.max_connections) {
                    Admission::Admitted(id) => id,
                    Admission::Full => {
                        refuse(&ctx.shared, stream, ctx.limits.max_connections);
                        continue;
                    }
                    Admission::Stopping => return,
                };
                let ctx2 = ctx.clone();
                let spawned = thread::Builder::new()
                    .name("nbd-conn".into())
                    .spawn(move || run_connection(ctx2, id, stream, connected));
                if let Err(e) = spawned {
                    warn!(error = %e, "cannot start a connection thread");
                    deregister(&ctx.shared, id);
                }
            }
            Err(e) => {
                // E.g. out of file descriptors: wait a little rather than spin.
                warn!(error = %e, "accepting a connection failed");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Whether an accepted connection is served.
enum Admission {
    /// Yes, under this id.
    Admitted(u64),
    /// No: the server serves as many connections as it may.
    Full,
    /// No: the server is stopping.
    Stopping,
}

/// Records a live connection (`clone` is its socket) if the server is not stopping and has
/// room for it.
fn register(shared: &Shared, clone: Stream, max_connections: usize) -> Admission {
    let mut conns = shared.conns.lock();
    // Checked under the lock that shutdown sweeps with, so no connection slips past it.
    if shared.stopping.load(Ordering::SeqCst) {
        return Admission::Stopping;
    }
    if conns.streams.len() >= max_connections {
        return Admission::Full;
    }
    let id = conns.next_id;
    conns.next_id += 1;
    conns.streams.insert(id, clone);
    Admission::Admitted(id)
}

/// Closes a connection beyond the limit before sending it anything, as nbdkit's limit filter
/// does. Answering its first option with `NBD_REP_ERR_SHUTDOWN` would read the client's
/// messages first, which takes a thread and up to the handshake timeout for each refused
/// connection — what the limit is there to bound — and that error means "the server is
/// shutting down", which it is not. Nor does it leave the connection waiting in the listen
/// queue as qemu-nbd does when full: a client would hang without knowing why. Clients report
/// the closed connection at once (qemu: "Failed to read initial magic", libnbd: "server
/// disconnected unexpectedly"), and the server's log says why.
fn refuse(shared: &Shared, stream: Stream, limit: usize) {
    shared.refused_total.fetch_add(1, Ordering::Relaxed);
    // Logged before the close, so that a client that sees the close finds the reason logged.
    {
        let mut r = shared.refusals.lock();
        r.unlogged += 1;
        let now = Instant::now();
        let recently = r
            .last_warning
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1));
        if !recently {
            warn!(
                peer = stream.peer(),
                limit,
                refused = r.unlogged,
                "too many NBD connections: closed a new one before its handshake"
            );
            r.last_warning = Some(now);
            r.unlogged = 0;
        }
    }
    stream.shutdown(Shutdown::Both);
}

fn deregister(shared: &Shared, id: u64) {
    shared.conns.lock().streams.remove(&id);
    shared.conns_cv.notify_all();
}

/// Deregisters a connection however its thread ends, panics included.
struct ConnGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        deregister(self.shared, self.id);
    }
}

fn run_connection(ctx: ConnCtx, id: u64, stream: Stream, connected: Instant) {
    let _guard = ConnGuard {
        shared: &ctx.shared,
        id,
    };
    let peer = stream.peer();
    let (read_half, write_half) = match (stream.try_clone(), stream.try_clone()) {
        (Ok(r), Ok(w)) => (r, w),
        (Err(e), _) | (_, Err(e)) => {
            warn!(peer, error = %e, "cannot clone a connection's socket");
            return;
        }
    };
    // Both halves share one deadline, so that a client can stretch the handshake neither by
    // trickling its options in nor by not reading the replies. It covers the TLS handshake.
    // The server's own time (opening a volume for a lookup) moves the deadline back.
    let limit = ctx.limits.handshake_timeout;
    let server_time = ServerTime::default();
    let reader = FrameReader::new(Deadline::new(
        read_half,
        connected,
        limit,
        server_time.clone(),
    ));
    let writer = Deadline::new(write_half, connected, limit, server_time.clone());
    let conn = Conn {
        ctx: &ctx,
        stream: &stream,
        peer: &peer,
        server_time,
    };
    match conn.serve(reader, writer) {
        Ok(()) => {}
        Err(HandshakeEnd::Quiet) => debug!(peer, "client left during the handshake"),
        Err(HandshakeEnd::Failed(why)) => {
            warn!(peer, "closing NBD connection during the handshake: {why}")
        }
    }
    stream.shutdown(Shutdown::Both);
}

/// One connection being served.
struct Conn<'a> {
    ctx: &'a ConnCtx,
    /// The socket (a clone of the halves), for timeouts and to close it.
    stream: &'a Stream,
    peer: &'a str,
    /// Time spent looking exports up, which the handshake's deadline does not count.
    server_time: ServerTime,
}

/// The server's exports, with the time each lookup takes counted as the server's own: a
/// lookup may open a volume (on a shared store, take it over and replay its journal), which
/// must not eat into the time the client has for its handshake.
struct TimedExports<'a> {
    exports: &'a dyn Exports,
    time: &'a ServerTime,
}

impl Exports for TimedExports<'_> {
    fn lookup(&self, name: &str) -> Option<Export> {
        self.time.count(|| self.exports.lookup(name))
    }

    fn names(&self) -> Vec<String> {
        self.time.count(|| self.exports.names())
    }
}

impl Conn<'_> {
    /// The handshake, a TLS upgrade if the server requires it, then transmission.
    fn serve(
        &self,
        mut reader: FrameReader<Deadline>,
        mut writer: Deadline,
    ) -> Result<(), HandshakeEnd> {
        let exports = TimedExports {
            exports: &*self.ctx.exports,
            time: &self.server_time,
        };
        let mut hs = ServerHandshake::new(&exports);
        if self.ctx.tls.is_some() {
            hs.require_tls();
        }
        hs.set_client_flags(handshake::greet(&mut reader, &mut writer)?);
        let neg = match handshake::haggle(&mut reader, &mut writer, &mut hs)? {
            Haggled::Transmission(neg) => neg,
            Haggled::StartTls => return self.serve_tls(reader, writer, hs),
        };
        reader.get_mut().lift();
        self.transmit(&mut reader, writer.into_inner(), &neg);
        Ok(())
    }

    /// Everything after the `NBD_REP_ACK` to `NBD_OPT_STARTTLS`.
    fn serve_tls(
        &self,
        reader: FrameReader<Deadline>,
        writer: Deadline,
        mut hs: ServerHandshake<'_>,
    ) -> Result<(), HandshakeEnd> {
        let Some(tls) = &self.ctx.tls else {
            return Err(HandshakeEnd::Failed("STARTTLS accepted without TLS".into()));
        };
        // The client must wait for the reply before its TLS handshake: bytes already here
        // were sent in plain text after STARTTLS, and must not be taken as coming through TLS.
        if reader.has_buffered() {
            return Err(HandshakeEnd::Failed(
                "the client sent data after NBD_OPT_STARTTLS without waiting for the reply".into(),
            ));
        }
        let (tls_reader, mut writer) =
            tls_stream::accept(tls.config(), reader.into_inner(), writer)
                .map_err(|e| HandshakeEnd::Failed(format!("TLS handshake failed: {e}")))?;
        debug!(peer = self.peer, "TLS session established");
        let session = writer.session();
        hs.tls_started();
        let mut reader = FrameReader::new(tls_reader);
        let haggled = handshake::haggle(&mut reader, &mut writer, &mut hs);
        if let Ok(Haggled::Transmission(neg)) = &haggled {
            reader.get_mut().lift();
            self.transmit(&mut reader, writer, neg);
        }
        session.close();
        match haggled? {
            Haggled::Transmission(_) => Ok(()),
            // The handshake state refuses a second STARTTLS.
            Haggled::StartTls => Err(HandshakeEnd::Failed("a second STARTTLS".into())),
        }
    }

    fn transmit<R: io::Read, W: io::Write + Send>(
        &self,
        reader: &mut FrameReader<R>,
        writer: W,
        neg: &Negotiated,
    ) {
        let peer = self.peer;
        debug!(peer, export = %neg.name, structured = neg.structured, "transmission starts");
        // Idle connections in transmission have no read timeout (see WRITE_TIMEOUT).
        if let Err(e) = self.stream.set_timeouts(None, Some(WRITE_TIMEOUT)) {
            warn!(peer, error = %e, "cannot clear the handshake timeout");
            return;
        }
        let kill = || self.stream.shutdown(Shutdown::Both);
        match transmission::serve(
            reader,
            writer,
            neg,
            transmission::Dispatch::Pool(self.ctx.limits.max_in_flight),
            peer,
            &kill,
        ) {
            TransmissionEnd::Clean => debug!(peer, export = %neg.name, "client disconnected"),
            TransmissionEnd::Failed(why) => {
                warn!(peer, export = %neg.name, "closing NBD connection: {why}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exports::ExportMap;

    #[test]
    fn a_server_needs_at_least_one_listener() {
        let err = Server::builder(Arc::new(ExportMap::new()))
            .bind()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_stale_unix_socket_is_replaced_but_a_live_one_or_a_plain_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nbd.sock");
        // A socket file nobody listens on.
        drop(UnixListener::bind(&path).unwrap());
        let live = bind_unix(&path).unwrap();
        assert_eq!(
            bind_unix(&path).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(live);
        let file = dir.path().join("plain");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(bind_unix(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }

    /// The acceptor of a Unix socket whose file was deleted meanwhile cannot be woken by
    /// connecting to it; shutting its socket down wakes it, and the server stops.
    #[test]
    fn shutdown_stops_the_server_when_its_socket_file_was_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let server = Server::builder(Arc::new(ExportMap::new()))
            .unix(&path)
            .bind()
            .unwrap();
        let running = server.spawn().unwrap();
        std::fs::remove_file(&path).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || done_tx.send(running.stop().is_ok()).unwrap());
        // A bound on a hang, not a measurement: it stops at once.
        assert_eq!(
            done_rx.recv_timeout(Duration::from_secs(30)),
            Ok(true),
            "the server did not stop"
        );
    }

    #[test]
    fn shutdown_without_connections_returns_promptly_and_removes_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let server = Server::builder(Arc::new(ExportMap::new()))
            .tcp("127.0.0.1:0".parse().unwrap())
            .unix(&path)
            .max_in_flight(0)
            .bind()
            .unwrap();
        assert!(server.local_addr().unwrap().port() != 0);
        assert_eq!(server.unix_path(), Some(path.as_path()));
        assert!(format!("{server:?}").contains("max_in_flight: 1"));
        let running = server.spawn().unwrap();
        let h = running.shutdown_handle();
        assert!(!h.is_triggered());
        running.stop().unwrap();
        assert!(h.is_triggered());
        assert!(!path.exists());
    }
}
