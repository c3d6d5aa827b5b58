//! Bytes of the handshake phase, both directions, without I/O (proto.md "Newstyle
//! negotiation", "Fixed newstyle negotiation", "Option types", "Option reply types").
//!
//! Streamed frames (greeting, client flags, option header, option reply, export-name reply)
//! are parsed from the front of a buffer and answer [`Decoded::Incomplete`] when more bytes
//! are needed. Option payloads arrive whole (their length is in the option header) and are
//! parsed by the `parse_*` functions that take `data`.

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

// ---- Option requests ----

/// The fixed part of an option request; `length` bytes of data follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// `NBD_OPT_*`.
    pub option: u32,
    /// Bytes of option data that follow.
    pub length: u32,
}

/// Server: reads an option header.
pub fn parse_option_header(buf: &[u8]) -> Result<Decoded<OptionHeader>, HandshakeError> {
    let mut c = Cursor::new(buf);
    let (Some(magic), Some(option), Some(length)) = (c.u64(), c.u32(), c.u32()) else {
        return Ok(Decoded::Incomplete {
            needed: OPTION_HEADER_LEN,
        });
    };
    if magic != NBD_IHAVEOPT {
        return Err(HandshakeError::BadMagic {
            expected: NBD_IHAVEOPT,
            found: magic,
        });
    }
    Ok(Decoded::Frame(
        OptionHeader { option, length },
        OPTION_HEADER_LEN,
    ))
}

/// Client: an option request with its data.
pub fn encode_option(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    out.extend_from_slice(&NBD_IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// The data of `NBD_OPT_EXPORT_NAME`: the whole payload is the name.
pub fn parse_export_name(data: &[u8]) -> Result<String, OptionDataError> {
    string(&mut Cursor::new(data), data.len(), "export name")
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// The export asked about ("" is the default export).
    pub name: String,
    /// `NBD_INFO_*` items requested.
    pub requests: Vec<u16>,
}

/// Server: parses `NBD_OPT_INFO`/`NBD_OPT_GO` data.
pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest, OptionDataError> {
    let mut c = Cursor::new(data);
    let len = c.u32().ok_or(truncated("export name length"))? as usize;
    let name = string(&mut c, len, "export name")?;
    let n = c.u16().ok_or(truncated("information request count"))?;
    let mut requests = Vec::with_capacity(usize::from(n).min(c.remaining() / 2));
    for _ in 0..n {
        requests.push(c.u16().ok_or(truncated("information requests"))?);
    }
    finish(&c)?;
    Ok(InfoRequest { name, requests })
}

/// Client: `NBD_OPT_INFO`/`NBD_OPT_GO` data.
pub fn encode_info_request(req: &InfoRequest) -> Vec<u8> {
    let mut out = Vec::new();
    put_string(&mut out, &req.name);
    out.extend_from_slice(&(req.requests.len() as u16).to_be_bytes());
    for r in &req.requests {
        out.extend_from_slice(&r.to_be_bytes());
    }
    out
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// The export the contexts belong to.
    pub export: String,
    /// Queries such as `base:allocation` or `qemu:dirty-bitmap:`.
    pub queries: Vec<String>,
}

/// Server: parses meta-context option data.
pub fn parse_meta_context_request(data: &[u8]) -> Result<MetaContextRequest, OptionDataError> {
    let mut c = Cursor::new(data);
    let len = c.u32().ok_or(truncated("export name length"))? as usize;
    let export = string(&mut c, len, "export name")?;
    let n = c.u32().ok_or(truncated("query count"))?;
    let mut queries = Vec::new();
    for _ in 0..n {
        let len = c.u32().ok_or(truncated("query length"))? as usize;
        queries.push(string(&mut c, len, "query")?);
    }
    finish(&c)?;
    Ok(MetaContextRequest { export, queries })
}

/// Client: meta-context option data.
pub fn encode_meta_context_request(req: &MetaContextRequest) -> Vec<u8> {
    let mut out = Vec::new();
    put_string(&mut out, &req.export);
    out.extend_from_slice(&(req.queries.len() as u32).to_be_bytes());
    for q in &req.queries {
        put_string(&mut out, q);
    }
    out
}

// ---- Option replies ----

/// One option reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionReply {
    /// The option answered.
    pub option: u32,
    /// `NBD_REP_*`.
    pub reply_type: u32,
    /// Reply data (for errors, a message for people).
    pub data: Vec<u8>,
}

impl OptionReply {
    /// True for the `NBD_REP_ERR_*` types.
    pub fn is_error(&self) -> bool {
        self.reply_type & NBD_REP_FLAG_ERROR != 0
    }
}

/// Server: one option reply.
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, data: &[u8]) {
    out.extend_from_slice(&NBD_REP_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Client: reads one option reply whose data is at most `max_len` bytes.
pub fn parse_option_reply(
    buf: &[u8],
    max_len: u32,
) -> Result<Decoded<OptionReply>, HandshakeError> {
    let mut c = Cursor::new(buf);
    let (Some(magic), Some(option), Some(reply_type), Some(length)) =
        (c.u64(), c.u32(), c.u32(), c.u32())
    else {
        return Ok(Decoded::Incomplete {
            needed: OPTION_REPLY_HEADER_LEN,
        });
    };
    if magic != NBD_REP_MAGIC {
        return Err(HandshakeError::BadMagic {
            expected: NBD_REP_MAGIC,
            found: magic,
        });
    }
    if length > max_len {
        return Err(HandshakeError::ReplyTooLong {
            length,
            max: max_len,
        });
    }
    let total = OPTION_REPLY_HEADER_LEN + length as usize;
    match c.bytes(length as usize) {
        Some(data) => Ok(Decoded::Frame(
            OptionReply {
                option,
                reply_type,
                data: data.to_vec(),
            },
            total,
        )),
        None => Ok(Decoded::Incomplete { needed: total }),
    }
}

/// One piece of `NBD_REP_INFO` information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags.
        flags: u16,
    },
    /// `NBD_INFO_NAME`: canonical name.
    Name(String),
    /// `NBD_INFO_DESCRIPTION`: text for people.
    Description(String),
    /// `NBD_INFO_BLOCK_SIZE`: size constraints.
    BlockSize {
        /// Minimum block size.
        min: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum payload.
        max: u32,
    },
    /// A type this code does not know (clients MUST ignore it).
    Unknown(u16),
}

