//! The byte-stream side of a connection: a reader that owns the receive buffer and feeds the
//! frame parsers, and the socket types the server accepts.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::Decoded;

/// Why reading a frame stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError<E> {
    /// The peer closed the stream between two frames.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer closed the stream in the middle of a frame.
    #[error("the peer closed the connection in the middle of a message")]
    Truncated,
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a valid frame.
    #[error("{0}")]
    Frame(E),
}

/// Owns the receive buffer of a connection and the read half of its socket.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

const READ_CHUNK: usize = 64 * 1024;

impl<R: Read> FrameReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
        }
    }

    /// Decodes the next frame with `parse`, reading from the socket as long as the parser
    /// says the buffer is incomplete.
    pub(crate) fn frame<T, E>(
        &mut self,
        parse: impl Fn(&[u8]) -> Result<Decoded<T>, E>,
    ) -> Result<T, ReadError<E>> {
        loop {
            match parse(&self.buf[self.start..self.end]).map_err(ReadError::Frame)? {
                Decoded::Frame(value, used) => {
                    self.start += used;
                    return Ok(value);
                }
                Decoded::Incomplete { needed } => self.fill(needed)?,
            }
        }
    }

    /// Reads more bytes so that the buffered region can grow to `needed` bytes.
    fn fill<E>(&mut self, needed: usize) -> Result<(), ReadError<E>> {
        // Always ask for at least one more byte, so a confused parser cannot spin.
        let needed = needed.max(self.end - self.start + 1);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.start < needed {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < needed {
                self.buf.resize(needed, 0);
            }
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) if self.start == self.end => return Err(ReadError::Closed),
                Ok(0) => return Err(ReadError::Truncated),
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Fills `out` with the next bytes of the stream (a payload that follows a header).
    pub(crate) fn read_exact<E>(&mut self, out: &mut [u8]) -> Result<(), ReadError<E>> {
        let buffered = (self.end - self.start).min(out.len());
        out[..buffered].copy_from_slice(&self.buf[self.start..self.start + buffered]);
        self.start += buffered;
        match self.inner.read_exact(&mut out[buffered..]) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ReadError::Truncated),
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// The stream the bytes come from.
    pub(crate) fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// True when bytes were read from the stream that no frame has used yet.
    pub(crate) fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    /// The stream the bytes come from, giving up any buffered bytes.
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// Reads and drops the next `n` bytes of the stream.
    pub(crate) fn discard<E>(&mut self, mut n: u64) -> Result<(), ReadError<E>> {
        let mut scratch = vec![0u8; READ_CHUNK.min(n as usize)];
        while n > 0 {
            let step = (scratch.len() as u64).min(n) as usize;
            self.read_exact(&mut scratch[..step])?;
            n -= step as u64;
        }
        Ok(())
    }
}

