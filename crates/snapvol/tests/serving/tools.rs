//! External tools: the package each comes from, commands run with a time limit, signals, and
//! a free port.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::LIMIT;

/// The Debian package that provides `tool`.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "qemu-img" | "qemu-io" => "qemu-utils",
        "nbdinfo" | "nbdcopy" | "nbdfuse" => "libnbd-bin",
        "fio" => "fio",
        "mkfs.ext4" | "e2fsck" | "debugfs" => "e2fsprogs",
        "mount" | "umount" | "losetup" => "mount",
        "fallocate" | "setpriv" => "util-linux",
        "openssl" => "openssl",
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

pub(super) fn describe(cmd: &Command) -> String {
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
pub(super) fn wait_child(child: Child, limit: Duration) -> (Option<ExitStatus>, Child) {
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
