//! The server over real sockets, driven by a small client built from the crate's own frame
//! code, for the paths real clients never take: error replies, malformed input, replies out
//! of order, shutdown while requests are in flight.
//!
//! `client` holds the test client, `devices` the block devices that count, fail or wait on
//! cue; the tests are grouped by what they exercise: `handshake` (options and the ways into
//! transmission), `requests` (replies to requests, right and wrong), `connections` (requests
//! in flight, misbehaving clients, shutdown), `limits` (the handshake deadline and the
//! connection limit) and `tls` (a server that requires TLS).

#[path = "../common/mod.rs"]
mod common;

mod client;
mod connections;
mod devices;
mod handshake;
mod limits;
mod requests;
mod tls;
