//! Option replies: the reply header and data the server sends (`NBD_REP_*`), the `INFO`
//! items, list and meta-context entries, and the reply to `EXPORT_NAME` (proto.md "Option
//! reply types").
//!
//! Bytes only, for both sides: it must not do I/O, decide which replies an option gets (that
//! is [`crate::handshake::ServerHandshake`]'s), or parse what a client sends (that is
//! `request`'s).

use super::{
    put_string, string, truncated, HandshakeError, OptionDataError, OPTION_REPLY_HEADER_LEN,
};
use crate::codec::{Cursor, Decoded};
use crate::proto::*;

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
    use super::super::tests::check_prefixes;
    use super::*;

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
}
