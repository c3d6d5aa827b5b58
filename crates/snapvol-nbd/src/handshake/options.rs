//! The server's side of option haggling: one option and its data in, its replies out, and
//! what the connection does next ([`Step`]); also what a client may choose from (the metadata
//! contexts an export offers).
//!
//! It must not do I/O (`run` in the parent module reads and writes the socket) or encode
//! bytes itself (that is [`frame`]'s); it decides.

use tracing::debug;

use super::frame::{self, Info, OptionDataError};
use super::{transmission_flags, MetaContext, Negotiated, Step};
use crate::exports::{Export, Exports};
use crate::proto::*;

/// The metadata contexts `export` offers: `base:allocation` first, then the device's own.
fn available_contexts(export: &Export) -> Vec<String> {
    let mut all = vec![BASE_ALLOCATION.to_string()];
    for c in export.device.meta_contexts() {
        if !all.contains(&c) {
            all.push(c);
        }
    }
    all
}

/// Where a connection stands with TLS (proto.md "Server-side requirements").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    /// NOTLS: the server has no TLS; `NBD_OPT_STARTTLS` is unsupported.
    Off,
    /// FORCEDTLS before the upgrade: nothing but `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT`.
    Required,
    /// FORCEDTLS after the upgrade: every option as usual, a second STARTTLS is invalid.
    Active,
}

/// The server's side of option haggling, one option at a time, without I/O.
pub struct ServerHandshake<'a> {
    exports: &'a dyn Exports,
    tls: Tls,
    no_zeroes: bool,
    structured: bool,
    /// The export name and contexts of the last successful `NBD_OPT_SET_META_CONTEXT`.
    meta: Option<(String, Vec<MetaContext>)>,
}

impl std::fmt::Debug for ServerHandshake<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandshake")
            .field("tls", &self.tls)
            .field("no_zeroes", &self.no_zeroes)
            .field("structured", &self.structured)
            .field("meta", &self.meta)
            .finish()
    }
}

fn reply(out: &mut Vec<u8>, option: u32, reply_type: u32, data: &[u8]) {
    frame::encode_option_reply(out, option, reply_type, data);
}

fn error(out: &mut Vec<u8>, option: u32, reply_type: u32, message: &str) {
    debug!(option, reply_type, message, "option refused");
    reply(out, option, reply_type, message.as_bytes());
}

fn invalid(out: &mut Vec<u8>, option: u32, e: &OptionDataError) {
    error(
        out,
        option,
        NBD_REP_ERR_INVALID,
        &format!("malformed option data: {e}"),
    );
}

fn tls_required(option: u32, out: &mut Vec<u8>) -> Step {
    error(
        out,
        option,
        NBD_REP_ERR_TLS_REQD,
        "this server requires TLS: send NBD_OPT_STARTTLS first",
    );
    Step::Continue
}

/// An option before the TLS upgrade of a server that requires TLS (proto.md "FORCEDTLS
/// mode"); `None` for `NBD_OPT_ABORT`, which is served as usual.
fn before_tls(option: u32, data: &[u8], out: &mut Vec<u8>) -> Option<Step> {
    Some(match option {
        NBD_OPT_ABORT => return None,
        NBD_OPT_STARTTLS if !data.is_empty() => {
            error(out, option, NBD_REP_ERR_INVALID, "STARTTLS takes no data");
            Step::Continue
        }
        NBD_OPT_STARTTLS => {
            reply(out, option, NBD_REP_ACK, &[]);
            Step::StartTls
        }
        // It cannot be answered with an error: the spec says to end the session.
        NBD_OPT_EXPORT_NAME => {
            Step::Close("NBD_OPT_EXPORT_NAME without TLS, which this server requires".into())
        }
        _ => tls_required(option, out),
    })
}

impl<'a> ServerHandshake<'a> {
    /// A fresh negotiation against `exports`.
    pub fn new(exports: &'a dyn Exports) -> Self {
        ServerHandshake {
            exports,
            tls: Tls::Off,
            no_zeroes: false,
            structured: false,
            meta: None,
        }
    }

