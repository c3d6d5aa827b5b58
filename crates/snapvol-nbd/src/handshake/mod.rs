//! The handshake phase: fixed newstyle negotiation with option haggling.
//!
//! [`frame`] holds the bytes; [`ServerHandshake`] (in `options`) is the server's state
//! machine, which turns one option into its replies without doing I/O; `greet` and `haggle`
//! drive it over a stream (the server runs the TLS handshake between two `haggle`s when the
//! client starts TLS).

pub mod frame;
mod options;

pub use options::ServerHandshake;

use std::io::{Read, Write};

use crate::device::BlockDevice;
use crate::exports::Export;
use crate::proto::*;
use crate::stream::{FrameReader, ReadError};
use frame::HandshakeError;

/// Handshake flags this server sends: fixed newstyle, and no zero padding on request.
pub const HANDSHAKE_FLAGS: u16 = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;

/// Longest option payload the server reads; longer ones are skipped and answered with
/// `NBD_REP_ERR_TOO_BIG`. The largest legitimate option, a meta-context query list, is
/// far smaller.
pub const MAX_OPTION_DATA: u32 = 64 * 1024;

/// A metadata context selected with `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContext {
    /// The id the server assigned (used in `NBD_REPLY_TYPE_BLOCK_STATUS` chunks).
    pub id: u32,
    /// Its name, e.g. `base:allocation`.
    pub name: String,
}

/// Everything the handshake settled, handed to the transmission phase.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// The export name the client chose.
    pub name: String,
    /// The export.
    pub export: Export,
    /// Transmission flags sent to the client.
    pub flags: u16,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// Metadata contexts selected for this export (empty: `NBD_CMD_BLOCK_STATUS` is invalid).
    pub contexts: Vec<MetaContext>,
}

/// What the connection does after an option.
#[derive(Debug)]
pub enum Step {
    /// Read the next option.
    Continue,
    /// The client aborted (soft disconnect): close after sending the replies.
    Abort,
    /// A hard disconnect is required (e.g. `NBD_OPT_EXPORT_NAME` of an unknown export).
    Close(String),
    /// Enter transmission after sending the replies.
    Transmission(Box<Negotiated>),
    /// After sending the replies (`NBD_REP_ACK` to `NBD_OPT_STARTTLS`), run a TLS handshake;
    /// every byte after it goes through TLS.
    StartTls,
}

/// How option haggling ended, when it did not fail.
#[derive(Debug)]
pub(crate) enum Haggled {
    /// The client entered transmission.
    Transmission(Box<Negotiated>),
    /// The client asked for TLS and was told yes: the TLS handshake comes next.
    StartTls,
}

/// The transmission flags advertised for `device` (proto.md "Transmission flags": set only
/// what is supported).
pub fn transmission_flags(device: &dyn BlockDevice, structured: bool) -> u16 {
    let mut flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_CACHE;
    if device.read_only() {
        flags |= NBD_FLAG_READ_ONLY;
    } else {
        flags |= NBD_FLAG_SEND_FLUSH
            | NBD_FLAG_SEND_FUA
            | NBD_FLAG_SEND_TRIM
            | NBD_FLAG_SEND_WRITE_ZEROES;
        if device.fast_zero() {
            flags |= NBD_FLAG_SEND_FAST_ZERO;
        }
    }
    // A read-only export trivially satisfies the multi-conn promise as long as the device
    // makes it: no connection has writes another could miss.
    if device.multi_conn_safe() {
        flags |= NBD_FLAG_CAN_MULTI_CONN;
    }
    // Reads are always answered with a single chunk, so "don't fragment" costs nothing; the
    // spec allows the flag only with structured replies.
    if structured {
        flags |= NBD_FLAG_SEND_DF;
    }
    flags
}

/// Why the handshake ended without entering transmission.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeEnd {
    /// The client aborted or went away between options: nothing to report.
    #[error("the client ended the handshake")]
    Quiet,
    /// Something the log should mention.
    #[error("{0}")]
    Failed(String),
}

impl<E: std::fmt::Display> From<ReadError<E>> for HandshakeEnd {
    fn from(e: ReadError<E>) -> Self {
        match e {
            ReadError::Closed => HandshakeEnd::Quiet,
            other => HandshakeEnd::Failed(other.to_string()),
        }
    }
}

impl From<std::io::Error> for HandshakeEnd {
    fn from(e: std::io::Error) -> Self {
        HandshakeEnd::Failed(format!("socket error: {e}"))
    }
}

/// Sends the server's greeting and reads the client's flags.
pub(crate) fn greet<R: Read, W: Write>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
) -> Result<u32, HandshakeEnd> {
    let mut out = Vec::with_capacity(32);
    frame::encode_greeting(&mut out, HANDSHAKE_FLAGS);
    writer.write_all(&out)?;
    writer.flush()?;
    Ok(reader.frame(|b| frame::parse_client_flags(b, HANDSHAKE_FLAGS))?)
}

/// Runs option haggling over a stream until the client enters transmission or (when `hs`
/// requires TLS) is told to start TLS.
pub(crate) fn haggle<R: Read, W: Write>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    hs: &mut ServerHandshake<'_>,
) -> Result<Haggled, HandshakeEnd> {
    let mut out = Vec::with_capacity(256);
    loop {
        let header = reader.frame(frame::parse_option_header)?;
        out.clear();
        let step = if header.length > MAX_OPTION_DATA {
            reader.discard::<HandshakeError>(u64::from(header.length))?;
            hs.option_too_big(header.option, &mut out)
        } else {
            let mut data = vec![0u8; header.length as usize];
            reader.read_exact::<HandshakeError>(&mut data)?;
            hs.handle_option(header.option, &data, &mut out)
        };
        writer.write_all(&out)?;
        writer.flush()?;
        match step {
            Step::Continue => {}
            Step::Abort => return Err(HandshakeEnd::Quiet),
            Step::Close(why) => return Err(HandshakeEnd::Failed(why)),
            Step::Transmission(n) => return Ok(Haggled::Transmission(n)),
            Step::StartTls => return Ok(Haggled::StartTls),
        }
    }
}
