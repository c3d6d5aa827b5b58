//! Shared test scaffolding: a server on 127.0.0.1 with an ephemeral port over in-memory
//! devices, and helpers to run external clients.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;

use snapvol_nbd::{Export, ExportMap, MemDevice, RunningServer, Server};

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

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "snapvol_nbd=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Serves `exports` on 127.0.0.1 with a port the kernel picks.
pub fn serve(exports: Arc<ExportMap>) -> Harness {
    init_tracing();
    let server = Server::builder(exports.clone())
        .tcp("127.0.0.1:0".parse().unwrap())
        .bind()
        .expect("bind the NBD server");
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
