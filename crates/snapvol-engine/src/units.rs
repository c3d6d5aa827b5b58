//! Newtypes that carry units, so a chunk number is never added to a byte offset. Among the
//! lowest layers: it imports nothing from the crate but the error type.

use std::fmt;

/// Index of a chunk of the volume: byte offset / chunk size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ChunkIndex(pub u64);

/// Index of a chunk-sized slot in the target VLUN's data area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TargetSlot(pub u64);

/// A snapshot's sequence number: snapshot *s* holds every write whose epoch is below *s*.
///
/// Sequence numbers are never reused, so they double as snapshot identities.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct SnapshotSeq(pub u64);

/// How a volume makes write requests durable (`create --write-mode`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Every write request is journaled before it is acknowledged as durable, so after a
    /// crash each request is all-old or all-new.
    #[default]
    Atomic,
    /// Requests of at least a chunk skip the journal: they become durable when a FLUSH, a FUA
    /// write or a snapshot destages them, and an unflushed one may be torn after a crash, as
    /// on a disk. Smaller requests are journaled as in `Atomic`.
    Throughput,
}

impl WriteMode {
    /// The name users give it (`atomic`, `throughput`).
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::Atomic => "atomic",
            WriteMode::Throughput => "throughput",
        }
    }
}

impl fmt::Display for WriteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for WriteMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "atomic" => Ok(WriteMode::Atomic),
            "throughput" => Ok(WriteMode::Throughput),
            _ => Err(format!("unknown write mode '{s}' (atomic or throughput)")),
        }
    }
}

/// The epoch a write belongs to: the sequence number of the newest snapshot when it was
/// issued. Snapshot *s* sees writes of epochs below [`Epoch::of`]`(s)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl Epoch {
    /// Later than every epoch: what the live volume sees.
    pub const LIVE: Epoch = Epoch(u64::MAX);

    /// The epoch that starts when snapshot `s` is taken: the writes snapshot `s` does not see.
    pub fn of(s: SnapshotSeq) -> Epoch {
        Epoch(s.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

impl fmt::Display for ChunkIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chunk {}", self.0)
    }
}

impl fmt::Display for TargetSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {}", self.0)
    }
}

impl fmt::Display for SnapshotSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Volume geometry: size and chunk size, and the conversions between bytes and chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Volume size in bytes; a multiple of `chunk_size`.
    pub size: u64,
    /// Chunk size in bytes; a power of two from [`MIN_CHUNK`] to [`MAX_CHUNK`].
    pub chunk_size: u32,
}

/// Smallest allowed chunk size.
pub const MIN_CHUNK: u32 = 4096;
/// Largest allowed chunk size.
pub const MAX_CHUNK: u32 = 1 << 20;
/// Default chunk size.
pub const DEFAULT_CHUNK: u32 = 64 << 10;
/// Granularity of the cache's valid-data mask inside a chunk.
pub const BLOCK: u32 = 4096;

impl Geometry {
    /// Validates and builds a geometry.
    pub fn new(size: u64, chunk_size: u32) -> crate::Result<Self> {
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
            return Err(crate::Error::InvalidArgument(format!(
                "chunk size {chunk_size} is not a power of two from 4K to 1M"
            )));
        }
        if size == 0 || size % u64::from(chunk_size) != 0 {
            return Err(crate::Error::InvalidArgument(format!(
                "volume size {size} is not a positive multiple of the chunk size {chunk_size}"
            )));
        }
        Ok(Self { size, chunk_size })
    }

    /// Chunk size as `u64`.
    pub fn chunk(&self) -> u64 {
        u64::from(self.chunk_size)
    }

    /// Number of chunks in the volume.
    pub fn chunks(&self) -> u64 {
        self.size / self.chunk()
    }

    /// Byte offset of the first byte of `c` in the volume.
    pub fn chunk_offset(&self, c: ChunkIndex) -> u64 {
        c.0 * self.chunk()
    }

    /// Number of 4 KiB blocks in a chunk.
    pub fn blocks_per_chunk(&self) -> usize {
        (self.chunk_size / BLOCK) as usize
    }

    /// Splits the byte range `[offset, offset + len)` into per-chunk pieces:
    /// `(chunk, offset inside the chunk, length, offset inside the request)`.
    pub fn split(&self, offset: u64, len: u64) -> impl Iterator<Item = ChunkPiece> + '_ {
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let chunk = ChunkIndex(pos / self.chunk());
            let within = pos % self.chunk();
            let n = (self.chunk() - within).min(end - pos);
            let piece = ChunkPiece {
                chunk,
                within: within as usize,
                len: n as usize,
                req_off: (pos - offset) as usize,
            };
            pos += n;
            Some(piece)
        })
    }

    /// Checks that `[offset, offset + len)` lies inside the volume.
    pub fn check_range(&self, offset: u64, len: u64) -> crate::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(crate::Error::OutOfBounds {
                offset,
                len,
                size: self.size,
            }),
        }
    }
}

/// One chunk's share of a byte-range request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPiece {
    /// The chunk.
    pub chunk: ChunkIndex,
    /// Offset of the piece inside the chunk.
    pub within: usize,
    /// Length of the piece.
    pub len: usize,
    /// Offset of the piece inside the request's buffer.
    pub req_off: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_unaligned_ranges_exactly_once() {
        let g = Geometry::new(1 << 20, 4096).unwrap();
        let pieces: Vec<_> = g.split(4000, 8300).collect();
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces[0].chunk, ChunkIndex(0));
        assert_eq!((pieces[0].within, pieces[0].len), (4000, 96));
        assert_eq!(pieces.iter().map(|p| p.len).sum::<usize>(), 8300);
        assert_eq!(pieces[3].req_off + pieces[3].len, 8300);
    }

    #[test]
    fn geometry_rejects_bad_chunk_sizes_and_sizes() {
        assert!(Geometry::new(1 << 20, 3000).is_err());
        assert!(Geometry::new(1 << 20, 2048).is_err());
        assert!(Geometry::new(1 << 22, 2 << 20).is_err());
        assert!(Geometry::new(100_000, 4096).is_err());
        assert!(Geometry::new(0, 4096).is_err());
        assert!(Geometry::new(1 << 20, 1 << 20).is_ok());
    }
}
