//! The server over real sockets, driven by a small client built from the crate's own frame
//! code, for the paths real clients never take: error replies, malformed input, replies out
//! of order, shutdown while requests are in flight.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use snapvol_nbd::handshake::frame::{self as hf, InfoRequest, MetaContextRequest, OptionReply};
use snapvol_nbd::proto::*;
use snapvol_nbd::transmission::frame::{self as tf, Command, ReplyHeader, Request};
use snapvol_nbd::{
    BlockDevice, Decoded, DevError, Errno, Export, ExportMap, Extent, MemDevice, Server,
};

trait Socket: Read + Write + Send {}
impl<T: Read + Write + Send> Socket for T {}

/// A test client: the client side of the crate's frames over a socket.
struct Client {
    s: Box<dyn Socket>,
    buf: Vec<u8>,
    /// Lengths of reads in flight, to find simple-reply payloads.
    reads: HashMap<u64, u32>,
    structured: bool,
    /// The client's address as the server logs it (`peer`), for [`wait_for_event`].
    peer: String,
}

/// A complete reply to one request.
#[derive(Debug, Default)]
struct Reply {
    cookie: u64,
    error: Option<Errno>,
    message: String,
    data: Vec<u8>,
    status: Vec<(u32, Vec<Extent>)>,
}

impl Client {
    fn tcp(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let peer = s.local_addr().unwrap().to_string();
        Client::over(Box::new(s), peer)
    }

    fn over(s: Box<dyn Socket>, peer: String) -> Client {
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

    fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Reads until `parse` decodes a frame.
    fn frame<T, E: std::fmt::Debug>(
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

    /// True when the server closes the connection (within the read timeout).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1024];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// Sends an option and collects replies up to the final one (ACK or error).
    fn option(&mut self, option: u32, data: &[u8]) -> Vec<OptionReply> {
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

    fn last_type(replies: &[OptionReply]) -> u32 {
        replies.last().unwrap().reply_type
    }

    /// Negotiates and enters transmission; returns (size, flags, selected contexts).
    fn go(&mut self, name: &str, structured: bool, contexts: &[&str]) -> (u64, u16, Vec<u32>) {
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

    fn request(&mut self, command: Command, flags: u16, cookie: u64, offset: u64, length: u32) {
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

    fn write(&mut self, cookie: u64, offset: u64, data: &[u8], flags: u16) {
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
    fn reply(&mut self) -> Reply {
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

    fn disc(&mut self) {
        self.request(Command::Disc, 0, 0, 0, 0);
    }
}

fn one_export(name: &str, dev: Arc<dyn BlockDevice>) -> Arc<ExportMap> {
    let map = Arc::new(ExportMap::new());
    map.insert(name, Export::new(dev, "test export"));
    map
}

#[test]
fn unknown_options_get_err_unsup_and_go_still_works() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut c = Client::tcp(h.addr);
    for option in [NBD_OPT_STARTTLS, NBD_OPT_EXTENDED_HEADERS, 0x4242] {
        let r = c.option(option, b"whatever");
        assert_eq!(Client::last_type(&r), NBD_REP_ERR_UNSUP);
        assert_eq!(r.len(), 1);
    }
    assert_eq!(c.go("vol", true, &[]).0, 4096);
    c.request(Command::Read, 0, 1, 0, 16);
    assert_eq!(c.reply().data, vec![0; 16]);
}

#[test]
fn go_to_an_unknown_export_gets_err_unknown_and_the_handshake_continues() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut c = Client::tcp(h.addr);
    let r = c.option(
        NBD_OPT_GO,
        &hf::encode_info_request(&InfoRequest {
            name: "missing".into(),
            requests: vec![],
        }),
    );
    assert_eq!(r.len(), 1);
    assert_eq!(Client::last_type(&r), NBD_REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&r[0].data).contains("missing"));
    assert_eq!(c.go("vol@snap", false, &[]).0, 4096);
}

#[test]
fn export_name_of_an_unknown_export_closes_the_connection() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut c = Client::tcp(h.addr);
    let mut out = Vec::new();
    hf::encode_option(&mut out, NBD_OPT_EXPORT_NAME, b"missing");
    c.send_raw(&out);
    assert!(c.closed());
}

#[test]
fn export_name_enters_transmission_without_zero_padding_when_negotiated() {
    let (exports, _, _) = volume_and_snapshot(8192, vec![0; 4096]);
    let h = serve(exports);
    let mut c = Client::tcp(h.addr);
    let mut out = Vec::new();
    hf::encode_option(&mut out, NBD_OPT_EXPORT_NAME, b"vol");
    c.send_raw(&out);
    let (size, flags) = c.frame(|b| Ok::<_, ()>(hf::parse_export_name_reply(b, true)));
    assert_eq!(size, 8192);
    assert_eq!(flags & NBD_FLAG_READ_ONLY, 0);
    c.request(Command::Read, 0, 7, 0, 8);
    let r = c.reply();
    assert_eq!((r.cookie, r.error, r.data.len()), (7, None, 8));
}

#[test]
fn export_name_sends_124_zero_bytes_to_a_client_without_no_zeroes() {
    let (exports, _, _) = volume_and_snapshot(8192, vec![0; 4096]);
    let h = serve(exports);
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    let mut out = Vec::new();
    hf::encode_client_flags(&mut out, NBD_FLAG_C_FIXED_NEWSTYLE);
    hf::encode_option(&mut out, NBD_OPT_EXPORT_NAME, b"vol");
    s.write_all(&out).unwrap();
    let mut reply = [0u8; 134];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(
        hf::parse_export_name_reply(&reply, false)
            .frame()
            .unwrap()
            .0,
        8192
    );
    assert!(reply[10..].iter().all(|&b| b == 0));
}

#[test]
fn unknown_client_flags_close_the_connection() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&0x80u32.to_be_bytes()).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap_or(0), 0);
}

