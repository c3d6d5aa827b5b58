//! The transmission phase: requests in, replies out, several in flight.
//!
//! [`frame`] holds the bytes. [`check_request`] decides, without I/O, what a request may do
//! on the negotiated export. `serve` runs a connection: the calling thread reads requests
//! and hands them to a small pool of worker threads (at most `max_in_flight` requests are
//! in flight; the reader blocks before reading the payload of one more), and the workers
//! write their replies, possibly out of order, through one mutex-protected writer.

pub mod frame;

use std::collections::VecDeque;
use std::io::{BufWriter, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use parking_lot::{Condvar, Mutex};
use tracing::{debug, error, warn};

use crate::device::{BlockDevice, DevError, Extent};
use crate::handshake::{MetaContext, Negotiated};
use crate::proto::*;
use crate::stream::{FrameReader, ReadError};
use frame::{Command, Request};

/// What the server knows about a connection when it checks a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags sent to the client.
    pub flags: u16,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// At least one metadata context is selected.
    pub has_contexts: bool,
}

/// What a valid request asks of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read `len` bytes.
    Read {
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Write the payload.
    Write {
        /// Offset.
        offset: u64,
        /// Force unit access.
        fua: bool,
    },
    /// Flush.
    Flush,
    /// Trim a range.
    Trim {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Force unit access.
        fua: bool,
    },
    /// Zero a range.
    WriteZeroes {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Force unit access.
        fua: bool,
    },
    /// Prefetch hint.
    Cache {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Block status of every selected context.
    BlockStatus {
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
        /// At most one extent per context.
        req_one: bool,
    },
}

fn einval(what: impl Into<String>) -> DevError {
    DevError::invalid(what)
}

/// Decides what `req` may do on the export described by `s`, or which error it gets
/// (proto.md "Request types" and "Error values"). `NBD_CMD_DISC` is handled by the caller.
pub fn check_request(req: &Request, s: &SessionInfo) -> Result<Action, DevError> {
    let fua = req.flags & NBD_CMD_FLAG_FUA != 0;
    let read_only = s.flags & NBD_FLAG_READ_ONLY != 0;
    // FUA is tolerated on every command: proto.md notes clients set it on reads too.
    let mut allowed = NBD_CMD_FLAG_FUA;
    match req.command {
        Command::Read if s.flags & NBD_FLAG_SEND_DF != 0 => allowed |= NBD_CMD_FLAG_DF,
        Command::WriteZeroes => {
            allowed |= NBD_CMD_FLAG_NO_HOLE;
            // Without NBD_FLAG_SEND_FAST_ZERO the spec says to answer EINVAL, not ENOTSUP.
            if s.flags & NBD_FLAG_SEND_FAST_ZERO != 0 {
                allowed |= NBD_CMD_FLAG_FAST_ZERO;
            }
        }
        Command::BlockStatus => allowed |= NBD_CMD_FLAG_REQ_ONE,
        _ => {}
    }
    if req.flags & !allowed != 0 {
        return Err(einval(format!(
            "command flags {:#x} are not valid for {:?}",
            req.flags & !allowed,
            req.command
        )));
    }
    let in_range = |len: u64| -> Result<(), DevError> {
        match req.offset.checked_add(len) {
            Some(end) if end <= s.size => Ok(()),
            _ => Err(einval(format!(
                "range {:#x}+{len:#x} is past the end of the export ({:#x})",
                req.offset, s.size
            ))),
        }
    };
    let writable = || -> Result<(), DevError> {
        if read_only {
            Err(DevError::permission("the export is read-only"))
        } else {
            Ok(())
        }
    };
    let len = u64::from(req.length);
    match req.command {
        Command::Read => {
            if req.length > MAX_PAYLOAD {
                // proto.md: a structured server may reject large reads with EOVERFLOW.
                let errno = if s.structured {
                    Errno::EOVERFLOW
                } else {
                    Errno::EINVAL
                };
                return Err(DevError::new(
                    errno,
                    format!("read of {len} bytes exceeds the maximum payload {MAX_PAYLOAD}"),
                ));
            }
            in_range(len)?;
            Ok(Action::Read {
                offset: req.offset,
                len: req.length,
            })
        }
        Command::Write => {
            writable()?;
            in_range(len)?;
            Ok(Action::Write {
                offset: req.offset,
                fua,
            })
        }
        Command::Flush => Ok(Action::Flush),
        Command::Trim => {
            writable()?;
            in_range(len)?;
            Ok(Action::Trim {
                offset: req.offset,
                len,
                fua,
            })
        }
        Command::WriteZeroes => {
            writable()?;
            in_range(len)?;
            Ok(Action::WriteZeroes {
                offset: req.offset,
                len,
                fua,
            })
        }
        Command::Cache => {
            in_range(len)?;
            Ok(Action::Cache {
                offset: req.offset,
                len,
            })
        }
        Command::BlockStatus => {
            if !s.structured || !s.has_contexts {
                return Err(einval("no metadata context was selected"));
            }
            if req.length == 0 {
                return Err(einval("block status of an empty range"));
            }
            in_range(len)?;
            Ok(Action::BlockStatus {
                offset: req.offset,
                len: req.length,
                req_one: req.flags & NBD_CMD_FLAG_REQ_ONE != 0,
            })
        }
        Command::Disc => Err(einval("NBD_CMD_DISC has no reply")),
        Command::Unknown(t) => Err(einval(format!("unknown command {t}"))),
    }
}

/// Makes a device's block-status answer follow the spec: no zero-length descriptors, never
/// past the end of the export (`room` bytes from the request offset), no descriptor after
/// the one that reaches the requested length, at most one descriptor (no longer than the
/// request) with `req_one`, at most [`MAX_EXTENTS`], neighbours with equal flags merged, and
/// at least one descriptor (flags 0 — "allocated, contents unknown" — is always true).
pub fn clip_extents(raw: &[Extent], req_len: u32, room: u64, req_one: bool) -> Vec<Extent> {
    let want = u64::from(req_len);
    let mut out: Vec<Extent> = Vec::new();
    let mut total = 0u64;
    for e in raw {
        if total >= want || total >= room || out.len() >= MAX_EXTENTS {
            break;
        }
        let len = u64::from(e.length).min(room - total) as u32;
        if len == 0 {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.flags == e.flags && last.length.checked_add(len).is_some() => {
                last.length += len
            }
            _ => out.push(Extent::new(len, e.flags)),
        }
        total += u64::from(len);
    }
    if out.is_empty() {
        out.push(Extent::new(want.min(room) as u32, 0));
    }
    if req_one {
        out.truncate(1);
        out[0].length = out[0].length.min(req_len);
    }
    out
}

/// Serialises replies onto the socket. Replies of different requests never interleave.
struct ReplyWriter<'a, W: Write> {
    out: Mutex<BufWriter<W>>,
    structured: bool,
    failed: AtomicBool,
    /// Closes the socket, so the reader stops too once replies cannot be delivered.
    kill: &'a (dyn Fn() + Sync),
}

