//! The write-back cache in RAM: every write lands here first and is acknowledged from here.
//!
//! A chunk with data not yet on the source carries the *dirty designation*: one or more
//! [`Version`]s. Writes of one epoch (between two snapshots) merge into one version; a write
//! of a newer epoch starts a new version and keeps the older one apart, because a snapshot
//! taken in between must still see it. This is what lets a snapshot be taken without first
//! destaging the cache.
//!
//! Versions hold whole chunk buffers with a mask of which 4 KiB blocks are valid, so a 4 KiB
//! write into a 64 KiB chunk reads nothing; only writes smaller than a block read the rest of
//! that block first. Dirty bytes are bounded: writers wait for the destager when the cache is
//! full, so memory never grows without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::units::{ChunkIndex, Epoch, Geometry, BLOCK};

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
    /// A chunk-sized buffer; only blocks in the version's mask are meaningful. Shared with the
    /// destager while it writes the version out; a writer that modifies it meanwhile copies it.
    Bytes(Arc<Vec<u8>>),
}

/// Dirty data of one chunk written in one epoch.
#[derive(Debug, Clone)]
pub struct Version {
    /// Epoch of the writes it holds.
    pub epoch: Epoch,
    /// The data.
    pub data: VersionData,
    /// Valid blocks.
    pub valid: BlockMask,
    /// Write sequence number of its latest modification.
    pub gen: u64,
    /// Every write with a sequence number below this one that touched this version is already
    /// on the source (flush uses it to know when it is done).
    pub dirty_since: u64,
    /// Whether creating it reserved a target slot for preserving the image before it.
    pub reserved: bool,
}

impl Version {
    fn cost(&self, chunk: u64) -> u64 {
        match self.data {
            VersionData::Zero => ZERO_COST,
            VersionData::Bytes(_) => chunk,
        }
    }
}

/// Accounted size of a zero version (bookkeeping only).
const ZERO_COST: u64 = 512;
const SHARDS: usize = 64;

type Shard = HashMap<u64, Vec<Version>>;

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
    limit: u64,
    space_lock: Mutex<()>,
    space: Condvar,
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

impl Cache {
    /// A cache for `geo` holding at most about `limit` dirty bytes.
    pub fn new(geo: Geometry, limit: u64) -> Self {
        Self {
            geo,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            dirty_bytes: AtomicU64::new(0),
            dirty_chunks: AtomicUsize::new(0),
            limit: limit.max(4 * geo.chunk()),
            space_lock: Mutex::new(()),
            space: Condvar::new(),
        }
    }

    fn shard(&self, c: ChunkIndex) -> &Mutex<Shard> {
        &self.shards[(c.0 as usize) % SHARDS]
    }

