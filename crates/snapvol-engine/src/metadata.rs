//! In-RAM metadata: the snapshot table, the shared preservation index (every snapshot's
//! bitmap and pointer log at once), and the target allocator. Pure data structures; no I/O.
//!
//! # How per-snapshot bitmaps and logs are represented
//!
//! For chunk *c*, the snapshots that still read *c* from the source are exactly the
//! snapshots taken since *c*'s last preservation: once a chunk is overwritten, every snapshot
//! taken before the overwrite holds its original. So the preserved copies of *c* cover
//! disjoint, ascending ranges of snapshot sequence numbers, and one [`Entry`]
//! `{lo, hi, slot}` stands for "bit *c* is 1 and the log points at `slot`" in the bitmap and
//! log of every snapshot `lo..=hi` (claims 1–13). Memory therefore grows with preserved
//! copies, never with copies × the snapshots that share them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;

use crate::units::{ChunkIndex, Epoch, SnapshotSeq, TargetSlot};

/// One snapshot in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Sequence number (identity).
    pub seq: SnapshotSeq,
    /// Name, unique among live snapshots of the volume.
    pub name: String,
    /// When it was taken.
    pub created: SystemTime,
}

/// The live snapshots of a volume, oldest first. Immutable once published: writers swap in a
/// new table (see `Volume`), so readers on the data path never take a lock for it.
///
/// Each create and delete clones the table, so a clone copies no snapshot's data: entries and
/// names are shared (with 10,000 snapshots, a clone and the drop of the old table cost about a
/// tenth of what copying every name did).
#[derive(Debug, Clone, Default)]
pub struct SnapshotTable {
    snaps: Vec<Arc<SnapshotMeta>>,
    /// Name → sequence number of every live snapshot: a lookup by name (every create, delete
    /// and replayed creation record asks one) costs the same with 10,000 snapshots as with 10.
    names: HashMap<Arc<str>, SnapshotSeq>,
}

impl SnapshotTable {
    /// The snapshots, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &SnapshotMeta> {
        self.snaps.iter().map(|s| &**s)
    }

    /// Number of live snapshots.
    pub fn len(&self) -> usize {
        self.snaps.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.snaps.is_empty()
    }

    /// Looks a snapshot up by name.
    pub fn by_name(&self, name: &str) -> Option<&SnapshotMeta> {
        self.by_seq(*self.names.get(name)?)
    }

    /// Whether a snapshot `seq` named `name` may join the table: its name is free and its
    /// sequence number above every other (what a replayed creation record must satisfy).
    pub fn can_append(&self, seq: SnapshotSeq, name: &str) -> bool {
        self.snaps.last().is_none_or(|s| s.seq < seq) && !self.names.contains_key(name)
    }

    /// The live snapshot `seq`.
    pub fn by_seq(&self, seq: SnapshotSeq) -> Option<&SnapshotMeta> {
        let i = self.snaps.binary_search_by_key(&seq, |s| s.seq).ok()?;
        Some(&*self.snaps[i])
    }

    /// Whether `seq` is live.
    pub fn is_alive(&self, seq: SnapshotSeq) -> bool {
        self.snaps.binary_search_by_key(&seq, |s| s.seq).is_ok()
    }

    /// The live snapshots with a sequence number in `lo..=hi`, oldest first.
    pub fn range(&self, lo: u64, hi: u64) -> &[Arc<SnapshotMeta>] {
        if lo > hi {
            return &[];
        }
        let a = self.snaps.partition_point(|s| s.seq.0 < lo);
        let b = self.snaps.partition_point(|s| s.seq.0 <= hi);
        &self.snaps[a..b]
    }

    /// Number of live snapshots with a sequence number in `lo..=hi`.
    pub fn count_alive(&self, lo: u64, hi: u64) -> usize {
        self.range(lo, hi).len()
    }

    /// Whether any live snapshot was taken after epoch `after` and no later than `upto`, i.e.
    /// whether an image seen by snapshots `after+1..=upto` must be preserved.
    pub fn any_alive(&self, after: Epoch, upto: Epoch) -> bool {
        after < upto && self.count_alive(after.0 + 1, upto.0) > 0
    }

    /// Adds a snapshot newer than all others.
    pub fn push(&mut self, meta: SnapshotMeta) {
        debug_assert!(self.snaps.last().is_none_or(|s| s.seq < meta.seq));
        self.names.insert(Arc::from(meta.name.as_str()), meta.seq);
        self.snaps.push(Arc::new(meta));
    }

    /// Removes a snapshot.
    pub fn remove(&mut self, seq: SnapshotSeq) -> Option<SnapshotMeta> {
        let i = self.snaps.binary_search_by_key(&seq, |s| s.seq).ok()?;
        let meta = self.snaps.remove(i);
        self.names.remove(meta.name.as_str());
        Some(Arc::unwrap_or_clone(meta))
    }
}

