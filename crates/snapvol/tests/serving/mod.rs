//! The machinery of the `snapvol serve` tests: a store in a temporary directory, the real
//! server as a child process behind a guard that never leaves it running, real NBD clients
//! run with a time limit, and FUSE and loop mounts that are always undone.
//!
//! A client that is not installed fails the test with the Debian package to install.
//!
//! By kind: `tools` (finding and running external commands with a time limit), `server` (the
//! store and the server), `background` (clients left running while the test goes on),
//! `mounts` (FUSE and loop mounts), `data` (patterns and image files), `clients` (the real NBD
//! clients), `raw_nbd` (a minimal NBD client for requests real clients refuse to send), `scrape`
//! (`serve --metrics`: HTTP requests and the Prometheus text they answer), `pki`
//! (certificates for the TLS tests) and `ceph`
//! (a Ceph cluster to test against, its tools, pools of a test's own).

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

mod background;
mod ceph;
mod clients;
mod data;
mod mounts;
mod pki;
mod raw_nbd;
mod scrape;
mod server;
mod tools;

// Each test binary uses a part of these too.
#[allow(unused_imports)]
pub use self::{
    background::*, ceph::*, clients::*, data::*, mounts::*, pki::*, raw_nbd::*, scrape::*,
    server::*, tools::*,
};

use std::time::Duration;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_snapvol");
pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
/// Time limit of one client command: generous, only there so that a hang fails the test.
pub const LIMIT: Duration = Duration::from_secs(120);
