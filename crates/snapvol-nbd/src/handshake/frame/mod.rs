//! Bytes of the handshake phase, both directions, without I/O (proto.md "Newstyle
//! negotiation", "Fixed newstyle negotiation", "Option types", "Option reply types").
//!
//! Streamed frames (greeting, client flags, option header, option reply, export-name reply)
//! are parsed from the front of a buffer and answer [`Decoded::Incomplete`] when more bytes
//! are needed. Option payloads arrive whole (their length is in the option header) and are
//! parsed by the `parse_*` functions that take `data`.
//!
//! This module has the greeting, the client's flags, the errors and the string helpers;
//! `request` the options a client sends, `reply` the server's answers.

mod reply;
mod request;

pub use reply::{
    encode_export_name_reply, encode_meta_context, encode_option_reply, encode_server_entry,
    export_name_reply_len, parse_export_name_reply, parse_meta_context, parse_option_reply,
    parse_server_entry, Info, OptionReply,
};
pub use request::{
    encode_info_request, encode_meta_context_request, encode_option, parse_export_name,
    parse_info_request, parse_meta_context_request, parse_option_header, InfoRequest,
    MetaContextRequest, OptionHeader,
};

use crate::codec::{Cursor, Decoded};
use crate::proto::*;

/// Bytes in the server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub const GREETING_LEN: usize = 18;
/// Bytes in the client's flags.
pub const CLIENT_FLAGS_LEN: usize = 4;
/// Bytes in an option request header: `IHAVEOPT`, option, length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes in an option reply header: magic, option, reply type, length.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Client flags this server understands.
pub const KNOWN_CLIENT_FLAGS: u32 = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

/// A handshake frame that can never be valid; the connection must end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A magic number was wrong.
    #[error("bad magic: expected {expected:#x}, found {found:#x}")]
    BadMagic {
        /// The magic the spec requires here.
        expected: u64,
        /// What arrived.
        found: u64,
    },
    /// The client set a flag that is unknown or that the server did not offer; the spec
    /// says the server MUST drop the connection.
    #[error("client flags {flags:#x} include unknown or unoffered bits")]
    UnknownClientFlags {
        /// The flags received.
        flags: u32,
    },
    /// (Client side) an option reply longer than the client accepts.
    #[error("option reply of {length} bytes exceeds the limit of {max}")]
    ReplyTooLong {
        /// The announced length.
        length: u32,
        /// The client's limit.
        max: u32,
    },
}

/// The payload of an option (or option reply) is malformed; the server answers
/// `NBD_REP_ERR_INVALID` and the handshake goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionDataError {
    /// The data ends inside a field.
    #[error("data ends inside {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// Bytes remain after the last field.
    #[error("{extra} unexpected bytes after the last field")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// A string is not UTF-8 (proto.md: strings are UTF-8).
    #[error("{field} is not UTF-8")]
    NotUtf8 {
        /// The field being read.
        field: &'static str,
    },
    /// A string is longer than the spec's 4096-byte limit.
    #[error("{field} is {len} bytes, over the 4096-byte limit")]
    TooLong {
        /// The field being read.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// An information reply has the wrong length for its type.
    #[error("information type {info} has {len} payload bytes")]
    BadInfoLength {
        /// The `NBD_INFO_*` type.
        info: u16,
        /// Its payload length (after the type).
        len: usize,
    },
}

fn truncated(field: &'static str) -> OptionDataError {
    OptionDataError::Truncated { field }
}

fn string(c: &mut Cursor<'_>, len: usize, field: &'static str) -> Result<String, OptionDataError> {
    if len > MAX_STRING {
        return Err(OptionDataError::TooLong { field, len });
    }
    let bytes = c.bytes(len).ok_or(truncated(field))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| OptionDataError::NotUtf8 { field })
}

