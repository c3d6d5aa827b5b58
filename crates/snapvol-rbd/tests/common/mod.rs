//! What the tests against a real cluster share: finding the cluster (or skipping), unique
//! names, and images that remove themselves.

#![allow(dead_code)] // each test file uses part of this

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};

use snapvol_rbd::{Cluster, IoCtx, RbdImage};

/// The pool `scripts/ceph.sh` creates.
pub const POOL: &str = "rbd";

/// A connection to the cluster `$CEPH_CONF` names, or `None` (after a skip line) when it is
/// unset. With `SNAPVOL_REQUIRE_CEPH=1` a missing cluster fails the test instead: CI must not
/// pass by skipping.
pub fn cluster(test: &str) -> Option<Cluster> {
    if std::env::var_os("CEPH_CONF").is_none() {
        assert!(
            std::env::var("SNAPVOL_REQUIRE_CEPH").as_deref() != Ok("1"),
            "{test}: SNAPVOL_REQUIRE_CEPH=1 but CEPH_CONF is not set: \
             start a cluster with `scripts/ceph.sh start DIR` and export what it prints"
        );
        // Straight to the stream rather than through `eprintln!`, which the test harness
        // captures and hides for a test that passes.
        let _ = writeln!(
            std::io::stderr(),
            "skipped {test}: CEPH_CONF is not set (scripts/ceph.sh start DIR starts a cluster)"
        );
        return None;
    }
    Some(Cluster::connect(None, "admin").unwrap_or_else(|e| panic!("{test}: {e}")))
}

/// A name no other test, and no other run, uses.
pub fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "t-{what}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// An image created for one test and removed when the test ends, however it ends.
pub struct ScratchImage {
    pub io: IoCtx,
    pub name: String,
}

impl ScratchImage {
    pub fn new(io: &IoCtx, what: &str, size: u64) -> Self {
        let name = unique(what);
        io.create_image(&name, size).unwrap();
        Self {
            io: io.clone(),
            name,
        }
    }

    pub fn open(&self) -> RbdImage {
        RbdImage::open(&self.io, &self.name, false).unwrap()
    }
}

impl Drop for ScratchImage {
    fn drop(&mut self) {
        let _ = self.io.remove_image(&self.name);
    }
}

/// Bytes that depend on `seed` and the position, so misplaced data is caught.
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = (offset + i).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
            (x >> 29) as u8 | 1 // never zero, so that zeroes always mean "not written"
        })
        .collect()
}