#[test]
fn abort_is_acknowledged_and_the_server_closes() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut c = Client::tcp(h.addr);
    let r = c.option(NBD_OPT_ABORT, &[]);
    assert_eq!(Client::last_type(&r), NBD_REP_ACK);
    assert!(c.closed());
}

#[test]
fn info_and_list_describe_the_exports() {
    let (exports, _, _) = volume_and_snapshot(8192, vec![0; 4096]);
    let h = serve(exports);
    let mut c = Client::tcp(h.addr);
    let r = c.option(NBD_OPT_LIST, &[]);
    let names: Vec<String> = r[..r.len() - 1]
        .iter()
        .map(|r| hf::parse_server_entry(&r.data).unwrap().0)
        .collect();
    assert_eq!(names, vec!["vol", "vol@snap"]);
    let r = c.option(
        NBD_OPT_INFO,
        &hf::encode_info_request(&InfoRequest {
            name: "vol@snap".into(),
            requests: vec![NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE],
        }),
    );
    let infos: Vec<hf::Info> = r[..r.len() - 1]
        .iter()
        .map(|r| hf::Info::parse(&r.data).unwrap())
        .collect();
    assert!(infos.contains(&hf::Info::Name("vol@snap".into())));
    assert!(infos.contains(&hf::Info::Description("a snapshot".into())));
    assert!(infos.contains(&hf::Info::BlockSize {
        min: 1,
        preferred: 4096,
        max: 32 << 20
    }));
    // INFO does not end the handshake: GO still works.
    let (_, flags, _) = c.go("vol@snap", false, &[]);
    assert_ne!(flags & NBD_FLAG_READ_ONLY, 0);
}

#[test]
fn writes_to_a_read_only_export_get_eperm_with_simple_and_structured_replies() {
    for structured in [false, true] {
        let (exports, _, ro) = volume_and_snapshot(4096, vec![3; 4096]);
        let h = serve(exports);
        let mut c = Client::tcp(h.addr);
        c.go("vol@snap", structured, &[]);
        c.write(1, 0, &[9; 512], 0);
        c.request(Command::Trim, 0, 2, 0, 512);
        c.request(Command::WriteZeroes, 0, 3, 0, 512);
        for _ in 0..3 {
            let r = c.reply();
            assert_eq!(r.error, Some(Errno::EPERM), "cookie {}", r.cookie);
            if structured {
                assert!(r.message.contains("read-only"), "{:?}", r.message);
            }
        }
        // The connection is still usable.
        c.request(Command::Read, 0, 4, 0, 4096);
        assert_eq!(c.reply().data, vec![3; 4096]);
        assert!(ro.contents().iter().all(|&b| b == 3));
    }
}

