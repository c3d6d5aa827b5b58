//! A test client: the client side of the crate's frames over a socket, for the paths real
//! clients never take.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use snapvol_nbd::handshake::frame::{self as hf, InfoRequest, MetaContextRequest, OptionReply};
use snapvol_nbd::proto::*;
use snapvol_nbd::transmission::frame::{self as tf, Command, ReplyHeader, Request};
use snapvol_nbd::{BlockDevice, Decoded, Errno, Export, ExportMap, Extent};

pub(crate) trait Socket: Read + Write + Send {}
impl<T: Read + Write + Send> Socket for T {}

/// A test client: the client side of the crate's frames over a socket.
pub(crate) struct Client {
    s: Box<dyn Socket>,
    buf: Vec<u8>,
    /// Lengths of reads in flight, to find simple-reply payloads.
    reads: HashMap<u64, u32>,
    structured: bool,
    /// The client's address as the server logs it (`peer`), for [`wait_for_event`].
    pub(crate) peer: String,
}

/// A complete reply to one request.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    pub(crate) cookie: u64,
    pub(crate) error: Option<Errno>,
    pub(crate) message: String,
    pub(crate) data: Vec<u8>,
    pub(crate) status: Vec<(u32, Vec<Extent>)>,
}

impl Client {
    pub(crate) fn tcp(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let peer = s.local_addr().unwrap().to_string();
        Client::over(Box::new(s), peer)
    }

