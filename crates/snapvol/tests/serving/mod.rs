//! The machinery of the `snapvol serve` tests: a store in a temporary directory, the real
//! server as a child process behind a guard that never leaves it running, real NBD clients
//! run with a time limit, and FUSE and loop mounts that are always undone.
//!
//! A client that is not installed fails the test with the Debian package to install.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_snapvol");
pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
/// Time limit of one client command: generous, only there so that a hang fails the test.
pub const LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// External tools

/// The Debian package that provides `tool`.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "qemu-img" | "qemu-io" => "qemu-utils",
        "nbdinfo" | "nbdcopy" | "nbdfuse" => "libnbd-bin",
        "fio" => "fio",
        "mkfs.ext4" | "e2fsck" | "debugfs" => "e2fsprogs",
        "mount" | "umount" | "losetup" => "mount",
        "fallocate" => "util-linux",
        "df" => "coreutils",
        other => panic!("the tests do not know which package provides {other}"),
    }
}

/// The path of `tool`, or a failure naming the package to install. Never a skip.
pub fn require(tool: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return candidate;
        }
    }
    let package = package_of(tool);
    panic!(
        "`{tool}` is not installed, and this test drives the server with it: \
         install the Debian package `{package}` (apt-get install {package})"
    );
}

/// A command running one of the Python clients in `tests/clients/` with Debian's Python and
/// its libnbd bindings, which must be installed.
pub fn python_client(script: &str) -> Command {
    let python = PathBuf::from("/usr/bin/python3");
    let has_libnbd = python.is_file()
        && Command::new(&python)
            .args(["-c", "import nbd"])
            .output()
            .is_ok_and(|o| o.status.success());
    assert!(
        has_libnbd,
        "Python's libnbd bindings are not installed, and this test drives the server with \
         them: install the Debian package `python3-libnbd` (apt-get install python3-libnbd)"
    );
    let mut cmd = Command::new(python);
    cmd.arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/clients")
            .join(script),
    );
    cmd
}

/// A command running `tool`, which must be installed.
pub fn tool(name: &str) -> Command {
    Command::new(require(name))
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Sends `signal` to process `pid`.
#[allow(unsafe_code)]
pub fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) takes no pointers; it only sends a signal to a process we started.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Waits for `child` for at most `limit`; on timeout kills it and returns `None`.
fn wait_child(child: Child, limit: Duration) -> (Option<ExitStatus>, Child) {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let mut child = child;
        let status = child.wait();
        let _ = tx.send(());
        (status, child)
    });
    let timed_out = rx.recv_timeout(limit).is_err();
    if timed_out {
        signal(pid, libc::SIGKILL);
    }
    let (status, child) = waiter.join().expect("waiter thread");
    let status = status.expect("wait for a child process");
    (if timed_out { None } else { Some(status) }, child)
}