#[test]
fn requests_past_the_end_get_einval_and_the_connection_stays_usable() {
    for structured in [false, true] {
        let (exports, vol, _) = volume_and_snapshot(8192, vec![0; 4096]);
        let h = serve(exports);
        let mut c = Client::tcp(h.addr);
        c.go("vol", structured, &[]);
        c.request(Command::Read, 0, 1, 8000, 200);
        assert_eq!(c.reply().error, Some(Errno::EINVAL));
        c.write(2, 8191, &[1, 2], 0);
        assert_eq!(c.reply().error, Some(Errno::EINVAL));
        c.request(Command::WriteZeroes, 0, 3, u64::MAX - 1, 4);
        assert_eq!(c.reply().error, Some(Errno::EINVAL));
        c.request(Command::Unknown(99), 0, 4, 0, 0);
        assert_eq!(c.reply().error, Some(Errno::EINVAL));
        c.write(5, 8190, &[1, 2], NBD_CMD_FLAG_FUA);
        assert_eq!(c.reply().error, None);
        assert_eq!(&vol.contents()[8190..], &[1, 2]);
    }
}

/// A device that counts the calls that reach it.
struct Counting {
    inner: MemDevice,
    calls: AtomicU64,
}

impl Counting {
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

impl BlockDevice for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        self.count();
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DevError> {
        self.count();
        self.inner.write(offset, data, fua)
    }
    fn flush(&self) -> Result<(), DevError> {
        self.inner.flush()
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DevError> {
        self.count();
        self.inner.trim(offset, len, fua)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), DevError> {
        self.count();
        self.inner.write_zeroes(offset, len, fua)
    }
    fn cache(&self, offset: u64, len: u64) -> Result<(), DevError> {
        self.count();
        self.inner.cache(offset, len)
    }
    fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, DevError> {
        self.count();
        self.inner.block_status(offset, len)
    }
}

/// Pins what the audit of issue 9 (defect 5) found already right on the wire side: the server
/// checks `offset + length` with checked arithmetic before it calls the device, for every
/// command that takes a range, so a request whose end overflows u64 gets EINVAL (proto.md
/// "Error values": a range past the end), never reaches the device, and leaves the connection
/// usable.
#[test]
fn a_request_whose_end_overflows_u64_gets_einval_and_never_reaches_the_device() {
    for structured in [false, true] {
        let dev = Arc::new(Counting {
            inner: MemDevice::new(8192),
            calls: AtomicU64::new(0),
        });
        let h = serve(one_export("d", dev.clone()));
        let mut c = Client::tcp(h.addr);
        let contexts: &[&str] = if structured { &[BASE_ALLOCATION] } else { &[] };
        c.go("d", structured, contexts);
        let mut commands = vec![
            Command::Read,
            Command::Trim,
            Command::WriteZeroes,
            Command::Cache,
        ];
        if structured {
            commands.push(Command::BlockStatus);
        }
        for (cookie, &command) in (1..).zip(&commands) {
            for (offset, length) in [(u64::MAX, 1), (u64::MAX - 1, 4), (u64::MAX - 0xfff, 0x2000)] {
                c.request(command, 0, cookie, offset, length);
                let r = c.reply();
                assert_eq!(
                    (r.cookie, r.error),
                    (cookie, Some(Errno::EINVAL)),
                    "{command:?} at {offset:#x}+{length:#x}"
                );
            }
        }
        c.write(99, u64::MAX - 1, &[1, 2, 3, 4], 0);
        assert_eq!(c.reply().error, Some(Errno::EINVAL));
        assert_eq!(dev.calls.load(Ordering::SeqCst), 0);
        c.request(Command::Read, 0, 100, 8188, 4);
        assert_eq!(c.reply().error, None);
        assert_eq!(dev.calls.load(Ordering::SeqCst), 1);
        c.disc();
    }
}

#[test]
fn simple_replies_carry_read_data_and_zero_length_reads_succeed() {
    for structured in [false, true] {
        let data: Vec<u8> = (0..=255).collect();
        let map = one_export("d", Arc::new(MemDevice::from_vec(data.clone())));
        let h = serve(map);
        let mut c = Client::tcp(h.addr);
        c.go("d", structured, &[]);
        c.request(Command::Read, 0, 1, 10, 20);
        c.request(Command::Read, 0, 2, 256, 0);
        let mut got: HashMap<u64, Reply> = HashMap::new();
        for _ in 0..2 {
            let r = c.reply();
            got.insert(r.cookie, r);
        }
        assert_eq!(got[&1].data, data[10..30]);
        assert_eq!((got[&2].error, got[&2].data.len()), (None, 0));
    }
}

/// Fails with a fixed error, or panics, on chosen operations.
struct FailingDevice {
    inner: MemDevice,
}

impl BlockDevice for FailingDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        match offset {
            0 => Err(DevError::io("media error at 0x0")),
            4096 => panic!("a bug in the device"),
            _ => self.inner.read(offset, buf),
        }
    }
    fn write(&self, _: u64, _: &[u8], _: bool) -> Result<(), DevError> {
        Err(DevError::no_space("the snapshot store is full"))
    }
    fn flush(&self) -> Result<(), DevError> {
        Err(DevError::io("flush failed"))
    }
}