/// One preserved copy of a chunk, shared by snapshots `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Oldest snapshot sequence number that reads this copy.
    pub lo: u64,
    /// Newest snapshot sequence number that reads this copy.
    pub hi: u64,
    /// Where the copy is.
    pub slot: TargetSlot,
    /// CRC-32C of the copy, verified on every read of it.
    pub crc: u32,
}

const INDEX_SHARDS: usize = 64;

/// One shard of the index: its chunks' copies, and the same copies ordered by their newest
/// reader, so that a diff visits only the copies of the snapshots it spans.
#[derive(Debug, Default)]
struct Shard {
    /// Chunk → its copies, sorted by `hi`.
    chunks: HashMap<u64, Vec<Entry>>,
    /// `(hi, chunk)` of every copy.
    by_hi: BTreeSet<(u64, u64)>,
}

/// The shared preservation index: chunk → preserved copies, sorted by `hi`.
///
/// Sharded by chunk so that lookups of independent chunks never contend.
#[derive(Debug)]
pub struct Index {
    shards: Vec<RwLock<Shard>>,
    count: AtomicUsize,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            shards: (0..INDEX_SHARDS).map(|_| RwLock::default()).collect(),
            count: AtomicUsize::new(0),
        }
    }
}

impl Index {
    fn shard(&self, c: ChunkIndex) -> &RwLock<Shard> {
        &self.shards[(c.0 as usize) % INDEX_SHARDS]
    }

    /// Bit *c* of snapshot `s`'s bitmap, with its log pointer: `Some(copy)` when the original
    /// is in the target VLUN (at `copy.slot`), `None` when the snapshot still reads the chunk
    /// from the source (claims 11, 12).
    pub fn lookup(&self, c: ChunkIndex, s: SnapshotSeq) -> Option<Entry> {
        let shard = self.shard(c).read();
        let entries = shard.chunks.get(&c.0)?;
        let i = entries.partition_point(|e| e.hi < s.0);
        entries.get(i).filter(|e| e.lo <= s.0).copied()
    }

    /// The newest snapshot sequence number whose original of `c` is preserved (0 if none):
    /// every live snapshot up to it has bit *c* set; every live snapshot after it has bit *c*
    /// clear (the "search the bitmaps" step of claims 14, 15 and 25).
    pub fn watermark(&self, c: ChunkIndex) -> Epoch {
        self.shard(c)
            .read()
            .chunks
            .get(&c.0)
            .and_then(|v| v.last())
            .map_or(Epoch(0), |e| Epoch(e.hi))
    }

    /// Whether a destaged write changed chunk `c` between snapshot `from` and the epoch
    /// `to` (exclusive): the copy snapshot `from` reads, if any, was superseded by a write
    /// of epoch `hi`, the first at or after `from` (see `destage::plan_chunk`), so the chunk
    /// changed exactly when `hi < to`. No copy for `from` means no write since `from` has
    /// been destaged.
    pub fn changed(&self, c: ChunkIndex, from: SnapshotSeq, to: Epoch) -> bool {
        self.lookup(c, from).is_some_and(|e| e.hi < to.0)
    }

    /// Adds to `out` every chunk [`Index::changed`] holds for (unordered, possibly more than
    /// once). Visits only the copies whose newest reader is in `from..to`: the preservation
    /// records of the span, whatever the volume's size and however many copies other
    /// snapshots have.
    pub fn changed_chunks(&self, from: SnapshotSeq, to: Epoch, out: &mut Vec<ChunkIndex>) {
        if to.0 <= from.0 {
            return;
        }
        for shard in &self.shards {
            let shard = shard.read();
            // A chunk changed in the span when the copy `from` reads was superseded before
            // `to`: that copy's `hi` is in the range, and it is the chunk's first copy with
            // `hi >= from`, which must also cover `from`.
            out.extend(
                shard
                    .by_hi
                    .range((from.0, 0)..(to.0, 0))
                    .filter_map(|&(_, c)| {
                        let entries = shard.chunks.get(&c)?;
                        let e = entries.get(entries.partition_point(|e| e.hi < from.0))?;
                        (e.lo <= from.0 && e.hi < to.0).then_some(ChunkIndex(c))
                    }),
            );
        }
    }

