//! The write-back cache in RAM: every write lands here first and is acknowledged from here.
//!
//! A chunk with data not yet on the source carries the *dirty designation*: one or more
//! [`Version`]s. Writes of one epoch (between two snapshots) merge into one version; a write
//! of a newer epoch starts a new version and keeps the older one apart, because a snapshot
//! taken in between must still see it. This is what lets a snapshot be taken without first
//! destaging the cache.
//!
//! A chunk's versions are ordered by epoch, oldest first, and everything here relies on it:
//! a snapshot read takes the versions below its epoch as a prefix, destage planning walks
//! the images in order. The epoch gate (`volume::epoch`) lets no write of a new epoch land
//! before every write of the old one has, and landing refuses a write older than a chunk's
//! newest version (`landing`), so the order holds whatever the landing order of threads.
//!
//! Versions hold whole chunk buffers with a mask of which 4 KiB blocks are valid, so a 4 KiB
//! write into a 64 KiB chunk reads nothing; only writes smaller than a block need the rest of
//! that block, which the writer reads from the source first, outside every lock. Dirty bytes
//! are bounded: writers wait for the destager when the cache is full, so memory never grows
//! without bound.

mod landing;
mod spares;
mod version;

pub use landing::{
    EpochOrder, Journaling, LandedVersion, Landing, NewVersion, RangeLock, SourceBlock,
};
pub use spares::{ChunkBuf, Spares};
pub use version::{BlockMask, Payload, Version, VersionData};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::units::{ChunkIndex, Epoch, Geometry, BLOCK};

const SHARDS: usize = 64;

/// The most bytes of spare chunk buffers a cache keeps: what one destage batch retires at most
/// (32 MiB), so that the buffers a batch frees serve the writes that follow it. A small cache
/// keeps a quarter of its size.
fn spares_bound(limit: u64) -> u64 {
    (limit / 4).min(32 << 20)
}

/// The chunks whose number is congruent to the shard's index, modulo [`SHARDS`].
#[derive(Debug, Default)]
struct Shard {
    chunks: HashMap<u64, Vec<Version>>,
    /// Destage retirements in this shard so far. A source block read while the shard was
    /// unlocked is still what the source holds if no version was retired since: only a
    /// retired version's data has reached the source.
    retired: u64,
    /// The chunks a journal replay after a crash would write (kept until the journal's head
    /// passes their records, whether or not they are still dirty).
    footprint: HashMap<u64, landing::Footprint>,
}

/// Which dirty versions a destage batch may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Only versions of epochs below this: a snapshot whose journal record is not yet durable
    /// must not be named by a preservation, so writes of its epoch wait ([`Epoch::LIVE`]: no
    /// such snapshot).
    pub below: Epoch,
    /// Only chunks holding a version with a write not journaled in this flush generation or an
    /// older one (what a FLUSH must destage); `None`: any chunk, lowest first.
    pub unjournaled_upto: Option<u64>,
}

impl Pick {
    /// Any dirty chunk whose versions may be destaged.
    pub const ANY: Pick = Pick {
        below: Epoch::LIVE,
        unjournaled_upto: None,
    };
}

/// A chunk taken for destage: its versions as they were when taken.
#[derive(Debug)]
pub struct DirtyChunk {
    /// The chunk.
    pub chunk: ChunkIndex,
    /// Its versions, oldest first.
    pub versions: Vec<Version>,
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    geo: Geometry,
    shards: Vec<Mutex<Shard>>,
    dirty_bytes: AtomicU64,
    dirty_chunks: AtomicUsize,
    next_id: AtomicU64,
    limit: u64,
    space_lock: Mutex<()>,
    space: Condvar,
    spares: Arc<Spares>,
}

/// Ranges `(offset within chunk, len)` of a read that the cache could not serve and the
/// caller must read from the source; adjacent ranges are merged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Holes(pub Vec<(usize, usize)>);

