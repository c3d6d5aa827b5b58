//! What the cache holds of a chunk: versions, their data, and which blocks they hold. Plain
//! data: no locks, no I/O, and no say in when a version is taken or retired (`cache`'s).

use std::sync::Arc;

use super::spares::{ChunkBuf, Spares};
use crate::units::Epoch;

/// Which 4 KiB blocks of a chunk a version holds (chunks are at most 256 blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockMask([u64; 4]);

impl BlockMask {
    /// The first `n` blocks.
    pub fn full(n: usize) -> Self {
        let mut m = BlockMask::default();
        m.set_range(0, n);
        m
    }
    /// Whether block `b` is set.
    pub fn get(&self, b: usize) -> bool {
        self.0[b / 64] >> (b % 64) & 1 == 1
    }
    /// Sets block `b`.
    pub fn set(&mut self, b: usize) {
        self.0[b / 64] |= 1 << (b % 64);
    }
    /// Sets blocks `from..to`.
    pub fn set_range(&mut self, from: usize, to: usize) {
        for b in from..to {
            self.set(b);
        }
    }
    /// The blocks set in either mask.
    pub fn union(self, other: BlockMask) -> BlockMask {
        let mut m = self;
        for (w, o) in m.0.iter_mut().zip(other.0) {
            *w |= o;
        }
        m
    }
    /// Whether blocks `0..n` are all set.
    pub fn is_full(&self, n: usize) -> bool {
        (0..n).all(|b| self.get(b))
    }
}

/// Content of a version.
#[derive(Debug, Clone)]
pub enum VersionData {
    /// The whole chunk reads as zero (write-zeroes and trim of a whole chunk); costs no buffer.
    Zero,
    /// A chunk-sized buffer; only blocks in the version's mask are meaningful (the others hold
    /// whatever the buffer held before: see `spares`). Shared with the destager while it writes
    /// the version out (frozen versions are never modified).
    Bytes(Arc<ChunkBuf>),
    /// A whole-chunk write's bytes, borrowed from the copy of the request kept for the
    /// journal (`buf[start..start + chunk]`): a large write is copied once, not twice. A later
    /// write into the chunk turns it into `Bytes`.
    Shared {
        /// The request's bytes.
        buf: Arc<[u8]>,
        /// Where this chunk's bytes start in it.
        start: usize,
    },
}

impl VersionData {
    /// Copies the chunk's bytes `at..at + dst.len()` into `dst` (zeros for a zero version).
    pub fn copy_to(&self, at: usize, dst: &mut [u8]) {
        match self {
            VersionData::Zero => dst.fill(0),
            VersionData::Bytes(d) => dst.copy_from_slice(&d[at..at + dst.len()]),
            VersionData::Shared { buf, start } => {
                dst.copy_from_slice(&buf[start + at..start + at + dst.len()])
            }
        }
    }

    /// The chunk's bytes (`chunk` long), unless it is a zero version.
    pub fn bytes(&self, chunk: usize) -> Option<&[u8]> {
        match self {
            VersionData::Zero => None,
            VersionData::Bytes(d) => Some(&d[..chunk]),
            VersionData::Shared { buf, start } => Some(&buf[*start..*start + chunk]),
        }
    }
}

/// What a write puts into a chunk.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// Zeros.
    Zero,
    /// Bytes `start..start + len` of a buffer the cache may keep a reference to.
    Shared(&'a Arc<[u8]>, usize),
}

/// Dirty data of one chunk written in one epoch.
#[derive(Debug, Clone)]
pub struct Version {
    /// Identity, unique in the cache's life (journal acknowledgements find versions by it).
    pub id: u64,
    /// Epoch of the writes it holds.
    pub epoch: Epoch,
    /// The data.
    pub data: VersionData,
    /// Valid blocks.
    pub valid: BlockMask,
    /// Sealed: no write modifies it any more (a write of the same epoch starts a new version
    /// after it). A journal append seals the versions it covers, so that a chunk written
    /// without pause still gets versions whose writes are all journaled, which the destager
    /// can take; a destage batch seals what it takes.
    pub frozen: bool,
    /// Writes into it whose journal record is not yet durable. A version reaches the source
    /// only when this is 0: nothing gets to the source before it is in the journal.
    pub journal_pending: u32,
    /// Oldest journal append holding writes of this version (`u64::MAX`: none yet). The
    /// journal's head may not pass that append until the version is destaged.
    pub journal_gen: u64,
    /// Whether creating it reserved a target slot for preserving the image before it.
    pub reserved: bool,
    /// Oldest flush generation of a write landed in it without a journal record (write mode
    /// throughput; `u64::MAX`: none). A FLUSH of generation *g* makes every version with
    /// `unjournaled <= g` durable by destaging it.
    pub unjournaled: u64,
}

impl Version {
    pub(super) fn cost(&self, chunk: u64) -> u64 {
        match self.data {
            VersionData::Zero => ZERO_COST,
            VersionData::Bytes(_) | VersionData::Shared { .. } => chunk,
        }
    }
}

/// The version's own chunk buffer, ready to modify, taken from `spares` if it needs one: a
/// zero version's valid blocks are zeroed in it (the rest mean nothing and stay as the spare
/// left them), a shared version's bytes copied in.
pub(super) fn materialize<'a>(
    data: &'a mut VersionData,
    valid: BlockMask,
    spares: &Arc<Spares>,
) -> &'a mut [u8] {
    match data {
        VersionData::Zero => {
            let mut buf = spares.take();
            // A zero version holds every block or none (a piece of a chunk zeroed lands in a
            // buffer); only a whole one needs its zeros written out.
            if valid != BlockMask::default() {
                buf.fill(0);
            }
            *data = VersionData::Bytes(Arc::new(buf));
        }
        VersionData::Shared { buf, start } => {
            let mut own = spares.take();
            let len = own.len();
            own.copy_from_slice(&buf[*start..*start + len]);
            *data = VersionData::Bytes(Arc::new(own));
        }
        VersionData::Bytes(_) => {}
    }
    let VersionData::Bytes(arc) = data else {
        unreachable!("materialised above")
    };
    // Unfrozen versions are never shared with a destage batch, so this does not copy.
    let own: &mut ChunkBuf = Arc::make_mut(arc);
    own
}

/// Accounted size of a zero version (bookkeeping only).
pub(super) const ZERO_COST: u64 = 512;