    /// Records a preserved copy (newer than every other copy of the chunk).
    pub fn insert(&self, c: ChunkIndex, e: Entry) {
        let mut shard = self.shard(c).write();
        let v = shard.chunks.entry(c.0).or_default();
        let at = v.partition_point(|x| x.hi < e.hi);
        v.insert(at, e);
        shard.by_hi.insert((e.hi, c.0));
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes the copies that snapshot `deleted`, now gone from `table`, was the last live
    /// reader of; returns their slots. Visits only the copies whose newest reader lies
    /// between `deleted` and the next live snapshot: the others either do not cover
    /// `deleted` or are still read by that next snapshot. So a deletion costs in proportion
    /// to the copies of that snapshot, not to the index, given what every deletion keeps:
    /// each copy in the index has a live reader (as [`Index::remove_unreferenced`] leaves
    /// it after an open).
    pub fn remove_unreferenced_after(
        &self,
        table: &SnapshotTable,
        deleted: SnapshotSeq,
    ) -> Vec<TargetSlot> {
        let next = table
            .range(deleted.0 + 1, u64::MAX)
            .first()
            .map_or(u64::MAX, |s| s.seq.0);
        let mut freed = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.write();
            let Shard { chunks, by_hi } = &mut *shard;
            let span: Vec<(u64, u64)> = by_hi.range((deleted.0, 0)..(next, 0)).copied().collect();
            for (hi, c) in span {
                let Some(v) = chunks.get_mut(&c) else {
                    continue;
                };
                let Ok(i) = v.binary_search_by_key(&hi, |e| e.hi) else {
                    continue;
                };
                if table.count_alive(v[i].lo, hi) == 0 {
                    freed.push(v.remove(i).slot);
                    by_hi.remove(&(hi, c));
                    if v.is_empty() {
                        chunks.remove(&c);
                    }
                }
            }
        }
        self.count.fetch_sub(freed.len(), Ordering::Relaxed);
        freed
    }

    /// Removes every copy that no live snapshot reads any more; returns their slots.
    pub fn remove_unreferenced(&self, table: &SnapshotTable) -> Vec<TargetSlot> {
        let mut freed = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.write();
            let Shard { chunks, by_hi } = &mut *shard;
            chunks.retain(|&c, v| {
                v.retain(|e| {
                    let keep = table.count_alive(e.lo, e.hi) > 0;
                    if !keep {
                        freed.push(e.slot);
                        by_hi.remove(&(e.hi, c));
                    }
                    keep
                });
                !v.is_empty()
            });
        }
        self.count.fetch_sub(freed.len(), Ordering::Relaxed);
        freed
    }

    /// Calls `f` for every (chunk, copy).
    pub fn for_each(&self, mut f: impl FnMut(ChunkIndex, &Entry)) {
        self.for_each_chunk(|c, v| v.iter().for_each(|e| f(c, e)));
    }

    /// Calls `f` for every chunk with a preserved copy, with its copies sorted by `hi`.
    pub fn for_each_chunk(&self, mut f: impl FnMut(ChunkIndex, &[Entry])) {
        for shard in &self.shards {
            for (c, v) in shard.read().chunks.iter() {
                f(ChunkIndex(*c), v);
            }
        }
    }

    /// All (chunk, copy) pairs sorted by chunk then `hi`; for checkpoints and checks.
    pub fn sorted(&self) -> Vec<(ChunkIndex, Entry)> {
        let mut all = Vec::new();
        self.for_each(|c, e| all.push((c, *e)));
        all.sort_by_key(|(c, e)| (c.0, e.hi));
        all
    }

    /// Number of preserved copies.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether nothing is preserved.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where free target slots are: derived from the metadata at open (I6), updated as slots are
