//! Landing a write request in the cache: decided, then done, under the locks of every shard
//! the request touches.
//!
//! A request lands whole under the locks of all the shards its chunks live in, taken in
//! shard order (so two requests never wait for each other in a cycle). Two requests that
//! share a chunk therefore land one after the other in every chunk they share, and the caller
//! stages a request for the journal before it lets the locks go: the order in which
//! overlapping requests reach the journal is the order in which they landed, so what the
//! cache shows and what a journal replay rebuilds after a crash agree, whatever the
//! concurrency.
//!
//! Everything is decided before anything changes: whether each chunk's write starts a new
//! version ([`RangeLock::new_versions`], which tells the caller what target space to reserve
//! for the image the version supersedes), whether the epoch order of the chunk's versions
//! allows the write ([`RangeLock::check_order`]), and which partial blocks need the source's
//! bytes ([`RangeLock::source_blocks`]). The source is never read under the locks: the caller
//! reads the blocks named, with the locks released, and locks again. A block read that way
//! is used only if no destage retired a version in its shard meanwhile, since only a retired
//! version's data can have changed the source under it.

use std::sync::Arc;

use parking_lot::MutexGuard;

use super::version::{materialize, BlockMask, Payload, Version, VersionData, ZERO_COST};
use super::{shard_of, Cache, Shard, SHARDS};
use crate::units::{ChunkIndex, Epoch, BLOCK};

/// A write request as the cache takes it.
#[derive(Debug, Clone, Copy)]
pub struct Landing<'a> {
    /// Volume byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The request's bytes, as a shared buffer and where the request starts in it (the cache
    /// keeps references to whole chunks of it instead of copying them); `None` for zeroing.
    pub data: Option<(&'a Arc<[u8]>, usize)>,
    /// The epoch the request was admitted in.
    pub epoch: Epoch,
    /// How the request is made durable.
    pub journal: Journaling,
}

/// How a landed request is made durable, which decides when its versions may be destaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journaling {
    /// Staged for the journal as it lands: its versions wait for the append (nothing reaches
    /// the source before it is in the journal).
    Staged,
    /// Durable in this journal append already: a replayed record (0), or a request too large
    /// to stage, journaled whole before it lands.
    In(u64),
    /// Not journaled (write mode throughput), in this flush generation: durable only once
    /// destaged, which the next FLUSH, FUA write or snapshot forces. Allowed only where no
    /// journal record still replayable after a crash covers the chunk
    /// ([`RangeLock::journal_free`]), so that a replay never lays an older write over it.
    Skipped(u64),
}

/// What the journal holds of a chunk, kept after its versions are destaged and until the
/// journal's head passes it: whether a replay after a crash would write the chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Footprint {
    /// Writes into it staged for the journal and not yet appended.
    pub(super) staged: u32,
    /// The newest journal append holding a write into it.
    pub(super) appended: u64,
}

/// A block of the source that a partial write into a block no version holds needs, read by
/// the caller with the locks released.
#[derive(Debug, Clone)]
pub struct SourceBlock {
    /// The chunk.
    pub chunk: ChunkIndex,
    /// The block within the chunk.
    pub block: usize,
    /// Its shard's retirement count when the block was found missing.
    stamp: u64,
    /// The block's bytes as the source held them (`BLOCK` bytes once read).
    pub data: Vec<u8>,
}

/// A chunk in which the write starts a new version, and the epoch of the image that version
/// supersedes: the previous version's, or `None` for the source's image (whose epoch is the
/// chunk's preservation watermark, which the caller knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewVersion {
    /// The chunk.
    pub chunk: ChunkIndex,
    /// Epoch of the superseded image; `None`: the source's.
    pub supersedes: Option<Epoch>,
}

/// The version of a chunk that a request landed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LandedVersion {
    /// The chunk.
    pub chunk: ChunkIndex,
    /// The version's identity.
    pub id: u64,
}

/// A chunk already holds a version of a newer epoch than the request's: landing it would
/// break the epoch order of the chunk's versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochOrder {
    /// The chunk.
    pub chunk: ChunkIndex,
    /// The epoch of its newest version.
    pub newest: Epoch,
}

/// The shards of one request's range, locked. Dropping it releases them.
#[derive(Debug)]
pub struct RangeLock<'a> {
    cache: &'a Cache,
    offset: u64,
    len: u64,
    /// The locked shards, by ascending shard index.
    guards: Vec<(usize, MutexGuard<'a, Shard>)>,
}

