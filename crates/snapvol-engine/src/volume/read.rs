//! The read path: live reads from the cache over the source, snapshot reads (claims 11, 12), and
//! block status. A read is mapped first (`map_read`: for each chunk piece, the cache over the
//! source as of an epoch, or a preserved copy), then done step by step; block status asks the
//! same mapping. Nothing here writes, and nothing here holds a lock while it reads a device.

use crate::error::{Device, Error, Result};
use crate::metadata::Entry;
use crate::units::{ChunkIndex, ChunkPiece, Epoch, SnapshotSeq};

use super::Inner;

/// The most one [`Inner::allocation`] call covers: 16,384 chunks of 64 KiB, a few milliseconds
/// of index lookups, so that a client mapping a sparse 1 TiB volume needs a thousand requests,
/// not sixteen thousand.
const ALLOCATION_SPAN: u64 = 1 << 30;

/// Where the bytes of one piece of a read are: what mapping a read decides before any byte is
/// read (claims 11, 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// What the volume held for epochs below `before`: the newest cached version of each block
    /// visible there, and the source for the blocks no such version holds (a hole in the
    /// source reads as zeroes). The live volume reads with `before` = [`Epoch::LIVE`].
    Volume { before: Epoch },
    /// A preserved copy in the target VLUN, whose checksum is verified as it is read.
    Preserved(Entry),
}

/// One piece of a mapped read: a chunk piece and where its bytes are.
#[derive(Debug, Clone, Copy)]
pub(super) struct Step {
    piece: ChunkPiece,
    place: Place,
}

/// How doing a step went.
enum Done {
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
    /// Where the bytes of chunk `c` are for a reader of snapshot `snap` (the live volume for
    /// `None`): bit *c* of the snapshot's bitmap set → the target at its pointer; clear → what
    /// the volume held before the snapshot.
    fn place_of(&self, c: ChunkIndex, snap: Option<SnapshotSeq>) -> Place {
        match snap {
            None => Place::Volume {
                before: Epoch::LIVE,
            },
            Some(s) => match self.index.lookup(c, s) {
                Some(copy) => Place::Preserved(copy),
                None => Place::Volume {
                    before: Epoch::of(s),
                },
            },
        }
    }

    /// Maps a read of `[offset, offset + len)`: where each chunk piece's bytes are.
    pub(super) fn map_read(&self, offset: u64, len: u64, snap: Option<SnapshotSeq>) -> Vec<Step> {
        self.geo
            .split(offset, len)
            .map(|piece| Step {
                piece,
                place: self.place_of(piece.chunk, snap),
            })
            .collect()
    }

    /// Reads one step's bytes into `out`.
    fn do_step(&self, step: &Step, out: &mut [u8]) -> Result<Done> {
        let ChunkPiece { chunk, within, .. } = step.piece;
        match step.place {
            Place::Volume { before } => {
                self.read_volume(chunk, within, out, before)?;
                Ok(Done::Read)
            }
            Place::Preserved(copy) => self.read_preserved(chunk, copy, within, out),
        }
    }

