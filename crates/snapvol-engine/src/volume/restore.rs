//! Diffs and rollback. A diff says which chunks changed between two points of a volume's
//! history from metadata alone, never by comparing data; a rollback makes the live volume a
//! snapshot's content again by rewriting only those chunks, and every snapshot, older and
//! newer, stays exactly as it was.
//!
//! # Which chunks changed
//!
//! A chunk changed between snapshot *a* and a later point *b* (a newer snapshot, or the live
//! volume) exactly when a write of an epoch in `a..b` touched it. Such a write is in one of
//! two places:
//!
//! - still in the cache: a version of that epoch ([`crate::cache::Cache::changed`]);
//! - destaged: snapshot *a* then reads a preserved copy, superseded by the first write at
//!   or after *a*, whose epoch is the copy's `hi` ([`crate::metadata::Index::changed`]).
//!
//! A destage publishes the copy in the index before it clears the version from the cache, so
//! looking at the cache first and the index second never misses a write that moves between
//! them meanwhile. Trims and zeroing writes are writes, so they count as changes.
//!
//! # A rollback is finished or never happened
//!
//! The superblock records the rollback (`rollback_to`) before its first write and clears it
//! after its last write is durable. The writes are ordinary writes of the snapshot's content
//! to the chunks that differ: the cache and journal make them durable, destage preserves what
//! newer snapshots need. An open that finds the record finishes the rollback (the chunks
//! that still differ are rewritten: doing it again is harmless), and a read-only open reads
//! the live volume as the snapshot it is becoming, so nobody sees a half-rolled-back volume.

use crate::error::{Error, Result};
use crate::units::{ChunkIndex, Epoch, SnapshotSeq};

use super::Inner;

/// Largest piece a rollback copies at once.
const COPY_STEP: u64 = 1 << 20;

/// Largest range one [`Inner::changed`] call answers for (callers ask again for the rest).
pub(super) const CHANGED_MAX: u64 = 1 << 30;

/// What a rollback did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct RollbackReport {
    /// Bytes of the live volume that were rewritten (the diff between the snapshot and the
    /// live volume, in whole chunks).
    pub rewritten_bytes: u64,
    /// Of those, bytes that were made zero rather than written.
    pub zeroed_bytes: u64,
    /// Extents rewritten.
    pub extents: u64,
}

impl Inner {
    /// The live volume as this open reads it: itself, or, in a volume opened read-only in the
    /// middle of a rollback, the snapshot it is becoming.
    pub(super) fn reader_of(&self, snap: Option<SnapshotSeq>) -> Option<SnapshotSeq> {
        snap.or(self.live_view)
    }

    /// The span of epochs between two points, older first: `None` when they are the same
    /// point. Fails when a snapshot named is not live.
    fn span(&self, a: SnapshotSeq, b: Option<SnapshotSeq>) -> Result<Option<(SnapshotSeq, Epoch)>> {
        self.alive(a)?;
        Ok(match self.reader_of(b) {
            None => Some((a, Epoch::LIVE)),
            Some(b) => {
                self.alive(b)?;
                match a.cmp(&b) {
                    std::cmp::Ordering::Equal => None,
                    std::cmp::Ordering::Less => Some((a, Epoch::of(b))),
                    std::cmp::Ordering::Greater => Some((b, Epoch::of(a))),
                }
            }
        })
    }

    fn alive(&self, s: SnapshotSeq) -> Result<()> {
        if self.table.load().is_alive(s) {
            Ok(())
        } else {
            Err(Error::SnapshotNotFound(format!(
                "{}@<snapshot sequence number {}>",
                self.name, s.0
            )))
        }
    }

    /// Whether chunk `c` changed in the span (cache first: see the module's comment).
    fn chunk_changed(&self, c: ChunkIndex, (a, b): (SnapshotSeq, Epoch)) -> bool {
        self.cache.changed(c, Epoch::of(a), b) || self.index.changed(c, a, b)
    }

    /// The chunks that changed between `a` and `b` (either order; `None` = the live volume),
    /// as sorted, merged byte extents `(offset, length)`. Costs one step per preserved copy
    /// and per cached chunk, whatever the volume's size.
    pub(super) fn diff(&self, a: SnapshotSeq, b: Option<SnapshotSeq>) -> Result<Vec<(u64, u64)>> {
        let mut chunks = Vec::new();
        if let Some(span) = self.span(a, b)? {
            self.cache
                .changed_chunks(Epoch::of(span.0), span.1, &mut chunks);
            self.index.changed_chunks(span.0, span.1, &mut chunks);
        }
        // A snapshot deleted meanwhile may have lost its copies: say so rather than answer.
        self.span(a, b)?;
        chunks.sort_unstable();
        chunks.dedup();
        let chunk = self.geo.chunk();
        let mut extents: Vec<(u64, u64)> = Vec::new();
        for c in chunks {
            let off = self.geo.chunk_offset(c);
            let len = chunk.min(self.geo.size - off);
            match extents.last_mut() {
                Some((o, l)) if *o + *l == off => *l += len,
                _ => extents.push((off, len)),
            }
        }
        Ok(extents)
    }