/// A connected socket of either family the server listens on.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub(crate) fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    pub(crate) fn shutdown(&self, how: Shutdown) {
        // Errors only mean the socket is already gone, which is what we want.
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }

    pub(crate) fn set_timeouts(
        &self,
        read: Option<Duration>,
        write: Option<Duration>,
    ) -> io::Result<()> {
        self.set_read_timeout(read)?;
        self.set_write_timeout(write)
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }

    pub(crate) fn peer(&self) -> String {
        match self {
            Stream::Tcp(s) => s
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp:?".into()),
            Stream::Unix(_) => "unix".into(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// One half of a connection's socket whose reads and writes fail with `TimedOut` once a
/// deadline has passed. A socket timeout alone limits each read, not their sum: a client
/// sending one byte every few seconds would never trip it. So before every call the socket's
/// timeout is set to the time left.
///
/// The time the server itself spends answering (looking an export up, which may open a volume
/// and replay its journal) is the server's, not the client's: it moves the deadline back.
#[derive(Debug)]
pub(crate) struct Deadline {
    stream: Stream,
    /// When the time is up, and the limit it was derived from (for the error message);
    /// `None` once lifted.
    until: Option<(Instant, Duration)>,
    /// The server's own time so far, which the deadline is moved back by.
    server_time: ServerTime,
}

/// The time a connection's server side has spent on its own work during the handshake,
/// shared by both halves' deadlines and the code that does that work.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerTime(Arc<AtomicU64>);

impl ServerTime {
    /// Runs `work`, counting its duration as the server's.
    pub(crate) fn count<T>(&self, work: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = work();
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::Relaxed);
        out
    }

    fn total(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

impl Deadline {
    /// `stream`, which must be done with within `limit` of `start`, plus whatever
    /// `server_time` counts.
    pub(crate) fn new(
        stream: Stream,
        start: Instant,
        limit: Duration,
        server_time: ServerTime,
    ) -> Self {
        Deadline {
            stream,
            until: Some((start + limit, limit)),
            server_time,
        }
    }

    /// From now on calls go straight to the socket, with whatever timeouts it has.
    pub(crate) fn lift(&mut self) {
        self.until = None;
    }

    /// The socket.
    pub(crate) fn into_inner(self) -> Stream {
        self.stream
    }

    /// Runs `op` with the socket timeout (set by `set`) no longer than the time left, retrying
    /// when the socket timed out early; fails with `TimedOut` once the time is up.
    fn call<T>(
        &mut self,
        set: fn(&Stream, Option<Duration>) -> io::Result<()>,
        mut op: impl FnMut(&mut Stream) -> io::Result<T>,
    ) -> io::Result<T> {
        let Some((until, limit)) = self.until else {
            return op(&mut self.stream);
        };
        loop {
            let until = until + self.server_time.total();
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the time limit of {limit:?} is up"),
                ));
            }
            set(&self.stream, Some(left))?;
            match op(&mut self.stream) {
                // A timed-out socket call reports EAGAIN; the loop decides whether the time
                // is really up.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
        }
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.call(Stream::set_read_timeout, |s| s.read(buf))
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.call(Stream::set_write_timeout, |s| s.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::frame::{parse_option_header, OptionHeader};

    /// A reader that hands out one byte per call, to exercise every "incomplete" path.
    struct Trickle(Vec<u8>, usize);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.1 == self.0.len() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0[self.1];
            self.1 += 1;
            Ok(1)
        }
    }

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let mut bytes = Vec::new();
        crate::handshake::frame::encode_option(&mut bytes, 7, b"xyz");
        crate::handshake::frame::encode_option(&mut bytes, 8, b"");
        let mut r = FrameReader::new(Trickle(bytes, 0));
        let h = r.frame(parse_option_header).unwrap();
        assert_eq!(
            h,
            OptionHeader {
                option: 7,
                length: 3
            }
        );
        let mut data = [0u8; 3];
        r.read_exact::<()>(&mut data).unwrap();
        assert_eq!(&data, b"xyz");
        assert_eq!(r.frame(parse_option_header).unwrap().option, 8);
        assert!(matches!(
            r.frame(parse_option_header),
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated_not_closed() {
        let mut r = FrameReader::new(&[0x49u8, 0x48][..]);
        assert!(matches!(
            r.frame(parse_option_header),
            Err(ReadError::Truncated)
        ));
        let mut r = FrameReader::new(&[1u8, 2][..]);
        let mut out = [0u8; 3];
        assert!(matches!(
            r.read_exact::<()>(&mut out),
            Err(ReadError::Truncated)
        ));
    }

    #[test]
    fn a_deadline_ends_a_stream_that_trickles_in_faster_than_any_read_timeout() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let trickler = std::thread::spawn(move || {
            // At most 10 s of bytes: the deadline must end the reads long before.
            for _ in 0..500 {
                if (&theirs).write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let start = Instant::now();
        let limit = Duration::from_millis(300);
        let mut d = Deadline::new(Stream::Unix(ours), start, limit, ServerTime::default());
        let mut got = 0;
        let err = loop {
            match d.read(&mut [0u8; 16]) {
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(start.elapsed() >= limit);
        assert!(got > 0, "the bytes that came in time were read");
        // Once the time is up, writes fail too.
        let err = d.write(b"late").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        d.into_inner().shutdown(Shutdown::Both);
        trickler.join().unwrap();
    }

    #[test]
    fn a_lifted_deadline_no_longer_limits_reads() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut d = Deadline::new(
            Stream::Unix(ours),
            Instant::now(),
            Duration::ZERO,
            ServerTime::default(),
        );
        assert_eq!(
            d.read(&mut [0u8; 1]).unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        d.lift();
        (&theirs).write_all(b"ok").unwrap();
        let mut buf = [0u8; 2];
        d.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ok");
    }

    #[test]
    fn frames_larger_than_the_buffer_grow_it() {
        let big = vec![7u8; READ_CHUNK * 2 + 5];
        let mut r = FrameReader::new(&big[..]);
        let n = big.len();
        let got = r
            .frame(|b| {
                Ok::<_, ()>(if b.len() >= n {
                    Decoded::Frame(b[..n].to_vec(), n)
                } else {
                    Decoded::Incomplete { needed: n }
                })
            })
            .unwrap();
        assert_eq!(got, big);
        let mut r = FrameReader::new(&big[..]);
        r.discard::<()>(big.len() as u64 - 1).unwrap();
        let mut last = [0u8; 1];
        r.read_exact::<()>(&mut last).unwrap();
    }
}
