//! The bytes of the metrics endpoint's HTTP: the head of a request read, and a response
//! written. Only `std`, and no I/O, so that the fuzz target `http_request` includes this file as
//! it is.
//!
//! The endpoint answers one request per connection and reads nothing of a request but its
//! request line (RFC 9112 section 3: `method SP request-target SP HTTP-version`): headers are
//! skipped up to the empty line that ends the head, and a body is never read. A head longer
//! than [`MAX_HEAD`] bytes is refused before more is read.

/// The most bytes of a request head read; beyond it the answer is 431 and the connection is
/// closed. Prometheus sends about 300.
pub const MAX_HEAD: usize = 8192;

/// What the bytes received so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head<'a> {
    /// The head has not ended yet: read more (while under [`MAX_HEAD`]).
    Incomplete,
    /// A whole head with a well-formed request line.
    Request {
        method: &'a str,
        /// The path and query, as sent.
        target: &'a str,
    },
    /// Not HTTP/1.x, or a request line that is not `method SP target SP version`.
    Malformed,
    /// [`MAX_HEAD`] bytes without the head's end.
    TooLarge,
}

/// Reads the head of a request from the bytes received so far. A head ends at an empty line
/// (CRLF CRLF, or a bare LF LF, which RFC 9112 section 2.2 lets a server accept).
pub fn parse_head(buf: &[u8]) -> Head<'_> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let Some(end) = head_end(window) else {
        return if buf.len() >= MAX_HEAD {
            Head::TooLarge
        } else {
            Head::Incomplete
        };
    };
    let head = &window[..end];
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let Ok(line) = std::str::from_utf8(line) else {
        return Head::Malformed;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Head::Malformed;
    };
    let method_ok =
        (1..=16).contains(&method.len()) && method.bytes().all(|b| b.is_ascii_uppercase());
    // origin-form ("/path?query") or, for OPTIONS, "*"; visible ASCII only.
    let target_ok =
        (target.starts_with('/') || target == "*") && target.bytes().all(|b| b.is_ascii_graphic());
    let version_ok = matches!(version, "HTTP/1.0" | "HTTP/1.1");
    if method_ok && target_ok && version_ok {
        Head::Request { method, target }
    } else {
        Head::Malformed
    }
}

/// Where the head ends (the index just past its empty line's first byte), if it has ended.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            // LF LF, or LF CR LF.
            match (buf.get(i + 1), buf.get(i + 2)) {
                (Some(b'\n'), _) => return Some(i + 1),
                (Some(b'\r'), Some(b'\n')) => return Some(i + 1),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// What the endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// 200 with the metrics (`head_only`: a HEAD request, no body).
    Metrics { head_only: bool },
    /// 404: only `/metrics` is served.
    NotFound,
    /// 405: `/metrics` with a method other than GET or HEAD.
    MethodNotAllowed,
    /// 400.
    BadRequest,
    /// 431.
    TooLarge,
}

/// The answer to a complete head (`None` for [`Head::Incomplete`]).
pub fn route(head: Head<'_>) -> Option<Route> {
    Some(match head {
        Head::Incomplete => return None,
        Head::Malformed => Route::BadRequest,
        Head::TooLarge => Route::TooLarge,
        Head::Request { method, target } => {
            let path = target.split('?').next().unwrap_or(target);
            match (path, method) {
                ("/metrics", "GET") => Route::Metrics { head_only: false },
                ("/metrics", "HEAD") => Route::Metrics { head_only: true },
                ("/metrics", _) => Route::MethodNotAllowed,
                _ => Route::NotFound,
            }
        }
    })
}