#[test]
fn device_errors_reach_the_client_with_their_errno_and_message() {
    let dev = Arc::new(FailingDevice {
        inner: MemDevice::new(3 * 4096),
    });
    let h = serve(one_export("f", dev));
    let mut c = Client::tcp(h.addr);
    c.go("f", true, &[]);
    c.request(Command::Read, 0, 1, 0, 512);
    let r = c.reply();
    assert_eq!(r.error, Some(Errno::EIO));
    assert!(r.message.contains("media error"), "{}", r.message);
    c.write(2, 8192, &[1; 16], 0);
    let r = c.reply();
    assert_eq!(r.error, Some(Errno::ENOSPC));
    assert!(r.message.contains("full"), "{}", r.message);
    c.request(Command::Flush, 0, 3, 0, 0);
    assert_eq!(c.reply().error, Some(Errno::EIO));
    // A panicking device becomes EIO; the connection and the server carry on.
    c.request(Command::Read, 0, 4, 4096, 16);
    assert_eq!(c.reply().error, Some(Errno::EIO));
    c.request(Command::Read, 0, 5, 8192, 16);
    assert_eq!(c.reply().error, None);
}

#[test]
fn fast_zero_gets_einval_unless_advertised_and_reaches_the_device_when_it_is() {
    for fast in [false, true] {
        let dev = Arc::new(MemDevice::from_vec(vec![1; 8192]).with_fast_zero(fast));
        let h = serve(one_export("z", dev.clone()));
        let mut c = Client::tcp(h.addr);
        let (_, flags, _) = c.go("z", true, &[]);
        assert_eq!(flags & NBD_FLAG_SEND_FAST_ZERO != 0, fast);
        c.request(
            Command::WriteZeroes,
            NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_NO_HOLE,
            1,
            0,
            4096,
        );
        let r = c.reply();
        if fast {
            assert_eq!(r.error, None);
            assert!(dev.contents()[..4096].iter().all(|&b| b == 0));
        } else {
            assert_eq!(r.error, Some(Errno::EINVAL));
            assert!(dev.contents().iter().all(|&b| b == 1));
        }
    }
}

#[test]
fn block_status_reports_base_allocation_and_the_device_contexts() {
    let dev =
        Arc::new(MemDevice::new(64 * 1024).with_meta_contexts(vec!["qemu:dirty-bitmap:s1".into()]));
    dev.write(8192, &[5; 4096], false).unwrap();
    let h = serve(one_export("b", dev));
    let mut c = Client::tcp(h.addr);
    let (_, _, ids) = c.go("b", true, &[BASE_ALLOCATION, "qemu:dirty-bitmap:s1"]);
    assert_eq!(ids.len(), 2);
    c.request(Command::BlockStatus, 0, 1, 0, 64 * 1024);
    let r = c.reply();
    assert_eq!(r.error, None);
    let by_id: HashMap<u32, Vec<Extent>> = r.status.into_iter().collect();
    let hz = NBD_STATE_HOLE | NBD_STATE_ZERO;
    assert_eq!(
        by_id[&ids[0]],
        vec![
            Extent::new(8192, hz),
            Extent::new(4096, 0),
            Extent::new(52 * 1024, hz)
        ]
    );
    assert_eq!(by_id[&ids[1]], vec![Extent::new(64 * 1024, 0)]);
    c.request(Command::BlockStatus, NBD_CMD_FLAG_REQ_ONE, 2, 4096, 8192);
    let r = c.reply();
    assert!(r
        .status
        .iter()
        .all(|(_, e)| e.len() == 1 && e[0].length <= 8192));
    c.request(Command::BlockStatus, 0, 3, 60 * 1024, 8 * 1024);
    assert_eq!(c.reply().error, Some(Errno::EINVAL));
}

