//! Limits on clients: the handshake deadline, and the number of connections served at once.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapvol_nbd::handshake::frame::{self as hf, InfoRequest};
use snapvol_nbd::proto::*;
use snapvol_nbd::transmission::frame::Command;
use snapvol_nbd::{Export, ExportMap, Exports, Server};

use crate::client::Client;
use crate::common::*;

/// True when the server has closed `s` (end of stream or reset), false when it is still
/// open; waits at most `wait` for the answer.
pub(crate) fn closed_within(s: &TcpStream, wait: Duration) -> bool {
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
    let h = serve_with(exports, |b| b.handshake_timeout(limit));
    let addr = h.addr;

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
    let h = serve_with(exports, |b| b.max_connections(2));
    let addr = h.addr;
    let mut a = Client::tcp(addr);
    a.go("vol", true, &[]);
    // A connection still in its handshake counts too.
    let mut b = Client::tcp(addr);
    assert!(greeted(addr).is_none(), "a third connection was greeted");
    let stats = h.server.connection_stats();
    assert_eq!((stats.open(), stats.refused()), (2, 1));
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

/// Exports whose lookup takes the server `delay`, as opening a volume does when the lookup
/// takes it over from a dead holder and replays its journal.
struct SlowExports {
    inner: Arc<ExportMap>,
    delay: Duration,
}

impl Exports for SlowExports {
    fn lookup(&self, name: &str) -> Option<Export> {
        std::thread::sleep(self.delay);
        self.inner.lookup(name)
    }

    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
}

/// What broke: a client whose export the server took longer than the handshake's limit to
/// open (a takeover replaying a long journal) was closed for being slow, although the time was
/// the server's. The server's own time does not count; the client's still does.
#[test]
fn the_time_a_lookup_takes_the_server_does_not_count_against_the_clients_handshake() {
    init_tracing();
    let (exports, _, _) = volume_and_snapshot(4096, vec![5; 4096]);
    let slow = Arc::new(SlowExports {
        inner: exports,
        delay: Duration::from_millis(1500),
    });
    let server = Server::builder(slow)
        .tcp("127.0.0.1:0".parse().unwrap())
        .handshake_timeout(Duration::from_secs(1))
        .bind()
        .unwrap();
    let addr = server.local_addr().unwrap();
    let _running = server.spawn().unwrap();

    // Two lookups (INFO, then GO) of 1.5 s each against a 1 s limit.
    let started = Instant::now();
    let mut c = Client::tcp(addr);
    let info = c.option(
        NBD_OPT_INFO,
        &hf::encode_info_request(&InfoRequest {
            name: "vol@snap".into(),
            requests: vec![],
        }),
    );
    assert_eq!(Client::last_type(&info), NBD_REP_ACK);
    assert_eq!(c.go("vol@snap", false, &[]).0, 4096);
    assert!(started.elapsed() >= Duration::from_secs(3));
    c.request(Command::Read, 0, 1, 0, 4096);
    assert_eq!(c.reply().data, vec![5; 4096]);

    // A client that is slow itself is still held to the limit.
    let idle = TcpStream::connect(addr).unwrap();
    assert!(
        closed_within(&idle, Duration::from_secs(10)),
        "a client that sent nothing was not closed at the deadline"
    );
}