    /// Requires TLS: until [`tls_started`](Self::tls_started), every option but
    /// `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` is refused (FORCEDTLS).
    pub fn require_tls(&mut self) {
        self.tls = Tls::Required;
    }

    /// The TLS handshake that followed [`Step::StartTls`] succeeded: options are served.
    pub fn tls_started(&mut self) {
        debug_assert_eq!(self.tls, Tls::Required);
        self.tls = Tls::Active;
    }

    /// Records the client's flags (already validated by [`frame::parse_client_flags`]).
    pub fn set_client_flags(&mut self, flags: u32) {
        self.no_zeroes = flags & NBD_FLAG_C_NO_ZEROES != 0;
    }

    /// Answers an option whose data was too long to read (and was skipped).
    pub fn option_too_big(&mut self, option: u32, out: &mut Vec<u8>) -> Step {
        if option == NBD_OPT_EXPORT_NAME {
            return Step::Close("export name too long".into());
        }
        if self.tls == Tls::Required && option != NBD_OPT_STARTTLS {
            return tls_required(option, out);
        }
        if option == NBD_OPT_SET_META_CONTEXT {
            self.meta = None;
        }
        error(out, option, NBD_REP_ERR_TOO_BIG, "option data too long");
        Step::Continue
    }

    /// Handles one option, appending its replies to `out`.
    pub fn handle_option(&mut self, option: u32, data: &[u8], out: &mut Vec<u8>) -> Step {
        if self.tls == Tls::Required {
            if let Some(step) = before_tls(option, data, out) {
                return step;
            }
        }
        match option {
            NBD_OPT_EXPORT_NAME => self.export_name(data, out),
            NBD_OPT_ABORT => {
                // proto.md: the server MUST reply with NBD_REP_ACK and ignore any data.
                reply(out, option, NBD_REP_ACK, &[]);
                Step::Abort
            }
            NBD_OPT_LIST => {
                if !data.is_empty() {
                    error(out, option, NBD_REP_ERR_INVALID, "LIST takes no data");
                    return Step::Continue;
                }
                for name in self.exports.names() {
                    reply(
                        out,
                        option,
                        NBD_REP_SERVER,
                        &frame::encode_server_entry(&name, ""),
                    );
                }
                reply(out, option, NBD_REP_ACK, &[]);
                Step::Continue
            }
            NBD_OPT_INFO | NBD_OPT_GO => self.info_or_go(option, data, out),
            NBD_OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    error(
                        out,
                        option,
                        NBD_REP_ERR_INVALID,
                        "STRUCTURED_REPLY takes no data",
                    );
                } else {
                    self.structured = true;
                    reply(out, option, NBD_REP_ACK, &[]);
                }
                Step::Continue
            }
            NBD_OPT_LIST_META_CONTEXT => {
                self.list_meta_context(data, out);
                Step::Continue
            }
            NBD_OPT_SET_META_CONTEXT => {
                self.set_meta_context(data, out);
                Step::Continue
            }
            NBD_OPT_STARTTLS if self.tls == Tls::Active => {
                error(out, option, NBD_REP_ERR_INVALID, "TLS is already active");
                Step::Continue
            }
            _ => {
                // STARTTLS without TLS (proto.md "NOTLS mode"), EXTENDED_HEADERS, anything
                // unknown.
                error(
                    out,
                    option,
                    NBD_REP_ERR_UNSUP,
                    &format!("option {option} is not supported"),
                );
                Step::Continue
            }
        }
    }

    /// The contexts selected for export `name`. proto.md: they count only if the last
    /// SET_META_CONTEXT named this export. They are kept even if the export no longer offers
    /// one of them (a dirty bitmap whose snapshot was deleted since): the client was told it
    /// is selected and expects its chunk in every BLOCK_STATUS reply, so such a request fails
    /// with the device's error rather than silently lacking a chunk.
    fn contexts_for(&self, name: &str) -> Vec<MetaContext> {
        match &self.meta {
            Some((meta_name, contexts)) if meta_name == name => contexts.clone(),
            _ => Vec::new(),
        }
    }

    fn negotiated(&self, name: String, export: Export) -> Negotiated {
        Negotiated {
            flags: transmission_flags(&*export.device, self.structured),
            structured: self.structured,
            contexts: self.contexts_for(&name),
            name,
            export,
        }
    }

    fn export_name(&mut self, data: &[u8], out: &mut Vec<u8>) -> Step {
        let name = match frame::parse_export_name(data) {
            Ok(n) => n,
            Err(e) => return Step::Close(format!("EXPORT_NAME: {e}")),
        };
        let Some(export) = self.exports.lookup(&name) else {
            // proto.md: an unknown export after EXPORT_NAME MUST terminate the session.
            return Step::Close(format!("EXPORT_NAME of unknown export {name:?}"));
        };
        let n = self.negotiated(name, export);
        frame::encode_export_name_reply(out, n.export.device.size(), n.flags, self.no_zeroes);
        Step::Transmission(Box::new(n))
    }

    fn info_or_go(&mut self, option: u32, data: &[u8], out: &mut Vec<u8>) -> Step {
        let req = match frame::parse_info_request(data) {
            Ok(r) => r,
            Err(e) => {
                invalid(out, option, &e);
                return Step::Continue;
            }
        };
        let Some(export) = self.exports.lookup(&req.name) else {
            error(
                out,
                option,
                NBD_REP_ERR_UNKNOWN,
                &format!("no export named {:?}", req.name),
            );
            return Step::Continue;
        };
        let n = self.negotiated(req.name.clone(), export);
        let mut infos = vec![Info::Export {
            size: n.export.device.size(),
            flags: n.flags,
        }];
        if req.requests.contains(&NBD_INFO_NAME) {
            infos.push(Info::Name(req.name.clone()));
        }
        if req.requests.contains(&NBD_INFO_DESCRIPTION) && !n.export.description.is_empty() {
            let mut d = n.export.description.clone();
            truncate_utf8(&mut d, MAX_STRING);
            infos.push(Info::Description(d));
        }
        // These are the spec's defaults, so sending them unasked constrains no client.
        infos.push(Info::BlockSize {
            min: MIN_BLOCK_SIZE,
            preferred: PREFERRED_BLOCK_SIZE,
            max: MAX_PAYLOAD,
        });
        for info in infos {
            reply(out, option, NBD_REP_INFO, &info.encode());
        }
        reply(out, option, NBD_REP_ACK, &[]);
        if option == NBD_OPT_GO {
            Step::Transmission(Box::new(n))
        } else {
            Step::Continue
        }
    }

    /// Parses a LIST/SET_META_CONTEXT request and finds its export, or answers the error.
    fn meta_context_request(
        &self,
        option: u32,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<(frame::MetaContextRequest, Export)> {
        let req = match frame::parse_meta_context_request(data) {
            Ok(r) => r,
            Err(e) => {
                invalid(out, option, &e);
                return None;
            }
        };
        let Some(export) = self.exports.lookup(&req.export) else {
            error(
                out,
                option,
                NBD_REP_ERR_UNKNOWN,
                &format!("no export named {:?}", req.export),
            );
            return None;
        };
        if let Some(q) = req.queries.iter().find(|q| !q.contains(':')) {
            error(
                out,
                option,
                NBD_REP_ERR_INVALID,
                &format!("query {q:?} has no namespace"),
            );
            return None;
        }
        Some((req, export))
    }

    fn list_meta_context(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let option = NBD_OPT_LIST_META_CONTEXT;
        let Some((req, export)) = self.meta_context_request(option, data, out) else {
            return;
        };
        let available = available_contexts(&export);
        // An empty query list lists everything; a query ending in ':' is a prefix wildcard
        // (proto.md "base:" and qemu's "qemu:dirty-bitmap:"); otherwise an exact name.
        let listed = available.iter().filter(|c| {
            req.queries.is_empty()
                || req.queries.iter().any(|q| {
                    if q.ends_with(':') {
                        c.starts_with(q.as_str())
                    } else {
                        c == &q
                    }
                })
        });
        for c in listed {
            // The id in a LIST reply is reserved and SHOULD be zero.
            reply(
                out,
                option,
                NBD_REP_META_CONTEXT,
                &frame::encode_meta_context(0, c),
            );
        }
        reply(out, option, NBD_REP_ACK, &[]);
    }

    fn set_meta_context(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let option = NBD_OPT_SET_META_CONTEXT;
        // proto.md: the selection is replaced even when this option fails.
        self.meta = None;
        if !self.structured {
            return error(
                out,
                option,
                NBD_REP_ERR_INVALID,
                "structured replies must be negotiated first",
            );
        }
        let Some((req, export)) = self.meta_context_request(option, data, out) else {
            return;
        };
        let available = available_contexts(&export);
        let mut selected: Vec<MetaContext> = Vec::new();
        // Unknown names are ignored, as are wildcards such as "base:" (proto.md).
        for q in &req.queries {
            if available.contains(q) && !selected.iter().any(|c| &c.name == q) {
                selected.push(MetaContext {
                    id: selected.len() as u32 + 1,
                    name: q.clone(),
                });
            }
        }
        for c in &selected {
            reply(
                out,
                option,
                NBD_REP_META_CONTEXT,
                &frame::encode_meta_context(c.id, &c.name),
            );
        }
        reply(out, option, NBD_REP_ACK, &[]);
        self.meta = Some((req.export, selected));
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::device::MemDevice;
    use crate::exports::ExportMap;
    use crate::handshake::frame::*;

    fn exports() -> ExportMap {
        let map = ExportMap::new();
        map.insert(
            "vol",
            Export::new(
                Arc::new(
                    MemDevice::new(1 << 20).with_meta_contexts(vec!["qemu:dirty-bitmap:s1".into()]),
                ),
                "the live volume",
            ),
        );
        map.insert(
            "vol@s1",
            Export::new(Arc::new(MemDevice::new(4096).with_read_only(true)), ""),
        );
        map
    }

    /// Splits a server's output into option replies.
    fn replies(mut bytes: &[u8]) -> Vec<OptionReply> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            match parse_option_reply(bytes, u32::MAX).unwrap() {
                Decoded::Frame(r, n) => {
                    out.push(r);
                    bytes = &bytes[n..];
                }
                Decoded::Incomplete { .. } => panic!("trailing bytes"),
            }
        }
        out
    }

    use crate::codec::Decoded;

    fn types(r: &[OptionReply]) -> Vec<u32> {
        r.iter().map(|r| r.reply_type).collect()
    }

    #[test]
    fn unknown_options_get_err_unsup_and_the_handshake_continues() {
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        for option in [NBD_OPT_STARTTLS, NBD_OPT_EXTENDED_HEADERS, 4, 999] {
            let mut out = Vec::new();
            assert!(matches!(
                hs.handle_option(option, b"junk", &mut out),
                Step::Continue
            ));
            let r = replies(&out);
            assert_eq!(types(&r), vec![NBD_REP_ERR_UNSUP]);
            assert_eq!(r[0].option, option);
        }
    }

    /// Every option a client may send before STARTTLS, with valid data for each.
    fn options_before_tls() -> Vec<(u32, Vec<u8>)> {
        let go = encode_info_request(&InfoRequest {
            name: "vol".into(),
            requests: vec![],
        });
        vec![
            (NBD_OPT_LIST, vec![]),
            (NBD_OPT_INFO, go.clone()),
            (NBD_OPT_GO, go),
            (NBD_OPT_STRUCTURED_REPLY, vec![]),
            (NBD_OPT_LIST_META_CONTEXT, meta("vol", &[])),
            (NBD_OPT_SET_META_CONTEXT, meta("vol", &["base:allocation"])),
            (NBD_OPT_EXTENDED_HEADERS, vec![]),
            (999, b"junk".to_vec()),
        ]
    }

    #[test]
    fn before_starttls_a_server_requiring_tls_refuses_every_option_with_tls_reqd() {
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        hs.require_tls();
        for (option, data) in options_before_tls() {
            let (step, r) = answer(&mut hs, option, &data);
            assert!(matches!(step, Step::Continue), "option {option}");
            assert_eq!(r, [NBD_REP_ERR_TLS_REQD], "option {option}");
        }
        // Too long to read, still TLS_REQD, not TOO_BIG.
        let mut out = Vec::new();
        hs.option_too_big(NBD_OPT_GO, &mut out);
        assert_eq!(types(&replies(&out)), vec![NBD_REP_ERR_TLS_REQD]);
        // Nothing was negotiated in plain text that could carry over into TLS.
        assert!(!hs.structured && hs.meta.is_none());
    }

    #[test]
    fn export_name_without_tls_closes_the_connection_without_a_byte_of_export_data() {
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        hs.require_tls();
        let mut out = Vec::new();
        assert!(matches!(
            hs.handle_option(NBD_OPT_EXPORT_NAME, b"vol", &mut out),
            Step::Close(_)
        ));
        assert!(out.is_empty());
    }

    /// The step an option leads to, and the types of its replies.
    fn answer(hs: &mut ServerHandshake<'_>, option: u32, data: &[u8]) -> (Step, Vec<u32>) {
        let mut out = Vec::new();
        let step = hs.handle_option(option, data, &mut out);
        (step, types(&replies(&out)))
    }

    #[test]
    fn starttls_is_acknowledged_once_and_invalid_with_data_or_after_tls() {
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        hs.require_tls();
        let (step, r) = answer(&mut hs, NBD_OPT_STARTTLS, b"x");
        assert!(matches!(step, Step::Continue) && r == [NBD_REP_ERR_INVALID]);
        let (step, r) = answer(&mut hs, NBD_OPT_STARTTLS, b"");
        assert!(matches!(step, Step::StartTls) && r == [NBD_REP_ACK]);
        hs.tls_started();
        let (step, r) = answer(&mut hs, NBD_OPT_STARTTLS, b"");
        assert!(matches!(step, Step::Continue) && r == [NBD_REP_ERR_INVALID]);
        // Through TLS, options are served as usual.
        go("vol", &mut hs);
    }

    mod before_tls_property {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever options a client sends, and with whatever data, until it starts TLS it
            /// gets no reply but TLS_REQD (or ACK to ABORT, INVALID to STARTTLS with data), and
            /// never enters transmission.
            #[test]
            fn no_option_sequence_reaches_transmission_in_plain_text(
                options in proptest::collection::vec(
                    (prop_oneof![1u32..=12, any::<u32>()], proptest::collection::vec(any::<u8>(), 0..24)),
                    1..12,
                )
            ) {
                let map = exports();
                let mut hs = ServerHandshake::new(&map);
                hs.require_tls();
                for (option, data) in options {
                    let (step, r) = answer(&mut hs, option, &data);
                    match step {
                        Step::Transmission(_) => prop_assert!(false, "transmission in plain text"),
                        Step::StartTls | Step::Abort => {
                            prop_assert_eq!(r, vec![NBD_REP_ACK]);
                            break;
                        }
                        Step::Close(_) => {
                            prop_assert_eq!(option, NBD_OPT_EXPORT_NAME);
                            prop_assert!(r.is_empty());
                            break;
                        }
                        Step::Continue if option == NBD_OPT_STARTTLS => {
                            prop_assert_eq!(r, vec![NBD_REP_ERR_INVALID]);
                        }
                        Step::Continue => prop_assert_eq!(r, vec![NBD_REP_ERR_TLS_REQD]),
                    }
                }
            }
        }
    }

    #[test]
    fn abort_is_acknowledged_before_tls_too() {
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        hs.require_tls();
        let (step, r) = answer(&mut hs, NBD_OPT_ABORT, b"ignored");
        assert!(matches!(step, Step::Abort) && r == [NBD_REP_ACK]);
    }

    #[test]
    fn go_reports_export_info_and_enters_transmission() {
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        let mut out = Vec::new();
        let data = encode_info_request(&InfoRequest {
            name: "vol".into(),
            requests: vec![NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE],
        });
        let Step::Transmission(n) = hs.handle_option(NBD_OPT_GO, &data, &mut out) else {
            panic!("GO did not enter transmission")
        };
        assert!(!n.structured && n.contexts.is_empty());
        let r = replies(&out);
        assert_eq!(r.last().unwrap().reply_type, NBD_REP_ACK);
        let infos: Vec<Info> = r[..r.len() - 1]
            .iter()
            .map(|r| {
                assert_eq!(r.reply_type, NBD_REP_INFO);
                Info::parse(&r.data).unwrap()
            })
            .collect();
        let flags = NBD_FLAG_HAS_FLAGS
            | NBD_FLAG_SEND_FLUSH
            | NBD_FLAG_SEND_FUA
            | NBD_FLAG_SEND_TRIM
            | NBD_FLAG_SEND_WRITE_ZEROES
            | NBD_FLAG_CAN_MULTI_CONN
            | NBD_FLAG_SEND_CACHE;
        assert_eq!(
            infos,
            vec![
                Info::Export {
                    size: 1 << 20,
                    flags
                },
                Info::Name("vol".into()),
                Info::Description("the live volume".into()),
                Info::BlockSize {
                    min: 1,
                    preferred: 4096,
                    max: 32 << 20
                },
            ]
        );
    }

    #[test]
    fn info_on_a_read_only_export_advertises_read_only_and_no_write_commands() {
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        let mut out = Vec::new();
        hs.handle_option(NBD_OPT_STRUCTURED_REPLY, &[], &mut out);
        out.clear();
        let data = encode_info_request(&InfoRequest {
            name: "vol@s1".into(),
            requests: vec![],
        });
        assert!(matches!(
            hs.handle_option(NBD_OPT_INFO, &data, &mut out),
            Step::Continue
        ));
        let r = replies(&out);
        let Info::Export { flags, .. } = Info::parse(&r[0].data).unwrap() else {
            panic!("first info is not NBD_INFO_EXPORT")
        };
        assert_eq!(
            flags,
            NBD_FLAG_HAS_FLAGS
                | NBD_FLAG_READ_ONLY
                | NBD_FLAG_CAN_MULTI_CONN
                | NBD_FLAG_SEND_CACHE
                | NBD_FLAG_SEND_DF
        );
        // No description was requested, and none is sent.
        assert_eq!(types(&r), vec![NBD_REP_INFO, NBD_REP_INFO, NBD_REP_ACK]);
    }

    #[test]
    fn go_and_info_on_an_unknown_export_get_err_unknown() {
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        for option in [NBD_OPT_INFO, NBD_OPT_GO] {
            let mut out = Vec::new();
            let data = encode_info_request(&InfoRequest {
                name: "nope".into(),
                requests: vec![],
            });
            assert!(matches!(
                hs.handle_option(option, &data, &mut out),
                Step::Continue
            ));
            assert_eq!(types(&replies(&out)), vec![NBD_REP_ERR_UNKNOWN]);
        }
    }

    #[test]
    fn malformed_go_data_gets_err_invalid() {
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        let mut out = Vec::new();
        hs.handle_option(NBD_OPT_GO, &[0, 0, 0, 9, b'v'], &mut out);
        assert_eq!(types(&replies(&out)), vec![NBD_REP_ERR_INVALID]);
    }

    #[test]
    fn export_name_of_a_known_export_replies_size_and_flags_with_or_without_zeroes() {
        let map = exports();
        for no_zeroes in [false, true] {
            let mut hs = ServerHandshake::new(&map);
            hs.set_client_flags(if no_zeroes { NBD_FLAG_C_NO_ZEROES } else { 0 });
            let mut out = Vec::new();
            assert!(matches!(
                hs.handle_option(NBD_OPT_EXPORT_NAME, b"vol", &mut out),
                Step::Transmission(_)
            ));
            assert_eq!(
                parse_export_name_reply(&out, no_zeroes),
                Decoded::Frame((1 << 20, 0x56d), out.len())
            );
        }
    }

    #[test]
    fn export_name_of_an_unknown_or_malformed_export_closes_the_connection() {
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        let mut out = Vec::new();
        assert!(matches!(
            hs.handle_option(NBD_OPT_EXPORT_NAME, b"nope", &mut out),
            Step::Close(_)
        ));
        assert!(matches!(
            hs.handle_option(NBD_OPT_EXPORT_NAME, &[0xff], &mut out),
            Step::Close(_)
        ));
        assert!(matches!(
            hs.option_too_big(NBD_OPT_EXPORT_NAME, &mut out),
            Step::Close(_)
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn list_names_every_export_and_refuses_data() {
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        let mut out = Vec::new();
        hs.handle_option(NBD_OPT_LIST, &[], &mut out);
        let r = replies(&out);
        assert_eq!(types(&r), vec![NBD_REP_SERVER, NBD_REP_SERVER, NBD_REP_ACK]);
        let names: Vec<String> = r[..2]
            .iter()
            .map(|r| parse_server_entry(&r.data).unwrap().0)
            .collect();
        assert_eq!(names, vec!["vol", "vol@s1"]);
        out.clear();
        hs.handle_option(NBD_OPT_LIST, &[1], &mut out);
        assert_eq!(types(&replies(&out)), vec![NBD_REP_ERR_INVALID]);
    }

    #[test]
    fn abort_is_acknowledged() {
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        let mut out = Vec::new();
        assert!(matches!(
            hs.handle_option(NBD_OPT_ABORT, b"ignored", &mut out),
            Step::Abort
        ));
        assert_eq!(types(&replies(&out)), vec![NBD_REP_ACK]);
    }

    #[test]
    fn structured_reply_with_data_is_invalid() {
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        let mut out = Vec::new();
        hs.handle_option(NBD_OPT_STRUCTURED_REPLY, &[0], &mut out);
        assert_eq!(types(&replies(&out)), vec![NBD_REP_ERR_INVALID]);
    }

    /// `NBD_OPT_GO` of export `name`, which must enter transmission.
    fn go(name: &str, hs: &mut ServerHandshake<'_>) -> Box<Negotiated> {
        let mut out = Vec::new();
        let data = encode_info_request(&InfoRequest {
            name: name.into(),
            requests: vec![],
        });
        match hs.handle_option(NBD_OPT_GO, &data, &mut out) {
            Step::Transmission(n) => n,
            other => panic!("{other:?}"),
        }
    }

    fn meta(export: &str, queries: &[&str]) -> Vec<u8> {
        encode_meta_context_request(&MetaContextRequest {
            export: export.into(),
            queries: queries.iter().map(|q| q.to_string()).collect(),
        })
    }

    fn listed(out: &[u8]) -> Vec<(u32, String)> {
        let r = replies(out);
        assert_eq!(r.last().unwrap().reply_type, NBD_REP_ACK, "{r:?}");
        r[..r.len() - 1]
            .iter()
            .map(|r| parse_meta_context(&r.data).unwrap())
            .collect()
    }

    #[test]
    fn list_meta_context_supports_all_wildcards_and_exact_names() {
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        let cases: [(&[&str], Vec<&str>); 5] = [
            (&[], vec![BASE_ALLOCATION, "qemu:dirty-bitmap:s1"]),
            (&["base:"], vec![BASE_ALLOCATION]),
            (&["qemu:dirty-bitmap:"], vec!["qemu:dirty-bitmap:s1"]),
            (&["base:allocation", "x-other:thing"], vec![BASE_ALLOCATION]),
            (&["base:nothing"], vec![]),
        ];
        for (queries, expected) in cases {
            let mut out = Vec::new();
            hs.handle_option(NBD_OPT_LIST_META_CONTEXT, &meta("vol", queries), &mut out);
            let got: Vec<String> = listed(&out).into_iter().map(|(_, n)| n).collect();
            assert_eq!(got, expected, "{queries:?}");
        }
        for (data, err) in [
            (meta("nope", &[]), NBD_REP_ERR_UNKNOWN),
            (meta("vol", &["nocolon"]), NBD_REP_ERR_INVALID),
            (vec![0, 0], NBD_REP_ERR_INVALID),
        ] {
            let mut out = Vec::new();
            hs.handle_option(NBD_OPT_LIST_META_CONTEXT, &data, &mut out);
            assert_eq!(types(&replies(&out)), vec![err]);
        }
    }

    #[test]
    fn set_meta_context_selects_contexts_for_the_same_export_only() {
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        let mut out = Vec::new();
        // Before structured replies the option is invalid.
        hs.handle_option(
            NBD_OPT_SET_META_CONTEXT,
            &meta("vol", &[BASE_ALLOCATION]),
            &mut out,
        );
        assert_eq!(types(&replies(&out)), vec![NBD_REP_ERR_INVALID]);
        out.clear();
        hs.handle_option(NBD_OPT_STRUCTURED_REPLY, &[], &mut out);
        out.clear();
        hs.handle_option(
            NBD_OPT_SET_META_CONTEXT,
            &meta(
                "vol",
                &[
                    BASE_ALLOCATION,
                    "base:",
                    "qemu:dirty-bitmap:s1",
                    BASE_ALLOCATION,
                ],
            ),
            &mut out,
        );
        assert_eq!(
            listed(&out),
            vec![
                (1, BASE_ALLOCATION.to_string()),
                (2, "qemu:dirty-bitmap:s1".to_string())
            ]
        );
        // GO to another export: the selection does not apply.
        assert!(go("vol@s1", &mut hs).contexts.is_empty());
        let n = go("vol", &mut hs);
        assert!(n.structured);
        assert_eq!(n.contexts.len(), 2);
        // A failing SET clears the selection.
        out.clear();
        hs.handle_option(NBD_OPT_SET_META_CONTEXT, &meta("nope", &[]), &mut out);
        assert_eq!(types(&replies(&out)), vec![NBD_REP_ERR_UNKNOWN]);
        assert!(go("vol", &mut hs).contexts.is_empty());
        for data in [meta("vol", &["bad"]), vec![1]] {
            out.clear();
            hs.handle_option(NBD_OPT_SET_META_CONTEXT, &data, &mut out);
            assert_eq!(types(&replies(&out)), vec![NBD_REP_ERR_INVALID]);
        }
        out.clear();
        hs.option_too_big(NBD_OPT_SET_META_CONTEXT, &mut out);
        assert_eq!(types(&replies(&out)), vec![NBD_REP_ERR_TOO_BIG]);
        assert!(format!("{hs:?}").contains("structured: true"));
    }

    #[test]
    fn a_context_gone_between_set_and_go_stays_selected() {
        // What broke: GO dropped a selected context the export no longer offered (a dirty
        // bitmap whose snapshot was deleted meanwhile), so BLOCK_STATUS replies lacked the
        // chunk the client was promised. Now the device answers for it: with an error.
        let map = exports();
        let mut hs = ServerHandshake::new(&map);
        let mut out = Vec::new();
        hs.handle_option(NBD_OPT_STRUCTURED_REPLY, &[], &mut out);
        out.clear();
        hs.handle_option(
            NBD_OPT_SET_META_CONTEXT,
            &meta("vol", &[BASE_ALLOCATION, "qemu:dirty-bitmap:s1"]),
            &mut out,
        );
        assert_eq!(listed(&out).len(), 2);
        map.insert(
            "vol",
            Export::new(Arc::new(MemDevice::new(1 << 20)), "no bitmaps any more"),
        );
        let n = go("vol", &mut hs);
        let names: Vec<&str> = n.contexts.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, vec![BASE_ALLOCATION, "qemu:dirty-bitmap:s1"]);
        assert!(n
            .export
            .device
            .context_block_status("qemu:dirty-bitmap:s1", 0, 4096)
            .is_err());
    }

    #[test]
    fn descriptions_longer_than_the_string_limit_are_cut_on_a_character_boundary() {
        let mut s = "é".repeat(3000);
        truncate_utf8(&mut s, MAX_STRING);
        assert_eq!(s.len(), MAX_STRING);
        let mut s = format!("a{}", "é".repeat(3000));
        truncate_utf8(&mut s, MAX_STRING);
        assert_eq!(s.len(), MAX_STRING - 1);
    }
}
