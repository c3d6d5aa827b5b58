//! Option requests: the header every option starts with, and the data of `EXPORT_NAME`,
//! `INFO`/`GO` and `LIST_META_CONTEXT`/`SET_META_CONTEXT` (proto.md "Option types").
//!
//! Bytes only, for both sides: it must not do I/O, decide how the server answers an option
//! (that is [`crate::handshake::ServerHandshake`]'s), or encode the server's replies (that is
//! `reply`'s).

use super::{
    finish, put_string, string, truncated, HandshakeError, OptionDataError, OPTION_HEADER_LEN,
};
use crate::codec::{Cursor, Decoded};
use crate::proto::*;

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

#[cfg(test)]
mod tests {
    use super::super::tests::check_prefixes;
    use super::*;

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
        }
    }
}
