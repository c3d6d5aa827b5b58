//! The numbers of the NBD protocol, named as in the spec (`NetworkBlockDevice/nbd`
//! `doc/proto.md`, section "Values"), and the protocol's error values.
//!
//! Everything on the wire is big-endian ("network byte order").

// ---- Handshake magic numbers (proto.md "Newstyle negotiation") ----

/// `NBDMAGIC`, the first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, sent by the server after `NBDMAGIC` and by the client before every option.
pub const NBD_IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic that starts every option reply (proto.md "Fixed newstyle negotiation").
pub const NBD_REP_MAGIC: u64 = 0x0003_e889_0455_65a9;

// ---- Handshake flags (server, 16 bits) and client flags (32 bits) ----

/// Handshake flag: the server speaks fixed newstyle.
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can leave out the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client wants no zero padding after `NBD_OPT_EXPORT_NAME`.
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

// ---- Options ----

/// Choose an export and enter transmission; no error can be reported.
pub const NBD_OPT_EXPORT_NAME: u32 = 1;
/// Abort the negotiation.
pub const NBD_OPT_ABORT: u32 = 2;
/// List the exports.
pub const NBD_OPT_LIST: u32 = 3;
/// Start TLS (not supported by this server).
pub const NBD_OPT_STARTTLS: u32 = 5;
/// Ask about an export without entering transmission.
pub const NBD_OPT_INFO: u32 = 6;
/// Ask about an export and enter transmission.
pub const NBD_OPT_GO: u32 = 7;
/// Negotiate structured replies.
pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
/// List the metadata contexts of an export.
pub const NBD_OPT_LIST_META_CONTEXT: u32 = 9;
/// Select the metadata contexts for `NBD_CMD_BLOCK_STATUS`.
pub const NBD_OPT_SET_META_CONTEXT: u32 = 10;
/// Extended headers (experimental; not supported by this server).
pub const NBD_OPT_EXTENDED_HEADERS: u32 = 11;

// ---- Option reply types ----

/// The option succeeded (or a list is complete).
pub const NBD_REP_ACK: u32 = 1;
/// One export in the answer to `NBD_OPT_LIST`.
pub const NBD_REP_SERVER: u32 = 2;
/// One piece of information in the answer to `NBD_OPT_INFO`/`NBD_OPT_GO`.
pub const NBD_REP_INFO: u32 = 3;
/// One metadata context.
pub const NBD_REP_META_CONTEXT: u32 = 4;
/// Bit 31 marks an error reply.
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
/// The option is unknown to this server.
pub const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR | 1;
/// Server policy forbids the option.
pub const NBD_REP_ERR_POLICY: u32 = NBD_REP_FLAG_ERROR | 2;
/// The option is syntactically or semantically invalid.
pub const NBD_REP_ERR_INVALID: u32 = NBD_REP_FLAG_ERROR | 3;
/// The option is not supported on this platform.
pub const NBD_REP_ERR_PLATFORM: u32 = NBD_REP_FLAG_ERROR | 4;
/// TLS is required first.
pub const NBD_REP_ERR_TLS_REQD: u32 = NBD_REP_FLAG_ERROR | 5;
/// The export does not exist.
pub const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_FLAG_ERROR | 6;
/// The server is shutting down.
pub const NBD_REP_ERR_SHUTDOWN: u32 = NBD_REP_FLAG_ERROR | 7;
/// The client must request block sizes first.
pub const NBD_REP_ERR_BLOCK_SIZE_REQD: u32 = NBD_REP_FLAG_ERROR | 8;
/// The request or its reply is too large.
pub const NBD_REP_ERR_TOO_BIG: u32 = NBD_REP_FLAG_ERROR | 9;

// ---- NBD_INFO types ----

/// Size and transmission flags (mandatory in every successful `NBD_OPT_INFO`/`NBD_OPT_GO`).
pub const NBD_INFO_EXPORT: u16 = 0;
/// Canonical export name.
pub const NBD_INFO_NAME: u16 = 1;
/// Human-readable description.
pub const NBD_INFO_DESCRIPTION: u16 = 2;
/// Block size constraints (minimum, preferred, maximum payload).
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

// ---- Transmission flags (16 bits) ----

/// Must always be set.
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
/// The export is read-only.
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
/// `NBD_CMD_FLUSH` is supported.
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
/// `NBD_CMD_FLAG_FUA` is supported.
pub const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
/// The export behaves like a rotational medium.
pub const NBD_FLAG_ROTATIONAL: u16 = 1 << 4;
/// `NBD_CMD_TRIM` is supported.
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
/// `NBD_CMD_WRITE_ZEROES` (and `NBD_CMD_FLAG_NO_HOLE`) is supported.
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// `NBD_CMD_FLAG_DF` is supported (only with structured replies).
pub const NBD_FLAG_SEND_DF: u16 = 1 << 7;
/// FLUSH and FUA on one connection cover the writes of every connection.
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// `NBD_CMD_RESIZE` (experimental; never set here).
pub const NBD_FLAG_SEND_RESIZE: u16 = 1 << 9;
/// `NBD_CMD_CACHE` is understood.
pub const NBD_FLAG_SEND_CACHE: u16 = 1 << 10;
/// `NBD_CMD_FLAG_FAST_ZERO` is supported.
pub const NBD_FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// ---- Transmission: requests and replies ----

/// Magic of a request.
pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const NBD_STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Read.
pub const NBD_CMD_READ: u16 = 0;
/// Write (followed by a payload).
pub const NBD_CMD_WRITE: u16 = 1;
/// Disconnect (no reply).
pub const NBD_CMD_DISC: u16 = 2;
/// Flush.
pub const NBD_CMD_FLUSH: u16 = 3;
/// Trim (discard).
pub const NBD_CMD_TRIM: u16 = 4;
/// Cache (prefetch hint).
pub const NBD_CMD_CACHE: u16 = 5;
/// Write zeroes.
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;
/// Block status of the selected metadata contexts.
pub const NBD_CMD_BLOCK_STATUS: u16 = 7;