fn finish(c: &Cursor<'_>) -> Result<(), OptionDataError> {
    match c.remaining() {
        0 => Ok(()),
        extra => Err(OptionDataError::TrailingBytes { extra }),
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

// ---- Greeting and client flags ----

/// Server: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn encode_greeting(out: &mut Vec<u8>, handshake_flags: u16) {
    out.extend_from_slice(&NBD_MAGIC.to_be_bytes());
    out.extend_from_slice(&NBD_IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&handshake_flags.to_be_bytes());
}

/// Client: reads the server's greeting; returns the handshake flags.
pub fn parse_greeting(buf: &[u8]) -> Result<Decoded<u16>, HandshakeError> {
    let mut c = Cursor::new(buf);
    let (Some(magic), Some(opt), Some(flags)) = (c.u64(), c.u64(), c.u16()) else {
        return Ok(Decoded::Incomplete {
            needed: GREETING_LEN,
        });
    };
    for (expected, found) in [(NBD_MAGIC, magic), (NBD_IHAVEOPT, opt)] {
        if expected != found {
            return Err(HandshakeError::BadMagic { expected, found });
        }
    }
    Ok(Decoded::Frame(flags, GREETING_LEN))
}

/// Client: its 32-bit flags.
pub fn encode_client_flags(out: &mut Vec<u8>, flags: u32) {
    out.extend_from_slice(&flags.to_be_bytes());
}

/// Server: reads the client's flags. A flag that is unknown, or `NO_ZEROES` when the server
/// did not offer it, is an error (proto.md "Client flags": the server MUST drop the
/// connection).
pub fn parse_client_flags(buf: &[u8], offered: u16) -> Result<Decoded<u32>, HandshakeError> {
    let Some(flags) = Cursor::new(buf).u32() else {
        return Ok(Decoded::Incomplete {
            needed: CLIENT_FLAGS_LEN,
        });
    };
    let no_zeroes_unoffered =
        flags & NBD_FLAG_C_NO_ZEROES != 0 && offered & NBD_FLAG_NO_ZEROES == 0;
    if flags & !KNOWN_CLIENT_FLAGS != 0 || no_zeroes_unoffered {
        return Err(HandshakeError::UnknownClientFlags { flags });
    }
    Ok(Decoded::Frame(flags, CLIENT_FLAGS_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every strict prefix of a frame is incomplete, and the whole frame decodes.
    pub(super) fn check_prefixes<T: std::fmt::Debug + PartialEq, E: std::fmt::Debug>(
        bytes: &[u8],
        parse: impl Fn(&[u8]) -> Result<Decoded<T>, E>,
        expected: T,
    ) {
        for n in 0..bytes.len() {
            match parse(&bytes[..n]).unwrap() {
                Decoded::Incomplete { needed } => assert!(needed > n, "prefix {n}"),
                d => panic!("prefix of {n} bytes decoded as {d:?}"),
            }
        }
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(b"next");
        assert_eq!(
            parse(&longer).unwrap(),
            Decoded::Frame(expected, bytes.len())
        );
    }

    #[test]
    fn greeting_round_trips_and_every_prefix_is_incomplete() {
        let mut out = Vec::new();
        encode_greeting(&mut out, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
        assert_eq!(out.len(), GREETING_LEN);
        check_prefixes(&out, parse_greeting, 3);
    }

    #[test]
    fn greeting_with_a_wrong_magic_is_an_error() {
        let mut out = Vec::new();
        encode_greeting(&mut out, 1);
        out[0] ^= 1;
        assert!(matches!(
            parse_greeting(&out),
            Err(HandshakeError::BadMagic {
                expected: NBD_MAGIC,
                ..
            })
        ));
        let mut out = Vec::new();
        encode_greeting(&mut out, 1);
        out[8] ^= 1;
        assert!(matches!(
            parse_greeting(&out),
            Err(HandshakeError::BadMagic {
                expected: NBD_IHAVEOPT,
                ..
            })
        ));
    }

    #[test]
    fn client_flags_round_trip_and_unknown_or_unoffered_flags_are_refused() {
        let mut out = Vec::new();
        encode_client_flags(&mut out, 3);
        check_prefixes(&out, |b| parse_client_flags(b, 3), 3);
        assert_eq!(
            parse_client_flags(&4u32.to_be_bytes(), 3),
            Err(HandshakeError::UnknownClientFlags { flags: 4 })
        );
        assert_eq!(
            parse_client_flags(&2u32.to_be_bytes(), NBD_FLAG_FIXED_NEWSTYLE),
            Err(HandshakeError::UnknownClientFlags { flags: 2 })
        );
        assert_eq!(
            parse_client_flags(&0u32.to_be_bytes(), 3).unwrap(),
            Decoded::Frame(0, 4)
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                let _ = parse_greeting(&bytes);
                let _ = parse_client_flags(&bytes, 3);
                let _ = parse_option_header(&bytes);
                let _ = parse_info_request(&bytes);
                let _ = parse_meta_context_request(&bytes);
                let _ = parse_option_reply(&bytes, 1 << 16);
                let _ = Info::parse(&bytes);
                let _ = parse_server_entry(&bytes);
                let _ = parse_meta_context(&bytes);
                let _ = parse_export_name_reply(&bytes, false);
            }
        }
    }
}
