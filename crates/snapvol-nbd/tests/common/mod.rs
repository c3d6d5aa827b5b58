//! Shared test scaffolding: a server on 127.0.0.1 with an ephemeral port over in-memory
//! devices, a record of what the server logged, and helpers to run external clients.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use snapvol_nbd::{Export, ExportMap, MemDevice, RunningServer, Server, ServerBuilder};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// A running server and the catalogue it serves.
pub struct Harness {
    pub server: RunningServer,
    pub exports: Arc<ExportMap>,
    pub addr: SocketAddr,
}

impl Harness {
    /// `nbd://127.0.0.1:PORT/NAME`.
    pub fn uri(&self, name: &str) -> String {
        format!("nbd://{}/{}", self.addr, name)
    }
}

/// Logs to the test output (filtered by `RUST_LOG`) and records every event of the server,
/// whatever `RUST_LOG` says, for [`wait_for_event`].
pub fn init_tracing() {
    let printed = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "snapvol_nbd=debug".into());
    let recorded = tracing_subscriber::filter::Targets::new()
        .with_target("snapvol_nbd", tracing::Level::DEBUG);
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(printed),
        )
        .with(Recorder.with_filter(recorded))
        .try_init();
}

/// One event the server logged: its message and its other fields, as text.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub message: String,
    pub fields: BTreeMap<String, String>,
}

impl Visit for Event {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields
            .insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.insert(field.name().to_owned(), text);
        }
    }
}

/// Every event recorded so far, in order, by every test of this binary.
#[derive(Default)]
struct Events {
    seen: Mutex<Vec<Event>>,
    cv: Condvar,
}

fn events() -> &'static Events {
    static EVENTS: OnceLock<Events> = OnceLock::new();
    EVENTS.get_or_init(Events::default)
}

struct Recorder;

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut e = Event::default();
        event.record(&mut e);
        let events = events();
        events.seen.lock().unwrap().push(e);
        events.cv.notify_all();
    }
}

/// Waits until the server logs an event with `message` whose fields include every pair of
/// `fields`: the way a test learns that the server reached a point that its socket does not
/// show (it has read a request, it is waiting for connections to finish). Fails the test
/// after 20 s.
pub fn wait_for_event(message: &str, fields: &[(&str, &str)]) -> Event {
    let matches = |e: &Event| {
        e.message == message
            && fields
                .iter()
                .all(|(k, v)| e.fields.get(*k).map(String::as_str) == Some(*v))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = events();
    let mut seen = events.seen.lock().unwrap();
    loop {
        if let Some(e) = seen.iter().find(|e| matches(e)) {
            return e.clone();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the server never logged {message:?} with {fields:?}"
        );
        seen = events.cv.wait_timeout(seen, left).unwrap().0;
    }
}

/// Serves `exports` on 127.0.0.1 with a port the kernel picks.
pub fn serve(exports: Arc<ExportMap>) -> Harness {
    serve_with(exports, |b| b)
}

/// [`serve`] with the builder configured further by `configure`.
pub fn serve_with(
    exports: Arc<ExportMap>,
    configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
) -> Harness {
    init_tracing();
    let builder = Server::builder(exports.clone()).tcp("127.0.0.1:0".parse().unwrap());
    let server = configure(builder).bind().expect("bind the NBD server");
    let addr = server.local_addr().unwrap();
    Harness {
        server: server.spawn().expect("start the NBD server"),
        exports,
        addr,
    }
}

/// A writable `vol`, a read-only `vol@snap` holding `snap`, and their devices.
pub fn volume_and_snapshot(
    size: usize,
    snap: Vec<u8>,
) -> (Arc<ExportMap>, Arc<MemDevice>, Arc<MemDevice>) {
    let exports = Arc::new(ExportMap::new());
    let vol = Arc::new(MemDevice::new(size));
    let ro = Arc::new(MemDevice::from_vec(snap).with_read_only(true));
    exports.insert("vol", Export::new(vol.clone(), "the live volume"));
    exports.insert("vol@snap", Export::new(ro.clone(), "a snapshot"));
    (exports, vol, ro)
}

/// Fails the test (it does not skip) when a client program is missing, naming the package.
pub fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: this test drives the server with a real NBD client; \
         install it with `apt-get install -y {package}` (scripts/test.sh does this)"
    );
}

/// Runs a command and returns its output, failing the test with stdout/stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command expected to fail; returns its output.
pub fn run_fails(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        !out.status.success(),
        "{cmd:?} unexpectedly succeeded\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Output of a qemu-io command: it exits 0 even when an operation fails, so failures
/// are found in its text.
pub fn qemu_io(args: &[&str], uri: &str) -> String {
    require("qemu-io", "qemu-utils");
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]).args(args).arg(uri);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Certificates made with the project's `scripts/tls-certs.sh` (openssl) in a temporary
/// directory: a CA in `ca/`, a server certificate for 127.0.0.1 and localhost in `server/`,
/// a client of that CA in `client/`, and a client of another CA (`other-ca/`) in `other/`.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        require("openssl", "openssl");
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.make(&["ca", "ca"]);
        pki.make(&["server", "server", "ca", "IP:127.0.0.1,DNS:localhost"]);
        pki.make(&["client", "client", "ca"]);
        pki.make(&["ca", "other-ca", "another CA"]);
        pki.make(&["client", "other", "other-ca"]);
        pki
    }

    /// Runs `scripts/tls-certs.sh ARGS` in the directory.
    pub fn make(&self, args: &[&str]) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/tls-certs.sh");
        run_ok(Command::new(script).current_dir(self.dir.path()).args(args));
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}