#[test]
fn block_status_without_a_selected_context_gets_einval() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut c = Client::tcp(h.addr);
    c.go("vol", true, &[]);
    c.request(Command::BlockStatus, 0, 1, 0, 4096);
    assert_eq!(c.reply().error, Some(Errno::EINVAL));
}

/// A device whose reads and writes at chosen offsets wait until released, and that tells
/// the test when such a request has arrived and when the device was flushed.
struct GatedDevice {
    inner: MemDevice,
    gate_offset: u64,
    gate: Mutex<Gate>,
    cv: std::sync::Condvar,
}

#[derive(Default)]
struct Gate {
    open: bool,
    entered: bool,
    flushes: u64,
}

impl GatedDevice {
    fn new(size: usize, gate_offset: u64) -> Self {
        GatedDevice {
            inner: MemDevice::new(size),
            gate_offset,
            gate: Mutex::new(Gate::default()),
            cv: std::sync::Condvar::new(),
        }
    }
    fn release(&self) {
        self.gate.lock().unwrap().open = true;
        self.cv.notify_all();
    }
    /// Waits (at most 20 s, else fails the test) until `cond` holds.
    fn wait(&self, what: &str, cond: impl Fn(&Gate) -> bool) {
        let gate = self.gate.lock().unwrap();
        let (_gate, timeout) = self
            .cv
            .wait_timeout_while(gate, Duration::from_secs(20), |g| !cond(g))
            .unwrap();
        assert!(!timeout.timed_out(), "{what}");
    }
    fn wait_gate(&self, offset: u64) {
        if offset != self.gate_offset {
            return;
        }
        self.gate.lock().unwrap().entered = true;
        self.cv.notify_all();
        self.wait("the gate was never released", |g| g.open);
    }
    /// Waits until a request at the gated offset is in the device.
    fn wait_entered(&self) {
        self.wait("the request never arrived", |g| g.entered);
    }
    /// Waits until the device has been flushed.
    fn wait_flushed(&self) {
        self.wait("the device was never flushed", |g| g.flushes > 0);
    }
}

impl BlockDevice for GatedDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        self.wait_gate(offset);
        self.inner.read(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DevError> {
        self.wait_gate(offset);
        self.inner.write(offset, data, fua)
    }
    fn flush(&self) -> Result<(), DevError> {
        self.inner.flush()?;
        self.gate.lock().unwrap().flushes += 1;
        self.cv.notify_all();
        Ok(())
    }
}

#[test]
fn replies_come_back_out_of_order_when_an_earlier_request_is_slow() {
    let dev = Arc::new(GatedDevice::new(64 * 1024, 0));
    let h = serve(one_export("g", dev.clone()));
    let mut c = Client::tcp(h.addr);
    c.go("g", true, &[]);
    c.request(Command::Read, 0, 1, 0, 4096);
    dev.wait_entered();
    c.request(Command::Read, 0, 2, 4096, 4096);
    // The second request is answered while the first still waits in the device.
    assert_eq!(c.reply().cookie, 2);
    dev.release();
    assert_eq!(c.reply().cookie, 1);
}

#[test]
fn many_pipelined_requests_are_all_answered_correctly() {
    let dev = Arc::new(MemDevice::new(8 << 20));
    let h = serve(one_export("p", dev.clone()));
    let mut c = Client::tcp(h.addr);
    c.go("p", true, &[]);
    let chunk = 64 * 1024;
    let n = 128u64;
    // Writes in flight, a flush, then reads back in flight; replies are read concurrently
    // by the same client after sending, so the server's bounded queue must not stall.
    for i in 0..n {
        let data = vec![i as u8; chunk];
        c.write(i, i * chunk as u64, &data, 0);
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        let r = c.reply();
        assert_eq!(r.error, None);
        assert!(seen.insert(r.cookie));
    }
    c.request(Command::Flush, 0, 1000, 0, 0);
    assert_eq!(c.reply().error, None);
    for i in 0..n {
        c.request(Command::Read, 0, 2000 + i, i * chunk as u64, chunk as u32);
    }
    for _ in 0..n {
        let r = c.reply();
        let i = r.cookie - 2000;
        assert!(r.data.iter().all(|&b| b == i as u8), "read {i}");
    }
}

