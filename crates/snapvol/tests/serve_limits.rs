//! What `snapvol serve` allows its clients, checked on the real binary: how many NBD
//! connections it serves at once, and what the control socket puts up with.

mod serving;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serving::*;

/// Connects to the NBD port and waits for the server's first byte, left unread; `None` when
/// the server closes the connection instead of greeting it.
fn greeted(port: u16) -> Option<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    match s.peek(&mut [0u8; 1]) {
        Ok(0) => None,
        Ok(_) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("waiting for the NBD greeting: {e}"),
    }
}

/// A connection to `export` once the server has room for one. Room frees up only when the
/// server has noticed that a client left (the readiness probe of [`Server::start`] is one),
/// so this retries for at most 30 s.
fn connect_when_admitted(port: u16, export: &str) -> RawNbd {
    let start = Instant::now();
    loop {
        if let Some(s) = greeted(port) {
            return RawNbd::over(s, export).expect("open the export");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server refused every connection for 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn beyond_max_connections_a_new_nbd_connection_is_closed_and_the_connected_clients_carry_on() {
    let env = Env::new();
    env.create("v", "64M");
    let server = env.serve_with(&["--max-connections", "2"]);
    let port = server.port();
    let mut a = connect_when_admitted(port, "v");
    let mut b = connect_when_admitted(port, "v");

    // A third connection is closed before the greeting; a real client says so at once.
    assert!(greeted(port).is_none(), "a third connection was greeted");
    let out = output_within(tool("nbdinfo").args(["--size", &server.uri("v")]), LIMIT);
    assert!(
        !out.status.success(),
        "nbdinfo got through: {}",
        text(&out.stdout)
    );
    assert!(
        server.log().contains("too many NBD connections"),
        "no warning in the log:\n{}",
        server.log()
    );

    // The two connected clients still write, flush and read each other's data.
    let (one, two) = (pattern(64 * 1024, 1), pattern(64 * 1024, 2));
    assert_eq!(a.write(0, &one), 0, "write on a");
    assert_eq!(b.write(64 * 1024, &two), 0, "write on b");
    assert_eq!(a.flush(), 0, "flush on a");
    assert_eq!(b.flush(), 0, "flush on b");
    assert!(a.read(64 * 1024, 64 * 1024).expect("read on a") == two);
    assert!(b.read(0, 64 * 1024).expect("read on b") == one);

    // Once one leaves, a new client is served.
    drop(a);
    let mut c = connect_when_admitted(port, "v");
    assert!(c.read(0, 64 * 1024).expect("read on c") == one);
    drop((b, c));
    server.stop();
}

// ---------------------------------------------------------------------------------------------
// The control socket

/// The server's request deadline (`REQUEST_DEADLINE` in `serve/control.rs`).
const DEADLINE: Duration = Duration::from_secs(10);

/// A new connection to the store's control socket.
fn control(env: &Env) -> UnixStream {
    let s = UnixStream::connect(env.store().join("control.sock")).expect("connect to control");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    s
}

/// Sends nothing, reads for at most 10 ms: true when the server has neither answered nor
/// closed the connection.
fn still_open(s: &UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(10)))
        .expect("timeout");
    let open = match (&*s).read(&mut [0u8; 256]) {
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        Ok(_) => false,
    };
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    open
}

/// The one answer line the server sends on `s`, as JSON.
fn answer(s: &UnixStream) -> serde_json::Value {
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .expect("read the answer");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer {line:?}: {e}"))
}

/// A valid `snapshot list` request padded with blanks to 150 bytes, which one byte every
/// 200 ms takes 30 s to send.
fn padded_request() -> Vec<u8> {
    let mut r = br#"{"op":"snapshot_list","#.to_vec();
    r.resize(150 - br#""volume":"v"}"#.len() - 1, b' ');
    r.extend_from_slice(br#""volume":"v"}"#);
    r.push(b'\n');
    r
}

/// A thread sending `bytes` on a socket one at a time, 200 ms apart, until they are all sent,
/// a write fails or it is stopped.
struct Trickler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<usize>,
}

impl Trickler {
    /// Starts trickling on a clone of `s`; returns once the first byte is sent.
    fn start(s: &UnixStream, bytes: Vec<u8>) -> Self {
        let out = s.try_clone().expect("clone");
        let stop = Arc::new(AtomicBool::new(false));
        let (first, sent_first) = mpsc::channel();
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                for (sent, b) in bytes.iter().enumerate() {
                    if stop.load(Ordering::SeqCst) || (&out).write_all(&[*b]).is_err() {
                        return sent;
                    }
                    let _ = first.send(());
                    thread::sleep(Duration::from_millis(200));
                }
                bytes.len()
            })
        };
        sent_first
            .recv_timeout(Duration::from_secs(30))
            .expect("the first byte was never sent");
        Self { stop, thread }
    }

    /// Stops it; returns how many bytes it sent.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("trickler")
    }
}

