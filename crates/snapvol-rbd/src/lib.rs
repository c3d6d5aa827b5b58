//! snapvol on Ceph: RBD images as VLUNs, and the RADOS objects and locks that a store kept in
//! a pool needs.
//!
//! # Loading Ceph at run time
//! Nothing here links against Ceph. `librados.so.2` and `librbd.so.1` are opened with
//! `dlopen` the first time something asks for a [`Cluster`], and every C function used is
//! declared by hand (module `ffi`) from the headers of Ceph 16.2, the oldest supported release.
//! So `cargo build`, and every snapvol command that does not touch Ceph, work on a machine
//! without it; on such a machine the first Ceph operation fails with [`Error::NotInstalled`],
//! whose message names the packages: "Ceph's client libraries are not installed: apt-get
//! install librbd1 librados2 (and ceph-common for the rbd tool)".
//!
//! # What is here
//! - [`Cluster`]: a connection (`rados_t`) as `client.<id>`, configured from a file, else
//!   `$CEPH_CONF`, else Ceph's default search; its identity ([`Cluster::instance_id`],
//!   [`Cluster::instance_addr`]) and the fence for another client,
//!   [`Cluster::blocklist_add`].
//! - [`IoCtx`]: one pool. Whole-object operations ([`IoCtx::write_full`], [`IoCtx::read`],
//!   [`IoCtx::stat`], [`IoCtx::remove`], [`IoCtx::list_objects`]), advisory locks with an
//!   optional lease ([`IoCtx::lock_exclusive`], [`IoCtx::renew_lock_exclusive`],
//!   [`IoCtx::unlock`], [`IoCtx::list_lockers`], [`IoCtx::break_lock`]), and images
//!   ([`IoCtx::create_image`], [`IoCtx::remove_image`], [`IoCtx::list_images`]).
//! - [`RbdImage`]: an open image implementing the engine's [`Vlun`](snapvol_engine::vlun::Vlun):
//!   positional reads and writes from any number of threads (librbd's aio), `sync` as
//!   `rbd_flush`, growth and `set_len` as `rbd_resize`, `punch_zero` as `rbd_write_zeroes`,
//!   `discard` as `rbd_discard`, and `next_data`/`next_hole` from `rbd_diff_iterate2`
//!   (exact extents, each search bounded by [`SEARCH_LIMIT`]).
//! - [`RbdBackend`] and [`register`]: the engine's `rbd:POOL/IMAGE` locations, connecting on
//!   first use.
//!
//! Images are created with 4 MiB objects and the layering feature only: no exclusive-lock, so
//! RBD itself does not stop two writers; which process writes a volume is for the caller to
//! decide with RADOS locks, and to enforce with a blocklist entry for a holder presumed dead.
//!
//! # Performance
//! `scripts/bench-rbd.sh` sets [`RbdImage`] (`examples/rbd_bench.rs`, N threads on one
//! handle) beside `fio --ioengine=rbd` (iodepth N) on one image. On a single-OSD cluster on
//! this project's 2-core machines both land within run-to-run noise of each other: with RBD's
//! client cache on (Ceph's default) sequential 1 MiB writes run at 250-490 MiB/s and random
//! 4 KiB writes at 2,300-4,500 IOPS, with it off at 80-300 MiB/s and 140-1,000 IOPS. What
//! costs more than on a file, because images here have no object map (it needs the
//! exclusive-lock feature): `rbd_remove` of a large image visits every object it could have
//! (3 min 12 s for an unwritten 1 TiB image, against 0.4 s with an object map), and so does a
//! full allocation scan (24 s for an empty TiB), which is why [`SEARCH_LIMIT`] bounds each
//! `next_data`/`next_hole`.
//!
//! # Errors
//! A failed Ceph call is [`Error::Ceph`]: the C function, what it was called on, and the
//! `errno` as an [`std::io::Error`] (so `ENOENT`, `EEXIST`, `EBUSY` keep their kinds).
//! Through the [`Vlun`](snapvol_engine::vlun::Vlun) and
//! [`Backend`](snapvol_engine::Backend) traits errors are `io::Error`s: data operations carry
//! the raw `errno`; backend operations keep the [`Error`] inside. A client fenced by a
//! blocklist entry sees `ESHUTDOWN` (Ceph's `EBLOCKLISTED`) from its next write.
//!
//! ```no_run
//! use snapvol_engine::vlun::Vlun;
//! use snapvol_rbd::{Cluster, RbdImage};
//!
//! let cluster = Cluster::connect(None, "admin")?; // $CEPH_CONF or /etc/ceph/ceph.conf
//! let pool = cluster.ioctx("rbd")?;
//! pool.create_image("scratch", 1 << 30)?;
//! let image = RbdImage::open(&pool, "scratch", false)?;
//! image.write_at(b"hello", 4096)?;
//! image.sync()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]
// This crate is a binding: calling C is its job. Every unsafe block says why it is sound.
#![allow(unsafe_code)]

mod backend;
mod error;
mod ffi;
mod pool;
mod rados;
mod rbd;

pub use backend::{register, ImageSpec, RbdBackend, SCHEME};
pub use error::{Error, Result, INSTALL_HINT};
pub use pool::{host_name, run_dir, Holder, PoolCatalog, LEASE, RENEW_EVERY};
pub use rados::{Cluster, IoCtx, LockInfo, Locker, ObjectStat};
pub use rbd::{IoMode, RbdImage, OBJECT_ORDER, SEARCH_LIMIT};

/// Loads Ceph's client libraries now rather than on first use, to report their absence early.
pub fn load_libraries() -> Result<()> {
    ffi::api().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_libraries_are_reported_with_the_packages_to_install() {
        let e = Error::from(ffi::load("libsnapvol-no-such-rados.so.2", ffi::LIBRBD).unwrap_err());
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "Ceph's client libraries are not installed: apt-get install librbd1 librados2 \
                 (and ceph-common for the rbd tool)"
            ),
            "{msg}"
        );
        assert!(msg.contains("libsnapvol-no-such-rados.so.2"), "{msg}");
        let io = std::io::Error::from(e);
        assert_eq!(io.kind(), std::io::ErrorKind::Unsupported);
        assert!(io.to_string().contains("apt-get install librbd1 librados2"));
    }
}