/// Command flag: force unit access.
pub const NBD_CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag: do not punch a hole (`NBD_CMD_WRITE_ZEROES`).
pub const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag: do not fragment the read reply.
pub const NBD_CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag: one extent per context (`NBD_CMD_BLOCK_STATUS`).
pub const NBD_CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Command flag: fail with `ENOTSUP` unless zeroing is fast (`NBD_CMD_WRITE_ZEROES`).
pub const NBD_CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured reply flag: this is the final chunk.
pub const NBD_REPLY_FLAG_DONE: u16 = 1 << 0;

/// Chunk type: no payload; the request succeeded unless an error chunk came earlier.
pub const NBD_REPLY_TYPE_NONE: u16 = 0;
/// Chunk type: data at an offset.
pub const NBD_REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Chunk type: a hole at an offset.
pub const NBD_REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Chunk type: block status descriptors of one metadata context.
pub const NBD_REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Bit 15 marks an error chunk.
pub const NBD_REPLY_TYPE_FLAG_ERROR: u16 = 1 << 15;
/// Chunk type: an error.
pub const NBD_REPLY_TYPE_ERROR: u16 = NBD_REPLY_TYPE_FLAG_ERROR | 1;
/// Chunk type: an error at an offset.
pub const NBD_REPLY_TYPE_ERROR_OFFSET: u16 = NBD_REPLY_TYPE_FLAG_ERROR | 2;

// ---- Metadata contexts ----

/// The one context the spec defines.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// `base:allocation`: the extent is not allocated.
pub const NBD_STATE_HOLE: u32 = 1 << 0;
/// `base:allocation`: the extent reads as zeroes.
pub const NBD_STATE_ZERO: u32 = 1 << 1;
/// `qemu:dirty-bitmap:NAME`: the extent is dirty.
pub const NBD_STATE_DIRTY: u32 = 1 << 0;

// ---- Sizes ----

/// Minimum block size this server advertises (proto.md "Size constraints": default 1).
pub const MIN_BLOCK_SIZE: u32 = 1;
/// Preferred block size this server advertises (the spec's default, 4 KiB).
pub const PREFERRED_BLOCK_SIZE: u32 = 4096;
/// Largest READ or WRITE payload this server accepts: 32 MiB, the spec's default maximum.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Longest string the spec allows (export names, descriptions, context names, messages).
pub const MAX_STRING: usize = 4096;
/// Bytes of zero padding after the `NBD_OPT_EXPORT_NAME` reply without `NO_ZEROES`.
pub const EXPORT_NAME_PADDING: usize = 124;
/// At most this many descriptors in one `NBD_REPLY_TYPE_BLOCK_STATUS` chunk (proto.md: 2^20).
pub const MAX_EXTENTS: usize = 1 << 20;

/// An NBD error value, as carried in a simple reply or an error chunk.
///
/// The spec (proto.md "Error values") restricts errors to a fixed set whose numbers happen
/// to match Linux errno values; [`Errno::from_wire`] maps anything else to `EINVAL`, as the
/// spec tells clients to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(u32);

impl Errno {
    /// Operation not permitted (e.g. a write to a read-only export).
    pub const EPERM: Errno = Errno(1);
    /// Input/output error.
    pub const EIO: Errno = Errno(5);
    /// Cannot allocate memory.
    pub const ENOMEM: Errno = Errno(12);
    /// Invalid argument (e.g. a request past the end of the export).
    pub const EINVAL: Errno = Errno(22);
    /// No space left on device.
    pub const ENOSPC: Errno = Errno(28);
    /// Value too large.
    pub const EOVERFLOW: Errno = Errno(75);
    /// Operation not supported.
    pub const ENOTSUP: Errno = Errno(95);
    /// The server is shutting down.
    pub const ESHUTDOWN: Errno = Errno(108);

    /// Every error value the spec defines.
    pub const ALL: [Errno; 8] = [
        Errno::EPERM,
        Errno::EIO,
        Errno::ENOMEM,
        Errno::EINVAL,
        Errno::ENOSPC,
        Errno::EOVERFLOW,
        Errno::ENOTSUP,
        Errno::ESHUTDOWN,
    ];

    /// The number sent on the wire.
    pub fn code(self) -> u32 {
        self.0
    }

    /// Reads an error value from the wire; unknown nonzero values become `EINVAL`
    /// (proto.md: "The client SHOULD treat an unexpected error value as if it had been
    /// `NBD_EINVAL`"). Returns `None` for 0, which means success.
    pub fn from_wire(code: u32) -> Option<Errno> {
        if code == 0 {
            return None;
        }
        Some(
            Errno::ALL
                .into_iter()
                .find(|e| e.0 == code)
                .unwrap_or(Errno::EINVAL),
        )
    }

    /// The conventional name, such as `"EPERM"`.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "EPERM",
            5 => "EIO",
            12 => "ENOMEM",
            22 => "EINVAL",
            28 => "ENOSPC",
            75 => "EOVERFLOW",
            95 => "ENOTSUP",
            108 => "ESHUTDOWN",
            _ => "E?",
        }
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_error_values_from_the_wire_are_read_as_einval() {
        assert_eq!(Errno::from_wire(0), None);
        assert_eq!(Errno::from_wire(2), Some(Errno::EINVAL));
        for e in Errno::ALL {
            assert_eq!(Errno::from_wire(e.code()), Some(e));
            assert!(e.name().starts_with('E'));
        }
    }
}