impl Info {
    /// Server: the data of an `NBD_REP_INFO` reply.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Info::Export { size, flags } => {
                out.extend_from_slice(&NBD_INFO_EXPORT.to_be_bytes());
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
            }
            Info::Name(s) | Info::Description(s) => {
                let t = if matches!(self, Info::Name(_)) {
                    NBD_INFO_NAME
                } else {
                    NBD_INFO_DESCRIPTION
                };
                out.extend_from_slice(&t.to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Info::BlockSize {
                min,
                preferred,
                max,
            } => {
                out.extend_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
                for v in [min, preferred, max] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
            Info::Unknown(t) => out.extend_from_slice(&t.to_be_bytes()),
        }
        out
    }

    /// Client: parses the data of an `NBD_REP_INFO` reply.
    pub fn parse(data: &[u8]) -> Result<Info, OptionDataError> {
        let mut c = Cursor::new(data);
        let t = c.u16().ok_or(truncated("information type"))?;
        let len = c.remaining();
        let bad = OptionDataError::BadInfoLength { info: t, len };
        let info = match t {
            NBD_INFO_EXPORT => {
                let (Some(size), Some(flags)) = (c.u64(), c.u16()) else {
                    return Err(bad);
                };
                Info::Export { size, flags }
            }
            NBD_INFO_NAME => Info::Name(string(&mut c, len, "export name")?),
            NBD_INFO_DESCRIPTION => Info::Description(string(&mut c, len, "description")?),
            NBD_INFO_BLOCK_SIZE => {
                let (Some(min), Some(preferred), Some(max)) = (c.u32(), c.u32(), c.u32()) else {
                    return Err(bad);
                };
                Info::BlockSize {
                    min,
                    preferred,
                    max,
                }
            }
            other => {
                c.rest();
                Info::Unknown(other)
            }
        };
        if c.remaining() != 0 {
            return Err(bad);
        }
        Ok(info)
    }
}

/// Server: the data of an `NBD_REP_SERVER` reply (one export in a list).
pub fn encode_server_entry(name: &str, description: &str) -> Vec<u8> {
    let mut out = Vec::new();
    put_string(&mut out, name);
    out.extend_from_slice(description.as_bytes());
    out
}

/// Client: parses `NBD_REP_SERVER` data into name and (possibly empty) details.
pub fn parse_server_entry(data: &[u8]) -> Result<(String, String), OptionDataError> {
    let mut c = Cursor::new(data);
    let len = c.u32().ok_or(truncated("export name length"))? as usize;
    let name = string(&mut c, len, "export name")?;
    let rest = c.remaining();
    let details = string(&mut c, rest, "export details")?;
    Ok((name, details))
}

