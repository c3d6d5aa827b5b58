//! What `snapvol serve` allows its clients, checked on the real binary: how many NBD
//! connections it serves at once.

mod serving;

use std::net::TcpStream;
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