impl<W: Write> ReplyWriter<'_, W> {
    /// Writes one reply (header bytes, then an optional large payload) and flushes.
    fn send(&self, head: &[u8], data: &[u8]) -> bool {
        if self.failed.load(Ordering::Relaxed) {
            return false;
        }
        let mut out = self.out.lock();
        let r = out
            .write_all(head)
            .and_then(|()| out.write_all(data))
            .and_then(|()| out.flush());
        if let Err(e) = r {
            if !self.failed.swap(true, Ordering::Relaxed) {
                debug!(error = %e, "writing a reply failed");
                (self.kill)();
            }
            return false;
        }
        true
    }

    fn ok(&self, cookie: u64) -> bool {
        let mut head = Vec::with_capacity(frame::CHUNK_HEADER_LEN);
        if self.structured {
            frame::encode_none(&mut head, cookie);
        } else {
            frame::encode_simple_reply(&mut head, 0, cookie);
        }
        self.send(&head, &[])
    }

    fn error(&self, cookie: u64, e: &DevError) -> bool {
        let mut head = Vec::with_capacity(64);
        if self.structured {
            frame::encode_error_chunk(
                &mut head,
                NBD_REPLY_FLAG_DONE,
                cookie,
                e.errno.code(),
                &e.message,
            );
        } else {
            frame::encode_simple_reply(&mut head, e.errno.code(), cookie);
        }
        self.send(&head, &[])
    }

    fn read_data(&self, cookie: u64, offset: u64, data: &[u8]) -> bool {
        let mut head = Vec::with_capacity(frame::CHUNK_HEADER_LEN + 8);
        if !self.structured {
            frame::encode_simple_reply(&mut head, 0, cookie);
        } else if data.is_empty() {
            // An OFFSET_DATA chunk must carry at least one byte.
            frame::encode_none(&mut head, cookie);
        } else {
            frame::encode_offset_data_header(
                &mut head,
                NBD_REPLY_FLAG_DONE,
                cookie,
                offset,
                data.len() as u32,
            );
        }
        self.send(&head, data)
    }
}