impl Cache {
    /// Locks every shard that holds a chunk of `[offset, offset + len)`, in shard order.
    pub fn lock_range(&self, offset: u64, len: u64) -> RangeLock<'_> {
        let mut shards: Vec<usize> = Vec::new();
        if len > 0 {
            let first = offset / self.geo.chunk();
            let last = (offset + len - 1) / self.geo.chunk();
            if last - first + 1 >= SHARDS as u64 {
                shards.extend(0..SHARDS);
            } else {
                shards.extend((first..=last).map(|c| shard_of(ChunkIndex(c))));
                shards.sort_unstable();
                shards.dedup();
            }
        }
        let guards = shards
            .into_iter()
            .map(|i| (i, self.shards[i].lock()))
            .collect();
        RangeLock {
            cache: self,
            offset,
            len,
            guards,
        }
    }
}

impl RangeLock<'_> {
    fn shard(&self, c: ChunkIndex) -> &Shard {
        let at = self
            .guards
            .binary_search_by_key(&shard_of(c), |(i, _)| *i)
            .expect("the chunk's shard is locked");
        &self.guards[at].1
    }

    fn shard_mut(&mut self, c: ChunkIndex) -> &mut Shard {
        let at = self
            .guards
            .binary_search_by_key(&shard_of(c), |(i, _)| *i)
            .expect("the chunk's shard is locked");
        &mut self.guards[at].1
    }

    fn versions(&self, c: ChunkIndex) -> &[Version] {
        self.shard(c).chunks.get(&c.0).map_or(&[], Vec::as_slice)
    }

    fn chunks(&self) -> impl Iterator<Item = ChunkIndex> + '_ {
        self.cache.geo.split(self.offset, self.len).map(|p| p.chunk)
    }

    /// Whether a write of `epoch` may land: no chunk of the range holds a version of a newer
    /// epoch. (The epoch gate makes this always so on the data path; a journal written out of
    /// order is what it catches.)
    pub fn check_order(&self, epoch: Epoch) -> Result<(), EpochOrder> {
        for c in self.chunks() {
            if let Some(v) = self.versions(c).last() {
                if v.epoch > epoch {
                    return Err(EpochOrder {
                        chunk: c,
                        newest: v.epoch,
                    });
                }
            }
        }
        Ok(())
    }

    /// The newest epoch any chunk of the range holds a version of.
    pub fn newest_epoch(&self) -> Option<Epoch> {
        self.chunks()
            .filter_map(|c| self.versions(c).last().map(|v| v.epoch))
            .max()
    }

    /// The chunks in which a write of `epoch` starts a new version: those with no version, or
    /// whose newest version is of an older epoch or sealed.
    pub fn new_versions(&self, epoch: Epoch) -> Vec<NewVersion> {
        self.chunks()
            .filter_map(|c| match self.versions(c).last() {
                Some(v) if v.epoch == epoch && !v.frozen => None,
                Some(v) => Some(NewVersion {
                    chunk: c,
                    supersedes: Some(v.epoch),
                }),
                None => Some(NewVersion {
                    chunk: c,
                    supersedes: None,
                }),
            })
            .collect()
    }

    /// Whether no chunk of the range has a journal record that a replay after a crash would
    /// apply: none staged, and none in an append newer than `reclaimed` (the newest append
    /// the journal's head has passed on disk). Only then may a write skip the journal.
    pub fn journal_free(&self, reclaimed: u64) -> bool {
        self.chunks().all(|c| {
            self.shard(c)
                .footprint
                .get(&c.0)
                .is_none_or(|f| f.staged == 0 && f.appended <= reclaimed)
        })
    }

    /// The partial blocks of the request that no version holds, for which `have` holds no
    /// read still current: the caller reads them from the source and lands again.
    pub fn source_blocks(&self, have: &[SourceBlock]) -> Vec<SourceBlock> {
        let mut missing = Vec::new();
        for p in self.cache.geo.split(self.offset, self.len) {
            for block in partial_blocks(p.within, p.len) {
                if self.versions(p.chunk).iter().any(|v| v.valid.get(block)) {
                    continue;
                }
                let stamp = self.shard(p.chunk).retired;
                let current = have
                    .iter()
                    .any(|h| h.chunk == p.chunk && h.block == block && h.stamp == stamp);
                if !current {
                    missing.push(SourceBlock {
                        chunk: p.chunk,
                        block,
                        stamp,
                        data: Vec::new(),
                    });
                }
            }
        }
        missing
    }

    /// Lands the request: every chunk's piece goes into its newest version, or a new one
    /// (whose `reserved` flag says whether the caller reserved a target slot for the image it
    /// supersedes: `reserved(chunk)`). Partial blocks no version holds are filled from
    /// `source`, which must hold a current read of each ([`RangeLock::source_blocks`] is
    /// empty). Returns the versions it landed in.
    pub fn land(
        &mut self,
        req: &Landing<'_>,
        reserved: impl Fn(ChunkIndex) -> bool,
        source: &[SourceBlock],
    ) -> Vec<LandedVersion> {
        let cache = self.cache;
        let geo = cache.geo;
        let chunk = geo.chunk_size as usize;
        let nblocks = geo.blocks_per_chunk();
        let bs = BLOCK as usize;
        let mut landed = Vec::new();
        for p in geo.split(req.offset, req.len) {
            let payload = req.data.map_or(Payload::Zero, |(d, start)| {
                Payload::Shared(d, start + p.req_off)
            });
            let shard = self.shard_mut(p.chunk);
            let versions = shard.chunks.entry(p.chunk.0).or_default();
            let was_clean = versions.is_empty();
            let start_new = versions
                .last()
                .is_none_or(|v| v.epoch != req.epoch || v.frozen);
            if start_new {
                versions.push(Version {
                    id: cache.next_version_id(),
                    epoch: req.epoch,
                    data: VersionData::Zero,
                    valid: BlockMask::default(),
                    frozen: false,
                    journal_pending: 0,
                    journal_gen: u64::MAX,
                    reserved: reserved(p.chunk),
                    unjournaled: u64::MAX,
                });
                cache.account(ZERO_COST as i64);
            }
            let n = versions.len();
            let (older, newest) = versions.split_at_mut(n - 1);
            let newest = &mut newest[0];
            match req.journal {
                Journaling::In(generation) => {
                    newest.journal_gen = newest.journal_gen.min(generation);
                    if generation > 0 {
                        let f = shard.footprint.entry(p.chunk.0).or_default();
                        f.appended = f.appended.max(generation);
                    }
                }
                Journaling::Staged => {
                    newest.journal_pending += 1;
                    shard.footprint.entry(p.chunk.0).or_default().staged += 1;
                }
                Journaling::Skipped(g) => newest.unjournaled = newest.unjournaled.min(g),
            }
            landed.push(LandedVersion {
                chunk: p.chunk,
                id: newest.id,
            });
            let was_buffer = !matches!(newest.data, VersionData::Zero);
            if p.within == 0 && p.len == chunk {
                newest.valid = BlockMask::full(nblocks);
                newest.data = match payload {
                    Payload::Zero => VersionData::Zero,
                    Payload::Shared(buf, start) => VersionData::Shared {
                        buf: buf.clone(),
                        start,
                    },
                };
            } else {
                let buf = materialize(&mut newest.data, newest.valid, &cache.spares);
                for b in partial_blocks(p.within, p.len) {
                    if newest.valid.get(b) {
                        continue;
                    }
                    // The rest of the block comes from the newest older version holding it,
                    // else from the source.
                    let dst = &mut buf[b * bs..(b + 1) * bs];
                    match older.iter().rev().find(|v| v.valid.get(b)) {
                        Some(v) => v.data.copy_to(b * bs, dst),
                        None => {
                            let read = source
                                .iter()
                                .find(|s| s.chunk == p.chunk && s.block == b)
                                .expect("the caller read every source block named");
                            dst.copy_from_slice(&read.data);
                        }
                    }
                    newest.valid.set(b);
                }
                let dst = &mut buf[p.within..p.within + p.len];
                match payload {
                    Payload::Zero => dst.fill(0),
                    Payload::Shared(d, start) => dst.copy_from_slice(&d[start..start + p.len]),
                }
                newest
                    .valid
                    .set_range(p.within / bs, (p.within + p.len).div_ceil(bs));
            }
            let is_buffer = !matches!(newest.data, VersionData::Zero);
            let grown = match (was_buffer, is_buffer) {
                (false, true) => (geo.chunk() - ZERO_COST) as i64,
                (true, false) => -((geo.chunk() - ZERO_COST) as i64),
                _ => 0,
            };
            cache.account(grown);
            if was_clean {
                cache.count_dirty_chunk();
            }
        }
        landed
    }
}

