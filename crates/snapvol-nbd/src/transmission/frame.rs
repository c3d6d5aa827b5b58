//! Bytes of the transmission phase, both directions, without I/O (proto.md "Request
//! message", "Simple reply message", "Structured reply chunk message", "Structured reply
//! types").
//!
//! Headers are parsed from the front of a buffer and answer [`Decoded::Incomplete`] when
//! more bytes are needed; payloads (write data, chunk payloads) follow their headers and
//! are handled by the caller, which knows their length from the header.

use crate::codec::{Cursor, Decoded};
use crate::device::Extent;
use crate::proto::*;

/// Bytes in a request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Bytes in a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Bytes in a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;

/// A request type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE`.
    Write,
    /// `NBD_CMD_DISC`.
    Disc,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_CACHE`.
    Cache,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus,
    /// Any other type (the server answers `EINVAL`).
    Unknown(u16),
}

impl Command {
    /// The type from its wire number.
    pub fn from_wire(v: u16) -> Command {
        match v {
            NBD_CMD_READ => Command::Read,
            NBD_CMD_WRITE => Command::Write,
            NBD_CMD_DISC => Command::Disc,
            NBD_CMD_FLUSH => Command::Flush,
            NBD_CMD_TRIM => Command::Trim,
            NBD_CMD_CACHE => Command::Cache,
            NBD_CMD_WRITE_ZEROES => Command::WriteZeroes,
            NBD_CMD_BLOCK_STATUS => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }

    /// The wire number.
    pub fn to_wire(self) -> u16 {
        match self {
            Command::Read => NBD_CMD_READ,
            Command::Write => NBD_CMD_WRITE,
            Command::Disc => NBD_CMD_DISC,
            Command::Flush => NBD_CMD_FLUSH,
            Command::Trim => NBD_CMD_TRIM,
            Command::Cache => NBD_CMD_CACHE,
            Command::WriteZeroes => NBD_CMD_WRITE_ZEROES,
            Command::BlockStatus => NBD_CMD_BLOCK_STATUS,
            Command::Unknown(v) => v,
        }
    }
}

/// A request header. For [`Command::Write`], `length` bytes of data follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `NBD_CMD_FLAG_*`.
    pub flags: u16,
    /// The request type.
    pub command: Command,
    /// Opaque value echoed in the reply.
    pub cookie: u64,
    /// Byte offset into the export.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

impl Request {
    /// Bytes of data that follow this header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.command == Command::Write {
            self.length
        } else {
            0
        }
    }
}

/// A request header that can never be valid; the connection must end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The magic is not `NBD_REQUEST_MAGIC`: the stream is out of step.
    #[error("bad request magic {found:#010x}")]
    BadMagic {
        /// What arrived.
        found: u32,
    },
    /// A write payload longer than the server accepts; reading it is not worth the risk.
    #[error("write payload of {length} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// The announced length.
        length: u32,
        /// The limit.
        max: u32,
    },
}

/// Server: reads a request header; writes longer than `max_payload` are an error.
pub fn parse_request(buf: &[u8], max_payload: u32) -> Result<Decoded<Request>, RequestError> {
    let mut c = Cursor::new(buf);
    let (Some(magic), Some(flags), Some(kind), Some(cookie), Some(offset), Some(length)) =
        (c.u32(), c.u16(), c.u16(), c.u64(), c.u64(), c.u32())
    else {
        // The magic alone already tells whether the stream is sane.
        if let Some(found) = Cursor::new(buf).u32() {
            if found != NBD_REQUEST_MAGIC {
                return Err(RequestError::BadMagic { found });
            }
        }
        return Ok(Decoded::Incomplete {
            needed: REQUEST_HEADER_LEN,
        });
    };
    if magic != NBD_REQUEST_MAGIC {
        return Err(RequestError::BadMagic { found: magic });
    }
    let req = Request {
        flags,
        command: Command::from_wire(kind),
        cookie,
        offset,
        length,
    };
    if req.payload_len() > max_payload {
        return Err(RequestError::PayloadTooLarge {
            length,
            max: max_payload,
        });
    }
    Ok(Decoded::Frame(req, REQUEST_HEADER_LEN))
}

/// Client: a request header (append the write payload yourself).
pub fn encode_request(out: &mut Vec<u8>, req: &Request) {
    out.extend_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
    out.extend_from_slice(&req.flags.to_be_bytes());
    out.extend_from_slice(&req.command.to_wire().to_be_bytes());
    out.extend_from_slice(&req.cookie.to_be_bytes());
    out.extend_from_slice(&req.offset.to_be_bytes());
    out.extend_from_slice(&req.length.to_be_bytes());
}

/// Server: a simple reply header (for a successful READ, the data follows).
pub fn encode_simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&NBD_SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// A structured reply chunk header; `length` bytes of payload follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// `NBD_REPLY_FLAG_*`.
    pub flags: u16,
    /// `NBD_REPLY_TYPE_*`.
    pub kind: u16,
    /// The request's cookie.
    pub cookie: u64,
    /// Payload bytes.
    pub length: u32,
}

impl ChunkHeader {
    /// True when this is the last chunk of its reply.
    pub fn is_done(&self) -> bool {
        self.flags & NBD_REPLY_FLAG_DONE != 0
    }
}

/// Server: a chunk header.
pub fn encode_chunk_header(out: &mut Vec<u8>, h: &ChunkHeader) {
    out.extend_from_slice(&NBD_STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&h.flags.to_be_bytes());
    out.extend_from_slice(&h.kind.to_be_bytes());
    out.extend_from_slice(&h.cookie.to_be_bytes());
    out.extend_from_slice(&h.length.to_be_bytes());
}

/// The header of any reply, as a client reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply.
    Simple {
        /// 0 for success, else an NBD error value.
        error: u32,
        /// The request's cookie.
        cookie: u64,
    },
    /// A structured reply chunk.
    Chunk(ChunkHeader),
}

/// A reply the client cannot make sense of; the spec says to hang up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// Neither reply magic.
    #[error("bad reply magic {found:#010x}")]
    BadMagic {
        /// What arrived.
        found: u32,
    },
    /// A chunk whose payload length does not fit its type.
    #[error("chunk type {kind} cannot have a {length}-byte payload")]
    BadChunkLength {
        /// `NBD_REPLY_TYPE_*`.
        kind: u16,
        /// The announced length.
        length: u32,
    },
    /// A chunk payload larger than the client accepts.
    #[error("chunk payload of {length} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced length.
        length: u32,
        /// The client's limit.
        max: u32,
    },
    /// A payload whose inner fields contradict its length.
    #[error("malformed {kind} chunk payload")]
    BadPayload {
        /// What was being parsed.
        kind: &'static str,
    },
}

fn chunk_length_ok(kind: u16, length: u32) -> bool {
    match kind {
        NBD_REPLY_TYPE_NONE => length == 0,
        NBD_REPLY_TYPE_OFFSET_DATA => length >= 9,
        NBD_REPLY_TYPE_OFFSET_HOLE => length == 12,
        NBD_REPLY_TYPE_BLOCK_STATUS => length >= 12 && (length - 4) % 8 == 0,
        NBD_REPLY_TYPE_ERROR => length >= 6,
        NBD_REPLY_TYPE_ERROR_OFFSET => length >= 14,
        // Unknown error chunks carry at least error and message length; other unknown
        // types are the caller's business (the spec says to hang up).
        k if k & NBD_REPLY_TYPE_FLAG_ERROR != 0 => length >= 6,
        _ => true,
    }
}

/// Client: reads a reply header; chunk payloads longer than `max_payload` are an error.
pub fn parse_reply_header(
    buf: &[u8],
    max_payload: u32,
) -> Result<Decoded<ReplyHeader>, ReplyError> {
    let mut c = Cursor::new(buf);
    let Some(magic) = c.u32() else {
        return Ok(Decoded::Incomplete {
            needed: SIMPLE_REPLY_LEN,
        });
    };
    match magic {
        NBD_SIMPLE_REPLY_MAGIC => match (c.u32(), c.u64()) {
            (Some(error), Some(cookie)) => Ok(Decoded::Frame(
                ReplyHeader::Simple { error, cookie },
                SIMPLE_REPLY_LEN,
            )),
            _ => Ok(Decoded::Incomplete {
                needed: SIMPLE_REPLY_LEN,
            }),
        },
        NBD_STRUCTURED_REPLY_MAGIC => {
            let (Some(flags), Some(kind), Some(cookie), Some(length)) =
                (c.u16(), c.u16(), c.u64(), c.u32())
            else {
                return Ok(Decoded::Incomplete {
                    needed: CHUNK_HEADER_LEN,
                });
            };
            if !chunk_length_ok(kind, length) {
                return Err(ReplyError::BadChunkLength { kind, length });
            }
            if length > max_payload {
                return Err(ReplyError::TooLarge {
                    length,
                    max: max_payload,
                });
            }
            Ok(Decoded::Frame(
                ReplyHeader::Chunk(ChunkHeader {
                    flags,
                    kind,
                    cookie,
                    length,
                }),
                CHUNK_HEADER_LEN,
            ))
        }
        found => Err(ReplyError::BadMagic { found }),
    }
}

/// Server: the header of an `OFFSET_DATA` chunk and its offset; `data_len` bytes of data
/// must follow.
pub fn encode_offset_data_header(
    out: &mut Vec<u8>,
    flags: u16,
    cookie: u64,
    offset: u64,
    data_len: u32,
) {
    encode_chunk_header(
        out,
        &ChunkHeader {
            flags,
            kind: NBD_REPLY_TYPE_OFFSET_DATA,
            cookie,
            length: data_len.saturating_add(8),
        },
    );
    out.extend_from_slice(&offset.to_be_bytes());
}

/// Server: a final `NONE` chunk.
pub fn encode_none(out: &mut Vec<u8>, cookie: u64) {
    encode_chunk_header(
        out,
        &ChunkHeader {
            flags: NBD_REPLY_FLAG_DONE,
            kind: NBD_REPLY_TYPE_NONE,
            cookie,
            length: 0,
        },
    );
}

/// Server: an `ERROR` chunk; the message is cut to the spec's 4096-byte limit.
pub fn encode_error_chunk(out: &mut Vec<u8>, flags: u16, cookie: u64, error: u32, message: &str) {
    let mut cut = message.len().min(MAX_STRING);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let msg = &message.as_bytes()[..cut];
    encode_chunk_header(
        out,
        &ChunkHeader {
            flags,
            kind: NBD_REPLY_TYPE_ERROR,
            cookie,
            length: 6 + msg.len() as u32,
        },
    );
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
}

/// Server: a `BLOCK_STATUS` chunk for one context. `extents` must not be empty.
pub fn encode_block_status(
    out: &mut Vec<u8>,
    flags: u16,
    cookie: u64,
    context_id: u32,
    extents: &[Extent],
) {
    encode_chunk_header(
        out,
        &ChunkHeader {
            flags,
            kind: NBD_REPLY_TYPE_BLOCK_STATUS,
            cookie,
            length: 4 + 8 * extents.len() as u32,
        },
    );
    out.extend_from_slice(&context_id.to_be_bytes());
    for e in extents {
        out.extend_from_slice(&e.length.to_be_bytes());
        out.extend_from_slice(&e.flags.to_be_bytes());
    }
}

/// Client: an `OFFSET_DATA` payload as (offset, data).
pub fn parse_offset_data(payload: &[u8]) -> Result<(u64, &[u8]), ReplyError> {
    let mut c = Cursor::new(payload);
    let offset = c.u64().ok_or(ReplyError::BadPayload {
        kind: "OFFSET_DATA",
    })?;
    Ok((offset, c.rest()))
}

/// Client: an `OFFSET_HOLE` payload as (offset, hole size).
pub fn parse_offset_hole(payload: &[u8]) -> Result<(u64, u32), ReplyError> {
    let mut c = Cursor::new(payload);
    match (c.u64(), c.u32(), c.remaining()) {
        (Some(offset), Some(len), 0) if len > 0 => Ok((offset, len)),
        _ => Err(ReplyError::BadPayload {
            kind: "OFFSET_HOLE",
        }),
    }
}

/// An error chunk's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPayload {
    /// The NBD error value (nonzero).
    pub error: u32,
    /// Text for people (lossily decoded).
    pub message: String,
    /// For `ERROR_OFFSET`, where the error happened.
    pub offset: Option<u64>,
}

/// Client: an error chunk's payload (`kind` has bit 15 set).
pub fn parse_error_payload(kind: u16, payload: &[u8]) -> Result<ErrorPayload, ReplyError> {
    let bad = ReplyError::BadPayload { kind: "error" };
    let mut c = Cursor::new(payload);
    let (Some(error), Some(len)) = (c.u32(), c.u16()) else {
        return Err(bad);
    };
    let message = String::from_utf8_lossy(c.bytes(usize::from(len)).ok_or(bad.clone())?).into();
    let offset = if kind == NBD_REPLY_TYPE_ERROR_OFFSET {
        Some(c.u64().ok_or(bad.clone())?)
    } else {
        None
    };
    if error == 0 || (kind == NBD_REPLY_TYPE_ERROR_OFFSET && c.remaining() != 0) {
        return Err(bad);
    }
    Ok(ErrorPayload {
        error,
        message,
        offset,
    })
}

/// Client: a `BLOCK_STATUS` payload as (context id, descriptors).
pub fn parse_block_status(payload: &[u8]) -> Result<(u32, Vec<Extent>), ReplyError> {
    let bad = ReplyError::BadPayload {
        kind: "BLOCK_STATUS",
    };
    let mut c = Cursor::new(payload);
    let id = c.u32().ok_or(bad.clone())?;
    if c.remaining() == 0 || c.remaining() % 8 != 0 {
        return Err(bad);
    }
    let mut extents = Vec::with_capacity(c.remaining() / 8);
    while let (Some(length), Some(flags)) = (c.u32(), c.u32()) {
        if length == 0 {
            return Err(bad);
        }
        extents.push(Extent { length, flags });
    }
    Ok((id, extents))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(command: Command, length: u32) -> Request {
        Request {
            flags: NBD_CMD_FLAG_FUA,
            command,
            cookie: 0xdead_beef_0000_0001,
            offset: 1 << 33,
            length,
        }
    }

    #[test]
    fn requests_round_trip_and_every_prefix_is_incomplete() {
        for cmd in [
            Command::Read,
            Command::Write,
            Command::Disc,
            Command::Flush,
            Command::Trim,
            Command::Cache,
            Command::WriteZeroes,
            Command::BlockStatus,
            Command::Unknown(99),
        ] {
            assert_eq!(Command::from_wire(cmd.to_wire()), cmd);
            let r = req(cmd, 4096);
            let mut out = Vec::new();
            encode_request(&mut out, &r);
            assert_eq!(out.len(), REQUEST_HEADER_LEN);
            for n in 0..out.len() {
                assert!(matches!(
                    parse_request(&out[..n], MAX_PAYLOAD),
                    Ok(Decoded::Incomplete { needed: 28 })
                ));
            }
            out.extend_from_slice(&[1, 2, 3]);
            assert_eq!(
                parse_request(&out, MAX_PAYLOAD).unwrap(),
                Decoded::Frame(r, REQUEST_HEADER_LEN)
            );
        }
    }

    #[test]
    fn a_bad_request_magic_is_reported_as_soon_as_four_bytes_arrive() {
        let mut out = Vec::new();
        encode_request(&mut out, &req(Command::Read, 1));
        out[0] = 0;
        assert!(matches!(
            parse_request(&out[..4], MAX_PAYLOAD),
            Err(RequestError::BadMagic { .. })
        ));
        assert!(matches!(
            parse_request(&out, MAX_PAYLOAD),
            Err(RequestError::BadMagic { .. })
        ));
    }

    #[test]
    fn only_writes_carry_a_payload_and_oversized_ones_are_refused() {
        let mut out = Vec::new();
        encode_request(&mut out, &req(Command::Write, MAX_PAYLOAD + 1));
        assert_eq!(
            parse_request(&out, MAX_PAYLOAD),
            Err(RequestError::PayloadTooLarge {
                length: MAX_PAYLOAD + 1,
                max: MAX_PAYLOAD
            })
        );
        // A huge read or trim has no payload, so the header itself is fine.
        for cmd in [Command::Read, Command::Trim, Command::WriteZeroes] {
            let mut out = Vec::new();
            encode_request(&mut out, &req(cmd, u32::MAX));
            let r = parse_request(&out, MAX_PAYLOAD).unwrap().frame().unwrap();
            assert_eq!(r.payload_len(), 0);
        }
        assert_eq!(req(Command::Write, 7).payload_len(), 7);
    }

    #[test]
    fn simple_replies_round_trip() {
        let mut out = Vec::new();
        encode_simple_reply(&mut out, 22, 42);
        for n in 0..out.len() {
            assert!(matches!(
                parse_reply_header(&out[..n], 0),
                Ok(Decoded::Incomplete { .. })
            ));
        }
        assert_eq!(
            parse_reply_header(&out, 0).unwrap(),
            Decoded::Frame(
                ReplyHeader::Simple {
                    error: 22,
                    cookie: 42
                },
                16
            )
        );
    }

    #[test]
    fn chunks_round_trip_with_their_payloads() {
        let mut out = Vec::new();
        encode_offset_data_header(&mut out, NBD_REPLY_FLAG_DONE, 1, 512, 3);
        out.extend_from_slice(b"abc");
        let Decoded::Frame(ReplyHeader::Chunk(h), n) = parse_reply_header(&out, 100).unwrap()
        else {
            panic!()
        };
        assert!(h.is_done());
        assert_eq!(
            (h.kind, h.cookie, h.length),
            (NBD_REPLY_TYPE_OFFSET_DATA, 1, 11)
        );
        assert_eq!(parse_offset_data(&out[n..]).unwrap(), (512, &b"abc"[..]));

        let mut out = Vec::new();
        encode_none(&mut out, 9);
        let Decoded::Frame(ReplyHeader::Chunk(h), _) = parse_reply_header(&out, 0).unwrap() else {
            panic!()
        };
        assert_eq!(
            (h.kind, h.length, h.is_done()),
            (NBD_REPLY_TYPE_NONE, 0, true)
        );

        let mut out = Vec::new();
        encode_error_chunk(&mut out, NBD_REPLY_FLAG_DONE, 3, 1, "read-only");
        let Decoded::Frame(ReplyHeader::Chunk(h), n) = parse_reply_header(&out, 100).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            parse_error_payload(h.kind, &out[n..]).unwrap(),
            ErrorPayload {
                error: 1,
                message: "read-only".into(),
                offset: None
            }
        );

        let extents = [Extent::new(4096, 3), Extent::new(512, 0)];
        let mut out = Vec::new();
        encode_block_status(&mut out, 0, 5, 2, &extents);
        let Decoded::Frame(ReplyHeader::Chunk(h), n) = parse_reply_header(&out, 100).unwrap()
        else {
            panic!()
        };
        assert!(!h.is_done());
        assert_eq!(
            parse_block_status(&out[n..]).unwrap(),
            (2, extents.to_vec())
        );
    }

    #[test]
    fn error_messages_are_cut_to_the_string_limit_on_a_character_boundary() {
        let mut out = Vec::new();
        let long = "é".repeat(3000);
        encode_error_chunk(&mut out, NBD_REPLY_FLAG_DONE, 3, 5, &long);
        let e = parse_error_payload(NBD_REPLY_TYPE_ERROR, &out[CHUNK_HEADER_LEN..]).unwrap();
        assert_eq!(e.message.len(), MAX_STRING);
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(matches!(
            parse_reply_header(&[0, 0, 0, 0], 10),
            Err(ReplyError::BadMagic { found: 0 })
        ));
        let chunk = |kind: u16, length: u32| {
            let mut out = Vec::new();
            encode_chunk_header(
                &mut out,
                &ChunkHeader {
                    flags: 0,
                    kind,
                    cookie: 0,
                    length,
                },
            );
            parse_reply_header(&out, 1 << 20)
        };
        for (kind, length) in [
            (NBD_REPLY_TYPE_NONE, 1),
            (NBD_REPLY_TYPE_OFFSET_DATA, 8),
            (NBD_REPLY_TYPE_OFFSET_HOLE, 11),
            (NBD_REPLY_TYPE_BLOCK_STATUS, 4),
            (NBD_REPLY_TYPE_BLOCK_STATUS, 13),
            (NBD_REPLY_TYPE_ERROR, 5),
            (NBD_REPLY_TYPE_ERROR_OFFSET, 13),
            (NBD_REPLY_TYPE_FLAG_ERROR | 9, 2),
        ] {
            assert_eq!(
                chunk(kind, length),
                Err(ReplyError::BadChunkLength { kind, length })
            );
        }
        assert!(chunk(77, 3).is_ok());
        assert!(matches!(
            chunk(NBD_REPLY_TYPE_OFFSET_DATA, 2 << 20),
            Err(ReplyError::TooLarge { .. })
        ));
        assert!(parse_offset_data(&[0; 7]).is_err());
        assert_eq!(
            parse_offset_hole(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9]).unwrap(),
            (1, 9)
        );
        assert!(parse_offset_hole(&[0; 12]).is_err());
        assert!(parse_block_status(&[0, 0, 0, 1]).is_err());
        assert!(parse_block_status(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(parse_block_status(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]).is_err());
        assert!(parse_error_payload(NBD_REPLY_TYPE_ERROR, &[0, 0, 0, 0, 0, 0]).is_err());
        assert!(parse_error_payload(NBD_REPLY_TYPE_ERROR, &[0, 0, 0, 5, 0, 9, b'x']).is_err());
        let mut with_offset = vec![0, 0, 0, 5, 0, 1, b'x'];
        with_offset.extend_from_slice(&77u64.to_be_bytes());
        assert_eq!(
            parse_error_payload(NBD_REPLY_TYPE_ERROR_OFFSET, &with_offset)
                .unwrap()
                .offset,
            Some(77)
        );
        assert!(parse_error_payload(NBD_REPLY_TYPE_ERROR_OFFSET, &with_offset[..10]).is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_request_header_round_trips(
                flags: u16, kind: u16, cookie: u64, offset: u64, length in 0u32..=MAX_PAYLOAD
            ) {
                let r = Request { flags, command: Command::from_wire(kind), cookie, offset, length };
                let mut out = Vec::new();
                encode_request(&mut out, &r);
                prop_assert_eq!(parse_request(&out, MAX_PAYLOAD).unwrap(), Decoded::Frame(r, 28));
            }

            #[test]
            fn any_bytes_parse_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                let _ = parse_request(&bytes, MAX_PAYLOAD);
                let _ = parse_reply_header(&bytes, 1 << 20);
                let _ = parse_offset_data(&bytes);
                let _ = parse_offset_hole(&bytes);
                let _ = parse_block_status(&bytes);
                let _ = parse_error_payload(NBD_REPLY_TYPE_ERROR_OFFSET, &bytes);
            }

            #[test]
            fn any_block_status_chunk_round_trips(
                id: u32,
                extents in proptest::collection::vec((1u32.., any::<u32>()), 1..20)
            ) {
                let extents: Vec<Extent> = extents.into_iter().map(|(l, f)| Extent::new(l, f)).collect();
                let mut out = Vec::new();
                encode_block_status(&mut out, NBD_REPLY_FLAG_DONE, 1, id, &extents);
                prop_assert_eq!(parse_block_status(&out[CHUNK_HEADER_LEN..]).unwrap(), (id, extents));
            }
        }
    }
}