#[test]
fn a_bad_request_magic_closes_only_that_connection() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut good = Client::tcp(h.addr);
    good.go("vol", true, &[]);
    let mut bad = Client::tcp(h.addr);
    bad.go("vol", true, &[]);
    bad.send_raw(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]);
    assert!(bad.closed());
    good.request(Command::Read, 0, 1, 0, 16);
    assert_eq!(good.reply().error, None);
    // The server still accepts new connections.
    let mut fresh = Client::tcp(h.addr);
    fresh.go("vol", false, &[]);
    fresh.request(Command::Read, 0, 1, 0, 16);
    assert_eq!(fresh.reply().error, None);
}

#[test]
fn an_oversized_write_closes_only_that_connection() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    let mut good = Client::tcp(h.addr);
    good.go("vol", false, &[]);
    let mut bad = Client::tcp(h.addr);
    bad.go("vol", false, &[]);
    bad.request(Command::Write, 0, 1, 0, MAX_PAYLOAD + 1);
    assert!(bad.closed());
    good.write(1, 0, &[1; 8], 0);
    assert_eq!(good.reply().error, None);
}

#[test]
fn a_client_vanishing_mid_request_does_not_disturb_the_server() {
    let (exports, vol, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let h = serve(exports);
    {
        let mut c = Client::tcp(h.addr);
        c.go("vol", true, &[]);
        // A write header promising 4096 bytes, then only 10, then gone.
        let mut out = Vec::new();
        tf::encode_request(
            &mut out,
            &Request {
                flags: 0,
                command: Command::Write,
                cookie: 1,
                offset: 0,
                length: 4096,
            },
        );
        out.extend_from_slice(&[7; 10]);
        c.send_raw(&out);
    }
    {
        // And one gone in the middle of the handshake.
        let mut c = Client::tcp(h.addr);
        let mut out = Vec::new();
        hf::encode_option(&mut out, NBD_OPT_GO, &[0, 0]);
        c.send_raw(&out[..out.len() - 1]);
    }
    let mut c = Client::tcp(h.addr);
    c.go("vol", true, &[]);
    c.request(Command::Read, 0, 1, 0, 4096);
    assert_eq!(c.reply().data, vec![0; 4096]);
    assert_eq!(vol.write_count(), 0, "a partial write reached the device");
}

#[test]
fn disc_answers_requests_in_flight_then_closes_and_flushes_written_data() {
    let dev = Arc::new(GatedDevice::new(64 * 1024, 0));
    let h = serve(one_export("g", dev.clone()));
    let mut c = Client::tcp(h.addr);
    c.go("g", true, &[]);
    c.write(1, 0, &[4; 4096], 0);
    dev.wait_entered();
    c.disc();
    // The server has read the DISC while the write is still held in the device.
    wait_for_event("NBD_CMD_DISC", &[("peer", &c.peer)]);
    dev.release();
    let r = c.reply();
    assert_eq!((r.cookie, r.error), (1, None));
    assert!(c.closed());
    dev.wait_flushed();
    assert_eq!(&dev.inner.contents()[..4096], &[4; 4096][..]);
}

#[test]
fn graceful_shutdown_finishes_requests_in_flight_and_flushes_written_devices() {
    let dev = Arc::new(GatedDevice::new(64 * 1024, 0));
    let h = serve(one_export("g", dev.clone()));
    let mut c = Client::tcp(h.addr);
    c.go("g", true, &[]);
    c.write(1, 0, &[8; 4096], 0);
    dev.wait_entered();
    let handle = h.server.shutdown_handle();
    let (tx, rx) = mpsc::channel();
    let server = h.server;
    let stopper = {
        let dev = dev.clone();
        std::thread::spawn(move || {
            let r = server.stop();
            // What the device had been through when the server said it had stopped.
            tx.send((r.is_ok(), dev.inner.flush_count())).unwrap();
        })
    };
    let asked = Instant::now();
    while !handle.is_triggered() {
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "the shutdown never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // New connections are refused or closed at once while shutting down.
    if let Ok(s) = TcpStream::connect(h.addr) {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = [0u8; 32];
        assert_eq!((&s).read(&mut b).unwrap_or(0), 0);
    }
    // The server has reached the point where it waits for the connections, and this one's
    // write is still held in the device: it must not have stopped.
    wait_for_event(
        "waiting for connections to finish their requests in flight",
        &[
            ("tcp", &format!("{:?}", Some(h.addr))),
            ("connections", "1"),
        ],
    );
    assert!(
        rx.try_recv().is_err(),
        "the server stopped with a request in flight"
    );
    dev.release();
    let r = c.reply();
    assert_eq!((r.cookie, r.error), (1, None));
    let (stopped_ok, flushes_when_stopped) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(stopped_ok);
    stopper.join().unwrap();
    assert!(
        flushes_when_stopped >= 1,
        "the server stopped before flushing the written device"
    );
    assert!(c.closed());
}

#[test]
fn removed_exports_stay_served_to_connected_clients_but_not_to_new_ones() {
    let (exports, _, _) = volume_and_snapshot(4096, vec![6; 4096]);
    let h = serve(exports.clone());
    let mut c = Client::tcp(h.addr);
    c.go("vol@snap", true, &[]);
    exports.remove("vol@snap");
    c.request(Command::Read, 0, 1, 0, 16);
    assert_eq!(c.reply().data, vec![6; 16]);
    let mut fresh = Client::tcp(h.addr);
    let r = fresh.option(
        NBD_OPT_GO,
        &hf::encode_info_request(&InfoRequest {
            name: "vol@snap".into(),
            requests: vec![],
        }),
    );
    assert_eq!(Client::last_type(&r), NBD_REP_ERR_UNKNOWN);
}

#[test]
fn a_unix_socket_serves_the_same_protocol() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");
    let (exports, _, _) = volume_and_snapshot(4096, vec![2; 4096]);
    let running = Server::builder(exports)
        .unix(&path)
        .bind()
        .unwrap()
        .spawn()
        .unwrap();
    let s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut c = Client::over(Box::new(s), "unix".into());
    c.go("vol@snap", true, &[]);
    c.request(Command::Read, 0, 1, 100, 10);
    assert_eq!(c.reply().data, vec![2; 10]);
    c.disc();
    running.stop().unwrap();
    assert!(!path.exists(), "the socket file was left behind");
}

#[test]
fn fua_writes_reach_the_device_with_fua_set() {
    struct FuaCounter {
        inner: MemDevice,
        fua: AtomicU64,
    }
    impl BlockDevice for FuaCounter {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
            self.inner.read(offset, buf)
        }
        fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DevError> {
            if fua {
                self.fua.fetch_add(1, Ordering::SeqCst);
            }
            self.inner.write(offset, data, fua)
        }
        fn flush(&self) -> Result<(), DevError> {
            self.inner.flush()
        }
    }
    let dev = Arc::new(FuaCounter {
        inner: MemDevice::new(4096),
        fua: AtomicU64::new(0),
    });
    let h = serve(one_export("f", dev.clone()));
    let mut c = Client::tcp(h.addr);
    c.go("f", false, &[]);
    c.write(1, 0, &[1; 512], NBD_CMD_FLAG_FUA);
    c.write(2, 512, &[1; 512], 0);
    c.reply();
    c.reply();
    assert_eq!(dev.fua.load(Ordering::SeqCst), 1);
}