    pub(super) fn read(
        &self,
        offset: u64,
        buf: &mut [u8],
        snap: Option<SnapshotSeq>,
    ) -> Result<()> {
        self.geo.check_range(offset, buf.len() as u64)?;
        self.check_held()?;
        let snap = self.reader_of(snap);
        let name = match snap {
            Some(s) => match self.table.load().by_seq(s) {
                Some(m) => Some(format!("{}@{}", self.name, m.name)),
                // Deleted before the read began: its name is gone with it.
                None => {
                    return Err(Error::SnapshotNotFound(format!(
                        "{}@<deleted snapshot, sequence number {}>",
                        self.name, s.0
                    )))
                }
            },
            None => None,
        };
        let mut damaged = None;
        let steps = self.map_read(offset, buf.len() as u64, snap);
        let mut rest = steps.as_slice();
        'steps: while let Some(&first) = rest.first() {
            // Whole copies in consecutive slots (what one destage batch preserves for a run of
            // chunks) are read at once.
            let run = self.preserved_run(rest);
            if !run.is_empty() {
                let last = rest[run.len() - 1].piece;
                rest = &rest[run.len()..];
                let out = &mut buf[first.piece.req_off..last.req_off + last.len];
                if let Done::Damaged(d) = self.read_preserved_run(&run, out)? {
                    damaged = Some(d);
                    break;
                }
                continue;
            }
            rest = &rest[1..];
            let mut step = first;
            let out = &mut buf[step.piece.req_off..step.piece.req_off + step.piece.len];
            loop {
                if let Done::Damaged(d) = self.do_step(&step, out)? {
                    damaged = Some(d);
                    break 'steps;
                }
                // A destage that preserves the chunk while a snapshot reader reads the source
                // makes the pointer appear before the source changes: mapping the piece again
                // says whether what was read is still the snapshot's.
                let again = self.place_of(step.piece.chunk, snap);
                if again == step.place || matches!(step.place, Place::Preserved(_)) {
                    break;
                }
                step.place = again;
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
    fn read_volume(
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

    /// The leading `steps` that are whole preserved copies lying in consecutive slots, each
    /// with its copy: one read of the target fetches them all, in the order of the request's
    /// buffer.
    fn preserved_run(&self, steps: &[Step]) -> Vec<(ChunkIndex, Entry)> {
        let chunk = self.geo.chunk() as usize;
        let mut run: Vec<(ChunkIndex, Entry)> = Vec::new();
        for s in steps {
            let Place::Preserved(copy) = s.place else {
                break;
            };
            let next_slot = run.last().is_none_or(|(_, e)| e.slot.0 + 1 == copy.slot.0);
            if s.piece.len != chunk || !next_slot {
                break;
            }
            run.push((s.piece.chunk, copy));
        }
        run
    }

    /// Reads the whole preserved copies of `run` (from [`Inner::preserved_run`]) into `out`
    /// with one read, then verifies each against its checksum: the first that fails is the
    /// run's result.
    fn read_preserved_run(&self, run: &[(ChunkIndex, Entry)], out: &mut [u8]) -> Result<Done> {
        let off = self.slot_offset(run[0].1.slot);
        self.target
            .read_at(out, off)
            .map_err(|e| Error::io("read", Device::Target, off, e))?;
        let chunk = self.geo.chunk() as usize;
        for (&(c, copy), bytes) in run.iter().zip(out.chunks(chunk)) {
            if crc32c::crc32c(bytes) != copy.crc {
                return Ok(Done::Damaged(DamagedCopy { chunk: c, copy }));
            }
        }
        Ok(Done::Read)
    }

    /// Reads `[within, within + out.len())` of a preserved copy that the piece does not cover
    /// whole (whole copies are read as runs): the whole copy is read and verified, so a piece
    /// of a chunk costs reading the chunk.
    fn read_preserved(
        &self,
        c: ChunkIndex,
        copy: Entry,
        within: usize,
        out: &mut [u8],
    ) -> Result<Done> {
        let mut whole = vec![0u8; self.geo.chunk() as usize];
        let done = self.read_preserved_run(&[(c, copy)], &mut whole)?;
        out.copy_from_slice(&whole[within..within + out.len()]);
        Ok(done)
    }

    pub(super) fn allocation(
        &self,
        snap: Option<SnapshotSeq>,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, bool)>> {
        self.geo.check_range(offset, len)?;
        let snap = self.reader_of(snap);
        let end = offset + len.min(ALLOCATION_SPAN);
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
            let data = match self.place_of(c, snap) {
                Place::Preserved(_) => true,
                Place::Volume { before } => source_data || self.cache.holds(c, before),
            };
            push(chunk_end - pos, data);
            pos = chunk_end;
        }
        Ok(runs)
    }
}
