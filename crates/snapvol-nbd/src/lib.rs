//! An NBD (Network Block Device) protocol and server library.
//!
//! It serves anything that implements the small [`BlockDevice`] trait, under export names
//! looked up through an [`Exports`] catalogue, to real NBD clients: qemu, the libnbd tools
//! (`nbdinfo`, `nbdcopy`, `nbdfuse`), fio's `nbd` engine and the Linux kernel.
//!
//! What it speaks (the spec is `NetworkBlockDevice/nbd` `doc/proto.md`):
//! - fixed newstyle handshake with `NO_ZEROES`; options `EXPORT_NAME`, `INFO`, `GO` (with
//!   `NBD_INFO_EXPORT`, `NAME`, `DESCRIPTION`, `BLOCK_SIZE`), `LIST`, `ABORT`,
//!   `STRUCTURED_REPLY`, `LIST_META_CONTEXT` and `SET_META_CONTEXT` (`base:allocation` plus
//!   whatever contexts a device offers); anything else gets `NBD_REP_ERR_UNSUP`;
//! - transmission commands `READ`, `WRITE`, `FLUSH`, `TRIM`, `WRITE_ZEROES`, `BLOCK_STATUS`,
//!   `CACHE`, `DISC`, with `FUA`, simple or structured replies, several requests in flight
//!   per connection and replies out of order.
//!
//! Layout: [`proto`] has the numbers; [`handshake`] and [`transmission`] each have a
//! `frame` module (pure byte parsing and encoding for both sides, answering "incomplete"
//! when more bytes are needed) and the server logic of their phase; [`server`] owns
//! sockets and threads.
//!
//! ```no_run
//! use std::sync::Arc;
//! use snapvol_nbd::{Export, ExportMap, MemDevice, Server};
//!
//! let exports = Arc::new(ExportMap::new());
//! exports.insert("vol", Export::new(Arc::new(MemDevice::new(64 << 20)), "scratch"));
//! let running = Server::builder(exports)
//!     .tcp("127.0.0.1:0".parse().unwrap())
//!     .bind()?
//!     .spawn()?;
//! println!("nbd://{}/vol", running.local_addr().unwrap());
//! running.stop()?; // graceful: finishes requests in flight and flushes
//! # Ok::<(), std::io::Error>(())
//! ```

#![deny(missing_docs)]

mod codec;
pub mod device;
pub mod exports;
mod fuzz;
pub mod handshake;
mod payload;
pub mod proto;
pub mod server;
mod stream;
pub mod tls;
mod tls_stream;
pub mod transmission;

pub use codec::Decoded;
pub use device::{BlockDevice, DevError, Extent, MemDevice, RequestDone};
pub use exports::{Export, ExportMap, Exports};
pub use fuzz::{fuzz_handshake, fuzz_transmission};
pub use proto::Errno;
pub use server::{ConnectionStats, RunningServer, Server, ServerBuilder, ShutdownHandle};
pub use tls::{TlsAcceptor, TlsCredentials, TlsError, TlsFiles};