/// A server on 127.0.0.1 with a port the kernel picks, configured by `configure`.
fn serve_with(
    exports: Arc<ExportMap>,
    configure: impl FnOnce(snapvol_nbd::ServerBuilder) -> snapvol_nbd::ServerBuilder,
) -> (snapvol_nbd::RunningServer, SocketAddr) {
    init_tracing();
    let server = configure(Server::builder(exports).tcp("127.0.0.1:0".parse().unwrap()))
        .bind()
        .unwrap();
    let addr = server.local_addr().unwrap();
    (server.spawn().unwrap(), addr)
}

/// True when the server has closed `s` (end of stream or reset), false when it is still
/// open; waits at most `wait` for the answer.
fn closed_within(s: &TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match (&*s).read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(e) => panic!("reading from the server: {e}"),
        }
    }
}

/// What broke: the handshake had only a read timeout (60 s without a byte), so a client that
/// sent its option one byte at a time held a connection and a thread for as long as it
/// kept sending.
#[test]
fn a_client_trickling_its_handshake_is_closed_at_the_deadline_while_others_are_served() {
    let limit = Duration::from_secs(2);
    let (exports, _, _) = volume_and_snapshot(4096, vec![0; 4096]);
    let (_server, addr) = serve_with(exports, |b| b.handshake_timeout(limit));

    // A valid NBD_OPT_GO that asks for the export name 100 times: 229 bytes with the client
    // flags, which at one byte every 50 ms would take more than 11 s.
    let mut trickle = Vec::new();
    hf::encode_client_flags(
        &mut trickle,
        NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES,
    );
    hf::encode_option(
        &mut trickle,
        NBD_OPT_GO,
        &hf::encode_info_request(&InfoRequest {
            name: "vol".into(),
            requests: vec![NBD_INFO_NAME; 100],
        }),
    );
    let total = trickle.len();
    let s = TcpStream::connect(addr).unwrap();
    let connected = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut greeting = [0u8; 18];
    (&s).read_exact(&mut greeting).unwrap();
    let writer = s.try_clone().unwrap();
    let trickler = std::thread::spawn(move || {
        for (sent, b) in trickle.iter().enumerate() {
            if (&writer).write_all(&[*b]).is_err() {
                return sent;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        trickle.len()
    });

    // Meanwhile another client goes through the whole handshake and is served.
    let mut other = Client::tcp(addr);
    other.go("vol", true, &[]);
    other.write(1, 0, &[7; 512], 0);
    assert_eq!(other.reply().error, None);
    other.request(Command::Read, 0, 2, 0, 512);
    assert_eq!(other.reply().data, vec![7; 512]);
    assert!(
        !closed_within(&s, Duration::from_millis(1)),
        "the trickling client was closed before the other one was served"
    );

    assert!(
        closed_within(&s, Duration::from_secs(20)),
        "the trickling client was still connected 20 s after its {limit:?} deadline"
    );
    assert!(
        connected.elapsed() >= limit,
        "closed before the deadline, after {:?}",
        connected.elapsed()
    );
    let sent = trickler.join().unwrap();
    assert!(sent < total, "the whole option got through ({sent} bytes)");
    // The server still serves new clients.
    let mut fresh = Client::tcp(addr);
    assert_eq!(fresh.go("vol", false, &[]).0, 4096);
}

/// Connects and waits for the server's first byte, left unread; `None` when the server
/// closes the connection instead of greeting it.
fn greeted(addr: SocketAddr) -> Option<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    match s.peek(&mut [0u8; 1]) {
        Ok(0) => None,
        Ok(_) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("waiting for the greeting: {e}"),
    }
}

#[test]
fn connections_beyond_the_limit_are_closed_before_the_greeting_and_the_others_carry_on() {
    let (exports, vol, _) = volume_and_snapshot(8192, vec![0; 4096]);
    let (_server, addr) = serve_with(exports, |b| b.max_connections(2));
    let mut a = Client::tcp(addr);
    a.go("vol", true, &[]);
    // A connection still in its handshake counts too.
    let mut b = Client::tcp(addr);
    assert!(greeted(addr).is_none(), "a third connection was greeted");
    b.go("vol", false, &[]);
    a.write(1, 0, &[1; 4096], 0);
    assert_eq!(a.reply().error, None);
    b.write(1, 4096, &[2; 4096], 0);
    assert_eq!(b.reply().error, None);
    b.request(Command::Read, 0, 2, 0, 8192);
    let data = b.reply().data;
    assert!(data[..4096].iter().all(|&x| x == 1) && data[4096..].iter().all(|&x| x == 2));
    assert_eq!(&vol.contents()[..4096], &[1; 4096][..]);

    // Once a client has gone and the server has noticed, a new one is served.
    a.disc();
    assert!(a.closed());
    let start = Instant::now();
    let s = loop {
        if let Some(s) = greeted(addr) {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no connection accepted after a client left"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let peer = s.local_addr().unwrap().to_string();
    let mut c = Client::over(Box::new(s), peer);
    c.go("vol", false, &[]);
    c.request(Command::Read, 0, 3, 4096, 16);
    assert_eq!(c.reply().data, vec![2; 16]);
}
