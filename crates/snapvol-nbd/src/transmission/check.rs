//! What a request may do, decided without I/O: [`check_request`] turns a request and what the
//! connection negotiated into an [`Action`] or the error the spec asks for, and
//! [`clip_extents`] makes a device's block-status answer one the spec allows.
//!
//! It must not touch the device, the socket or the worker pool (that is `serve`'s, in the
//! parent module), nor parse or encode bytes (that is `frame`'s).

use super::frame::{Command, Request};
use crate::device::{DevError, Extent};
use crate::proto::*;

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

/// Makes a device's block-status answer follow the spec (proto.md, `NBD_CMD_BLOCK_STATUS`
/// and `NBD_REPLY_TYPE_BLOCK_STATUS`): no zero-length descriptors, never past the end of the
/// export (`room` bytes from the request offset), no descriptor after the one that reaches
/// the requested length, exactly one descriptor (no longer than the request) with `req_one`,
/// at most [`MAX_EXTENTS`], neighbours with equal flags merged, and at least one descriptor.
///
/// When the device answered nothing usable, the request is covered with `unknown`: flags
/// that are true of any range in the context (for `base:allocation`, 0: "allocated, contents
/// unknown"). A context without such a value gets `None`, and so does the answer: for a
/// dirty bitmap 0 means "clean", which the server cannot know.
pub fn clip_extents(
    raw: &[Extent],
    req_len: u32,
    room: u64,
    req_one: bool,
    unknown: Option<u32>,
) -> Option<Vec<Extent>> {
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
        out.push(Extent::new(want.min(room) as u32, unknown?));
    }
    if req_one {
        out.truncate(1);
        out[0].length = out[0].length.min(req_len);
    }
    Some(out)
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
        let clip = |raw: &[Extent], len, room, one| clip_extents(raw, len, room, one, Some(0));
        // Zero-length descriptors vanish and equal neighbours merge.
        assert_eq!(
            clip(&[e(0, 1), e(10, 1), e(10, 1), e(10, 0)], 100, 1000, false),
            Some(vec![e(20, 1), e(10, 0)])
        );
        // The descriptor reaching the requested length may extend past it; later ones go.
        assert_eq!(
            clip(&[e(10, 1), e(50, 0), e(10, 1)], 30, 1000, false),
            Some(vec![e(10, 1), e(50, 0)])
        );
        // Never past the end of the export.
        assert_eq!(
            clip(&[e(10, 1), e(50, 0)], 30, 25, false),
            Some(vec![e(10, 1), e(15, 0)])
        );
        // REQ_ONE: one descriptor, no longer than the request.
        assert_eq!(
            clip(&[e(50, 3), e(5, 0)], 30, 1000, true),
            Some(vec![e(30, 3)])
        );
        // Nothing usable: one descriptor of the context's "unknown" flags covering the request.
        assert_eq!(clip(&[], 30, 1000, false), Some(vec![e(30, 0)]));
        assert_eq!(clip(&[e(0, 2)], 30, 20, true), Some(vec![e(20, 0)]));
        // Merging stops before a length would overflow.
        assert_eq!(
            clip(&[e(u32::MAX, 1), e(5, 1)], u32::MAX, u64::MAX, false),
            Some(vec![e(u32::MAX, 1)])
        );
    }

    #[test]
    fn a_context_without_an_unknown_value_gets_no_made_up_answer() {
        // What broke: an empty answer for a dirty bitmap became one descriptor of flags 0,
        // which a backup client reads as "clean" and skips.
        let e = |l, f| Extent::new(l, f);
        assert_eq!(clip_extents(&[], 30, 1000, false, None), None);
        assert_eq!(clip_extents(&[e(0, 1)], 30, 1000, true, None), None);
        assert_eq!(
            clip_extents(&[e(64, 1)], 30, 1000, true, None),
            Some(vec![e(30, 1)])
        );
    }
}
