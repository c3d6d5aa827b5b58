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
    /// A chunk-sized buffer; only blocks in the version's mask are meaningful. Shared with the
    /// destager while it writes the version out (frozen versions are never modified).
    Bytes(Arc<Vec<u8>>),
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
    /// These bytes.
    Bytes(&'a [u8]),
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
}

impl Version {
    fn cost(&self, chunk: u64) -> u64 {
        match self.data {
            VersionData::Zero => ZERO_COST,
            VersionData::Bytes(_) | VersionData::Shared { .. } => chunk,
        }
    }
}

/// The version's own chunk buffer, ready to modify: a zero version gets a zeroed buffer (its
/// valid blocks are rightly zero), a shared one a copy of its bytes.
fn materialize(data: &mut VersionData, chunk: usize) -> &mut Vec<u8> {
    match data {
        VersionData::Zero => *data = VersionData::Bytes(Arc::new(vec![0u8; chunk])),
        VersionData::Shared { buf, start } => {
            *data = VersionData::Bytes(Arc::new(buf[*start..*start + chunk].to_vec()))
        }
        VersionData::Bytes(_) => {}
    }
    let VersionData::Bytes(arc) = data else {
        unreachable!("materialised above")
    };
    // Unfrozen versions are never shared with a destage batch, so this does not copy.
    Arc::make_mut(arc)
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
    next_id: AtomicU64,
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
            next_id: AtomicU64::new(1),
            limit: limit.max(4 * geo.chunk()),
            space_lock: Mutex::new(()),
            space: Condvar::new(),
        }
    }

    fn shard(&self, c: ChunkIndex) -> &Mutex<Shard> {
        &self.shards[(c.0 as usize) % SHARDS]
    }

    /// Accounts bytes held outside the versions (request copies waiting for the journal), so
    /// that they count against the same bound.
    pub fn hold(&self, bytes: u64) {
        self.dirty_bytes.fetch_add(bytes, Ordering::Relaxed);
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
            Some(v) if v.epoch == epoch && !v.frozen => None,
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
    /// `journaled` is the journal append that already holds the write durably (recovery
    /// replays it; a request too large to stage is journaled before it lands), or `None`.
    /// Returns whether a reservation was taken, and the version written into.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        c: ChunkIndex,
        within: usize,
        data: Payload<'_>,
        len: usize,
        epoch: Epoch,
        journaled: Option<u64>,
        watermark: impl FnOnce() -> Epoch,
        needs_preservation: impl FnOnce(Epoch) -> bool,
        read_source: impl Fn(&mut [u8], usize) -> std::io::Result<()>,
    ) -> std::io::Result<(bool, u64)> {
        let chunk = self.geo.chunk_size as usize;
        let nblocks = self.geo.blocks_per_chunk();
        let bs = BLOCK as usize;
        let mut shard = self.shard(c).lock();
        let versions = shard.entry(c.0).or_default();
        let was_clean = versions.is_empty();
        let mut reserved = false;
        let whole = within == 0 && len == chunk;

        let start_new = versions.last().is_none_or(|v| v.epoch != epoch || v.frozen);
        if start_new {
            let boundary = match versions.last() {
                Some(v) => v.epoch,
                None => watermark(),
            };
            reserved = needs_preservation(boundary);
            versions.push(Version {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                epoch,
                data: VersionData::Zero,
                valid: BlockMask::default(),
                frozen: false,
                journal_pending: 0,
                journal_gen: u64::MAX,
                reserved,
            });
            self.dirty_bytes.fetch_add(ZERO_COST, Ordering::Relaxed);
        }
        let n = versions.len();
        let (older, newest) = versions.split_at_mut(n - 1);
        let newest = &mut newest[0];
        match journaled {
            Some(generation) => newest.journal_gen = newest.journal_gen.min(generation),
            None => newest.journal_pending += 1,
        }
        let id = newest.id;

        let was_buffer = !matches!(newest.data, VersionData::Zero);
        match (whole, data) {
            (true, Payload::Zero) => {
                newest.data = VersionData::Zero;
                newest.valid = BlockMask::full(nblocks);
            }
            (true, Payload::Shared(buf, start)) => {
                newest.data = VersionData::Shared {
                    buf: buf.clone(),
                    start,
                };
                newest.valid = BlockMask::full(nblocks);
            }
            (true, Payload::Bytes(d)) => {
                newest.data = VersionData::Bytes(Arc::new(d.to_vec()));
                newest.valid = BlockMask::full(nblocks);
            }
            (false, data) => {
                let buf = materialize(&mut newest.data, chunk);
                let first = within / bs;
                let last = (within + len).div_ceil(bs);
                for b in [first, last - 1] {
                    let (bstart, bend) = (b * bs, (b + 1) * bs);
                    let covered = within <= bstart && within + len >= bend;
                    if !covered && !newest.valid.get(b) {
                        // Sub-block write into a block this version does not hold: fill the
                        // block from the newest older version holding it, else the source.
                        match older.iter().rev().find(|v| v.valid.get(b)) {
                            Some(v) => v.data.copy_to(bstart, &mut buf[bstart..bend]),
                            None => read_source(&mut buf[bstart..bend], bstart)?,
                        }
                        newest.valid.set(b);
                    }
                }
                let dst = &mut buf[within..within + len];
                match data {
                    Payload::Zero => dst.fill(0),
                    Payload::Bytes(d) => dst.copy_from_slice(d),
                    Payload::Shared(b, start) => dst.copy_from_slice(&b[start..start + len]),
                }
                newest.valid.set_range(first, last);
            }
        }
        let is_buffer = !matches!(newest.data, VersionData::Zero);
        match (was_buffer, is_buffer) {
            (false, true) => self
                .dirty_bytes
                .fetch_add(self.geo.chunk() - ZERO_COST, Ordering::Relaxed),
            (true, false) => self
                .dirty_bytes
                .fetch_sub(self.geo.chunk() - ZERO_COST, Ordering::Relaxed),
            _ => 0,
        };
        if was_clean {
            self.dirty_chunks.fetch_add(1, Ordering::Relaxed);
        }
        Ok((reserved, id))
    }

    /// Whether chunk `c` has cached data visible to readers of epochs below `before`.
    pub fn holds(&self, c: ChunkIndex, before: u64) -> bool {
        self.shard(c)
            .lock()
            .get(&c.0)
            .is_some_and(|vs| vs.first().is_some_and(|v| v.epoch < before))
    }

    /// Records that a write into version `id` of chunk `c` is durable in journal append
    /// `generation`, and seals the version.
    pub fn mark_journaled(&self, c: ChunkIndex, id: u64, generation: u64) {
        let mut shard = self.shard(c).lock();
        if let Some(v) = shard
            .get_mut(&c.0)
            .and_then(|vs| vs.iter_mut().find(|v| v.id == id))
        {
            v.journal_pending -= 1;
            v.journal_gen = v.journal_gen.min(generation);
            v.frozen = true;
        }
    }

    /// The oldest journal append whose data some version still holds undestaged.
    pub fn oldest_journal_gen(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .values()
                    .flat_map(|vs| vs.iter().map(|v| v.journal_gen))
                    .min()
                    .unwrap_or(u64::MAX)
            })
            .min()
            .unwrap_or(u64::MAX)
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
                Some(v) => v.data.copy_to(pos, dst),
                None => holes.push(pos, piece_end - pos),
            }
            pos = piece_end;
        }
        holes
    }

    /// Takes up to `max_bytes` of dirty chunks for destage, lowest chunk first: of each chunk,
    /// the oldest versions whose writes are all in the journal. They are frozen (later writes
    /// start new versions) and shared with the batch, not copied.
    pub fn collect(&self, max_bytes: u64) -> Vec<DirtyChunk> {
        let mut keys = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock();
            keys.extend(
                shard
                    .iter()
                    .filter(|(_, v)| v.first().is_some_and(|v| v.journal_pending == 0))
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
            let Some(vs) = shard.get_mut(&k) else {
                continue;
            };
            let n = vs.iter().take_while(|v| v.journal_pending == 0).count();
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

    /// Clears the dirty designation of what a destage wrote out: the versions it took.
    pub fn retire(&self, taken: &DirtyChunk) {
        let mut freed = 0;
        let mut shard = self.shard(taken.chunk).lock();
        let Some(versions) = shard.get_mut(&taken.chunk.0) else {
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
            shard.remove(&taken.chunk.0);
            self.dirty_chunks.fetch_sub(1, Ordering::Relaxed);
        }
        drop(shard);
        self.dirty_bytes.fetch_sub(freed, Ordering::Relaxed);
        self.notify_space();
    }
}