impl Holes {
    fn push(&mut self, start: usize, len: usize) {
        if let Some(last) = self.0.last_mut() {
            if last.0 + last.1 == start {
                last.1 += len;
                return;
            }
        }
        self.0.push((start, len));
    }
}

/// The shard chunk `c` lives in.
fn shard_of(c: ChunkIndex) -> usize {
    (c.0 % SHARDS as u64) as usize
}

/// Whether one of `versions` (oldest first) is of an epoch in `from..to`.
fn in_epochs(versions: &[Version], from: Epoch, to: Epoch) -> bool {
    let first = versions.partition_point(|v| v.epoch < from);
    versions.get(first).is_some_and(|v| v.epoch < to)
}

impl Cache {
    /// A cache for `geo` holding at most about `limit` dirty bytes.
    pub fn new(geo: Geometry, limit: u64) -> Self {
        Self {
            geo,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            dirty_bytes: AtomicU64::new(0),
            dirty_chunks: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            limit: limit.max(4 * geo.chunk()),
            space_lock: Mutex::new(()),
            space: Condvar::new(),
            spares: Spares::new(
                geo.chunk() as usize,
                spares_bound(limit.max(4 * geo.chunk())),
            ),
        }
    }

    fn shard(&self, c: ChunkIndex) -> &Mutex<Shard> {
        &self.shards[shard_of(c)]
    }

