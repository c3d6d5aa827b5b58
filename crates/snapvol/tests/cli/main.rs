//! End-to-end tests of the `snapvol` binary: each test runs the real executable against its own
//! store in a temporary directory and checks exit codes, output and the images it produces.
//!
//! The tests, by what they are about: `journey` (the user journey: import, snapshot,
//! overwrite, export, delete), `commands` (what each command does when it works),
//! `failures` (exit code 1 with a message that names the problem, and exit code 2 for usage
//! errors), `check`, `read_only` (commands that only read), and `contrib` (the systemd unit); the store and the helpers they
//! all use are below.

mod check;
mod commands;
mod contrib;
mod failures;
mod journey;
mod read_only;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_snapvol");
const MIB: u64 = 1 << 20;
/// Volume size used by most tests: small, so the suite stays fast.
const SIZE: u64 = 4 * MIB;

/// A temporary directory holding a store (`store/`) and the test's image files.
struct Env {
    dir: TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A command with a clean environment, run from the temporary directory.
    fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(self.dir.path())
            .env_remove("SNAPVOL_STORE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `snapvol --store STORE ARGS...`.
    fn run(&self, args: &[&str]) -> Output {
        self.command()
            .arg("--store")
            .arg(self.store())
            .args(args)
            .output()
            .expect("snapvol runs")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "snapvol {args:?} failed\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs a command that must succeed and print JSON.
    fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: not JSON:\n{stdout}"))
    }

    /// Runs a command that must fail with exit code 1; returns its one-line error message.
    fn fails(&self, args: &[&str]) -> String {
        failure_message(&self.run(args), args)
    }

    /// Runs a command that must be refused as a usage error (exit code 2); returns stderr.
    fn usage_error(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "snapvol {args:?} was not a usage error\nstderr: {}",
            text(&out.stderr)
        );
        text(&out.stderr)
    }

    /// Creates volume `name` of [`SIZE`] bytes with 4 KiB chunks.
    fn create(&self, name: &str) {
        self.ok(&["create", name, "--size", "4M", "--chunk-size", "4K"]);
    }

    /// Writes `data` to a file and imports it into `volume`.
    fn import(&self, volume: &str, file: &str, data: &[u8]) {
        let path = self.path(file);
        fs::write(&path, data).expect("write image");
        self.ok(&["import", volume, path_str(&path)]);
    }

    /// Exports `spec` (VOL or VOL@SNAP) to a file and returns its content.
    fn export(&self, spec: &str, file: &str) -> Vec<u8> {
        let path = self.path(file);
        self.ok(&["export", spec, path_str(&path)]);
        fs::read(&path).expect("read exported image")
    }

    fn info(&self, volume: &str) -> Value {
        self.json(&["info", volume, "--json"])
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Checks the failure contract: exit code 1 and exactly one line `snapvol: error: ...`.
fn failure_message(out: &Output, args: &[&str]) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "snapvol {args:?} did not fail with exit code 1\nstdout: {}\nstderr: {stderr}",
        text(&out.stdout)
    );
    assert!(
        stderr.starts_with("snapvol: error: ") && stderr.trim_end().lines().count() == 1,
        "snapvol {args:?}: the error is not one 'snapvol: error:' line:\n{stderr}"
    );
    stderr
}

/// Deterministic pseudo-random bytes (splitmix64), different for each seed.
fn random_image(len: u64, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn snapshot_names(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("an array of snapshots")
        .iter()
        .map(|s| s["name"].as_str().expect("a name").to_owned())
        .collect()
}
