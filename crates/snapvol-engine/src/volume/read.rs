//! The read path: live reads from the cache over the source, snapshot reads (claims 11, 12), and
//! block status.

use crate::error::{Device, Error, Result};
use crate::metadata::Entry;
use crate::units::{ChunkIndex, Epoch, SnapshotSeq};

use super::Inner;

/// How a piece of a snapshot read went.
enum Piece {
    Read,
    /// The preserved copy it read failed its checksum.
    Damaged(DamagedCopy),
}

/// A preserved copy whose bytes do not match their checksum.
struct DamagedCopy {
    chunk: ChunkIndex,
    copy: Entry,
}

impl Inner {
    pub(super) fn read(
        &self,
        offset: u64,
        buf: &mut [u8],
        snap: Option<SnapshotSeq>,
    ) -> Result<()> {
        self.geo.check_range(offset, buf.len() as u64)?;
        let name = match snap {
            Some(s) => match self.table.load().by_seq(s) {
                Some(m) => Some(format!("{}@{}", self.name, m.name)),
                None => return Err(Error::SnapshotNotFound(format!("{}@{s}", self.name))),
            },
            None => None,
        };
        let mut damaged = None;
        for p in self.geo.split(offset, buf.len() as u64) {
            let out = &mut buf[p.req_off..p.req_off + p.len];
            match snap {
                None => self.read_cached(p.chunk, p.within, out, Epoch::LIVE)?,
                Some(s) => match self.read_snapshot_piece(p.chunk, p.within, out, s)? {
                    Piece::Read => {}
                    Piece::Damaged(d) => {
                        damaged = Some(d);
                        break;
                    }
                },
            }
        }
        if let (Some(s), Some(name)) = (snap, name) {
            // A snapshot deleted while we read may have lost its pointers (we then read the
            // live volume's data) or had its slots reused (what we read then fails its
            // checksum): say so rather than return what we read. Deletion unpublishes it
            // before either happens.
            if !self.table.load().is_alive(s) {
                return Err(Error::SnapshotNotFound(name));
            }
        }
        match damaged {
            Some(d) => Err(self.report_damaged_copy(d)),
            None => Ok(()),
        }
    }

    /// Counts and logs a preserved copy that failed its checksum; the error for the reader.
    fn report_damaged_copy(&self, d: DamagedCopy) -> Error {
        self.stats
            .checksum_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let location = format!(
            "preserved copy of chunk {} in slot {} at {:#x}",
            d.chunk.0,
            d.copy.slot.0,
            self.slot_offset(d.copy.slot)
        );
        tracing::error!(volume = %self.name, %location, snapshots = %format!("{}..={}", d.copy.lo, d.copy.hi), "checksum mismatch: a preserved copy is damaged; its reads fail with EIO");
        Error::corrupt(
            location,
            format!(
                "checksum mismatch (the copy snapshots {}..={} read is damaged)",
                d.copy.lo, d.copy.hi
            ),
        )
    }

    /// Reads a piece as seen by epochs below `before` from the cache, and the rest from the
    /// source.
    fn read_cached(
        &self,
        c: ChunkIndex,
        within: usize,
        out: &mut [u8],
        before: Epoch,
    ) -> Result<()> {
        let holes = self.cache.read(c, within, out, before);
        let base = self.source_offset(c);
        for (start, len) in holes.0 {
            let dst = &mut out[start - within..start - within + len];
            self.source
                .read_at(dst, base + start as u64)
                .map_err(|e| Error::io("read", Device::Source, base + start as u64, e))?;
        }
        Ok(())
    }

    /// Snapshot read of one piece (claims 11, 12): bit 1 → the target at the snapshot's
    /// pointer; bit 0 → what the volume held before the snapshot: a version kept apart in the
    /// cache, else the source. If a destage preserves the chunk while we read the source, the
    /// pointer appears before the source changes, so checking again tells us to retry.
    fn read_snapshot_piece(
        &self,
        c: ChunkIndex,
        within: usize,
        out: &mut [u8],
        s: SnapshotSeq,
    ) -> Result<Piece> {
        loop {
            if let Some(copy) = self.index.lookup(c, s) {
                return self.read_preserved(c, copy, within, out);
            }
            self.read_cached(c, within, out, Epoch::of(s))?;
            if self.index.lookup(c, s).is_none() {
                return Ok(Piece::Read);
            }
        }
    }

    /// Reads `[within, within + out.len())` of a preserved copy, verifying the whole copy
    /// against its checksum first (a piece of a chunk costs reading the chunk).
    fn read_preserved(
        &self,
        c: ChunkIndex,
        copy: Entry,
        within: usize,
        out: &mut [u8],
    ) -> Result<Piece> {
        let off = self.slot_offset(copy.slot);
        let chunk = self.geo.chunk() as usize;
        let io = |e| Error::io("read", Device::Target, off, e);
        let ok = if out.len() == chunk {
            self.target.read_at(out, off).map_err(io)?;
            crc32c::crc32c(out) == copy.crc
        } else {
            let mut whole = vec![0u8; chunk];
            self.target.read_at(&mut whole, off).map_err(io)?;
            out.copy_from_slice(&whole[within..within + out.len()]);
            crc32c::crc32c(&whole) == copy.crc
        };
        Ok(if ok {
            Piece::Read
        } else {
            Piece::Damaged(DamagedCopy { chunk: c, copy })
        })
    }

    pub(super) fn allocation(
        &self,
        snap: Option<SnapshotSeq>,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, bool)>> {
        self.geo.check_range(offset, len)?;
        let end = offset + len.min(64 << 20);
        let before = snap.map_or(Epoch::LIVE, Epoch::of);
        let io = |e| Error::io("seek", Device::Source, offset, e);
        let mut runs: Vec<(u64, bool)> = Vec::new();
        let mut push = |n: u64, data: bool| match runs.last_mut() {
            Some((len, d)) if *d == data => *len += n,
            _ => runs.push((n, data)),
        };
        // Source data ranges: [data_at, hole_at).
        let mut data_at = self.source.next_data(offset).map_err(io)?;
        let mut hole_at = match data_at {
            Some(d) => self.source.next_hole(d).map_err(io)?,
            None => u64::MAX,
        };
        let mut pos = offset;
        while pos < end {
            let c = ChunkIndex(pos / self.geo.chunk());
            let chunk_end = (self.geo.chunk_offset(c) + self.geo.chunk()).min(end);
            while data_at.is_some_and(|d| hole_at <= pos && d < end) {
                data_at = self.source.next_data(hole_at).map_err(io)?;
                hole_at = match data_at {
                    Some(d) => self.source.next_hole(d).map_err(io)?,
                    None => u64::MAX,
                };
            }
            let source_data = data_at.is_some_and(|d| d < chunk_end && hole_at > pos);
            let data = source_data
                || self.cache.holds(c, before)
                || snap.is_some_and(|s| self.index.lookup(c, s).is_some());
            push(chunk_end - pos, data);
            pos = chunk_end;
        }
        Ok(runs)
    }
}
