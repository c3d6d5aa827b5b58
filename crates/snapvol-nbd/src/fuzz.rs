//! Entry points for fuzzers: arbitrary bytes in, no panic out.
//!
//! Both run the real server code (the handshake state machine, the request reader, request
//! checks and device calls) over an in-memory stream against a small [`MemDevice`], and also
//! hand the bytes to every client-side parser. Requests are performed on the calling thread:
//! worker threads would make runs slower and trip the leak checker (a finished scoped
//! thread's handle can outlive the input by a moment); the pool is covered by the
//! integration tests instead.

use std::io;
use std::sync::{Arc, OnceLock};

use crate::device::{Extent, MemDevice};
use crate::exports::{Export, ExportMap};
use crate::handshake::{self, frame as hf, Haggled, MetaContext, Negotiated, ServerHandshake};
use crate::proto::*;
use crate::stream::FrameReader;
use crate::transmission::{self, frame as tf, Dispatch};

const FUZZ_DEVICE_SIZE: usize = 64 * 1024;

fn exports() -> &'static ExportMap {
    static EXPORTS: OnceLock<ExportMap> = OnceLock::new();
    EXPORTS.get_or_init(|| {
        let map = ExportMap::new();
        let dev =
            MemDevice::new(FUZZ_DEVICE_SIZE).with_meta_contexts(vec!["qemu:dirty-bitmap:a".into()]);
        map.insert("", Export::new(Arc::new(dev), "default"));
        let ro = MemDevice::new(4096).with_read_only(true);
        map.insert("ro", Export::new(Arc::new(ro), ""));
        map
    })
}

/// Runs the server's handshake over `data` as if a client had sent it, continuing into
/// transmission if the bytes negotiate an export. With `require_tls`, a STARTTLS the server
/// accepts is taken as an upgrade and the rest of the bytes as coming through TLS.
fn server_handshake(data: &[u8], require_tls: bool) {
    let mut reader = FrameReader::new(data);
    let mut hs = ServerHandshake::new(exports());
    if require_tls {
        hs.require_tls();
    }
    let Ok(flags) = handshake::greet(&mut reader, &mut io::sink()) else {
        return;
    };
    hs.set_client_flags(flags);
    let mut haggled = handshake::haggle(&mut reader, &mut io::sink(), &mut hs);
    if let Ok(Haggled::StartTls) = haggled {
        hs.tls_started();
        haggled = handshake::haggle(&mut reader, &mut io::sink(), &mut hs);
    }
    if let Ok(Haggled::Transmission(neg)) = haggled {
        transmission::serve(
            &mut reader,
            io::sink(),
            &neg,
            Dispatch::Inline,
            "fuzz",
            &|| {},
        );
    }
}

/// Feeds `data` to the server's handshake as if a client had sent it (continuing into
/// transmission if the bytes negotiate an export), once without TLS and once with TLS
/// required, and to the client-side handshake parsers. Never panics.
pub fn fuzz_handshake(data: &[u8]) {
    server_handshake(data, false);
    server_handshake(data, true);

    let _ = hf::parse_greeting(data);
    let _ = hf::parse_client_flags(data, handshake::HANDSHAKE_FLAGS);
    let _ = hf::parse_option_header(data);
    let _ = hf::parse_export_name(data);
    let _ = hf::parse_info_request(data);
    let _ = hf::parse_meta_context_request(data);
    let _ = hf::Info::parse(data);
    let _ = hf::parse_server_entry(data);
    let _ = hf::parse_meta_context(data);
    for no_zeroes in [false, true] {
        let _ = hf::parse_export_name_reply(data, no_zeroes);
    }
    let mut rest = data;
    while let Ok(crate::Decoded::Frame(_, used)) = hf::parse_option_reply(rest, 1 << 16) {
        rest = &rest[used..];
    }
}