/// What broke: the control socket served one connection at a time, with a 30 s read timeout,
/// so a client that connected and said nothing, or sent a byte now and then, held up every
/// `snapvol snapshot list` behind it by up to 30 s.
#[test]
fn a_silent_and_a_trickling_control_client_do_not_hold_up_snapshot_list() {
    let env = Env::new();
    env.create("v", "64M");
    let server = env.serve();
    env.snapvol_ok(&["snapshot", "create", "v@s1"]);

    let silent = control(&env);
    let trickling = control(&env);
    let trickler = Trickler::start(&trickling, padded_request());
    let list = env.snapvol_ok(&["snapshot", "list", "v"]);
    assert!(list.contains("s1"), "{list}");
    // The list was answered while both were connected and unanswered: it did not wait for
    // the server to be done with them.
    assert!(
        still_open(&silent),
        "the silent client was answered or closed before the list was answered"
    );
    assert!(
        still_open(&trickling),
        "the trickling client was answered or closed before the list was answered"
    );
    trickler.stop();
    server.stop();
}

/// What broke: the server read a request with `read_line`, which grows its buffer until a
/// newline comes, so a client could make it hold any amount of memory.
#[test]
fn a_64_mib_control_request_without_a_newline_is_refused_and_does_not_grow_the_server() {
    let env = Env::new();
    env.create("v", "64M");
    let server = env.serve();
    // One request first, so that the memory a request costs is in the baseline.
    env.snapvol_ok(&["snapshot", "list", "v"]);
    let kib = |key: &str| {
        let status = fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("status");
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in {status}"));
        line.split_whitespace()
            .nth(1)
            .expect("value")
            .parse::<u64>()
            .expect("kB")
    };
    let (rss, peak) = (kib("VmRSS:"), kib("VmHWM:"));

    let s = control(&env);
    let out = s.try_clone().expect("clone");
    const TOTAL: usize = 64 << 20;
    let writer = thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0;
        while sent < TOTAL {
            if (&out).write_all(&chunk).is_err() {
                return sent;
            }
            sent += chunk.len();
        }
        let _ = out.shutdown(Shutdown::Write);
        sent
    });
    let a = answer(&s);
    assert_eq!(a["status"], "error", "{a}");
    assert_eq!(a["kind"], "bad_request", "{a}");
    assert!(
        a["message"].as_str().unwrap_or("").contains("longer than"),
        "{a}"
    );
    let sent = writer.join().expect("writer");
    assert!(sent < TOTAL, "the server read all 64 MiB before refusing");

    let grown = |before: u64, after: u64| after.saturating_sub(before) / 1024;
    let (rss_after, peak_after) = (kib("VmRSS:"), kib("VmHWM:"));
    assert!(
        grown(rss, rss_after) <= 8,
        "resident size grew from {rss} to {rss_after} KiB"
    );
    assert!(
        grown(peak, peak_after) <= 8,
        "peak resident size grew from {peak} to {peak_after} KiB"
    );
    // And it still answers.
    env.snapvol_ok(&["snapshot", "list", "v"]);
    server.stop();
}

#[test]
fn a_control_client_trickling_its_request_is_told_so_and_closed_at_the_deadline() {
    let env = Env::new();
    env.create("v", "64M");
    let server = env.serve();
    let s = control(&env);
    let connected = Instant::now();
    let request = padded_request();
    let trickler = Trickler::start(&s, request.clone());
    let a = answer(&s);
    let answered = connected.elapsed();
    assert_eq!(a["status"], "error", "{a}");
    assert_eq!(a["kind"], "timeout", "{a}");
    // Then the server closes the connection.
    let closed = match (&s).read(&mut [0u8; 256]) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    assert!(closed, "the connection was left open after the answer");
    let sent = trickler.stop();
    assert!(
        sent < request.len(),
        "the whole request got through ({sent} bytes)"
    );
    assert!(
        answered >= DEADLINE,
        "answered after {answered:?}, before the {DEADLINE:?} deadline"
    );
    server.stop();
}

#[test]
fn beyond_64_control_connections_one_more_is_told_so_and_room_comes_back_when_one_leaves() {
    let env = Env::new();
    env.create("v", "64M");
    let server = env.serve();
    let mut held: Vec<UnixStream> = (0..64).map(|_| control(&env)).collect();
    let a = answer(&control(&env));
    assert_eq!(a["kind"], "busy", "{a}");
    let err = env.snapvol_fails(&["snapshot", "list", "v"]);
    assert!(err.contains("too many control connections"), "{err}");

    // Room comes back once the server has noticed that one left.
    drop(held.pop());
    let start = Instant::now();
    loop {
        let s = control(&env);
        // Refused, the connection may be closed before the request is written; the answer
        // is there to read all the same.
        let _ = (&s).write_all(b"{\"op\":\"snapshot_list\",\"volume\":\"v\"}\n");
        let a = answer(&s);
        if a["status"] == "ok" {
            break;
        }
        assert_eq!(a["kind"], "busy", "{a}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no room for 5 s after a client left"
        );
        thread::sleep(Duration::from_millis(10));
    }
    drop(held);
    server.stop();
}

#[test]
fn the_control_socket_is_its_owners_alone() {
    let env = Env::new();
    env.create("v", "64M");
    let server = env.serve();
    let meta = fs::metadata(env.store().join("control.sock")).expect("control.sock");
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "mode {:o}",
        meta.permissions().mode()
    );
    // Nothing left of how it was made.
    let names: Vec<String> = fs::read_dir(env.store())
        .expect("store")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".ctl")), "{names:?}");
    server.stop();
}
