//! What the tests against a real Ceph cluster share: whether there is one (or a skip), the
//! Ceph tools, and pools of a test's own.

use std::io::Write;
use std::process::Command;

use super::tools::{run_ok, text};

/// Whether a cluster is there to test against: without `CEPH_CONF` a skip line (or, with
/// `SNAPVOL_REQUIRE_CEPH=1`, a failure: CI must not pass by skipping).
pub fn ceph(test: &str) -> bool {
    if std::env::var_os("CEPH_CONF").is_some() {
        return true;
    }
    assert!(
        std::env::var("SNAPVOL_REQUIRE_CEPH").as_deref() != Ok("1"),
        "{test}: SNAPVOL_REQUIRE_CEPH=1 but CEPH_CONF is not set: start a cluster with \
         `scripts/ceph.sh start DIR` and export what it prints"
    );
    // Straight to the stream: the harness hides what `eprintln!` prints for a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: CEPH_CONF is not set (scripts/ceph.sh start DIR starts a cluster)"
    );
    false
}

/// `rbd`, `rados` or `ceph` with `args`.
pub fn ceph_cmd(tool: &str, args: &[&str]) -> Command {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    assert!(
        on_path,
        "`{tool}` is not installed: install the Debian package ceph-common"
    );
    let mut cmd = Command::new(tool);
    cmd.args(args);
    cmd
}

/// Runs a Ceph tool, which must succeed; returns its stdout.
pub fn ceph_ok(tool: &str, args: &[&str]) -> String {
    text(&run_ok(&mut ceph_cmd(tool, args)).stdout)
}

/// A pool of the test's own, removed with everything in it when dropped: a server of a pool
/// store serves every volume of the pool it can lock, so tests running at once must not
/// share one.
pub struct TestPool(pub String);

impl TestPool {
    pub fn new(test: &str) -> Self {
        let pool = TestPool(format!("snapvol-test-{test}-{}", std::process::id()));
        pool.remove(); // a leftover of an earlier run with the same pid
        ceph_ok("ceph", &["osd", "pool", "create", &pool.0, "8"]);
        ceph_ok("rbd", &["pool", "init", &pool.0]);
        pool
    }

    /// `rbd:POOL`, the store.
    pub fn store(&self) -> String {
        format!("rbd:{}", self.0)
    }

    fn remove(&self) {
        let _ = ceph_cmd("ceph", &["osd", "pool", "rm", &self.0, &self.0])
            .arg("--yes-i-really-really-mean-it")
            .output();
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        self.remove();
    }
}