/// handed out and freed. Hands out the lowest free slots after a moving cursor so that
/// consecutive batches fill the target sequentially.
#[derive(Debug, Default)]
pub struct Allocator {
    /// Free extents below `high_water`: start → length.
    free: BTreeMap<u64, u64>,
    /// Every slot at or above this is free (never used, or freed at the end).
    high_water: u64,
    /// Slots in use (data and metadata).
    used: u64,
    /// Slots the target can hold, if it is capped (or a device of fixed size).
    limit: Option<u64>,
}

impl Allocator {
    /// Builds the allocator from the set of slots in use.
    pub fn from_used(mut used: Vec<u64>) -> Self {
        used.sort_unstable();
        used.dedup();
        let mut a = Allocator {
            used: used.len() as u64,
            ..Default::default()
        };
        let mut next = 0;
        for s in used {
            if s > next {
                a.free.insert(next, s - next);
            }
            next = s + 1;
        }
        a.high_water = next;
        a
    }

    /// Caps the area at `limit` slots: [`Allocator::allocate`] then never hands out a slot at
    /// or beyond it, whatever its callers reserved.
    pub fn set_limit(&mut self, limit: Option<u64>) {
        self.limit = limit;
    }

    /// Slots in use.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// One past the highest slot in use or handed out.
    pub fn high_water(&self) -> u64 {
        self.high_water
    }

    /// Hands out `n` slots as ascending runs `(first, len)`, lowest free first, growing the
    /// area at its end when the holes do not suffice. `None`, handing out nothing, when that
    /// would pass the limit. (Callers reserve capacity first; this is the backstop that keeps
    /// a capped target from ever growing past its cap.)
    pub fn allocate(&mut self, mut n: u64) -> Option<Vec<(TargetSlot, u64)>> {
        let holes: u64 = self.free.values().sum();
        let grow = n.saturating_sub(holes);
        if self
            .limit
            .is_some_and(|l| self.high_water.checked_add(grow).is_none_or(|h| h > l))
        {
            return None;
        }
        let mut runs = Vec::new();
        // Prefer one hole that takes the whole request, so a batch lands sequentially.
        if let Some((&start, &len)) = self.free.iter().find(|(_, &len)| len >= n) {
            if n > 0 {
                self.free.remove(&start);
                if len > n {
                    self.free.insert(start + n, len - n);
                }
                self.used += n;
                return Some(vec![(TargetSlot(start), n)]);
            }
        }
        while n > 0 {
            let Some((&start, &len)) = self.free.iter().next() else {
                break;
            };
            self.free.remove(&start);
            let take = len.min(n);
            if len > take {
                self.free.insert(start + take, len - take);
            }
            runs.push((TargetSlot(start), take));
            n -= take;
            self.used += take;
        }
        if n > 0 {
            runs.push((TargetSlot(self.high_water), n));
            self.high_water += n;
            self.used += n;
        }
        Some(runs)
    }

