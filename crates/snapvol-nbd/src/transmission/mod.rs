//! The transmission phase: requests in, replies out, several in flight.
//!
//! [`frame`] holds the bytes. [`check_request`] (in `check`) decides, without I/O, what a
//! request may do on the negotiated export. `serve`, here, runs a connection: the calling
//! thread reads requests and hands them to a small pool of worker threads (at most
//! `max_in_flight` requests are in flight; the reader blocks before reading the payload of one
//! more), and the workers write their replies, possibly out of order, through one
//! mutex-protected writer.

mod check;
pub mod frame;

pub use check::{check_request, clip_extents, Action, SessionInfo};

use std::collections::VecDeque;
use std::io::{BufWriter, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use tracing::{debug, error, warn};

use crate::device::{BlockDevice, DevError, RequestDone};
use crate::handshake::{MetaContext, Negotiated};
use crate::payload;
use crate::proto::*;
use crate::stream::{FrameReader, ReadError};
use frame::{Command, Request};

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
    payload: Arc<[u8]>,
    /// When the request and its payload had been read.
    received: Instant,
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

/// What a request performed successfully answers its client with.
enum Reply {
    /// A simple (or structured `NBD_REPLY_TYPE_NONE`) success without payload.
    Done,
    /// The bytes a read returned: the first `len` bytes of the worker's read buffer.
    Data { offset: u64, len: usize },
    /// Reply chunks already encoded (block status).
    Frames(Vec<u8>),
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

/// The largest read buffer a worker keeps between requests: a request up to this size reuses
/// it (no allocation, no fresh zeroed pages), a larger one allocates its own. Sixteen workers of
/// a connection keep at most 32 MiB.
const KEEP_READ_BUFFER: usize = 2 << 20;

impl<W: Write> Ctx<'_, W> {
    /// Performs a request and replies to it. `read_buf` is the worker's buffer for read data,
    /// kept from request to request.
    fn handle(&self, job: Job, read_buf: &mut Vec<u8>) {
        let Job {
            req,
            payload,
            received,
        } = job;
        let result = match check_request(&req, &self.info) {
            Ok(action) => catch_unwind(AssertUnwindSafe(|| {
                self.perform(&req, action, &payload, read_buf)
            }))
            .unwrap_or_else(|_| {
                error!(peer = self.peer, request = ?req, "the device panicked");
                Err(DevError::io("internal error in the device"))
            }),
            Err(e) => Err(e),
        };
        // The device hears of the request before the client does, so that whatever it counts
        // (`serve --metrics`) already includes every request a client has its reply to.
        self.device.replied(&RequestDone {
            command: req.command,
            length: req.length,
            error: result.as_ref().err().map(|e| e.errno),
            elapsed: received.elapsed(),
        });
        match result {
            Ok(Reply::Done) => self.writer.ok(req.cookie),
            Ok(Reply::Data { offset, len }) => {
                self.writer.read_data(req.cookie, offset, &read_buf[..len])
            }
            Ok(Reply::Frames(head)) => self.writer.send(&head, &[]),
            Err(e) => {
                debug!(peer = self.peer, request = ?req, error = %e, "request failed");
                self.writer.error(req.cookie, &e)
            }
        };
        if read_buf.len() > KEEP_READ_BUFFER {
            *read_buf = Vec::new();
        }
    }

    /// Runs the action and returns the reply it earned; the caller sends it.
    fn perform(
        &self,
        req: &Request,
        action: Action,
        payload: &Arc<[u8]>,
        read_buf: &mut Vec<u8>,
    ) -> Result<Reply, DevError> {
        let dev = self.device;
        let mark_dirty = || self.dirty.store(true, Ordering::SeqCst);
        match action {
            Action::Read { offset, len } => {
                let len = len as usize;
                if read_buf.len() < len {
                    read_buf.resize(len, 0);
                }
                // A device's read fills the whole buffer or fails: no byte of an earlier
                // request's data is ever sent.
                dev.read(offset, &mut read_buf[..len])?;
                return Ok(Reply::Data { offset, len });
            }
            Action::Write { offset, fua } => {
                dev.write_shared(offset, payload, fua)?;
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
            } => {
                return self
                    .block_status(req.cookie, offset, len, req_one)
                    .map(Reply::Frames)
            }
        }
        Ok(Reply::Done)
    }

    fn block_status(
        &self,
        cookie: u64,
        offset: u64,
        len: u32,
        req_one: bool,
    ) -> Result<Vec<u8>, DevError> {
        let room = self.info.size - offset;
        // proto.md: a successful reply has exactly one chunk per selected context, so one
        // context that fails fails the whole request.
        let mut chunks = Vec::with_capacity(self.contexts.len());
        for c in self.contexts {
            let (raw, unknown) = if c.name == BASE_ALLOCATION {
                (self.device.block_status(offset, len)?, Some(0))
            } else {
                // Only the device knows what its contexts' flags mean.
                (
                    self.device.context_block_status(&c.name, offset, len)?,
                    None,
                )
            };
            let extents = clip_extents(&raw, len, room, req_one, unknown).ok_or_else(|| {
                DevError::io(format!(
                    "no block status of {} at {offset:#x}+{len:#x}",
                    c.name
                ))
            })?;
            chunks.push((c.id, extents));
        }
        let mut head = Vec::new();
        let last = chunks.len() - 1;
        for (i, (id, extents)) in chunks.iter().enumerate() {
            let flags = if i == last { NBD_REPLY_FLAG_DONE } else { 0 };
            frame::encode_block_status(&mut head, flags, cookie, *id, extents);
        }
        Ok(head)
    }
}

fn worker<W: Write>(pool: &Pool, ctx: &Ctx<'_, W>) {
    let mut read_buf = Vec::new();
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
        ctx.handle(job, &mut read_buf);
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
    let mut inline_buf = Vec::new();
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
            // Requests without a payload share one empty buffer (no allocation).
            let mut payload: Arc<[u8]> = Arc::default();
            if req.payload_len() > 0 {
                // Read straight into the buffer the device may keep (no copy of it later): a
                // large one reused once the device has let go of it (`payload`).
                payload = payload::take(req.payload_len() as usize);
                let buf = Arc::get_mut(&mut payload).expect("a buffer taken has one owner");
                if let Err(e) = reader.read_exact::<std::convert::Infallible>(buf) {
                    if !inline {
                        pool.state.lock().in_flight -= 1;
                    }
                    break TransmissionEnd::Failed(format!("reading a write payload: {e}"));
                }
                payload::keep(&payload);
            }
            let job = Job {
                req,
                payload,
                received: Instant::now(),
            };
            if inline {
                ctx.handle(job, &mut inline_buf);
                continue;
            }
            let mut st = pool.state.lock();
            st.jobs.push_back(job);
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
