//! The metrics endpoint's sockets: a listener on its own thread, and one short-lived thread
//! per connection, at most [`MAX_CLIENTS`] at once, each with a deadline. The bytes are
//! `http_head.rs`'s.
//!
//! Why not an HTTP crate: the small blocking servers (tiny_http) read header lines without a
//! length limit, start a thread per connection without a bound and have no read deadline, so
//! one slow or hostile client holds memory and threads for as long as it likes; the async
//! ones would bring a runtime into a server that has none. What is needed here is one GET.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http_head::{parse_head, response, route, Route, MAX_HEAD};

/// Connections served at once; one more is closed at once (a scraper retries at its next
/// interval). Prometheus scrapes one at a time.
pub const MAX_CLIENTS: usize = 8;
/// From the connection to the whole head read: a client that trickles its request is closed
/// then, and holds one of the [`MAX_CLIENTS`] places until it is.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Time to write the response to a client that does not read it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoint serves at `/metrics`: the body and its content type.
pub type Render = dyn Fn() -> (String, &'static str) + Send + Sync;

/// A running endpoint; [`Endpoint::stop`] ends it.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Listens on `addr` and serves `render` at `/metrics` until stopped.
    pub fn start(addr: SocketAddr, render: Arc<Render>) -> io::Result<Endpoint> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || accept_loop(&listener, &flag, &render))?;
        Ok(Endpoint {
            addr,
            stopping,
            thread: Some(thread),
        })
    }

    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting; connections being answered finish on their own (within their deadline).
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_inner();
        }
    }
}

fn accept_loop(listener: &TcpListener, stopping: &AtomicBool, render: &Arc<Render>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = listener.accept();
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accepting a connection failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::debug!("metrics: too many connections; closed a new one");
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        let (active2, render) = (active.clone(), render.clone());
        let spawned = std::thread::Builder::new()
            .name("metrics-conn".into())
            .spawn(move || {
                if let Err(e) = answer(&stream, &*render) {
                    tracing::debug!(error = %e, "metrics: a request failed");
                }
                let _ = stream.shutdown(Shutdown::Both);
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(error = %e, "metrics: cannot start a connection thread");
        }
    }
}

/// Reads one request head (within [`HEAD_DEADLINE`] and [`MAX_HEAD`] bytes) and answers it.
fn answer(mut stream: &TcpStream, render: &Render) -> io::Result<()> {
    let deadline = Instant::now() + HEAD_DEADLINE;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    let route = loop {
        if let Some(r) = route(parse_head(&buf[..len])) {
            break r;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no whole request within the deadline",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[len..])? {
            0 => return Ok(()), // closed before a whole request: nothing to answer
            n => len += n,
        }
    };
    let text = "text/plain; charset=utf-8";
    let reply = match route {
        Route::Metrics { head_only } => {
            let (body, content_type) = render();
            response(200, content_type, body.as_bytes(), head_only)
        }
        Route::NotFound => response(404, text, b"only /metrics is served here\n", false),
        Route::MethodNotAllowed => response(405, text, b"GET or HEAD only\n", false),
        Route::BadRequest => response(400, text, b"not an HTTP/1.x request\n", false),
        Route::TooLarge => response(431, text, b"request head too large\n", false),
    };
    stream.write_all(&reply)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        let render: Arc<Render> = Arc::new(|| ("m 1\n".to_owned(), "text/plain"));
        Endpoint::start("127.0.0.1:0".parse().unwrap(), render).unwrap()
    }

    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn a_slow_client_does_not_hold_up_a_scrape() {
        let e = endpoint();
        // One that sends half a request and waits, and one that sends nothing at all.
        let mut slow = TcpStream::connect(e.local_addr()).unwrap();
        slow.write_all(b"GET /metr").unwrap();
        let _silent = TcpStream::connect(e.local_addr()).unwrap();
        let started = Instant::now();
        let out = exchange(e.local_addr(), b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\n") && out.ends_with("\r\n\r\nm 1\n"),
            "{out}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        // The slow one is closed at its deadline, answered nothing.
        slow.set_read_timeout(Some(HEAD_DEADLINE * 2)).unwrap();
        let mut rest = Vec::new();
        let n = slow.read_to_end(&mut rest).unwrap_or(0);
        assert_eq!(n, 0, "{}", String::from_utf8_lossy(&rest));
        e.stop();
    }

    #[test]
    fn connections_beyond_the_limit_are_closed_and_the_endpoint_recovers() {
        let e = endpoint();
        let idle: Vec<_> = (0..MAX_CLIENTS)
            .map(|_| TcpStream::connect(e.local_addr()).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut extra = TcpStream::connect(e.local_addr()).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut b = Vec::new();
        assert_eq!(
            extra.read_to_end(&mut b).unwrap_or(0),
            0,
            "served beyond the limit"
        );
        drop(idle);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = exchange(e.local_addr(), b"GET /metrics HTTP/1.0\r\n\r\n");
            if out.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not served again after the idle ones left"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        e.stop();
    }
}