    /// Accounts bytes held outside the versions (request copies waiting for the journal), so
    /// that they count against the same bound.
    pub fn hold(&self, bytes: u64) {
        self.dirty_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A fresh version identity.
    fn next_version_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds `delta` (which may be negative) to the dirty bytes.
    fn account(&self, delta: i64) {
        if delta >= 0 {
            self.dirty_bytes.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            self.dirty_bytes
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Counts a chunk that just got its dirty designation.
    fn count_dirty_chunk(&self) {
        self.dirty_chunks.fetch_add(1, Ordering::Relaxed);
    }

    /// Releases bytes accounted with [`Cache::hold`].
    pub fn release(&self, bytes: u64) {
        self.dirty_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.notify_space();
    }

    fn notify_space(&self) {
        let _g = self.space_lock.lock();
        self.space.notify_all();
    }

    /// Bytes of dirty data.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of the cache that `taken` frees when retired.
    pub fn cost_of(&self, taken: &DirtyChunk) -> u64 {
        taken
            .versions
            .iter()
            .map(|v| v.cost(self.geo.chunk()))
            .sum()
    }

    /// Chunks with a dirty designation.
    pub fn dirty_chunks(&self) -> usize {
        self.dirty_chunks.load(Ordering::Relaxed)
    }

    /// Bytes of spare chunk buffers kept (memory beside the dirty bytes).
    pub fn spare_bytes(&self) -> u64 {
        self.spares.kept() as u64 * self.geo.chunk()
    }

    /// The configured bound.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether `bytes` more fit now (as [`Cache::wait_for_space`] judges it).
    pub fn has_room(&self, bytes: u64) -> bool {
        let bytes = bytes.min(self.limit / 2);
        self.dirty_bytes() + bytes <= self.limit || self.dirty_bytes() == 0
    }

    /// Blocks until `bytes` more would fit (or the cache is empty), calling `wake` to prod the
    /// destager, or until `abort` says to give up.
    pub fn wait_for_space(&self, bytes: u64, wake: impl Fn(), abort: impl Fn() -> bool) {
        let bytes = bytes.min(self.limit / 2);
        while self.dirty_bytes() + bytes > self.limit && self.dirty_bytes() > 0 {
            if abort() {
                return;
            }
            wake();
            let mut g = self.space_lock.lock();
            if self.dirty_bytes() + bytes > self.limit {
                self.space.wait_for(&mut g, Duration::from_millis(20));
            }
        }
    }

    /// Whether chunk `c` has cached data visible to readers of epochs below `before`.
    pub fn holds(&self, c: ChunkIndex, before: Epoch) -> bool {
        self.shard(c)
            .lock()
            .chunks
            .get(&c.0)
            .is_some_and(|vs| vs.first().is_some_and(|v| v.epoch < before))
    }

    /// Whether chunk `c` holds a version of an epoch in `from..to`: a write not yet destaged
    /// that readers of `from` do not see and readers of `to` do.
    pub fn changed(&self, c: ChunkIndex, from: Epoch, to: Epoch) -> bool {
        self.shard(c)
            .lock()
            .chunks
            .get(&c.0)
            .is_some_and(|vs| in_epochs(vs, from, to))
    }

    /// Adds to `out` every chunk that holds a version of an epoch in `from..to` (unordered).
    pub fn changed_chunks(&self, from: Epoch, to: Epoch, out: &mut Vec<ChunkIndex>) {
        for shard in &self.shards {
            let shard = shard.lock();
            out.extend(
                shard
                    .chunks
                    .iter()
                    .filter(|(_, vs)| in_epochs(vs, from, to))
                    .map(|(c, _)| ChunkIndex(*c)),
            );
        }
    }

    /// Records that a write into version `id` of chunk `c` is durable in journal append
    /// `generation`, and seals the version.
    pub fn mark_journaled(&self, c: ChunkIndex, id: u64, generation: u64) {
        let mut shard = self.shard(c).lock();
        if let Some(v) = shard
            .chunks
            .get_mut(&c.0)
            .and_then(|vs| vs.iter_mut().find(|v| v.id == id))
        {
            v.journal_pending -= 1;
            v.journal_gen = v.journal_gen.min(generation);
            v.frozen = true;
        }
        if let Some(f) = shard.footprint.get_mut(&c.0) {
            f.staged -= 1;
            f.appended = f.appended.max(generation);
        }
    }

    /// Forgets the journal footprints the journal's head has passed: every append up to
    /// `reclaimed` is behind the head on disk, so no replay writes those chunks any more.
    pub fn forget_footprints(&self, reclaimed: u64) {
        for shard in &self.shards {
            shard
                .lock()
                .footprint
                .retain(|_, f| f.staged > 0 || f.appended > reclaimed);
        }
    }

    /// Whether some version holds a write not journaled in flush generation `upto` or an
    /// older one: what a FLUSH of that generation still has to destage.
    pub fn holds_unjournaled(&self, upto: u64) -> bool {
        self.shards.iter().any(|s| {
            s.lock()
                .chunks
                .values()
                .any(|vs| vs.iter().any(|v| v.unjournaled <= upto))
        })
    }

    /// The oldest journal append whose data some version still holds undestaged.
    pub fn oldest_journal_gen(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .chunks
                    .values()
                    .flat_map(|vs| vs.iter().map(|v| v.journal_gen))
                    .min()
                    .unwrap_or(u64::MAX)
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Serves what the cache holds of `[within, within + out.len())` of chunk `c`, as seen by
    /// readers of epochs below `before` ([`Epoch::LIVE`] for the live volume). Returns the ranges
    /// it could not serve, which the caller reads from the source.
    pub fn read(&self, c: ChunkIndex, within: usize, out: &mut [u8], before: Epoch) -> Holes {
        let bs = BLOCK as usize;
        let mut holes = Holes::default();
        let shard = self.shard(c).lock();
        let versions: &[Version] = shard.chunks.get(&c.0).map_or(&[], |v| v.as_slice());
        let visible = versions.partition_point(|v| v.epoch < before);
        let versions = &versions[..visible];
        let end = within + out.len();
        let mut pos = within;
        while pos < end {
            let b = pos / bs;
            let piece_end = ((b + 1) * bs).min(end);
            let dst = &mut out[pos - within..piece_end - within];
            match versions.iter().rev().find(|v| v.valid.get(b)) {
                Some(v) => v.data.copy_to(pos, dst),
                None => holes.push(pos, piece_end - pos),
            }
            pos = piece_end;
        }
        holes
    }

    /// Takes up to `max_bytes` of dirty chunks for destage, lowest chunk first, as `pick`
    /// allows: of each chunk, the oldest versions whose writes are all in the journal (or
    /// skipped it) and whose epoch is below `pick.below`. They are frozen (later writes start
    /// new versions) and shared with the batch, not copied. Chunks in `busy` (sorted: the
    /// chunks of a batch still under way, whose versions it has yet to retire) are left alone.
    pub fn collect(&self, max_bytes: u64, pick: Pick, busy: &[ChunkIndex]) -> Vec<DirtyChunk> {
        let takes = |v: &Version| v.journal_pending == 0 && v.epoch < pick.below;
        let mut keys = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock();
            keys.extend(
                shard
                    .chunks
                    .iter()
                    .filter(|(_, vs)| vs.first().is_some_and(takes))
                    .filter(|(k, _)| busy.binary_search(&ChunkIndex(**k)).is_err())
                    .filter(|(_, vs)| {
                        pick.unjournaled_upto
                            .is_none_or(|g| vs.iter().any(|v| v.unjournaled <= g))
                    })
                    .map(|(k, _)| *k),
            );
        }
        keys.sort_unstable();
        let mut out = Vec::new();
        let mut bytes = 0;
        for k in keys {
            if bytes >= max_bytes {
                break;
            }
            let mut shard = self.shard(ChunkIndex(k)).lock();
            let Some(vs) = shard.chunks.get_mut(&k) else {
                continue;
            };
            let n = vs.iter().take_while(|v| takes(v)).count();
            if n == 0 {
                continue;
            }
            for v in &mut vs[..n] {
                v.frozen = true;
                bytes += v.cost(self.geo.chunk());
            }
            out.push(DirtyChunk {
                chunk: ChunkIndex(k),
                versions: vs[..n].to_vec(),
            });
        }
        out
    }

    /// Marks the reservations of the versions `taken` as used up (a batch turned them into
    /// allocations, or found no snapshot needs the images any more), so that a batch that
    /// takes these versions again does not count them twice.
    pub fn consume_reservations(&self, taken: &DirtyChunk) {
        let mut shard = self.shard(taken.chunk).lock();
        if let Some(versions) = shard.chunks.get_mut(&taken.chunk.0) {
            for v in versions.iter_mut() {
                if taken.versions.iter().any(|t| t.id == v.id) {
                    v.reserved = false;
                }
            }
        }
    }

    /// Clears the dirty designation of what a destage wrote out: the versions it took, which
    /// `taken` lets go of too (it keeps only its chunk), so that their buffers are spares
    /// before the writers waiting for room are woken.
    pub fn retire(&self, taken: &mut DirtyChunk) {
        let mut freed = 0;
        let mut shard = self.shard(taken.chunk).lock();
        shard.retired += 1;
        let Some(versions) = shard.chunks.get_mut(&taken.chunk.0) else {
            return;
        };
        let n = taken.versions.len();
        debug_assert!(versions[..n]
            .iter()
            .zip(&taken.versions)
            .all(|(a, b)| a.id == b.id));
        for v in versions.drain(..n) {
            freed += v.cost(self.geo.chunk());
        }
        if versions.is_empty() {
            shard.chunks.remove(&taken.chunk.0);
            self.dirty_chunks.fetch_sub(1, Ordering::Relaxed);
        }
        drop(shard);
        taken.versions.clear();
        self.dirty_bytes.fetch_sub(freed, Ordering::Relaxed);
        self.notify_space();
    }
}

#[cfg(test)]
impl Cache {
    /// Everything dirty, taken for destage as one batch would (journal state aside).
    fn collect_all_for_tests(&self) -> Vec<DirtyChunk> {
        self.collect(u64::MAX, Pick::ANY, &[])
    }
}