/// Runs `cmd` to completion within `limit` with stdin closed; a hang fails the test.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let (status, _) = wait_child(child, limit);
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    let Some(status) = status else {
        panic!(
            "{what} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
            text(&stdout),
            text(&stderr)
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs `cmd`, which must exit 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let what = describe(cmd);
    let out = output_within(cmd, LIMIT);
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Runs `cmd`, which must fail; returns what it printed.
pub fn run_fails(cmd: &mut Command) -> Output {
    let what = describe(cmd);
    let out = output_within(cmd, LIMIT);
    assert!(
        !out.status.success(),
        "{what} succeeded but must fail\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// A free TCP port on 127.0.0.1 (free when this returns; the server may still lose a race for
/// it, which [`Server::start`] detects and retries).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

// ---------------------------------------------------------------------------------------------
// The store and the server

/// A temporary directory holding a store (`store/`) and the test's files.
#[derive(Debug)]
pub struct Env {
    dir: TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// The temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
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
        let log = env.path("serve.log");
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
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
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
            if server.wait_listening(start) {
                return server;
            }
        }
        panic!("snapvol serve could not find a free port in 8 attempts");
    }

    /// True once the server listens; false when it lost its port to someone else.
    fn wait_listening(&mut self, log_start: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        let banner = format!("on nbd://127.0.0.1:{}/", self.port);
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

// ---------------------------------------------------------------------------------------------
// Background clients

/// Kills a child that is still running and waits for it: what every handle does when dropped.
fn reap(child: Option<Child>) {
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A client running in the background, its output going to files; killed when dropped.
#[derive(Debug)]
pub struct Background {
    child: Option<Child>,
    what: String,
    out: PathBuf,
    err: PathBuf,
}

impl Background {
    /// Starts `cmd`; its stdout and stderr go to `DIR/NAME.out` and `DIR/NAME.err`.
    pub fn spawn(cmd: &mut Command, dir: &Path, name: &str) -> Self {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let what = describe(cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        Self {
            child: Some(child),
            what,
            out,
            err,
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// What it printed so far: stdout then stderr.
    pub fn output_so_far(&self) -> String {
        format!(
            "{}{}",
            fs::read_to_string(&self.out).unwrap_or_default(),
            fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    /// Waits for it to exit within `limit`.
    pub fn wait_within(mut self, limit: Duration) -> Output {
        let child = self.child.take().expect("running");
        let (status, _) = wait_child(child, limit);
        let stdout = fs::read(&self.out).unwrap_or_default();
        let stderr = fs::read(&self.err).unwrap_or_default();
        let Some(status) = status else {
            panic!(
                "{} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                self.what,
                text(&stdout),
                text(&stderr)
            );
        };
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        reap(self.child.take());
    }
}

/// An interactive client: commands are written to its stdin, its output is collected as it
/// comes. Killed when dropped.
#[derive(Debug)]
pub struct Interactive {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Interactive {
    pub fn spawn(cmd: &mut Command) -> Self {
        let what = describe(cmd);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for mut r in [stdout, stderr] {
            let sink = output.clone();
            readers.push(thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .expect("output lock")
                        .extend_from_slice(&buf[..n]);
                }
            }));
        }
        Self {
            stdin: child.stdin.take(),
            child: Some(child),
            output,
            readers,
        }
    }

    /// Sends one line.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to the client's stdin");
        stdin.flush().expect("flush the client's stdin");
    }

    pub fn output(&self) -> String {
        text(&self.output.lock().expect("output lock"))
    }

    /// Waits until the output contains `needle` (at most 60 s).
    pub fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.output().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the client did not print {needle:?} within 60 s; it printed:\n{}",
                self.output()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Closes stdin and waits for the client to exit; returns everything it printed.
    pub fn finish(mut self) -> (ExitStatus, String) {
        drop(self.stdin.take());
        let child = self.child.take().expect("running");
        let (status, _) = wait_child(child, Duration::from_secs(60));
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let status = status.unwrap_or_else(|| {
            panic!(
                "the client did not exit within 60 s; it printed:\n{}",
                self.output()
            )
        });
        (status, self.output())
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        drop(self.stdin.take());
        reap(self.child.take());
    }
}

// ---------------------------------------------------------------------------------------------
// FUSE and loop mounts

/// An NBD export as the file `DIR/disk` through nbdfuse; unmounted when dropped.
#[derive(Debug)]
pub struct FuseDisk {
    dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl FuseDisk {
    pub fn mount(dir: &Path, uri: &str, read_only: bool) -> Self {
        fs::create_dir_all(dir).expect("FUSE mount point");
        let log = dir.with_extension("nbdfuse.log");
        let mut cmd = tool("nbdfuse");
        if read_only {
            cmd.arg("--readonly");
        }
        let child = cmd
            .arg(dir.join("disk"))
            .arg(uri)
            .stdin(Stdio::null())
            .stdout(File::create(&log).expect("nbdfuse log"))
            .stderr(OpenOptions::new().append(true).open(&log).expect("log"))
            .spawn()
            .expect("start nbdfuse");
        let mut fuse = Self {
            dir: dir.to_owned(),
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fuse.disk().exists() {
            if let Some(status) = fuse
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                fuse.child = None;
                panic!(
                    "nbdfuse {uri} exited with {status} before mounting:\n{}",
                    fs::read_to_string(&fuse.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nbdfuse {uri} did not mount within 30 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
        fuse
    }

    /// The file that is the export.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk")
    }

    /// fsync on the file: FUSE sends it to nbdfuse, which sends an NBD FLUSH.
    pub fn flush(&self) {
        File::options()
            .write(true)
            .open(self.disk())
            .and_then(|f| f.sync_all())
            .expect("fsync the nbdfuse file");
    }

    /// Unmounts and waits for nbdfuse to exit.
    pub fn unmount(mut self) {
        self.release(true);
    }

    fn release(&mut self, strict: bool) {
        let Some(child) = self.child.take() else {
            return;
        };
        // A loop device that was just detached may hold the file for a moment.
        let mut last = None;
        for _ in 0..100 {
            let out = output_within(tool("umount").arg(&self.dir), LIMIT);
            if out.status.success() {
                last = None;
                break;
            }
            last = Some(text(&out.stderr));
            thread::sleep(Duration::from_millis(100));
        }
        if let Some(err) = last {
            let _ = output_within(tool("umount").arg("-l").arg(&self.dir), LIMIT);
            assert!(!strict, "umount {} failed: {err}", self.dir.display());
        }
        let (status, _) = wait_child(child, Duration::from_secs(30));
        if strict {
            assert!(
                status.is_some(),
                "nbdfuse did not exit after umount:\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for FuseDisk {
    fn drop(&mut self) {
        self.release(false);
    }
}

/// A filesystem image mounted through a loop device; unmounted when dropped.
#[derive(Debug)]
pub struct LoopMount {
    image: PathBuf,
    mnt: PathBuf,
    mounted: bool,
}

impl LoopMount {
    /// `mount -o loop,OPTIONS IMAGE MNT`.
    pub fn mount(image: &Path, mnt: &Path, options: &str) -> Self {
        fs::create_dir_all(mnt).expect("mount point");
        let opts = if options.is_empty() {
            "loop".to_owned()
        } else {
            format!("loop,{options}")
        };
        run_ok(
            tool("mount")
                .args(["-t", "ext4", "-o", &opts])
                .arg(image)
                .arg(mnt),
        );
        Self {
            image: image.to_owned(),
            mnt: mnt.to_owned(),
            mounted: true,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    /// Unmounts, and waits until the loop device let go of the image.
    pub fn unmount(mut self) {
        self.mounted = false;
        run_ok(tool("umount").arg(&self.mnt));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = run_ok(tool("losetup").arg("-j").arg(&self.image));
            if out.stdout.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the loop device still holds {}: {}",
                self.image.display(),
                text(&out.stdout)
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            let out = output_within(tool("umount").arg(&self.mnt), LIMIT);
            if !out.status.success() {
                let _ = output_within(tool("umount").arg("-l").arg(&self.mnt), LIMIT);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Data

/// `len` bytes of a deterministic pseudo-random sequence chosen by `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A sparse image file of `size` bytes holding `pattern(len, seed)` at each `(offset, len,
/// seed)` and zeroes elsewhere.
pub fn write_image(path: &Path, size: u64, regions: &[(u64, u64, u64)]) {
    let mut f = File::create(path).expect("create image");
    f.set_len(size).expect("size image");
    for &(offset, len, seed) in regions {
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(offset)).expect("seek");
        f.write_all(&pattern(usize::try_from(len).expect("len"), seed))
            .expect("write image");
    }
    f.sync_all().expect("sync image");
}

/// Asserts that two files have the same bytes, naming the first difference.
pub fn assert_same_file(a: &Path, b: &Path) {
    let la = fs::metadata(a).expect("stat").len();
    let lb = fs::metadata(b).expect("stat").len();
    assert_eq!(la, lb, "{} and {} differ in size", a.display(), b.display());
    let mut fa = File::open(a).expect("open");
    let mut fb = File::open(b).expect("open");
    let mut ba = vec![0u8; 4 << 20];
    let mut bb = vec![0u8; 4 << 20];
    let mut offset = 0u64;
    loop {
        let n = fa.read(&mut ba).expect("read");
        if n == 0 {
            break;
        }
        fb.read_exact(&mut bb[..n]).expect("read");
        if ba[..n] != bb[..n] {
            let i = (0..n).find(|&i| ba[i] != bb[i]).unwrap_or(0);
            panic!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                offset + i as u64
            );
        }
        offset += n as u64;
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// `qemu-io -f raw ARGS URI`; returns stdout and stderr together.
pub fn qemu_io(args: &[&str], uri: &str) -> (ExitStatus, String) {
    let out = output_within(
        tool("qemu-io").args(["-f", "raw"]).args(args).arg(uri),
        LIMIT,
    );
    (
        out.status,
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// qemu-io writes (`(pattern, offset, len)`) followed by a flush, all of which must succeed.
pub fn qemu_io_write(uri: &str, writes: &[(u8, u64, u64)]) {
    let cmds: Vec<String> = writes
        .iter()
        .map(|(p, off, len)| format!("write -P {p:#x} {off} {len}"))
        .chain(["flush".to_owned()])
        .collect();
    let mut args = Vec::new();
    for c in &cmds {
        args.extend(["-c", c.as_str()]);
    }
    let (status, out) = qemu_io(&args, uri);
    assert!(
        status.success(),
        "qemu-io {cmds:?} on {uri}: {status}\n{out}"
    );
    for (_, off, len) in writes {
        assert!(
            out.contains(&format!("wrote {len}/{len} bytes at offset {off}")),
            "qemu-io {cmds:?} on {uri}:\n{out}"
        );
    }
    assert!(!out.to_lowercase().contains("fail"), "{out}");
}

/// Read-only qemu-io reads verifying that `(pattern, offset, len)` ranges hold their pattern.
pub fn qemu_io_verify(uri: &str, reads: &[(u8, u64, u64)]) {
    let cmds: Vec<String> = reads
        .iter()
        .map(|(p, off, len)| format!("read -P {p:#x} {off} {len}"))
        .collect();
    let mut args = vec!["-r"];
    for c in &cmds {
        args.extend(["-c", c.as_str()]);
    }
    let (status, out) = qemu_io(&args, uri);
    assert!(
        status.success(),
        "qemu-io {cmds:?} on {uri}: {status}\n{out}"
    );
    assert!(
        !out.contains("Pattern verification failed"),
        "{uri} does not hold what it must: qemu-io {cmds:?}:\n{out}"
    );
    for (_, off, len) in reads {
        assert!(
            out.contains(&format!("read {len}/{len} bytes at offset {off}")),
            "qemu-io {cmds:?} on {uri}:\n{out}"
        );
    }
}

/// The exit code of `nbdinfo ARGS URI` (`--can`/`--is`: 0 true, 2 false).
pub fn nbdinfo_code(args: &[&str], uri: &str) -> i32 {
    let out = output_within(tool("nbdinfo").args(args).arg(uri), LIMIT);
    out.status.code().unwrap_or(-1)
}

/// `nbdinfo --json URI`: the description of the export.
pub fn nbdinfo_json(uri: &str) -> serde_json::Value {
    let out = run_ok(tool("nbdinfo").arg("--json").arg(uri));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("nbdinfo --json {uri}: {e}: {}", text(&out.stdout)));
    v["exports"][0].clone()
}

/// One row of `nbdinfo --map`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRow {
    pub offset: u64,
    pub length: u64,
    pub flags: u32,
    pub description: String,
}

/// `nbdinfo --map URI`, checked to cover `[0, size)` without gaps or overlaps.
pub fn nbdinfo_map(uri: &str, size: u64) -> Vec<MapRow> {
    let out = run_ok(tool("nbdinfo").arg("--map").arg(uri));
    let stdout = text(&out.stdout);
    let rows: Vec<MapRow> = stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 3, "nbdinfo --map {uri}: bad row {l:?}");
            MapRow {
                offset: f[0].parse().expect("offset"),
                length: f[1].parse().expect("length"),
                flags: f[2].parse().expect("flags"),
                description: f[3..].join(" "),
            }
        })
        .collect();
    let mut next = 0;
    for r in &rows {
        assert_eq!(r.offset, next, "nbdinfo --map {uri} has a gap:\n{stdout}");
        next += r.length;
    }
    assert_eq!(
        next, size,
        "nbdinfo --map {uri} does not cover the export:\n{stdout}"
    );
    rows
}

/// The map rows that overlap `[offset, offset + len)`.
pub fn map_rows_over(rows: &[MapRow], offset: u64, len: u64) -> Vec<MapRow> {
    rows.iter()
        .filter(|r| r.offset < offset + len && offset < r.offset + r.length)
        .cloned()
        .collect()
}

/// `nbdcopy FROM TO`.
pub fn nbdcopy(from: &str, to: &Path) {
    run_ok(tool("nbdcopy").arg(from).arg(to));
}

/// `qemu-img compare -f raw -F raw A B`: true when identical, false when different.
pub fn qemu_img_compare(a: &str, b: &str) -> bool {
    let out = output_within(
        tool("qemu-img").args(["compare", "-f", "raw", "-F", "raw", a, b]),
        LIMIT,
    );
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!(
            "qemu-img compare {a} {b} failed: {}\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        ),
    }
}

/// fio's JSON report (the nbd engine prints "connected" lines before it).
pub fn fio_json(out: &Output) -> serde_json::Value {
    let stdout = text(&out.stdout);
    let json = stdout
        .find("\n{")
        .map_or(stdout.as_str(), |i| &stdout[i + 1..]);
    let json = if json.starts_with('{') {
        json
    } else {
        stdout.find('{').map_or("", |i| &stdout[i..])
    };
    serde_json::from_str(json).unwrap_or_else(|e| {
        panic!(
            "fio output is not JSON ({e}):\n{stdout}{}",
            text(&out.stderr)
        )
    })
}

/// Runs fio with `args` plus `--output-format=json`; it must succeed, and every job must end
/// without error having written `write_bytes` (unless `None`: fio counts the writes it only
/// pretends to make with `--verify_only`) and read `read_bytes` each.
pub fn fio_ok(
    env: &Env,
    args: &[String],
    write_bytes: Option<u64>,
    read_bytes: u64,
) -> serde_json::Value {
    let mut cmd = tool("fio");
    cmd.current_dir(env.dir())
        .args(args)
        .arg("--output-format=json");
    let what = describe(&cmd);
    let out = output_within(&mut cmd, LIMIT);
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let v = fio_json(&out);
    let jobs = v["jobs"].as_array().expect("fio jobs");
    assert!(!jobs.is_empty(), "{v}");
    for job in jobs {
        assert_eq!(job["error"], 0, "{what}: {job}");
        if let Some(w) = write_bytes {
            assert_eq!(job["write"]["io_bytes"], w, "{what}: {job}");
        }
        assert_eq!(job["read"]["io_bytes"], read_bytes, "{what}: {job}");
    }
    v
}

// ---------------------------------------------------------------------------------------------
// A minimal NBD client, for requests that well-behaved clients refuse to send

/// Just enough of the NBD protocol (fixed newstyle, OPT_GO, simple replies) to send requests
/// that qemu and libnbd refuse to send themselves, such as a write to a read-only export.
#[derive(Debug)]
pub struct RawNbd {
    stream: TcpStream,
    /// The transmission flags the server sent.
    pub flags: u16,
    /// The export size.
    pub size: u64,
    cookie: u64,
}

const IHAVEOPT: u64 = 0x4948_4156_454F_5054;

impl RawNbd {
    /// Connects and selects `export` with NBD_OPT_GO; `Err` with the option error type when
    /// the server refuses it.
    pub fn connect(port: u16, export: &str) -> Result<Self, u32> {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        Self::over(s, export)
    }

    /// [`RawNbd::connect`] over a connection already made, whose greeting is not read yet.
    pub fn over(mut s: TcpStream, export: &str) -> Result<Self, u32> {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).expect("server greeting");
        assert_eq!(&hello[..8], b"NBDMAGIC", "greeting");
        // FIXED_NEWSTYLE | NO_ZEROES.
        s.write_all(&3u32.to_be_bytes()).expect("client flags");
        let mut opt = Vec::new();
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
        let len = u32::try_from(4 + export.len() + 2).expect("len");
        opt.extend_from_slice(&len.to_be_bytes());
        opt.extend_from_slice(&u32::try_from(export.len()).expect("len").to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        opt.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&opt).expect("NBD_OPT_GO");
        let (mut flags, mut size) = (0, 0);
        loop {
            let mut head = [0u8; 20];
            s.read_exact(&mut head).expect("option reply");
            let kind = u32::from_be_bytes(head[12..16].try_into().expect("4 bytes"));
            let len = u32::from_be_bytes(head[16..20].try_into().expect("4 bytes"));
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data).expect("option reply data");
            match kind {
                1 => break, // ACK
                3 if data.len() >= 12 && data[..2] == [0, 0] => {
                    size = u64::from_be_bytes(data[2..10].try_into().expect("8 bytes"));
                    flags = u16::from_be_bytes(data[10..12].try_into().expect("2 bytes"));
                }
                k if k >= 1 << 31 => return Err(k),
                _ => {}
            }
        }
        Ok(Self {
            stream: s,
            flags,
            size,
            cookie: 0,
        })
    }

    fn request(&mut self, kind: u16, offset: u64, len: u32, data: &[u8]) -> u32 {
        self.cookie += 1;
        let mut req = Vec::with_capacity(28 + data.len());
        req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&kind.to_be_bytes());
        req.extend_from_slice(&self.cookie.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(data);
        self.stream.write_all(&req).expect("send request");
        let mut reply = [0u8; 16];
        self.stream.read_exact(&mut reply).expect("simple reply");
        assert_eq!(reply[..4], 0x6744_6698u32.to_be_bytes(), "reply magic");
        assert_eq!(reply[8..], self.cookie.to_be_bytes(), "reply cookie");
        u32::from_be_bytes(reply[4..8].try_into().expect("4 bytes"))
    }

    /// NBD_CMD_WRITE; returns the error value (0 for success).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        let len = u32::try_from(data.len()).expect("len");
        self.request(1, offset, len, data)
    }

    /// NBD_CMD_FLUSH; returns the error value (0 for success).
    pub fn flush(&mut self) -> u32 {
        self.request(3, 0, 0, &[])
    }

    /// NBD_CMD_READ; the data, or the error value.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        match self.request(0, offset, len, &[]) {
            0 => {
                let mut buf = vec![0u8; len as usize];
                self.stream.read_exact(&mut buf).expect("read data");
                Ok(buf)
            }
            e => Err(e),
        }
    }
}