/// One request handed to a worker.
struct Job {
    req: Request,
    payload: Vec<u8>,
}

#[derive(Default)]
struct PoolState {
    jobs: VecDeque<Job>,
    in_flight: usize,
    idle: usize,
    threads: usize,
    closed: bool,
}

#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    work: Condvar,
    slots: Condvar,
}

/// Everything a worker needs.
struct Ctx<'a, W: Write> {
    device: &'a dyn BlockDevice,
    info: SessionInfo,
    contexts: &'a [MetaContext],
    writer: ReplyWriter<'a, W>,
    /// A write succeeded since the last successful flush.
    dirty: AtomicBool,
    peer: &'a str,
}

impl<W: Write> Ctx<'_, W> {
    fn handle(&self, job: Job) {
        let Job { req, payload } = job;
        let result = match check_request(&req, &self.info) {
            Ok(action) => catch_unwind(AssertUnwindSafe(|| self.perform(&req, action, &payload)))
                .unwrap_or_else(|_| {
                    error!(peer = self.peer, request = ?req, "the device panicked");
                    Err(DevError::io("internal error in the device"))
                }),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            debug!(peer = self.peer, request = ?req, error = %e, "request failed");
            self.writer.error(req.cookie, &e);
        }
    }

    /// Runs the action; on success sends the reply itself (reads and block status have
    /// payloads), on failure returns the error for the caller to send.
    fn perform(&self, req: &Request, action: Action, payload: &[u8]) -> Result<(), DevError> {
        let dev = self.device;
        let mark_dirty = || self.dirty.store(true, Ordering::SeqCst);
        match action {
            Action::Read { offset, len } => {
                let mut buf = vec![0u8; len as usize];
                dev.read(offset, &mut buf)?;
                self.writer.read_data(req.cookie, offset, &buf);
                return Ok(());
            }
            Action::Write { offset, fua } => {
                dev.write(offset, payload, fua)?;
                mark_dirty();
            }
            Action::Flush => {
                let was_dirty = self.dirty.swap(false, Ordering::SeqCst);
                if let Err(e) = dev.flush() {
                    if was_dirty {
                        mark_dirty();
                    }
                    return Err(e);
                }
            }
            Action::Trim { offset, len, fua } => {
                dev.trim(offset, len, fua)?;
                mark_dirty();
            }
            Action::WriteZeroes { offset, len, fua } => {
                dev.write_zeroes(offset, len, fua)?;
                mark_dirty();
            }
            Action::Cache { offset, len } => dev.cache(offset, len)?,
            Action::BlockStatus {
                offset,
                len,
                req_one,
            } => return self.block_status(req.cookie, offset, len, req_one),
        }
        self.writer.ok(req.cookie);
        Ok(())
    }

    fn block_status(
        &self,
        cookie: u64,
        offset: u64,
        len: u32,
        req_one: bool,
    ) -> Result<(), DevError> {
        let room = self.info.size - offset;
        let mut chunks = Vec::with_capacity(self.contexts.len());
        for c in self.contexts {
            let raw = if c.name == BASE_ALLOCATION {
                self.device.block_status(offset, len)?
            } else {
                self.device.context_block_status(&c.name, offset, len)?
            };
            chunks.push((c.id, clip_extents(&raw, len, room, req_one)));
        }
        let mut head = Vec::new();
        let last = chunks.len() - 1;
        for (i, (id, extents)) in chunks.iter().enumerate() {
            let flags = if i == last { NBD_REPLY_FLAG_DONE } else { 0 };
            frame::encode_block_status(&mut head, flags, cookie, *id, extents);
        }
        self.writer.send(&head, &[]);
        Ok(())
    }
}

