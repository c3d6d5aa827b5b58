//! `snapvol serve` driven by real clients: the real binary serves a store in a temporary
//! directory on a free port of 127.0.0.1, and qemu-img, qemu-io, nbdinfo, nbdcopy, nbdfuse,
//! fio and ext4 on a loop device use it, while `snapvol snapshot ...` reaches the running
//! server through the store's control socket.
//!
//! Every test stops its server with SIGTERM and asserts exit status 0; a guard kills it if the
//! test fails first. A missing client fails the test with the Debian package to install.
//!
//! By client and by concern: `qemu` (qemu-img and qemu-io), `libnbd` (nbdinfo and nbdcopy),
//! `bitmaps` (the `qemu:dirty-bitmap:SNAP` contexts through nbdinfo, qemu-img, python3-libnbd,
//! an incremental backup, and under churn), `restore` (`diff` and `snapshot rollback`, served,
//! offline and killed part-way), `workloads` (fio and ext4), `sigkill`, `control`
//! (SIGTERM, locking, the control socket), `consistency` (snapshots under concurrent writers),
//! `integrity` (a damaged journal or preserved chunk, a full file system), `tls` (TLS
//! with client certificates, SIGHUP reloading them), `metrics` (`--metrics`: counters
//! against the traffic real clients sent, and under concurrent writers) and `write_mode`
//! (`create --write-mode`: FLUSH, FUA writes and snapshots against SIGKILL, through qemu-io
//! and fio); the helpers several of them use are below.

#[path = "../serving/mod.rs"]
mod serving;

mod bitmaps;
mod consistency;
mod control;
mod integrity;
mod libnbd;
mod metrics;
mod qemu;
mod restore;
mod sigkill;
mod tls;
mod workloads;
mod write_mode;

use crate::serving::*;

/// The size of most test volumes.
const SIZE: u64 = 256 * MIB;

fn snapshot_names(info: &serde_json::Value) -> Vec<String> {
    info["snapshots"]
        .as_array()
        .unwrap_or_else(|| panic!("no snapshots list in {info}"))
        .iter()
        .map(|s| s["name"].as_str().expect("snapshot name").to_owned())
        .collect()
}
