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
//! (SIGTERM, locking, the control socket), `consistency` (snapshots under concurrent writers)
//! and `integrity` (a damaged journal or preserved chunk, a full file system); the helpers
//! several of them use are below.

#[path = "../serving/mod.rs"]
mod serving;

mod bitmaps;
mod consistency;
mod control;
mod integrity;
mod libnbd;
mod qemu;
mod restore;
mod sigkill;
mod workloads;

use crate::serving::*;

/// The size of most test volumes.
const SIZE: u64 = 256 * MIB;

/// A fio job over the nbd engine: `numjobs` jobs (one connection each), job k writing `size`
/// bytes at random in `[offset + k * 64M, offset + k * 64M + size)`, every block checked with
/// crc32c. The same arguments plus `--verify_only=1` re-read and check what it wrote.
fn fio_job(uri: &str, offset: u64, size: u64, numjobs: u32, seed: u64) -> Vec<String> {
    vec![
        "--name=job".into(),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        "--rw=randwrite".into(),
        "--bsrange=4k-128k".into(),
        "--iodepth=16".into(),
        format!("--offset={offset}"),
        format!("--size={size}"),
        format!("--numjobs={numjobs}"),
        format!("--offset_increment={}", 64 * MIB),
        "--verify=crc32c".into(),
        "--verify_fatal=1".into(),
        // fio would leave verify state files in the working directory.
        "--verify_state_save=0".into(),
        format!("--randseed={seed}"),
    ]
}

fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

fn snapshot_names(info: &serde_json::Value) -> Vec<String> {
    info["snapshots"]
        .as_array()
        .unwrap_or_else(|| panic!("no snapshots list in {info}"))
        .iter()
        .map(|s| s["name"].as_str().expect("snapshot name").to_owned())
        .collect()
}