/// The blocks at the edges of a piece `[within, within + len)` of a chunk that the piece
/// covers only in part (at most two).
fn partial_blocks(within: usize, len: usize) -> impl Iterator<Item = usize> {
    let bs = BLOCK as usize;
    let (first, last) = (within / bs, (within + len - 1) / bs);
    let head = (within % bs != 0 || within + len < (first + 1) * bs).then_some(first);
    let tail = ((within + len) % bs != 0 && last != first).then_some(last);
    head.into_iter().chain(tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Geometry;

    fn cache() -> Cache {
        Cache::new(Geometry::new(2 << 20, 16384).unwrap(), 1 << 20)
    }

    fn land(cache: &Cache, offset: u64, bytes: &[u8], epoch: Epoch) -> Vec<LandedVersion> {
        let data: Arc<[u8]> = Arc::from(bytes);
        let req = Landing {
            offset,
            len: bytes.len() as u64,
            data: Some((&data, 0)),
            epoch,
            // As if journaled already, so that a destage may take it.
            journal: Journaling::In(1),
        };
        let mut have = Vec::new();
        loop {
            let mut lock = cache.lock_range(offset, req.len);
            let missing = lock.source_blocks(&have);
            if missing.is_empty() {
                lock.check_order(epoch).unwrap();
                return lock.land(&req, |_| false, &have);
            }
            drop(lock);
            // The "source" of these tests holds 0xee everywhere.
            have.extend(missing.into_iter().map(|mut m| {
                m.data = vec![0xee; BLOCK as usize];
                m
            }));
        }
    }

    #[test]
    fn partial_blocks_are_the_edges_a_piece_covers_in_part() {
        let all = |w, l| partial_blocks(w, l).collect::<Vec<_>>();
        assert_eq!(all(0, 4096), Vec::<usize>::new());
        assert_eq!(all(0, 8192), Vec::<usize>::new());
        assert_eq!(all(512, 512), vec![0]);
        assert_eq!(all(4096 - 512, 1024), vec![0, 1]);
        assert_eq!(all(4096, 4096 + 100), vec![2]);
        assert_eq!(all(100, 3996), vec![0]);
    }

    #[test]
    fn a_sub_block_write_takes_the_rest_of_its_block_from_the_source_read_outside_the_lock() {
        let c = cache();
        land(&c, 512, &[1u8; 512], Epoch(0));
        let mut out = vec![0u8; 4096];
        let holes = c.read(ChunkIndex(0), 0, &mut out, Epoch::LIVE);
        assert!(holes.0.is_empty(), "the whole block is cached");
        assert!(out[..512].iter().all(|&b| b == 0xee));
        assert!(out[512..1024].iter().all(|&b| b == 1));
        assert!(out[1024..].iter().all(|&b| b == 0xee));
    }

    #[test]
    fn a_spare_buffers_old_bytes_never_show_through() {
        let c = cache();
        let chunk = 16384;
        let written_out = |c: &Cache| {
            // Dropping the batch's share of each buffer hands it back to the spares.
            for mut d in c.collect_all_for_tests() {
                c.retire(&mut d);
            }
        };
        // Chunk 0 written block by block with 0x11, then written out: its buffer is a spare.
        for b in 0..4 {
            land(&c, b * 4096, &[0x11; 4096], Epoch(0));
        }
        written_out(&c);
        assert_eq!(c.spares.kept(), 1);
        // A 4 KiB write into chunk 1 takes that buffer; only its block reads from the cache.
        land(&c, chunk + 4096, &[0x22; 4096], Epoch(0));
        assert_eq!(c.spares.kept(), 0, "the spare was taken");
        let mut out = vec![0u8; chunk as usize];
        let holes = c.read(ChunkIndex(1), 0, &mut out, Epoch::LIVE);
        assert_eq!(holes.0, vec![(0, 4096), (8192, 8192)]);
        assert!(out[4096..8192].iter().all(|&b| b == 0x22));
        written_out(&c);
        // A chunk zeroed whole, then written in part, reads zeros around the write.
        let zero = Landing {
            offset: 2 * chunk,
            len: chunk,
            data: None,
            epoch: Epoch(0),
            journal: Journaling::In(1),
        };
        c.lock_range(zero.offset, zero.len)
            .land(&zero, |_| false, &[]);
        land(&c, 2 * chunk + 4096, &[0x33; 4096], Epoch(0));
        assert_eq!(c.spares.kept(), 0, "the spare was taken");
        let holes = c.read(ChunkIndex(2), 0, &mut out, Epoch::LIVE);
        assert!(holes.0.is_empty());
        assert!(out[..4096].iter().all(|&b| b == 0));
        assert!(out[4096..8192].iter().all(|&b| b == 0x33));
        assert!(out[8192..].iter().all(|&b| b == 0));
        // And the destager writes the image the reads show.
        let taken = c.collect_all_for_tests();
        assert_eq!(taken.len(), 1);
        let mut image = vec![0xffu8; chunk as usize];
        crate::destage::compose(&taken[0].versions, None, 0, &mut image);
        assert_eq!(image, out);
    }

    #[test]
    fn a_source_read_is_stale_once_a_version_of_its_shard_was_retired() {
        let c = cache();
        let lock = c.lock_range(512, 512);
        let mut have = lock.source_blocks(&[]);
        assert_eq!(have.len(), 1);
        drop(lock);
        have[0].data = vec![0xee; 4096];
        // Meanwhile a destage retires a version in the same shard (chunk 64 shares shard 0).
        land(&c, 64 * 16384, &[2u8; 4096], Epoch(0));
        for mut d in c.collect_all_for_tests() {
            c.retire(&mut d);
        }
        let lock = c.lock_range(512, 512);
        assert_eq!(
            lock.source_blocks(&have).len(),
            1,
            "the read before the retirement is not current any more"
        );
    }

    #[test]
    fn a_batch_under_way_keeps_its_chunks_from_the_next_batch() {
        let c = cache();
        for chunk in 0..4u64 {
            land(&c, chunk * 16384, &[chunk as u8 + 1; 4096], Epoch(0));
        }
        let first = c.collect(2 * 16384, crate::cache::Pick::ANY, &[]);
        let busy: Vec<ChunkIndex> = first.iter().map(|d| d.chunk).collect();
        assert_eq!(busy, vec![ChunkIndex(0), ChunkIndex(1)]);
        // A write into a chunk under way adds to it; the next batch still leaves it alone,
        // and takes the two chunks nobody holds.
        land(&c, 4096, &[9; 4096], Epoch(0));
        let second = c.collect(u64::MAX, crate::cache::Pick::ANY, &busy);
        let taken: Vec<ChunkIndex> = second.iter().map(|d| d.chunk).collect();
        assert_eq!(taken, vec![ChunkIndex(2), ChunkIndex(3)]);
        // Once the first batch retired, what was written meanwhile is the next batch's.
        for mut d in first {
            c.retire(&mut d);
        }
        let third = c.collect(u64::MAX, crate::cache::Pick::ANY, &[]);
        let taken: Vec<ChunkIndex> = third.iter().map(|d| d.chunk).collect();
        assert_eq!(taken, vec![ChunkIndex(0), ChunkIndex(2), ChunkIndex(3)]);
    }

    #[test]
    fn a_write_older_than_a_chunks_newest_version_is_refused_before_anything_changes() {
        let c = cache();
        land(&c, 0, &[1u8; 4096], Epoch(5));
        let lock = c.lock_range(0, 4096);
        assert_eq!(
            lock.check_order(Epoch(4)),
            Err(EpochOrder {
                chunk: ChunkIndex(0),
                newest: Epoch(5)
            })
        );
        assert!(lock.check_order(Epoch(5)).is_ok());
    }

    #[test]
    fn new_versions_name_the_image_each_supersedes() {
        let c = cache();
        land(&c, 0, &[1u8; 4096], Epoch(3));
        let lock = c.lock_range(0, 2 * 16384);
        assert_eq!(
            lock.new_versions(Epoch(3)),
            vec![NewVersion {
                chunk: ChunkIndex(1),
                supersedes: None
            }]
        );
        assert_eq!(
            lock.new_versions(Epoch(4)),
            vec![
                NewVersion {
                    chunk: ChunkIndex(0),
                    supersedes: Some(Epoch(3))
                },
                NewVersion {
                    chunk: ChunkIndex(1),
                    supersedes: None
                }
            ]
        );
    }
}