fn worker<W: Write>(pool: &Pool, ctx: &Ctx<'_, W>) {
    loop {
        let job = {
            let mut st = pool.state.lock();
            loop {
                if let Some(job) = st.jobs.pop_front() {
                    break Some(job);
                }
                if st.closed {
                    break None;
                }
                st.idle += 1;
                pool.work.wait(&mut st);
                st.idle -= 1;
            }
        };
        let Some(job) = job else { return };
        ctx.handle(job);
        pool.state.lock().in_flight -= 1;
        pool.slots.notify_one();
    }
}

/// Who performs requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dispatch {
    /// The reader thread itself, one request at a time (for fuzzing: no threads).
    Inline,
    /// A pool of worker threads, with at most this many requests in flight.
    Pool(usize),
}

/// How a connection's transmission phase ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransmissionEnd {
    /// The client sent `NBD_CMD_DISC` or closed between requests.
    #[error("the client disconnected")]
    Clean,
    /// Something the log should mention.
    #[error("{0}")]
    Failed(String),
}

/// Serves requests until the client disconnects, the stream breaks or a request is
/// malformed; finishes every request in flight, then flushes the device if this connection
/// wrote to it since its last flush.
pub(crate) fn serve<R: Read, W: Write + Send>(
    reader: &mut FrameReader<R>,
    writer: W,
    neg: &Negotiated,
    dispatch: Dispatch,
    peer: &str,
    kill: &(dyn Fn() + Sync),
) -> TransmissionEnd {
    let (inline, max_in_flight) = match dispatch {
        Dispatch::Inline => (true, 1),
        Dispatch::Pool(n) => (false, n.max(1)),
    };
    let device = &*neg.export.device;
    let ctx = Ctx {
        device,
        info: SessionInfo {
            size: device.size(),
            flags: neg.flags,
            structured: neg.structured,
            has_contexts: !neg.contexts.is_empty(),
        },
        contexts: &neg.contexts,
        writer: ReplyWriter {
            out: Mutex::new(BufWriter::with_capacity(64 * 1024, writer)),
            structured: neg.structured,
            failed: AtomicBool::new(false),
            kill,
        },
        dirty: AtomicBool::new(false),
        peer,
    };
    let pool = Pool::default();
    let end = thread::scope(|s| {
        let (pool, ctx) = (&pool, &ctx);
        let end = loop {
            let req = match reader.frame(|b| frame::parse_request(b, MAX_PAYLOAD)) {
                Ok(r) => r,
                Err(ReadError::Closed) => break TransmissionEnd::Clean,
                Err(e) => break TransmissionEnd::Failed(e.to_string()),
            };
            if req.command == Command::Disc {
                debug!(peer, "NBD_CMD_DISC");
                break TransmissionEnd::Clean;
            }
            if !inline {
                let mut st = pool.state.lock();
                while st.in_flight >= max_in_flight {
                    pool.slots.wait(&mut st);
                }
                st.in_flight += 1;
            }
            let mut payload = Vec::new();
            if req.payload_len() > 0 {
                payload = vec![0u8; req.payload_len() as usize];
                if let Err(e) = reader.read_exact::<std::convert::Infallible>(&mut payload) {
                    if !inline {
                        pool.state.lock().in_flight -= 1;
                    }
                    break TransmissionEnd::Failed(format!("reading a write payload: {e}"));
                }
            }
            if inline {
                ctx.handle(Job { req, payload });
                continue;
            }
            let mut st = pool.state.lock();
            st.jobs.push_back(Job { req, payload });
            if st.jobs.len() > st.idle && st.threads < max_in_flight {
                st.threads += 1;
                s.spawn(move || worker(pool, ctx));
            } else {
                pool.work.notify_one();
            }
        };
        pool.state.lock().closed = true;
        pool.work.notify_all();
        end
    });
    if ctx.dirty.load(Ordering::SeqCst) {
        if let Err(e) = device.flush() {
            warn!(peer, export = %neg.name, error = %e, "flush at disconnect failed");
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: u16 = NBD_FLAG_HAS_FLAGS
        | NBD_FLAG_SEND_FLUSH
        | NBD_FLAG_SEND_FUA
        | NBD_FLAG_SEND_TRIM
        | NBD_FLAG_SEND_WRITE_ZEROES
        | NBD_FLAG_SEND_DF;

    fn info(flags: u16) -> SessionInfo {
        SessionInfo {
            size: 1 << 20,
            flags,
            structured: true,
            has_contexts: true,
        }
    }

    fn req(command: Command, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            command,
            cookie: 1,
            offset,
            length,
        }
    }

    fn errno(r: Result<Action, DevError>) -> Errno {
        r.unwrap_err().errno
    }

    #[test]
    fn writes_to_a_read_only_export_get_eperm() {
        let ro = info(NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY);
        for cmd in [Command::Write, Command::Trim, Command::WriteZeroes] {
            assert_eq!(errno(check_request(&req(cmd, 0, 0, 1), &ro)), Errno::EPERM);
        }
        assert!(check_request(&req(Command::Read, 0, 0, 1), &ro).is_ok());
    }

    #[test]
    fn requests_past_the_end_get_einval() {
        let s = info(RW);
        for cmd in [
            Command::Read,
            Command::Write,
            Command::Trim,
            Command::WriteZeroes,
            Command::Cache,
            Command::BlockStatus,
        ] {
            assert_eq!(
                errno(check_request(&req(cmd, 0, (1 << 20) - 1, 2), &s)),
                Errno::EINVAL
            );
            assert_eq!(
                errno(check_request(&req(cmd, 0, u64::MAX, 2), &s)),
                Errno::EINVAL,
                "offset overflow for {cmd:?}"
            );
            assert!(check_request(&req(cmd, 0, (1 << 20) - 2, 2), &s).is_ok());
        }
    }

    #[test]
    fn unknown_commands_and_flags_get_einval() {
        let s = info(RW);
        assert_eq!(
            errno(check_request(&req(Command::Unknown(42), 0, 0, 0), &s)),
            Errno::EINVAL
        );
        assert_eq!(
            errno(check_request(&req(Command::Read, 1 << 9, 0, 1), &s)),
            Errno::EINVAL
        );
        assert_eq!(
            errno(check_request(
                &req(Command::Write, NBD_CMD_FLAG_REQ_ONE, 0, 1),
                &s
            )),
            Errno::EINVAL
        );
        assert_eq!(
            errno(check_request(&req(Command::Disc, 0, 0, 0), &s)),
            Errno::EINVAL
        );
        // FUA is tolerated everywhere; DF only when advertised.
        assert!(check_request(
            &req(Command::Read, NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF, 0, 1),
            &s
        )
        .is_ok());
        assert_eq!(
            errno(check_request(
                &req(Command::Read, NBD_CMD_FLAG_DF, 0, 1),
                &info(RW & !NBD_FLAG_SEND_DF)
            )),
            Errno::EINVAL
        );
    }

    #[test]
    fn fast_zero_is_einval_unless_advertised() {
        let z = req(
            Command::WriteZeroes,
            NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_NO_HOLE,
            0,
            10,
        );
        assert_eq!(errno(check_request(&z, &info(RW))), Errno::EINVAL);
        assert_eq!(
            check_request(&z, &info(RW | NBD_FLAG_SEND_FAST_ZERO)).unwrap(),
            Action::WriteZeroes {
                offset: 0,
                len: 10,
                fua: false
            }
        );
    }

    #[test]
    fn oversized_reads_get_eoverflow_with_structured_replies_and_einval_without() {
        let r = req(Command::Read, 0, 0, MAX_PAYLOAD + 1);
        assert_eq!(errno(check_request(&r, &info(RW))), Errno::EOVERFLOW);
        let mut simple = info(RW);
        simple.structured = false;
        assert_eq!(errno(check_request(&r, &simple)), Errno::EINVAL);
    }

    #[test]
    fn block_status_needs_a_selected_context_and_a_nonempty_range() {
        let mut s = info(RW);
        let r = req(Command::BlockStatus, NBD_CMD_FLAG_REQ_ONE, 0, 512);
        assert_eq!(
            check_request(&r, &s).unwrap(),
            Action::BlockStatus {
                offset: 0,
                len: 512,
                req_one: true
            }
        );
        assert_eq!(
            errno(check_request(&req(Command::BlockStatus, 0, 0, 0), &s)),
            Errno::EINVAL
        );
        s.has_contexts = false;
        assert_eq!(errno(check_request(&r, &s)), Errno::EINVAL);
    }

    #[test]
    fn valid_requests_map_to_their_actions() {
        let s = info(RW);
        let fua = NBD_CMD_FLAG_FUA;
        assert_eq!(
            check_request(&req(Command::Write, fua, 8, 8), &s).unwrap(),
            Action::Write {
                offset: 8,
                fua: true
            }
        );
        assert_eq!(
            check_request(&req(Command::Flush, 0, 0, 0), &s).unwrap(),
            Action::Flush
        );
        assert_eq!(
            check_request(&req(Command::Trim, fua, 0, 4), &s).unwrap(),
            Action::Trim {
                offset: 0,
                len: 4,
                fua: true
            }
        );
        assert_eq!(
            check_request(&req(Command::Cache, 0, 0, 4), &s).unwrap(),
            Action::Cache { offset: 0, len: 4 }
        );
        // Zero-length reads and writes are odd but not errors.
        assert_eq!(
            check_request(&req(Command::Read, 0, 1 << 20, 0), &s).unwrap(),
            Action::Read {
                offset: 1 << 20,
                len: 0
            }
        );
    }

    #[test]
    fn clipped_extents_stop_at_the_request_and_the_export_end() {
        let e = |l, f| Extent::new(l, f);
        // Zero-length descriptors vanish and equal neighbours merge.
        assert_eq!(
            clip_extents(&[e(0, 1), e(10, 1), e(10, 1), e(10, 0)], 100, 1000, false),
            vec![e(20, 1), e(10, 0)]
        );
        // The descriptor reaching the requested length may extend past it; later ones go.
        assert_eq!(
            clip_extents(&[e(10, 1), e(50, 0), e(10, 1)], 30, 1000, false),
            vec![e(10, 1), e(50, 0)]
        );
        // Never past the end of the export.
        assert_eq!(
            clip_extents(&[e(10, 1), e(50, 0)], 30, 25, false),
            vec![e(10, 1), e(15, 0)]
        );
        // REQ_ONE: one descriptor, no longer than the request.
        assert_eq!(
            clip_extents(&[e(50, 3), e(5, 0)], 30, 1000, true),
            vec![e(30, 3)]
        );
        // Nothing usable: one descriptor of flags 0 covering the request.
        assert_eq!(clip_extents(&[], 30, 1000, false), vec![e(30, 0)]);
        assert_eq!(clip_extents(&[e(0, 2)], 30, 20, true), vec![e(20, 0)]);
        // Merging stops before a length would overflow.
        assert_eq!(
            clip_extents(&[e(u32::MAX, 1), e(5, 1)], u32::MAX, u64::MAX, false),
            vec![e(u32::MAX, 1)]
        );
    }
}