    /// Which parts of `[offset, offset + len)` changed between `a` and `b`, as consecutive
    /// `(length, changed)` runs in whole chunks from `offset`; covers at most
    /// [`CHANGED_MAX`] bytes.
    pub(super) fn changed(
        &self,
        a: SnapshotSeq,
        b: Option<SnapshotSeq>,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, bool)>> {
        self.geo.check_range(offset, len)?;
        let span = self.span(a, b)?;
        let end = offset + len.min(CHANGED_MAX);
        let mut runs: Vec<(u64, bool)> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let c = ChunkIndex(pos / self.geo.chunk());
            let next = (self.geo.chunk_offset(c) + self.geo.chunk()).min(end);
            let changed = span.is_some_and(|span| self.chunk_changed(c, span));
            match runs.last_mut() {
                Some((n, d)) if *d == changed => *n += next - pos,
                _ => runs.push((next - pos, changed)),
            }
            pos = next;
        }
        self.span(a, b)?;
        Ok(runs)
    }

    /// Makes the live volume snapshot `to`'s content (see the module's comment). `progress`
    /// is told the bytes rewritten so far and the total.
    pub(super) fn rollback(
        &self,
        to: SnapshotSeq,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<RollbackReport> {
        self.check_writable()?;
        let _a = self.admin_lock.lock();
        self.record_rollback(to)?;
        self.rollback_writes(to, progress)
    }

    /// Records in the superblock that the live volume is becoming snapshot `to` (durably,
    /// before anything is written). The caller holds `admin_lock`.
    fn record_rollback(&self, to: SnapshotSeq) -> Result<()> {
        self.alive(to)?;
        // The snapshot's creation must be in the metadata log before the superblock names it:
        // the journal append makes it durable, the commit below moves it into the log.
        self.flush()?;
        let mut meta = self.meta.lock();
        let before = meta.sb.rollback_to;
        meta.sb.rollback_to = to.0;
        self.commit_locked(&mut meta, Vec::new())
            .inspect_err(|_| meta.sb.rollback_to = before)
    }

    /// Clears the rollback record once every write before this call is durable.
    fn clear_rollback(&self) -> Result<()> {
        self.flush()?;
        let mut meta = self.meta.lock();
        meta.sb.rollback_to = 0;
        self.write_superblock(&mut meta, 0)
            .inspect_err(|e| self.fail(e))
    }

    /// The writes of a rollback whose start is recorded, then the record cleared.
    fn rollback_writes(
        &self,
        to: SnapshotSeq,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<RollbackReport> {
        let extents = self.diff(to, None)?;
        let total: u64 = extents.iter().map(|e| e.1).sum();
        let mut report = RollbackReport {
            extents: extents.len() as u64,
            ..RollbackReport::default()
        };
        let mut buf = vec![0u8; COPY_STEP.min(total) as usize];
        progress(0, total);
        for (off, len) in extents {
            let mut pos = off;
            while pos < off + len {
                let n = COPY_STEP.min(off + len - pos);
                let piece = &mut buf[..n as usize];
                self.read(pos, piece, Some(to))?;
                if piece.iter().all(|&b| b == 0) {
                    self.write(pos, n, None)?;
                    report.zeroed_bytes += n;
                } else {
                    self.write(pos, n, Some(super::write::Bytes::Borrowed(piece)))?;
                }
                pos += n;
                report.rewritten_bytes += n;
                progress(report.rewritten_bytes, total);
            }
        }
        self.clear_rollback()?;
        Ok(report)
    }

    /// Finishes a rollback an earlier process recorded and did not finish (at open).
    pub(super) fn finish_rollback(&self, to: SnapshotSeq) -> Result<RollbackReport> {
        tracing::warn!(volume = %self.name, snapshot_seq = to.0, "finishing a rollback that was interrupted");
        let _a = self.admin_lock.lock();
        let report = self.rollback_writes(to, &mut |_, _| {})?;
        tracing::info!(volume = %self.name, rewritten_bytes = report.rewritten_bytes, "interrupted rollback finished");
        Ok(report)
    }

    /// The snapshot an unfinished rollback is making the live volume, if one is under way.
    pub(super) fn rollback_target(&self) -> Option<SnapshotSeq> {
        let s = self.meta.lock().sb.rollback_to;
        (s != 0).then_some(SnapshotSeq(s))
    }
}

/// Changes to the live volume that must happen entirely or not at all, such as applying an
/// incremental stream: until [`ChangeGuard::finish`], the volume is recorded as rolling back
/// to a snapshot, so a crash (or dropping the guard) leaves it as that snapshot.
#[must_use = "dropping the guard rolls the changes back"]
pub struct ChangeGuard<'a> {
    pub(super) inner: &'a Inner,
    pub(super) to: SnapshotSeq,
    pub(super) _admin: parking_lot::MutexGuard<'a, ()>,
    pub(super) finished: bool,
}

impl std::fmt::Debug for ChangeGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeGuard")
            .field("volume", &self.inner.name)
            .field("fallback", &self.to)
            .field("finished", &self.finished)
            .finish()
    }
}

impl<'a> ChangeGuard<'a> {
    /// Starts guarded changes that fall back to snapshot `to`.
    pub(super) fn start(inner: &'a Inner, to: SnapshotSeq) -> Result<Self> {
        inner.check_writable()?;
        let admin = inner.admin_lock.lock();
        inner.record_rollback(to)?;
        Ok(ChangeGuard {
            inner,
            to,
            _admin: admin,
            finished: false,
        })
    }

    /// Keeps the changes: makes every write so far durable, then clears the record.
    pub fn finish(mut self) -> Result<()> {
        self.finished = true;
        self.inner.clear_rollback()
    }
}

impl Drop for ChangeGuard<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The changes failed part-way: put the volume back as it was now, not at the next open.
        if let Err(e) = self.inner.rollback_writes(self.to, &mut |_, _| {}) {
            tracing::error!(volume = %self.inner.name, error = %e, "undoing unfinished changes failed; the next open rolls the volume back");
        }
    }
}