    /// Bytes of dirty data.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_bytes.load(Ordering::Relaxed)
    }

    /// Chunks with a dirty designation.
    pub fn dirty_chunks(&self) -> usize {
        self.dirty_chunks.load(Ordering::Relaxed)
    }

    /// The configured bound.
    pub fn limit(&self) -> u64 {
        self.limit
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

    /// Whether a write of `epoch` to `c` would start a new version, and if so the epoch of the
    /// image it supersedes (`None`: the source's image, whose boundary the caller knows).
    pub fn new_version_boundary(&self, c: ChunkIndex, epoch: Epoch) -> Option<Option<Epoch>> {
        let shard = self.shard(c).lock();
        match shard.get(&c.0).and_then(|v| v.last()) {
            Some(v) if v.epoch == epoch => None,
            Some(v) => Some(Some(v.epoch)),
            None => Some(None),
        }
    }

    /// Writes `data` at `within` in chunk `c` for `epoch`.
    ///
    /// `needs_preservation(boundary)` says whether a new version must reserve a target slot
    /// for the image it supersedes, where `boundary` is that image's epoch (for the source
    /// image: the chunk's watermark, which `watermark()` gives). `read_source` fills a buffer
    /// from the source at an offset within the chunk (for the rare sub-block write).
    /// Returns whether a reservation was taken.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        c: ChunkIndex,
        within: usize,
        data: Option<&[u8]>,
        len: usize,
        epoch: Epoch,
        wseq: u64,
        watermark: impl FnOnce() -> Epoch,
        needs_preservation: impl FnOnce(Epoch) -> bool,
        read_source: impl Fn(&mut [u8], usize) -> std::io::Result<()>,
    ) -> std::io::Result<bool> {
        let chunk = self.geo.chunk_size as usize;
        let nblocks = self.geo.blocks_per_chunk();
        let bs = BLOCK as usize;
        let mut shard = self.shard(c).lock();
        let versions = shard.entry(c.0).or_default();
        let was_clean = versions.is_empty();
        let mut reserved = false;
        let whole_zero = data.is_none() && within == 0 && len == chunk;

        let start_new = versions.last().is_none_or(|v| v.epoch != epoch);
        if start_new {
            let boundary = match versions.last() {
                Some(v) => v.epoch,
                None => watermark(),
            };
            reserved = needs_preservation(boundary);
            versions.push(Version {
                epoch,
                data: VersionData::Zero,
                valid: BlockMask::default(),
                gen: wseq,
                dirty_since: wseq,
                reserved,
            });
            self.dirty_bytes.fetch_add(ZERO_COST, Ordering::Relaxed);
        }
        let n = versions.len();
        let (older, newest) = versions.split_at_mut(n - 1);
        let newest = &mut newest[0];
        newest.gen = wseq;
        if newest.dirty_since > wseq {
            newest.dirty_since = wseq;
        }

        if whole_zero {
            if let VersionData::Bytes(_) = newest.data {
                self.dirty_bytes
                    .fetch_sub(self.geo.chunk() - ZERO_COST, Ordering::Relaxed);
            }
            newest.data = VersionData::Zero;
            newest.valid = BlockMask::full(nblocks);
        } else {
            // Materialise a buffer: a fresh one, or a copy of a zero version.
            if let VersionData::Zero = newest.data {
                // Valid blocks of a zero version are rightly all zero in the new buffer.
                newest.data = VersionData::Bytes(Arc::new(vec![0u8; chunk]));
                self.dirty_bytes
                    .fetch_add(self.geo.chunk() - ZERO_COST, Ordering::Relaxed);
            }
            let VersionData::Bytes(arc) = &mut newest.data else {
                unreachable!("materialised above")
            };
            let buf = Arc::make_mut(arc);
            let first = within / bs;
            let last = (within + len).div_ceil(bs);
            for b in [first, last - 1] {
                let (bstart, bend) = (b * bs, (b + 1) * bs);
                let covered = within <= bstart && within + len >= bend;
                if !covered && !newest.valid.get(b) {
                    // Sub-block write into a block this version does not hold: fill the block
                    // from the newest older version holding it, else from the source.
                    match older.iter().rev().find(|v| v.valid.get(b)) {
                        Some(v) => match &v.data {
                            VersionData::Zero => buf[bstart..bend].fill(0),
                            VersionData::Bytes(d) => {
                                buf[bstart..bend].copy_from_slice(&d[bstart..bend])
                            }
                        },
                        None => read_source(&mut buf[bstart..bend], bstart)?,
                    }
                    newest.valid.set(b);
                }
            }
            match data {
                Some(d) => buf[within..within + len].copy_from_slice(d),
                None => buf[within..within + len].fill(0),
            }
            newest.valid.set_range(first, last);
        }
        if was_clean {
            self.dirty_chunks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(reserved)
    }

    /// Serves what the cache holds of `[within, within + out.len())` of chunk `c`, as seen by
    /// readers of epochs below `before` (`u64::MAX` for the live volume). Returns the ranges
    /// it could not serve, which the caller reads from the source.
    pub fn read(&self, c: ChunkIndex, within: usize, out: &mut [u8], before: u64) -> Holes {
        let bs = BLOCK as usize;
        let mut holes = Holes::default();
        let shard = self.shard(c).lock();
        let versions: &[Version] = shard.get(&c.0).map_or(&[], |v| v.as_slice());
        let visible = versions.partition_point(|v| v.epoch < before);
        let versions = &versions[..visible];
        let end = within + out.len();
        let mut pos = within;
        while pos < end {
            let b = pos / bs;
            let piece_end = ((b + 1) * bs).min(end);
            let dst = &mut out[pos - within..piece_end - within];
            match versions.iter().rev().find(|v| v.valid.get(b)) {
                Some(v) => match &v.data {
                    VersionData::Zero => dst.fill(0),
                    VersionData::Bytes(d) => dst.copy_from_slice(&d[pos..piece_end]),
                },
                None => holes.push(pos, piece_end - pos),
            }
            pos = piece_end;
        }
        holes
    }

    /// Takes up to `max_bytes` of dirty chunks, lowest chunk first, among those with a version
    /// that `pick` selects; their versions are shared, not copied.
    pub fn collect(&self, max_bytes: u64, pick: impl Fn(&Version) -> bool) -> Vec<DirtyChunk> {
        let mut keys = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock();
            keys.extend(
                shard
                    .iter()
                    .filter(|(_, v)| v.iter().any(&pick))
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
            let shard = self.shard(ChunkIndex(k)).lock();
            if let Some(v) = shard.get(&k) {
                bytes += v.iter().map(|v| v.cost(self.geo.chunk())).sum::<u64>();
                out.push(DirtyChunk {
                    chunk: ChunkIndex(k),
                    versions: v.clone(),
                });
            }
        }
        out
    }

    /// Clears the dirty designation of what a destage wrote out: every version older than the
    /// newest taken, and the newest taken unless a write modified it since. Returns how many
    /// target reservations this releases.
    pub fn retire(&self, taken: &DirtyChunk) -> u64 {
        let Some(newest_taken) = taken.versions.last() else {
            return 0;
        };
        let mut released = 0;
        let mut freed = 0;
        let mut shard = self.shard(taken.chunk).lock();
        let Some(versions) = shard.get_mut(&taken.chunk.0) else {
            return 0;
        };
        let n_older = taken.versions.len() - 1;
        for v in versions.drain(..n_older) {
            released += u64::from(v.reserved);
            freed += v.cost(self.geo.chunk());
        }
        let still_same = versions
            .first()
            .is_some_and(|v| v.epoch == newest_taken.epoch && v.gen == newest_taken.gen);
        if still_same {
            let v = versions.remove(0);
            released += u64::from(v.reserved);
            freed += v.cost(self.geo.chunk());
        } else if let Some(v) = versions.first_mut() {
            if v.epoch == newest_taken.epoch {
                // Modified while being written out: what was taken is on the source, what came
                // after is still dirty; its preservation is done.
                released += u64::from(v.reserved);
                v.reserved = false;
                v.dirty_since = newest_taken.gen + 1;
            }
        }
        if versions.is_empty() {
            shard.remove(&taken.chunk.0);
            self.dirty_chunks.fetch_sub(1, Ordering::Relaxed);
        }
        drop(shard);
        self.dirty_bytes.fetch_sub(freed, Ordering::Relaxed);
        let _g = self.space_lock.lock();
        self.space.notify_all();
        released
    }

    /// Whether any version matches `pick`.
    pub fn any(&self, pick: impl Fn(&Version) -> bool) -> bool {
        self.shards
            .iter()
            .any(|s| s.lock().values().any(|v| v.iter().any(&pick)))
    }
}