/// Feeds `data` to the server's transmission phase as if a client had sent it, after a
/// negotiation chosen by the first byte (structured replies or not, read-only or not,
/// metadata contexts or not), and to the client-side reply parsers. Never panics.
pub fn fuzz_transmission(data: &[u8]) {
    let (&mode, body) = data.split_first().unwrap_or((&0, &[]));
    let structured = mode & 1 != 0;
    let name = if mode & 2 != 0 { "ro" } else { "" };
    let export = exports().lookup_export(name);
    let contexts = if structured && mode & 4 != 0 {
        vec![
            MetaContext {
                id: 1,
                name: BASE_ALLOCATION.into(),
            },
            MetaContext {
                id: 2,
                name: "qemu:dirty-bitmap:a".into(),
            },
        ]
    } else {
        Vec::new()
    };
    let neg = Negotiated {
        name: name.into(),
        flags: handshake::transmission_flags(&*export.device, structured),
        export,
        structured,
        contexts,
    };
    let mut reader = FrameReader::new(body);
    transmission::serve(
        &mut reader,
        io::sink(),
        &neg,
        Dispatch::Inline,
        "fuzz",
        &|| {},
    );

    // Client side: a stream of replies.
    let mut rest = data;
    while let Ok(crate::Decoded::Frame(header, used)) = tf::parse_reply_header(rest, 1 << 16) {
        rest = &rest[used..];
        if let tf::ReplyHeader::Chunk(h) = header {
            let n = (h.length as usize).min(rest.len());
            let payload = &rest[..n];
            match h.kind {
                NBD_REPLY_TYPE_OFFSET_DATA => drop(tf::parse_offset_data(payload)),
                NBD_REPLY_TYPE_OFFSET_HOLE => drop(tf::parse_offset_hole(payload)),
                NBD_REPLY_TYPE_BLOCK_STATUS => drop(tf::parse_block_status(payload)),
                k if k & NBD_REPLY_TYPE_FLAG_ERROR != 0 => {
                    drop(tf::parse_error_payload(k, payload))
                }
                _ => {}
            }
            rest = &rest[n..];
        }
    }
    // The extent clipper with device answers taken from the bytes.
    let extents: Vec<Extent> = data
        .chunks_exact(8)
        .map(|c| {
            let v = u64::from_be_bytes(c.try_into().unwrap_or([0; 8]));
            Extent::new((v >> 32) as u32, v as u32)
        })
        .collect();
    let req_len = extents.first().map_or(1, |e| e.flags.max(1));
    let unknown = (mode & 16 != 0).then_some(0);
    let _ = transmission::clip_extents(
        &extents,
        req_len,
        u64::from(mode) * 4096,
        mode & 8 != 0,
        unknown,
    );
}

impl ExportMap {
    fn lookup_export(&self, name: &str) -> Export {
        use crate::exports::Exports;
        self.lookup(name)
            .unwrap_or_else(|| Export::new(Arc::new(MemDevice::new(0)), ""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_entry_points_survive_empty_random_and_well_formed_input() {
        fuzz_handshake(&[]);
        fuzz_transmission(&[]);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in [1usize, 7, 28, 100, 1000] {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            fuzz_handshake(&bytes);
            fuzz_transmission(&bytes);
        }
        // A whole session: flags, GO, a write, a read, a flush, DISC.
        let mut s = Vec::new();
        hf::encode_client_flags(&mut s, 3);
        hf::encode_option(&mut s, NBD_OPT_STRUCTURED_REPLY, &[]);
        let go = hf::encode_info_request(&hf::InfoRequest {
            name: String::new(),
            requests: vec![],
        });
        hf::encode_option(&mut s, NBD_OPT_GO, &go);
        let mut t = vec![1u8];
        for (command, length) in [
            (tf::Command::Write, 4u32),
            (tf::Command::Read, 4),
            (tf::Command::Flush, 0),
            (tf::Command::Disc, 0),
        ] {
            let r = tf::Request {
                flags: 0,
                command,
                cookie: 1,
                offset: 0,
                length,
            };
            tf::encode_request(&mut s, &r);
            tf::encode_request(&mut t, &r);
            if command == tf::Command::Write {
                s.extend_from_slice(b"data");
                t.extend_from_slice(b"data");
            }
        }
        fuzz_handshake(&s);
        fuzz_transmission(&t);
    }
}