    pub(crate) fn over(s: Box<dyn Socket>, peer: String) -> Client {
        let mut c = Client {
            s,
            buf: Vec::new(),
            reads: HashMap::new(),
            structured: false,
            peer,
        };
        let flags = c.frame(hf::parse_greeting);
        assert_eq!(flags, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
        c.send_raw(&(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes());
        c
    }

    /// Sends `NBD_OPT_STARTTLS`, which must be acknowledged, and runs the TLS handshake as
    /// `config` says; from then on everything goes through TLS. Returns the handshake's error.
    pub(crate) fn starttls(&mut self, config: Arc<ClientConfig>) -> Result<(), rustls::Error> {
        let r = self.option(NBD_OPT_STARTTLS, &[]);
        assert_eq!(Client::last_type(&r), NBD_REP_ACK, "{r:?}");
        assert!(self.buf.is_empty(), "the server sent more than the ACK");
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = ClientConnection::new(config, name).unwrap();
        let mut sock = std::mem::replace(&mut self.s, Box::new(std::io::Cursor::new(Vec::new())));
        while tls.is_handshaking() {
            if let Err(e) = tls.complete_io(&mut sock) {
                let why = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
                return Err(why
                    .cloned()
                    .unwrap_or(rustls::Error::General(e.to_string())));
            }
        }
        self.s = Box::new(StreamOwned::new(tls, sock));
        Ok(())
    }

    pub(crate) fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Reads until `parse` decodes a frame.
    pub(crate) fn frame<T, E: std::fmt::Debug>(
        &mut self,
        parse: impl Fn(&[u8]) -> Result<Decoded<T>, E>,
    ) -> T {
        loop {
            match parse(&self.buf).unwrap() {
                Decoded::Frame(v, n) => {
                    self.buf.drain(..n);
                    return v;
                }
                Decoded::Incomplete { needed } => {
                    let mut chunk = vec![0u8; needed.max(4096)];
                    let n = self.s.read(&mut chunk).expect("read from the server");
                    assert!(n > 0, "the server closed the connection");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        self.frame(|b| {
            Ok::<_, ()>(if b.len() >= n {
                Decoded::Frame(b[..n].to_vec(), n)
            } else {
                Decoded::Incomplete { needed: n }
            })
        })
    }

    /// Reads and drops bytes until the end of the stream (true) or an error, which counts as
    /// the end when `ends` says so.
    fn drain_to_end(&mut self, ends: impl Fn(&std::io::Error) -> bool) -> bool {
        let mut b = [0u8; 1024];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return ends(&e),
            }
        }
    }

    /// True when the server closes the connection (within the read timeout).
    pub(crate) fn closed(&mut self) -> bool {
        self.drain_to_end(|e| e.kind() == ErrorKind::ConnectionReset)
    }

    /// True once the server ends the session, by closing it or with a TLS alert; false if
    /// it is still silent after the socket's read timeout.
    pub(crate) fn ended(&mut self) -> bool {
        self.drain_to_end(|e| !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
    }

    /// Sends an option and collects replies up to the final one (ACK or error).
    pub(crate) fn option(&mut self, option: u32, data: &[u8]) -> Vec<OptionReply> {
        let mut out = Vec::new();
        hf::encode_option(&mut out, option, data);
        self.send_raw(&out);
        let mut replies = Vec::new();
        loop {
            let r = self.frame(|b| hf::parse_option_reply(b, 1 << 20));
            assert_eq!(r.option, option);
            let last = r.reply_type == NBD_REP_ACK || r.is_error();
            replies.push(r);
            if last {
                return replies;
            }
        }
    }

    pub(crate) fn last_type(replies: &[OptionReply]) -> u32 {
        replies.last().unwrap().reply_type
    }

    /// Negotiates and enters transmission; returns (size, flags, selected contexts).
    pub(crate) fn go(
        &mut self,
        name: &str,
        structured: bool,
        contexts: &[&str],
    ) -> (u64, u16, Vec<u32>) {
        if structured {
            let r = self.option(NBD_OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(Client::last_type(&r), NBD_REP_ACK);
            self.structured = true;
        }
        let mut ids = Vec::new();
        if !contexts.is_empty() {
            let r = self.option(
                NBD_OPT_SET_META_CONTEXT,
                &hf::encode_meta_context_request(&MetaContextRequest {
                    export: name.into(),
                    queries: contexts.iter().map(|c| c.to_string()).collect(),
                }),
            );
            assert_eq!(Client::last_type(&r), NBD_REP_ACK);
            for m in &r[..r.len() - 1] {
                ids.push(hf::parse_meta_context(&m.data).unwrap().0);
            }
        }
        let r = self.option(
            NBD_OPT_GO,
            &hf::encode_info_request(&InfoRequest {
                name: name.into(),
                requests: vec![NBD_INFO_BLOCK_SIZE],
            }),
        );
        assert_eq!(Client::last_type(&r), NBD_REP_ACK, "{r:?}");
        for info in &r[..r.len() - 1] {
            if let hf::Info::Export { size, flags } = hf::Info::parse(&info.data).unwrap() {
                return (size, flags, ids);
            }
        }
        panic!("no NBD_INFO_EXPORT in {r:?}");
    }

    pub(crate) fn request(
        &mut self,
        command: Command,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
    ) {
        self.request_with(command, flags, cookie, offset, length, &[]);
    }

    fn request_with(
        &mut self,
        command: Command,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let mut out = Vec::new();
        tf::encode_request(
            &mut out,
            &Request {
                flags,
                command,
                cookie,
                offset,
                length,
            },
        );
        out.extend_from_slice(payload);
        if command == Command::Read {
            self.reads.insert(cookie, length);
        }
        self.send_raw(&out);
    }

    pub(crate) fn write(&mut self, cookie: u64, offset: u64, data: &[u8], flags: u16) {
        self.request_with(
            Command::Write,
            flags,
            cookie,
            offset,
            data.len() as u32,
            data,
        );
    }

    /// Reads chunks until one request's reply is complete.
    pub(crate) fn reply(&mut self) -> Reply {
        let mut partial: HashMap<u64, Reply> = HashMap::new();
        loop {
            match self.frame(|b| tf::parse_reply_header(b, 64 << 20)) {
                ReplyHeader::Simple { error, cookie } => {
                    assert!(
                        !self.structured,
                        "simple reply after structured negotiation"
                    );
                    let len = self.reads.remove(&cookie);
                    let error = Errno::from_wire(error);
                    let data = match (len, error) {
                        (Some(n), None) => self.bytes(n as usize),
                        _ => Vec::new(),
                    };
                    return Reply {
                        cookie,
                        error,
                        data,
                        ..Reply::default()
                    };
                }
                ReplyHeader::Chunk(h) => {
                    assert!(self.structured, "structured chunk without negotiation");
                    let payload = self.bytes(h.length as usize);
                    let r = partial.entry(h.cookie).or_insert_with(|| Reply {
                        cookie: h.cookie,
                        ..Reply::default()
                    });
                    match h.kind {
                        NBD_REPLY_TYPE_NONE => {}
                        NBD_REPLY_TYPE_OFFSET_DATA => {
                            let (_, data) = tf::parse_offset_data(&payload).unwrap();
                            r.data.extend_from_slice(data);
                        }
                        NBD_REPLY_TYPE_BLOCK_STATUS => {
                            r.status.push(tf::parse_block_status(&payload).unwrap())
                        }
                        k if k & NBD_REPLY_TYPE_FLAG_ERROR != 0 => {
                            let e = tf::parse_error_payload(k, &payload).unwrap();
                            r.error = Errno::from_wire(e.error);
                            r.message = e.message;
                        }
                        other => panic!("unexpected chunk type {other}"),
                    }
                    if h.is_done() {
                        self.reads.remove(&h.cookie);
                        return partial.remove(&h.cookie).unwrap();
                    }
                }
            }
        }
    }

    pub(crate) fn disc(&mut self) {
        self.request(Command::Disc, 0, 0, 0, 0);
    }
}

pub(crate) fn one_export(name: &str, dev: Arc<dyn BlockDevice>) -> Arc<ExportMap> {
    let map = Arc::new(ExportMap::new());
    map.insert(name, Export::new(dev, "test export"));
    map
}
