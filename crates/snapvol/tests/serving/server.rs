//! The store and the server: a temporary directory with a store, the `snapvol` commands run
//! on it, and the server as a child process behind a guard that never leaves it running.

use std::fs::{self, OpenOptions};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::background::reap;
use super::tools::{free_port, output_within, run_ok, signal, text, wait_child};
use super::{BIN, LIMIT};

/// A temporary directory holding a store (`store/`) and the test's files.
#[derive(Debug)]
pub struct Env {
    dir: TempDir,
    /// `--store` when it is not `store/` in the directory (`rbd:POOL`).
    store: Option<PathBuf>,
}

impl Env {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
            store: None,
        }
    }

    /// An environment whose commands use the store `store` (such as `rbd:rbd`); the control
    /// sockets of servers of a pool store go to `run/` in the directory.
    pub fn with_store(store: &str) -> Self {
        Self {
            store: Some(PathBuf::from(store)),
            ..Self::new()
        }
    }

    /// The temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        self.store
            .clone()
            .unwrap_or_else(|| self.dir.path().join("store"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `snapvol --store STORE` with a clean environment, run from the temporary directory.
    pub fn snapvol(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(self.dir.path())
            .env_remove("SNAPVOL_STORE")
            .env_remove("RUST_LOG")
            .env("SNAPVOL_RUN_DIR", self.dir.path().join("run"))
            .arg("--store")
            .arg(self.store());
        cmd
    }

    /// Runs `snapvol ARGS`, which must succeed; returns its stdout.
    pub fn snapvol_ok(&self, args: &[&str]) -> String {
        text(&run_ok(self.snapvol().args(args)).stdout)
    }

    /// Runs `snapvol ARGS --json`, which must succeed and print JSON.
    pub fn snapvol_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.snapvol_ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("snapvol {args:?}: {e}:\n{out}"))
    }

    /// Runs `snapvol ARGS`, which must fail with exit code 1; returns its stderr.
    pub fn snapvol_fails(&self, args: &[&str]) -> String {
        let out = output_within(self.snapvol().args(args), LIMIT);
        assert_eq!(
            out.status.code(),
            Some(1),
            "snapvol {args:?} must fail with exit code 1\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stderr)
    }

    /// The snapshot names of `volume`, oldest first (`snapshot list --json`).
    pub fn snapshot_names(&self, volume: &str) -> Vec<String> {
        let list = self.snapvol_json(&["snapshot", "list", volume, "--json"]);
        list.as_array()
            .expect("an array")
            .iter()
            .map(|s| s["name"].as_str().expect("a name").to_owned())
            .collect()
    }

    /// `snapvol create VOL --size SIZE`.
    pub fn create(&self, volume: &str, size: &str) {
        self.snapvol_ok(&["create", volume, "--size", size]);
    }

    /// Starts `snapvol serve` on this store.
    pub fn serve(&self) -> Server {
        Server::start(self, &[])
    }

    /// Starts `snapvol serve ARGS` on this store.
    pub fn serve_with(&self, args: &[&str]) -> Server {
        Server::start(self, args)
    }

    /// Starts `snapvol serve ARGS` on this store, logging to `LOG` in the directory (so that
    /// several servers keep separate logs).
    pub fn serve_logged(&self, args: &[&str], log: &str) -> Server {
        Server::start_logged(self, args, log)
    }
}

/// The server process. Dropping the guard kills it (a failing test leaves nothing running);
/// a test ends it with [`Server::stop`], which asserts a graceful exit.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Server {
    /// Starts `snapvol serve --listen 127.0.0.1:PORT ARGS` on a free port and waits until it
    /// listens and accepts connections.
    pub fn start(env: &Env, args: &[&str]) -> Server {
        Self::start_logged(env, args, "serve.log")
    }

    /// [`Server::start`], logging to `log` in the environment's directory.
    pub fn start_logged(env: &Env, args: &[&str], log: &str) -> Server {
        Self::start_on(env, "127.0.0.1", args, log)
    }

    /// [`Server::start_logged`] listening on `ip` (such as 0.0.0.0), which clients reach
    /// through 127.0.0.1.
    pub fn start_on(env: &Env, ip: &str, args: &[&str], log: &str) -> Server {
        let log = env.path(log);
        for _ in 0..8 {
            let port = free_port();
            let start = fs::metadata(&log).map_or(0, |m| m.len());
            let log_file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("server log file");
            let child = env
                .snapvol()
                .args(["serve", "--listen", &format!("{ip}:{port}")])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .expect("start snapvol serve");
            let mut server = Server {
                child: Some(child),
                port,
                log: log.clone(),
            };
            if server.wait_listening(ip, start) {
                return server;
            }
        }
        panic!("snapvol serve could not find a free port in 8 attempts");
    }

    /// True once the server listens; false when it lost its port to someone else.
    fn wait_listening(&mut self, ip: &str, log_start: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        // nbd:// or, with TLS, nbds://.
        let banner = format!("://{ip}:{}/", self.port);
        loop {
            let log = self.log_since(log_start);
            let child = self.child.as_mut().expect("server child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                if log.contains("Address already in use") || log.contains("address in use") {
                    return false;
                }
                panic!("snapvol serve exited with {status} before listening; its log:\n{log}");
            }
            if log.contains(&banner) && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "snapvol serve did not listen on port {} within 60 s; its log:\n{log}",
                self.port
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_since(&self, start: u64) -> String {
        let all = fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(start).unwrap_or(0).min(all.len());
        text(&all[start..])
    }

    /// Everything the server (and earlier servers on the same store) logged.
    pub fn log(&self) -> String {
        self.log_since(0)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// `nbd://127.0.0.1:PORT/EXPORT`.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// Sends SIGTERM and waits (at most 60 s) for the server to exit; returns its status.
    pub fn terminate(&mut self) -> ExitStatus {
        let child = self.child.take().expect("server running");
        signal(child.id(), libc::SIGTERM);
        let (status, _) = wait_child(child, Duration::from_secs(60));
        status.unwrap_or_else(|| {
            panic!(
                "snapvol serve did not stop within 60 s of SIGTERM (killed); its log:\n{}",
                self.log()
            )
        })
    }

    /// Graceful stop: SIGTERM, and the server must exit with status 0.
    pub fn stop(mut self) {
        let status = self.terminate();
        assert_eq!(
            status.code(),
            Some(0),
            "snapvol serve exited with {status} after SIGTERM; its log:\n{}",
            self.log()
        );
    }

    /// A crash: SIGKILL, no chance to destage or close anything.
    pub fn kill9(mut self) {
        let mut child = self.child.take().expect("server running");
        child.kill().expect("SIGKILL the server");
        let status = child.wait().expect("wait for the killed server");
        assert!(!status.success(), "{status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        reap(self.child.take());
    }
}