/// Server: the data of an `NBD_REP_META_CONTEXT` reply.
pub fn encode_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// Client: parses `NBD_REP_META_CONTEXT` data into context id and name.
pub fn parse_meta_context(data: &[u8]) -> Result<(u32, String), OptionDataError> {
    let mut c = Cursor::new(data);
    let id = c.u32().ok_or(truncated("context id"))?;
    let rest = c.remaining();
    Ok((id, string(&mut c, rest, "context name")?))
}

/// Bytes of the reply to `NBD_OPT_EXPORT_NAME`, with or without the zero padding.
pub fn export_name_reply_len(no_zeroes: bool) -> usize {
    10 + if no_zeroes { 0 } else { EXPORT_NAME_PADDING }
}

/// Server: the reply to `NBD_OPT_EXPORT_NAME` (size, flags, then 124 zeroes unless
/// `NO_ZEROES` was negotiated).
pub fn encode_export_name_reply(out: &mut Vec<u8>, size: u64, flags: u16, no_zeroes: bool) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0; EXPORT_NAME_PADDING]);
    }
}

/// Client: reads the reply to `NBD_OPT_EXPORT_NAME`; returns size and flags.
pub fn parse_export_name_reply(buf: &[u8], no_zeroes: bool) -> Decoded<(u64, u16)> {
    let total = export_name_reply_len(no_zeroes);
    let mut c = Cursor::new(buf);
    match (c.u64(), c.u16()) {
        (Some(size), Some(flags)) if buf.len() >= total => Decoded::Frame((size, flags), total),
        _ => Decoded::Incomplete { needed: total },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every strict prefix of a frame is incomplete, and the whole frame decodes.
    fn check_prefixes<T: std::fmt::Debug + PartialEq, E: std::fmt::Debug>(
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

    #[test]
    fn option_header_round_trips_and_a_wrong_magic_is_an_error() {
        let mut out = Vec::new();
        encode_option(&mut out, NBD_OPT_GO, &[]);
        check_prefixes(
            &out,
            parse_option_header,
            OptionHeader {
                option: NBD_OPT_GO,
                length: 0,
            },
        );
        out[3] ^= 0x80;
        assert!(matches!(
            parse_option_header(&out),
            Err(HandshakeError::BadMagic { .. })
        ));
    }

    #[test]
    fn info_request_round_trips() {
        let req = InfoRequest {
            name: "vol@snap".into(),
            requests: vec![NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE],
        };
        assert_eq!(parse_info_request(&encode_info_request(&req)).unwrap(), req);
        let empty = InfoRequest {
            name: String::new(),
            requests: vec![],
        };
        assert_eq!(
            parse_info_request(&encode_info_request(&empty)).unwrap(),
            empty
        );
    }

    #[test]
    fn info_request_errors_name_the_bad_field() {
        let good = encode_info_request(&InfoRequest {
            name: "ab".into(),
            requests: vec![1],
        });
        // Every truncation is an error, never a panic.
        for n in 0..good.len() {
            assert!(
                matches!(
                    parse_info_request(&good[..n]),
                    Err(OptionDataError::Truncated { .. })
                ),
                "{n}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            parse_info_request(&trailing),
            Err(OptionDataError::TrailingBytes { extra: 1 })
        );
        let mut bad_utf8 = good.clone();
        bad_utf8[4] = 0xff;
        assert_eq!(
            parse_info_request(&bad_utf8),
            Err(OptionDataError::NotUtf8 {
                field: "export name"
            })
        );
        let mut huge = Vec::new();
        huge.extend_from_slice(&(5000u32).to_be_bytes());
        huge.extend_from_slice(&[b'a'; 5000]);
        huge.extend_from_slice(&[0, 0]);
        assert_eq!(
            parse_info_request(&huge),
            Err(OptionDataError::TooLong {
                field: "export name",
                len: 5000
            })
        );
        // A name length claiming more than the data holds.
        assert!(matches!(
            parse_info_request(&u32::MAX.to_be_bytes()),
            Err(OptionDataError::TooLong { .. })
        ));
    }

    #[test]
    fn meta_context_request_round_trips_and_truncations_are_errors() {
        let req = MetaContextRequest {
            export: "vol".into(),
            queries: vec!["base:allocation".into(), "qemu:dirty-bitmap:".into()],
        };
        let bytes = encode_meta_context_request(&req);
        assert_eq!(parse_meta_context_request(&bytes).unwrap(), req);
        for n in 0..bytes.len() {
            assert!(parse_meta_context_request(&bytes[..n]).is_err(), "{n}");
        }
        let mut trailing = bytes;
        trailing.extend_from_slice(&[1, 2]);
        assert_eq!(
            parse_meta_context_request(&trailing),
            Err(OptionDataError::TrailingBytes { extra: 2 })
        );
        // A query count far larger than the data does not allocate or panic.
        let mut lying = Vec::new();
        lying.extend_from_slice(&0u32.to_be_bytes());
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse_meta_context_request(&lying),
            Err(OptionDataError::Truncated { .. })
        ));
    }

    #[test]
    fn export_name_must_be_short_utf8() {
        assert_eq!(parse_export_name(b"vol").unwrap(), "vol");
        assert_eq!(parse_export_name(b"").unwrap(), "");
        assert!(matches!(
            parse_export_name(&[0xc3]),
            Err(OptionDataError::NotUtf8 { .. })
        ));
        assert!(matches!(
            parse_export_name(&[b'a'; 4097]),
            Err(OptionDataError::TooLong { .. })
        ));
    }

    #[test]
    fn option_reply_round_trips_and_limits_its_length() {
        let mut out = Vec::new();
        encode_option_reply(&mut out, NBD_OPT_LIST, NBD_REP_SERVER, b"data");
        let expected = OptionReply {
            option: NBD_OPT_LIST,
            reply_type: NBD_REP_SERVER,
            data: b"data".to_vec(),
        };
        assert!(!expected.is_error());
        check_prefixes(&out, |b| parse_option_reply(b, 100), expected);
        assert_eq!(
            parse_option_reply(&out, 3),
            Err(HandshakeError::ReplyTooLong { length: 4, max: 3 })
        );
        out[0] = 1;
        assert!(matches!(
            parse_option_reply(&out, 100),
            Err(HandshakeError::BadMagic { .. })
        ));
    }

    #[test]
    fn info_items_round_trip() {
        let items = [
            Info::Export {
                size: 1 << 40,
                flags: 0x1234,
            },
            Info::Name("vol".into()),
            Info::Description("a volume".into()),
            Info::Description(String::new()),
            Info::BlockSize {
                min: 1,
                preferred: 4096,
                max: MAX_PAYLOAD,
            },
            Info::Unknown(77),
        ];
        for item in items {
            assert_eq!(Info::parse(&item.encode()).unwrap(), item);
        }
    }

    #[test]
    fn info_items_of_the_wrong_length_are_errors() {
        let mut export = Info::Export { size: 1, flags: 1 }.encode();
        export.push(0);
        assert!(matches!(
            Info::parse(&export),
            Err(OptionDataError::BadInfoLength { info: 0, len: 11 })
        ));
        let block = Info::BlockSize {
            min: 1,
            preferred: 2,
            max: 3,
        }
        .encode();
        assert!(matches!(
            Info::parse(&block[..13]),
            Err(OptionDataError::BadInfoLength { info: 3, .. })
        ));
        assert!(matches!(
            Info::parse(&[0]),
            Err(OptionDataError::Truncated { .. })
        ));
        assert!(Info::parse(&[0, 1, 0xff]).is_err());
    }

    #[test]
    fn server_entries_and_meta_contexts_round_trip() {
        let e = encode_server_entry("vol@s1", "snapshot");
        assert_eq!(
            parse_server_entry(&e).unwrap(),
            ("vol@s1".into(), "snapshot".into())
        );
        assert!(parse_server_entry(&e[..3]).is_err());
        assert!(parse_server_entry(&[0, 0, 0, 9, b'a']).is_err());
        let m = encode_meta_context(7, BASE_ALLOCATION);
        assert_eq!(parse_meta_context(&m).unwrap(), (7, BASE_ALLOCATION.into()));
        assert!(parse_meta_context(&m[..2]).is_err());
    }

    #[test]
    fn export_name_reply_has_padding_unless_no_zeroes() {
        for no_zeroes in [false, true] {
            let mut out = Vec::new();
            encode_export_name_reply(&mut out, 12345, 0x0f, no_zeroes);
            assert_eq!(out.len(), export_name_reply_len(no_zeroes));
            check_prefixes(
                &out,
                |b| Ok::<_, ()>(parse_export_name_reply(b, no_zeroes)),
                (12345, 0x0f),
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_info_request_round_trips(
                name in "\\PC{0,40}", requests in proptest::collection::vec(any::<u16>(), 0..8)
            ) {
                let req = InfoRequest { name, requests };
                prop_assert_eq!(parse_info_request(&encode_info_request(&req)).unwrap(), req);
            }

            #[test]
            fn any_meta_context_request_round_trips(
                export in "\\PC{0,20}", queries in proptest::collection::vec("[a-z]{1,8}:\\PC{0,20}", 0..6)
            ) {
                let req = MetaContextRequest { export, queries };
                prop_assert_eq!(parse_meta_context_request(&encode_meta_context_request(&req)).unwrap(), req);
            }

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