/// A whole response that closes the connection: status line, headers, and `body` (left out,
/// its length still given, when `head_only`).
pub fn response(status: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let allow = if status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// Feeds arbitrary bytes to the parser, whole and in every prefix a slow client could have
/// sent so far, and checks what it says of them (`fuzz/fuzz_targets/http_request.rs`, and the
/// seed replay below).
#[allow(dead_code)] // Used by the fuzz target and the tests, not by the binary.
pub fn fuzz_parse(data: &[u8]) {
    let whole = parse_head(data);
    if let Head::Request { method, target } = whole {
        assert!(!method.is_empty() && target.len() <= MAX_HEAD);
    }
    if data.len() >= MAX_HEAD {
        assert_ne!(whole, Head::Incomplete, "{MAX_HEAD} bytes must decide");
    }
    // A head that has ended stays ended, the same, whatever follows.
    for cut in (0..=data.len().min(MAX_HEAD + 1)).step_by(97) {
        let prefix = parse_head(&data[..cut]);
        if prefix != Head::Incomplete && prefix != Head::TooLarge {
            assert_eq!(
                prefix, whole,
                "the head of {cut} bytes changed with more bytes"
            );
        }
    }
    if let Some(r) = route(whole) {
        let status = match r {
            Route::Metrics { .. } => 200,
            Route::NotFound => 404,
            Route::MethodNotAllowed => 405,
            Route::BadRequest => 400,
            Route::TooLarge => 431,
        };
        let out = response(status, "text/plain", data, false);
        assert!(out.starts_with(b"HTTP/1.1 ") && out.ends_with(data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prometheus_scrape_is_a_get_of_metrics() {
        let scrape = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9108\r\nUser-Agent: \
            Prometheus/2.45.0\r\nAccept: text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n\r\n";
        assert_eq!(
            parse_head(scrape),
            Head::Request {
                method: "GET",
                target: "/metrics"
            }
        );
        assert_eq!(
            route(parse_head(scrape)),
            Some(Route::Metrics { head_only: false })
        );
        let curl = b"HEAD /metrics?x=1 HTTP/1.0\n\n";
        assert_eq!(
            route(parse_head(curl)),
            Some(Route::Metrics { head_only: true })
        );
    }

    #[test]
    fn other_paths_methods_and_garbage_get_their_own_errors() {
        let answer = |b: &[u8]| route(parse_head(b));
        assert_eq!(answer(b"GET / HTTP/1.1\r\n\r\n"), Some(Route::NotFound));
        assert_eq!(
            answer(b"GET /metricsx HTTP/1.1\r\n\r\n"),
            Some(Route::NotFound)
        );
        assert_eq!(
            answer(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            Some(Route::MethodNotAllowed)
        );
        assert_eq!(answer(b"GET /metrics\r\n\r\n"), Some(Route::BadRequest));
        assert_eq!(
            answer(b"GET  /metrics HTTP/1.1\r\n\r\n"),
            Some(Route::BadRequest)
        );
        assert_eq!(
            answer(b"get /metrics HTTP/1.1\r\n\r\n"),
            Some(Route::BadRequest)
        );
        assert_eq!(
            answer(b"GET /metrics HTTP/2\r\n\r\n"),
            Some(Route::BadRequest)
        );
        assert_eq!(answer(b"\x16\x03\x01\x02\x00\n\n"), Some(Route::BadRequest));
        assert_eq!(answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        let mut flood = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        flood.resize(MAX_HEAD, b'a');
        assert_eq!(parse_head(&flood), Head::TooLarge);
        assert_eq!(parse_head(&flood[..MAX_HEAD - 1]), Head::Incomplete);
    }

    #[test]
    fn responses_close_the_connection_and_say_their_length() {
        let r = response(405, "text/plain", b"no", false);
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        assert!(r.contains("Allow: GET, HEAD\r\n") && r.contains("Connection: close\r\n"));
        assert!(r.ends_with("Content-Length: 2\r\nAllow: GET, HEAD\r\nConnection: close\r\n\r\nno"));
        let head = response(200, "text/plain", b"body", true);
        assert!(String::from_utf8(head)
            .unwrap()
            .ends_with("Content-Length: 4\r\nConnection: close\r\n\r\n"));
    }

    /// The fuzz seeds (and any finding copied next to them) replayed on every test run.
    #[test]
    fn http_request_fuzz_seeds_replay_without_panicking() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/http_request");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/http_request") {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            fuzz_parse(&data);
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }
}
