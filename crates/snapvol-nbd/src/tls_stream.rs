//! A TLS session over a connection's two socket halves, split into a reader and a writer that
//! work from different threads, as the plain socket's halves do.
//!
//! A rustls connection is one state object, but the transmission phase reads the next request
//! on one thread while workers send replies on others, and a reader waiting for a request that
//! may not come for hours must never hold up a reply. So no lock is held across a blocking
//! socket call: the reader reads records from the socket with no lock, then takes the state's
//! lock only to hand them over and decrypt; a writer takes the state's lock only to encrypt and
//! collect the records into memory. The records then go to the socket under a second lock,
//! `out`, which is taken *before* the state's and held until they are written, so that records
//! reach the socket in the order they were sealed whichever thread sealed them.
//!
//! Lock order: `out`, then `conn`; the reader takes `conn` alone, or `out` then `conn` when
//! decrypting left something to send (an alert, a key update).

use std::io::{self, Read, Write};
use std::sync::Arc;

use parking_lot::Mutex;
use rustls::{ServerConfig, ServerConnection};

use crate::stream::Deadline;

/// Bytes read from the socket per call: a few records of up to 16 KiB, so that a 1 MiB write
/// costs 16 reads, as in plain text.
const SOCKET_READ: usize = 64 * 1024;

/// Plaintext rustls encrypts before its records must be written out (its default is 64 KiB):
/// a 1 MiB read reply goes out in 4 socket writes rather than 16.
const SEND_BUFFER: usize = 256 * 1024;

/// The state shared by a session's reader and writer.
#[derive(Debug)]
pub(crate) struct Session {
    conn: Mutex<ServerConnection>,
    out: Mutex<Outgoing>,
}

/// The socket's write half and a buffer for the records about to be written to it.
#[derive(Debug)]
struct Outgoing {
    raw: Deadline,
    records: Vec<u8>,
}

impl Session {
    /// Writes every record the state has ready; `out` is the caller's guard of `self.out`.
    fn write_records(&self, out: &mut Outgoing) -> io::Result<()> {
        out.records.clear();
        {
            let mut conn = self.conn.lock();
            while conn.wants_write() {
                conn.write_tls(&mut out.records)?;
            }
        }
        if out.records.is_empty() {
            return Ok(());
        }
        let Outgoing { raw, records } = out;
        raw.write_all(records)?;
        raw.flush()
    }

    fn send_pending(&self) -> io::Result<()> {
        self.write_records(&mut self.out.lock())
    }

    /// Ends the session with a `close_notify` alert (proto.md: a party closing the connection
    /// SHOULD shut TLS down first). Best effort: the connection is closed next anyway.
    pub(crate) fn close(&self) {
        let mut out = self.out.lock();
        self.conn.lock().send_close_notify();
        let _ = self.write_records(&mut out);
    }

    /// From now on socket calls go straight to the socket, without the handshake's deadline.
    fn lift(&self) {
        self.out.lock().raw.lift();
    }
}

/// The receiving side: decrypted bytes out of the socket's read half.
#[derive(Debug)]
pub(crate) struct TlsReader {
    session: Arc<Session>,
    raw: Deadline,
    /// Bytes read from the socket that rustls has not taken yet (`start..end`): it takes them
    /// a record or so at a time, and only while the plaintext it holds is read out.
    incoming: Vec<u8>,
    start: usize,
    end: usize,
}

impl TlsReader {
    /// Lifts the handshake's deadline from both socket halves.
    pub(crate) fn lift(&mut self) {
        self.raw.lift();
        self.session.lift();
    }

    /// Hands rustls more records: those read earlier, else what one read of the socket
    /// brings. Returns false at the end of the socket's stream (which rustls is told of too).
    fn receive(&mut self) -> io::Result<bool> {
        let mut more = true;
        if self.start == self.end {
            let n = loop {
                match self.raw.read(&mut self.incoming) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            (self.start, self.end, more) = (0, n, n > 0);
        }
        let mut conn = self.session.conn.lock();
        let mut records = &self.incoming[self.start..self.end];
        let taken = conn.read_tls(&mut records)?;
        self.start += taken;
        let processed = conn.process_new_packets();
        let wants_write = conn.wants_write();
        drop(conn);
        if wants_write {
            // An alert explaining a failure below, a key update, session tickets.
            let sent = self.session.send_pending();
            if processed.is_ok() {
                sent?;
            }
        }
        processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(more)
    }
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.session.conn.lock().reader().read(buf) {
                // Ok(0) is the client's close_notify: the end of the stream.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket closed without close_notify. NBD messages carry their own
                // lengths, so the frame reader still tells a cut message from a closed stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            self.receive()?;
        }
    }
}

/// The sending side: plaintext in, records onto the socket's write half.
#[derive(Debug)]
pub(crate) struct TlsWriter {
    session: Arc<Session>,
}

impl TlsWriter {
    /// The session, to close it once the writer is gone.
    pub(crate) fn session(&self) -> Arc<Session> {
        self.session.clone()
    }
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = self.session.out.lock();
        // rustls takes at most its buffer limit (SEND_BUFFER) at a time; the caller's write_all
        // comes back for the rest once these records are on their way.
        let n = self.session.conn.lock().writer().write(buf)?;
        self.session.write_records(&mut out)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Every write already wrote its records.
        Ok(())
    }
}

/// Runs the server's side of a TLS handshake over the socket halves (within whatever deadline
/// they carry) and returns the session's reader and writer. A failed handshake sends the
/// client the alert that says why, then fails.
pub(crate) fn accept(
    config: Arc<ServerConfig>,
    read_half: Deadline,
    write_half: Deadline,
) -> io::Result<(TlsReader, TlsWriter)> {
    let mut conn = ServerConnection::new(config).map_err(io::Error::other)?;
    conn.set_buffer_limit(Some(SEND_BUFFER));
    let session = Arc::new(Session {
        conn: Mutex::new(conn),
        out: Mutex::new(Outgoing {
            raw: write_half,
            records: Vec::new(),
        }),
    });
    let mut reader = TlsReader {
        session: session.clone(),
        raw: read_half,
        incoming: vec![0; SOCKET_READ],
        start: 0,
        end: 0,
    };
    while session.conn.lock().is_handshaking() {
        if !reader.receive()? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection during the TLS handshake",
            ));
        }
    }
    // The handshake's last flight, and session tickets.
    session.send_pending()?;
    Ok((reader, TlsWriter { session }))
}