    /// Returns a slot to the free set.
    pub fn free(&mut self, slot: TargetSlot) {
        let s = slot.0;
        debug_assert!(s < self.high_water);
        self.used -= 1;
        let mut start = s;
        let mut len = 1;
        if let Some((&ps, &pl)) = self.free.range(..s).next_back() {
            debug_assert!(ps + pl <= s, "double free of slot {s}");
            if ps + pl == s {
                self.free.remove(&ps);
                start = ps;
                len += pl;
            }
        }
        if let Some(nl) = self.free.remove(&(s + 1)) {
            len += nl;
        }
        if start + len == self.high_water {
            self.high_water = start;
        } else {
            self.free.insert(start, len);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A table of live snapshots with these sequence numbers (shared by other modules' tests).
    pub(crate) fn table(seqs: &[u64]) -> SnapshotTable {
        let mut t = SnapshotTable::default();
        for &s in seqs {
            t.push(SnapshotMeta {
                seq: SnapshotSeq(s),
                name: format!("s{s}"),
                created: SystemTime::UNIX_EPOCH,
            });
        }
        t
    }

    #[test]
    fn one_entry_answers_for_every_snapshot_in_its_range() {
        let idx = Index::default();
        idx.insert(
            ChunkIndex(3),
            Entry {
                lo: 1,
                hi: 4,
                slot: TargetSlot(7),
                crc: 7,
            },
        );
        idx.insert(
            ChunkIndex(3),
            Entry {
                lo: 5,
                hi: 6,
                slot: TargetSlot(9),
                crc: 9,
            },
        );
        for s in 1..=4 {
            assert_eq!(
                idx.lookup(ChunkIndex(3), SnapshotSeq(s)).map(|e| e.slot),
                Some(TargetSlot(7))
            );
        }
        assert_eq!(
            idx.lookup(ChunkIndex(3), SnapshotSeq(6)).map(|e| e.slot),
            Some(TargetSlot(9))
        );
        assert_eq!(idx.lookup(ChunkIndex(3), SnapshotSeq(7)), None);
        assert_eq!(idx.lookup(ChunkIndex(4), SnapshotSeq(1)), None);
        assert_eq!(idx.watermark(ChunkIndex(3)), Epoch(6));
        assert_eq!(idx.len(), 2);
    }

    /// `changed_chunks` (through the copies ordered by `hi`) agrees with `changed` (through
    /// each chunk's copies) for every span, before and after copies are freed.
    #[test]
    fn changed_chunks_finds_exactly_the_chunks_changed_in_a_span() {
        let idx = Index::default();
        // Chunk c gets copies with ranges cut at a pseudo-random set of snapshots 1..=12.
        let mut x = 0x9e37_79b9_u64;
        for c in 0..300u64 {
            let mut lo = 1;
            while lo <= 12 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let hi = (lo + x % 4).min(12);
                if x % 3 != 0 {
                    let e = Entry {
                        lo,
                        hi,
                        slot: TargetSlot(c * 16 + lo),
                        crc: 0,
                    };
                    idx.insert(ChunkIndex(c), e);
                }
                lo = hi + 1;
            }
        }
        let check = |idx: &Index| {
            for from in 1..=12 {
                for to in (from + 1..=13).map(Epoch).chain([Epoch::LIVE]) {
                    let mut got = Vec::new();
                    idx.changed_chunks(SnapshotSeq(from), to, &mut got);
                    got.sort_unstable();
                    got.dedup();
                    let want: Vec<ChunkIndex> = (0..300)
                        .map(ChunkIndex)
                        .filter(|&c| idx.changed(c, SnapshotSeq(from), to))
                        .collect();
                    assert_eq!(got, want, "from {from} to {to:?}");
                }
            }
        };
        check(&idx);
        // Snapshots 3..=7 deleted: copies only they read are freed, and forgotten by both.
        let live: Vec<u64> = (1..=12).filter(|s| !(3..=7).contains(s)).collect();
        let freed = idx.remove_unreferenced(&table(&live));
        assert!(!freed.is_empty());
        check(&idx);
    }

    /// Deleting snapshots one at a time with the span walk leaves the same index, and frees
    /// the same copies, as the whole-index walk, for random histories and deletion orders.
    #[test]
    fn a_deletion_frees_exactly_what_the_whole_index_walk_frees() {
        use proptest::prelude::*;
        let history = (
            proptest::collection::vec(proptest::collection::vec(1u64..=24, 0..8), 1..40),
            proptest::collection::vec(1u64..=24, 1..24),
        );
        proptest!(ProptestConfig::with_cases(300), |((chunks, deletions) in history)| {
            let span = Index::default();
            let whole = Index::default();
            let mut slot = 0;
            for (c, cuts) in chunks.iter().enumerate() {
                // A chunk's copies: disjoint intervals, oldest first, as destaging makes them.
                let mut cuts = cuts.clone();
                cuts.sort_unstable();
                cuts.dedup();
                let mut lo = 1;
                for hi in cuts {
                    let e = Entry { lo, hi, slot: TargetSlot(slot), crc: 0 };
                    slot += 1;
                    span.insert(ChunkIndex(c as u64), e);
                    whole.insert(ChunkIndex(c as u64), e);
                    lo = hi + 1;
                }
            }
            let mut live: Vec<u64> = (1..=24).collect();
            let mut t = table(&live);
            // What an open leaves: every copy has a live reader.
            assert_eq!(span.remove_unreferenced(&t), vec![]);
            whole.remove_unreferenced(&t);
            for d in deletions {
                let Some(at) = live.iter().position(|&s| s == d) else { continue };
                live.remove(at);
                t = table(&live);
                let mut a = span.remove_unreferenced_after(&t, SnapshotSeq(d));
                let mut b = whole.remove_unreferenced(&t);
                a.sort_unstable_by_key(|s| s.0);
                b.sort_unstable_by_key(|s| s.0);
                prop_assert_eq!(a, b, "deleting {}", d);
                prop_assert_eq!(span.sorted(), whole.sorted());
                prop_assert_eq!(span.len(), whole.len());
                for s in 1..=25 {
                    let mut x = Vec::new();
                    let mut y = Vec::new();
                    span.changed_chunks(SnapshotSeq(s), Epoch::LIVE, &mut x);
                    whole.changed_chunks(SnapshotSeq(s), Epoch::LIVE, &mut y);
                    x.sort_unstable();
                    y.sort_unstable();
                    prop_assert_eq!(x, y);
                }
            }
        });
    }

    #[test]
    fn copies_are_freed_only_when_no_live_snapshot_reads_them() {
        let idx = Index::default();
        idx.insert(
            ChunkIndex(0),
            Entry {
                lo: 1,
                hi: 3,
                slot: TargetSlot(0),
                crc: 0,
            },
        );
        idx.insert(
            ChunkIndex(0),
            Entry {
                lo: 4,
                hi: 4,
                slot: TargetSlot(1),
                crc: 1,
            },
        );
        let freed = idx.remove_unreferenced(&table(&[2, 5]));
        assert_eq!(freed, vec![TargetSlot(1)]);
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn table_finds_snapshots_by_name_after_creations_and_deletions() {
        let mut t = table(&[2, 5, 9]);
        assert_eq!(t.by_name("s5").map(|s| s.seq), Some(SnapshotSeq(5)));
        assert!(!t.can_append(SnapshotSeq(10), "s9"), "a name in use");
        assert_eq!(
            t.remove(SnapshotSeq(5)).map(|s| s.name),
            Some("s5".to_owned())
        );
        assert!(t.by_name("s5").is_none());
        assert!(
            t.can_append(SnapshotSeq(10), "s5"),
            "a deleted snapshot's name is free"
        );
        t.push(SnapshotMeta {
            seq: SnapshotSeq(10),
            name: "s5".into(),
            created: SystemTime::UNIX_EPOCH,
        });
        assert_eq!(t.by_name("s5").map(|s| s.seq), Some(SnapshotSeq(10)));
        assert_eq!(t.by_name("s9").map(|s| s.seq), Some(SnapshotSeq(9)));
        assert!(t.by_name("nope").is_none());
    }

    #[test]
    fn table_counts_live_snapshots_in_ranges() {
        let t = table(&[2, 5, 9]);
        assert_eq!(t.count_alive(1, 9), 3);
        assert_eq!(t.count_alive(3, 8), 1);
        assert!(!t.any_alive(Epoch(5), Epoch(8)));
        assert!(t.any_alive(Epoch(4), Epoch(5)));
        assert!(!t.any_alive(Epoch(5), Epoch(5)));
    }

    #[test]
    fn allocator_reuses_freed_slots_and_prefers_one_sequential_run() {
        let mut a = Allocator::from_used(vec![0, 1, 5]);
        assert_eq!(a.used(), 3);
        assert_eq!(a.high_water(), 6);
        assert_eq!(a.allocate(3), Some(vec![(TargetSlot(2), 3)]));
        assert_eq!(a.allocate(2), Some(vec![(TargetSlot(6), 2)]));
        a.free(TargetSlot(3));
        a.free(TargetSlot(2));
        assert_eq!(a.allocate(1), Some(vec![(TargetSlot(2), 1)]));
        a.free(TargetSlot(7));
        a.free(TargetSlot(6));
        assert_eq!(a.high_water(), 6, "freeing the tail shrinks the area");
        assert_eq!(
            a.allocate(3),
            Some(vec![(TargetSlot(3), 1), (TargetSlot(6), 2)])
        );
        assert_eq!(a.used(), 8);
    }

    #[test]
    fn a_capped_allocator_hands_out_nothing_past_its_limit() {
        let mut a = Allocator::from_used(vec![0, 2]);
        a.set_limit(Some(5));
        assert_eq!(a.allocate(4), None, "holes 1, then 3 and 4: one short");
        assert_eq!(a.used(), 2, "a refusal hands out nothing");
        assert_eq!(
            a.allocate(3),
            Some(vec![(TargetSlot(1), 1), (TargetSlot(3), 2)])
        );
        assert_eq!(a.allocate(1), None);
        a.free(TargetSlot(3));
        assert_eq!(a.allocate(1), Some(vec![(TargetSlot(3), 1)]));
    }
}
