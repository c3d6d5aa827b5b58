//! The volume: the public API that ties the cache, the metadata and the VLUNs together.
//!
//! Write ordering of a destage batch (the crash argument for each step is in
//! `docs/format.md`):
//!
//! 1. originals are copied, once each, to freshly allocated target slots (sequentially);
//! 2. the preservation records that point every affected snapshot at them are appended to the
//!    metadata log, after the creations of snapshots still pending (taken, durable in the
//!    journal, not yet in the log); the target is synced (data and records durable together);
//! 3. the superblock is pointed at the new log head; the target is synced (the records become
//!    part of the volume: I1, I2);
//! 4. the new pointers are published in RAM;
//! 5. the new data is written to the source;
//! 6. the dirty designations are cleared.
//!
//! With the background destager two threads serve a volume: the destager runs these batches,
//! and the journal writer appends staged writes once a few MiB gather and moves the journal
//! head (syncing the source) once a quarter of the ring is used, so neither waits for the
//! other's syncs. A snapshot is one journal append — the writes it holds, then its record —
//! and one sync.
//!
//! Where each concern lives:
//!
//! | module | concern |
//! |---|---|
//! | this one | the public [`Volume`] facade, its options and reports, the shared state `Inner` |
//! | `open` | creating a volume and opening one: loading the log, the journal, recovery |
//! | `epoch` | the epoch gate: which writes a snapshot holds |
//! | `write` | the write path: epochs, space reservations, landing in the cache, staging |
//! | `read` | live and snapshot reads, block status |
//! | `space` | target capacity and the slots promised to cached writes |
//! | `journaling` | the journal writer: appends, FLUSH, moving the journal head |
//! | `destager` | the destage executor and its background thread (claims 14–16) |
//! | `recovery` | replaying the cache journal after a crash (claim 25) |
//! | `metalog` | the metadata log: loading the chain, commits, superblocks |
//! | `compaction` | rewriting the metadata log beside the commits that go on, and its thread |
//! | `restore` | diffs between two points, and rollback |
//! | `snapshots` | snapshot create and delete, space accounting |

mod compaction;
mod destager;
mod epoch;
mod journaling;
mod metalog;
mod open;
mod pacing;
mod read;
mod recovery;
mod restore;
mod snapshots;
mod space;
mod write;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::{Condvar, Mutex};

use crate::cache::{Cache, DirtyChunk, LandedVersion};
use crate::catalog::VolumeLock;
use crate::error::{Error, Result};
use crate::format::{Record, Superblock, BLOCK_SIZE};
use crate::journal::{Journal, DEFAULT_JOURNAL_SIZE};
use crate::metadata::{Allocator, Index, SnapshotMeta, SnapshotTable};
use crate::stats::{Histogram, VolumeMetrics};
use crate::store::DEFAULT_CACHE_SIZE;
use crate::units::{ChunkIndex, Epoch, Geometry, SnapshotSeq, TargetSlot, WriteMode};
use crate::vlun::Vlun;

use crate::chain::BlockPlace;
use epoch::EpochGate;
pub use restore::{ChangeGuard, RollbackReport};
use write::Bytes;

/// Tunables for an open volume.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    /// Bound on dirty data in the RAM cache, in bytes.
    pub cache_size: u64,
    /// The metadata log is compacted once it holds at least this many records and four
    /// times more than a fresh copy of the live metadata would.
    pub compact_after_records: u64,
    /// Destage in a background thread (the default). Without it, writers destage when the
    /// cache is full and flushes only journal: every I/O happens on the caller's thread, in
    /// an order that depends only on the calls made — what crash-point tests need.
    pub background_destage: bool,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        Self {
            cache_size: DEFAULT_CACHE_SIZE,
            compact_after_records: 4096,
            background_destage: true,
        }
    }
}

/// A snapshot as users see it, with its space accounting.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotInfo {
    /// Name (the part after `@`).
    pub name: String,
    /// Sequence number.
    pub seq: SnapshotSeq,
    /// When it was taken.
    pub created: SystemTime,
    /// Bytes of preserved data only this snapshot reads: freed if it is deleted.
    pub exclusive_bytes: u64,
    /// Bytes of preserved data it shares with other snapshots.
    pub shared_bytes: u64,
}

/// Figures about a volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeInfo {
    /// Volume name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// How write requests are made durable (`create --write-mode`).
    #[serde(default)]
    pub write_mode: WriteMode,
    /// Cap on the target VLUN's size; `None` = grows as needed.
    pub target_size: Option<u64>,
    /// Bytes of the data area holding preserved chunks.
    pub target_used_bytes: u64,
    /// Bytes of the target VLUN holding metadata (superblocks and the metadata log).
    pub metadata_bytes: u64,
    /// Current length of the target VLUN.
    pub target_file_bytes: u64,
    /// Live snapshots, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
    /// Preserved chunk copies the target holds now (`target_used_bytes / chunk_size`).
    pub preserved_chunks: u64,
    /// Chunk copies made to the target since this volume was opened (each copy counts once,
    /// however many snapshots share it).
    pub copies_since_open: u64,
    /// Dirty bytes in the cache right now.
    pub dirty_bytes: u64,
    /// Reads of preserved copies that failed their checksum since the volume was opened
    /// (each answered with EIO, and logged with the copy's location).
    #[serde(default)]
    pub checksum_errors: u64,
    /// Bytes of originals that writes still in the cache will preserve once destaged: the
    /// target slots promised to them. `target_used_bytes` plus this is what the target will
    /// hold once the cache is empty (fewer if snapshots are deleted first).
    pub pending_preserve_bytes: u64,
    /// The snapshot an unfinished rollback is making the live volume (one interrupted by a
    /// crash, or stopped by an error): the next open for writing, or running the rollback
    /// again, finishes it. Until then a read-only open reads the live volume as it.
    #[serde(default)]
    pub rollback_to: Option<String>,
}

/// Metadata that changes only on commit; guarded by one mutex that the data path never takes.
#[derive(Debug)]
struct MetaState {
    sb: Superblock,
    alloc: Allocator,
    /// Slots holding blocks of the current metadata chain.
    chain_slots: Vec<TargetSlot>,
    /// Where the next metadata block and its ditto copy go, if the current slots have room.
    next_block: Option<BlockPlace>,
    /// Records in the current chain.
    chain_records: u64,
    /// The snapshots whose creation is in the metadata log: what a checkpoint writes. (The
    /// table the data path sees also holds the snapshots still pending.)
    committed: SnapshotTable,
    /// The compaction under way, if one is: commits keep their records in its tail.
    compaction: Option<compaction::Compaction>,
}

/// Snapshots taken whose creation is in the cache journal (or on its way there) but not yet
/// in the metadata log. Every metadata-log write takes those whose journal record is durable
/// (a snapshot whose record never became durable was never acknowledged, and must not
/// appear), and the superblock's `last_snapshot_seq` is the highest creation the log holds:
/// that is how recovery tells a journal snapshot record still to apply from one applied.
#[derive(Debug)]
struct PendingSnapshot {
    meta: SnapshotMeta,
    /// Whether its journal record is durable yet.
    durable: bool,
}

#[derive(Debug, Default)]
struct Stats {
    copies_made: AtomicU64,
    /// Reads of preserved copies that failed their checksum.
    checksum_failures: AtomicU64,
    /// Copies a destage batch has allocated slots for (its writes' reservations taken back)
    /// and not yet published in the index; changed under the metadata lock, so `info` sees
    /// every copy either pending, under way, or in the index.
    preserving: AtomicU64,
    /// Destage batches completed, the chunks they destaged, and how long each took.
    destage_batches: AtomicU64,
    destaged_chunks: AtomicU64,
    destage_duration: Histogram,
    /// Batches whose copies were written while the batch before them committed.
    destage_overlapped: AtomicU64,
    /// How long write requests waited for cache room (`make_room`) or were paced (`pacing`).
    cache_wait: Histogram,
    snapshots_created: AtomicU64,
    snapshots_deleted: AtomicU64,
    /// Metadata-log compactions completed, the records committed while they were under way,
    /// and how long each took.
    compactions: AtomicU64,
    compaction_tail_records: AtomicU64,
    compaction_duration: Histogram,
}

#[derive(Debug)]
struct Inner {
    name: String,
    geo: Geometry,
    source: Box<dyn Vlun>,
    target: Box<dyn Vlun>,
    data_start: u64,
    target_cap: Option<u64>,
    volume_id: [u8; 16],
    cache: Cache,
    compact_after_records: u64,
    background_destage: bool,
    index: Index,
    table: ArcSwap<SnapshotTable>,
    gate: EpochGate,
    wseq: AtomicU64,
    /// Write requests waiting for the journal, sharded by sequence number.
    staged: Vec<Mutex<Vec<Staged>>>,
    /// The persistent cache journal; held only by whoever appends or moves its head.
    journal: Mutex<Journal>,
    /// Held for a whole journal append, making room included: a FLUSH that finds nothing
    /// staged may return only once no other thread still holds requests it took from the
    /// staging list, and only if that append succeeded.
    append_lock: Mutex<()>,
    /// Largest request journaled as one record; longer ones go in pieces.
    max_record: u64,
    /// Journal appends holding large requests still landing in the cache: the head may not
    /// pass them until every piece is in (the pieces not yet landed have no version to pin it).
    landing: Mutex<Vec<u64>>,
    meta: Mutex<MetaState>,
    /// Slots in use, mirrored out of `meta` for the write path's capacity check.
    slots_used: AtomicU64,
    /// Target slots promised to cached writes whose originals are not yet preserved.
    reserved: AtomicU64,
    /// Slot count below which a reservation needs no look at the file system's free space.
    capacity_hint: AtomicU64,
    /// Serializes destage batches with snapshot deletion and checks; holds the buffers batches
    /// gather their preserved copies in.
    destage_lock: destager::DestageLock,
    /// Serializes snapshot creation and deletion.
    admin_lock: Mutex<()>,
    /// The compaction whose fresh chain may be written (0: none); held while it is written,
    /// so that a cancel frees the slots only once no write to them is under way. Taken after
    /// `meta` when both are.
    compact_write: Mutex<u64>,
    /// The last compaction's id.
    compact_ids: AtomicU64,
    compact_wake: Wake,
    /// Snapshots not yet in the metadata log, oldest first.
    pending: Mutex<Vec<PendingSnapshot>>,
    failed: OnceLock<String>,
    /// The store's lock on the volume, set once opened through a store; lives as long as
    /// anything of the volume runs. A lost lock fails every later request (see
    /// [`Inner::check_held`]).
    lock: OnceLock<VolumeLock>,
    stats: Stats,
    /// Wakes the destager.
    wake: Wake,
    /// Serializes journal head moves (which release the journal during their source sync).
    reclaim_lock: Mutex<()>,
    /// Bytes of write data staged for the journal.
    staged_bytes: AtomicU64,
    journal_wake: Wake,
    shutdown: AtomicBool,
    /// Opened to be looked at: nothing is written, ever.
    read_only: bool,
    /// Opened read-only in the middle of a rollback: the live volume reads as this snapshot,
    /// which it is becoming (`restore`).
    live_view: Option<SnapshotSeq>,
    /// The last destage batch found a file system full (which one: `space::device_code`):
    /// writes that need the cache to drain get ENOSPC instead of waiting, until a batch gets
    /// through again. 0 when not.
    out_of_space: AtomicU8,
    /// One bit per chunk: the source's blocks for it are known to be allocated, so destaging a
    /// write there cannot run out of space (`space::ensure_source_room`).
    source_room: Vec<AtomicU64>,
    /// The journal's device, for `check` to read beside the journal writer.
    journal_dev: Arc<dyn Vlun>,
    /// The journal's live bytes as its writer last left them ([`Journal::used_gauge`]), and
    /// its ring's length: read by [`Volume::metrics`] without waiting for an append.
    journal_used: Arc<AtomicU64>,
    journal_ring: u64,
    /// How write requests are made durable (the superblock's, fixed at creation).
    write_mode: WriteMode,
    /// Admits writers at the destager's pace (`pacing`).
    pacer: pacing::Pacer,
    /// Write mode throughput: the generation a write that skips the journal lands in. A
    /// FLUSH moves it on and destages every version of its generation or an older one.
    flush_gen: AtomicU64,
    /// The newest journal append the journal's head has passed on disk: a replay after a
    /// crash applies no record of it or of an older append.
    journal_reclaimed: AtomicU64,
    /// Destage batches that wrote to the source data that skipped the journal, and how many
    /// of them a completed source sync covers: a FLUSH syncs the source only if some batch is
    /// not covered yet.
    source_written: AtomicU64,
    source_synced: AtomicU64,
}

/// An open volume. Dropping it flushes and closes it; [`Volume::close`] does the same and
/// reports errors.
#[derive(Debug)]
pub struct Volume {
    inner: Arc<Inner>,
    /// The background destager and the journal writer that feeds it.
    destager: Vec<JoinHandle<()>>,
    open: bool,
}

/// A write request waiting for the journal: its bytes, and the cache versions it landed in.
#[derive(Debug)]
struct Staged {
    wseq: u64,
    epoch: Epoch,
    offset: u64,
    len: u64,
    data: Option<Arc<[u8]>>,
    landed: Vec<LandedVersion>,
}

const STAGING_SHARDS: usize = 16;

/// Staged write data at which the journal writer appends without waiting for the destager.
const JOURNAL_EAGER: u64 = 4 << 20;
/// Metadata slots kept free so that deleting a snapshot or compacting the log always fits.
const META_HEADROOM: u64 = 2;

/// Milliseconds since the Unix epoch (0 for earlier times).
fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The metadata-log record of a snapshot's creation.
fn create_record(s: &SnapshotMeta) -> Record {
    Record::SnapshotCreate {
        seq: s.seq,
        created_ms: millis(s.created),
        name: s.name.clone(),
    }
}

/// The shape of a new volume.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Size and chunk size.
    pub geometry: Geometry,
    /// Cap on the target VLUN; `None` lets a file grow (a block device holds what it holds).
    pub target_cap: Option<u64>,
    /// Size of the cache journal's ring.
    pub journal_size: u64,
    /// How write requests are made durable.
    pub write_mode: WriteMode,
}

impl Layout {
    /// A layout with an unlimited target, the default journal and atomic writes.
    pub fn new(geometry: Geometry) -> Self {
        Self {
            geometry,
            target_cap: None,
            journal_size: DEFAULT_JOURNAL_SIZE,
            write_mode: WriteMode::Atomic,
        }
    }
}

impl Volume {
    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Size and chunk size.
    pub fn geometry(&self) -> Geometry {
        self.inner.geo
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.geo.size
    }

    /// Reads the live volume.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read(offset, buf, None)
    }

    /// Reads snapshot `seq`.
    pub fn read_snapshot(&self, seq: SnapshotSeq, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read(offset, buf, Some(seq))
    }

    /// Writes `data` at `offset`; acknowledged once it is in the cache (claims 17, 22).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.inner
            .write(offset, data.len() as u64, Some(Bytes::Borrowed(data)))
    }

    /// [`Volume::write`] of bytes already in a shared buffer: the cache and the journal keep
    /// references to it instead of a copy (an NBD server reads each payload straight into
    /// one).
    pub fn write_shared(&self, offset: u64, data: &Arc<[u8]>) -> Result<()> {
        self.inner
            .write(offset, data.len() as u64, Some(Bytes::Shared(data)))
    }

    /// Makes `[offset, offset + len)` read as zero; originals are preserved first where a
    /// snapshot needs them.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.write(offset, len, None)
    }

    /// Discards `[offset, offset + len)`: it reads as zero afterwards, and whole chunks give
    /// their space back to the source's file system once destaged.
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.write(offset, len, None)
    }

    /// Makes every write acknowledged so far durable (in the cache journal; the destager
    /// moves it on in its own time).
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Writes everything in the cache through to the VLUNs and empties the journal: the source
    /// VLUN is then the volume, and space accounting is settled.
    pub fn destage_all(&self) -> Result<()> {
        self.inner.check_writable()?;
        self.inner.drain().inspect_err(|e| self.inner.fail(e))
    }

    /// Which parts of `[offset, offset + len)` of the live volume (`snap = None`) or of a
    /// snapshot may hold data, as consecutive `(length, may_hold_data)` runs from `offset`; a
    /// run without data reads as zeros. Covers at most 1 GiB (callers ask again for the rest).
    /// A chunk counts as data when the cache or a preserved copy holds it for that reader, or
    /// the source VLUN has data (not a hole) there.
    pub fn allocation(
        &self,
        snap: Option<SnapshotSeq>,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, bool)>> {
        self.inner.allocation(snap, offset, len)
    }

    /// The chunks that changed between snapshot `from` and `to` (a newer snapshot, or the
    /// live volume for `None`), from metadata alone: sorted, merged byte extents
    /// `(offset, length)` in whole chunks. A chunk changed when some write between the two
    /// points touched it (trims and zeroing included). Costs one step per preserved copy and
    /// cached chunk, never per chunk of the volume. Fails when `to` is not newer than `from`
    /// or either snapshot is gone.
    pub fn diff(&self, from: SnapshotSeq, to: Option<SnapshotSeq>) -> Result<Vec<(u64, u64)>> {
        self.check_order(from, to)?;
        self.inner.diff(from, to)
    }

    /// Which parts of `[offset, offset + len)` changed between snapshot `from` and `to` (as
    /// [`Volume::diff`] says), as consecutive `(length, changed)` runs from `offset`. Covers
    /// at most 1 GiB (callers ask again for the rest).
    pub fn changed(
        &self,
        from: SnapshotSeq,
        to: Option<SnapshotSeq>,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, bool)>> {
        self.check_order(from, to)?;
        self.inner.changed(from, to, offset, len)
    }

    fn check_order(&self, from: SnapshotSeq, to: Option<SnapshotSeq>) -> Result<()> {
        match to {
            Some(to) if to <= from => {
                let table = self.inner.table.load();
                let name = |s: SnapshotSeq| {
                    table
                        .by_seq(s)
                        .map_or_else(|| format!("sequence number {}", s.0), |m| m.name.clone())
                };
                Err(Error::InvalidArgument(format!(
                    "a diff goes from an older point to a newer one: {}@{} is {} {}@{}",
                    self.inner.name,
                    name(from),
                    if to == from {
                        "the same snapshot as"
                    } else {
                        "newer than"
                    },
                    self.inner.name,
                    name(to)
                )))
            }
            _ => Ok(()),
        }
    }

    /// Makes the live volume exactly snapshot `to`'s content; every snapshot, older and newer,
    /// stays as it was. Rewrites only the chunks that differ (from [`Volume::diff`]), through
    /// the cache, so the cost follows the amount of change, not the volume's size. Crash-safe:
    /// if the process dies part-way, the next open finishes the rollback. Snapshot creation
    /// and deletion wait for it. `progress` is told the bytes rewritten so far and the total.
    pub fn rollback(
        &self,
        to: SnapshotSeq,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<RollbackReport> {
        self.inner.rollback(to, progress)
    }

    /// Starts changes to the live volume that must happen entirely or not at all: until
    /// [`ChangeGuard::finish`] returns, a crash leaves the live volume as snapshot `fallback`,
    /// and so does dropping the guard (an error part-way). Snapshot creation and deletion wait
    /// meanwhile. For applying an incremental stream on top of `fallback`.
    pub fn guarded_changes(&self, fallback: SnapshotSeq) -> Result<ChangeGuard<'_>> {
        ChangeGuard::start(&self.inner, fallback)
    }

    /// The snapshot an unfinished rollback is making the live volume (one that failed
    /// part-way, say on a full disk): running it again, or reopening, finishes it.
    pub fn rollback_pending(&self) -> Option<SnapshotSeq> {
        self.inner.rollback_target()
    }

    /// Writes `data` at `offset` and makes it durable before returning (NBD's FUA): it is
    /// journaled in either write mode, so this costs one journal sync and never a destage.
    pub fn write_fua(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.inner
            .write_fua(offset, data.len() as u64, Some(Bytes::Borrowed(data)))
    }

    /// [`Volume::write_fua`] of bytes already in a shared buffer (see [`Volume::write_shared`]).
    pub fn write_fua_shared(&self, offset: u64, data: &Arc<[u8]>) -> Result<()> {
        self.inner
            .write_fua(offset, data.len() as u64, Some(Bytes::Shared(data)))
    }

    /// [`Volume::write_zeroes`] (or [`Volume::trim`]), durable before returning (NBD's FUA).
    pub fn write_zeroes_fua(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.write_fua(offset, len, None)
    }

    /// Takes a snapshot. It holds every write acknowledged before this call and none issued
    /// after it returns, and it is durable when this returns.
    pub fn snapshot_create(&self, name: &str) -> Result<SnapshotInfo> {
        self.inner.snapshot_create(name)
    }

    /// Deletes a snapshot; target space only it used is freed for reuse.
    pub fn snapshot_delete(&self, name: &str) -> Result<()> {
        self.inner.snapshot_delete(name)
    }

    /// The sequence number of snapshot `name`: a lookup in the snapshot table, without the
    /// accounting [`Volume::snapshot`] computes (a pass over every preserved copy).
    pub fn snapshot_seq(&self, name: &str) -> Result<SnapshotSeq> {
        self.inner
            .table
            .load()
            .by_name(name)
            .map(|m| m.seq)
            .ok_or_else(|| Error::SnapshotNotFound(format!("{}@{name}", self.inner.name)))
    }

    /// One snapshot with its accounting.
    pub fn snapshot(&self, name: &str) -> Result<SnapshotInfo> {
        self.snapshots()
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::SnapshotNotFound(format!("{}@{name}", self.inner.name)))
    }

    /// Live snapshots, oldest first, with their accounting.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.inner.accounting()
    }

    /// Figures about the volume.
    pub fn info(&self) -> VolumeInfo {
        let i = &self.inner;
        // Under the metadata lock: a destage batch moves copies from reserved to under way
        // to the index under it, so none is counted twice or missed.
        let meta = i.meta.lock();
        let metadata_bytes = 2 * BLOCK_SIZE as u64 + meta.chain_slots.len() as u64 * i.geo.chunk();
        let preserved = i.index.len() as u64;
        let pending = i.reserved.load(Ordering::SeqCst) + i.stats.preserving.load(Ordering::SeqCst);
        drop(meta);
        VolumeInfo {
            name: i.name.clone(),
            size: i.geo.size,
            chunk_size: i.geo.chunk_size,
            write_mode: i.write_mode,
            target_size: i.target_cap,
            target_used_bytes: preserved * i.geo.chunk(),
            metadata_bytes,
            target_file_bytes: i.target.len().unwrap_or(0),
            snapshots: i.accounting(),
            preserved_chunks: preserved,
            copies_since_open: i.stats.copies_made.load(Ordering::Relaxed),
            dirty_bytes: i.cache.dirty_bytes(),
            pending_preserve_bytes: pending * i.geo.chunk(),
            checksum_errors: i.stats.checksum_failures.load(Ordering::Relaxed),
            rollback_to: i
                .rollback_target()
                .and_then(|s| i.table.load().by_seq(s).map(|m| m.name.clone())),
        }
    }

    /// Figures for monitoring, read without a lock from what the volume keeps anyway (see
    /// [`crate::stats`]): cheap enough to ask for at every scrape.
    pub fn metrics(&self) -> VolumeMetrics {
        let i = &self.inner;
        let s = &i.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let preserved = i.index.len() as u64;
        VolumeMetrics {
            snapshots: i.table.load().len() as u64,
            snapshots_created: get(&s.snapshots_created),
            snapshots_deleted: get(&s.snapshots_deleted),
            preserved_chunks: preserved,
            preserved_bytes: preserved * i.geo.chunk(),
            copies_made: get(&s.copies_made),
            dirty_bytes: i.cache.dirty_bytes(),
            cache_limit_bytes: i.cache.limit(),
            cache_spare_bytes: i.cache.spare_bytes(),
            journal_used_bytes: get(&i.journal_used),
            journal_size_bytes: i.journal_ring,
            destage_batches: get(&s.destage_batches),
            destage_overlapped: get(&s.destage_overlapped),
            destaged_chunks: get(&s.destaged_chunks),
            destage_duration: s.destage_duration.snapshot(),
            cache_wait: s.cache_wait.snapshot(),
            compactions: get(&s.compactions),
            compaction_tail_records: get(&s.compaction_tail_records),
            compaction_duration: s.compaction_duration.snapshot(),
            checksum_failures: get(&s.checksum_failures),
            failed: i.failed.get().is_some() || self.lock_lost().is_some(),
        }
    }

    /// Checks the volume as it is durably now (see [`crate::check`]) while it stays open: the
    /// metadata log is held still meanwhile (destage batches and snapshot deletions wait for
    /// the check; writes, flushes and snapshot creations go on). Changes nothing.
    /// With `data`, every preserved copy is read back and verified against its checksum too.
    pub fn check(&self, data: bool) -> Result<crate::check::CheckReport> {
        let i = &self.inner;
        let _no_batch = i.destage_lock.lock();
        let _no_commit = i.meta.lock();
        let opts = crate::check::CheckOptions {
            repair: false,
            data,
            journal_in_use: true,
        };
        crate::check::check_with(&*i.source, &*i.target, &*i.journal_dev, opts)
    }

    /// Why the store's lock on the volume was lost, once it has been (another host took the
    /// volume over); `None` while it is held, and for a volume opened without a store.
    pub fn lock_lost(&self) -> Option<String> {
        self.inner.lock.get().and_then(VolumeLock::lost)
    }

    /// Destages everything, empties the journal and releases the volume.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    /// Stops at once, as if the process were killed: nothing more is written, nothing is
    /// flushed. For crash tests; what is durable is what a reopen recovers. Returns the error
    /// that had failed the volume before, if one had (a killed process reports nothing).
    #[doc(hidden)]
    pub fn kill(mut self) -> Option<String> {
        self.open = false;
        let earlier = self.inner.failed.set("killed".into()).err();
        self.stop_destager();
        earlier
    }

    fn stop_destager(&mut self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.inner.poke();
        self.inner.poke_journal();
        self.inner.poke_compactor();
        for handle in self.destager.drain(..) {
            let _ = handle.join();
        }
    }

    fn shutdown(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.open) {
            return Ok(());
        }
        self.stop_destager();
        if self.inner.read_only {
            return Ok(());
        }
        // A volume whose lock was lost writes nothing more, not even to close.
        self.inner.check_writable()?;
        self.inner
            .drain()
            .and_then(|()| self.inner.mark_closed_cleanly())
            .inspect_err(|e| self.inner.fail(e))
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            if let Some(why) = self.lock_lost() {
                tracing::warn!(volume = %self.inner.name, reason = %why, "closed without writing anything: the volume's lock was lost");
            } else {
                tracing::error!(volume = %self.inner.name, error = %e, "flush on close failed");
            }
        }
    }
}

impl Inner {
    /// Fails when the store's lock on the volume was lost (another host broke it to take the
    /// volume over): from then on nothing is read or written here, and the volume is failed
    /// so that closing it writes nothing either.
    fn check_held(&self) -> Result<()> {
        match self.lock.get().and_then(VolumeLock::lost) {
            None => Ok(()),
            Some(why) => {
                let e = Error::Failed(format!("lost the lock on volume '{}': {why}", self.name));
                self.fail(&e);
                Err(e)
            }
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(self.name.clone()));
        }
        self.check_held()?;
        match self.failed.get() {
            Some(why) => Err(Error::Failed(why.clone())),
            None => Ok(()),
        }
    }

    /// Refuses every later write: after an I/O error the engine does not guess what reached
    /// the disk. Reopening the volume recovers from what is durable.
    ///
    /// A full file system ([`Error::DeviceFull`]) is not such an error: every path that
    /// returns it refused before changing anything (or, in a destage, left the rest of the
    /// batch dirty to be redone), so the request that needed the space fails and the volume
    /// goes on.
    fn fail(&self, e: &Error) {
        if matches!(e, Error::DeviceFull { .. }) {
            return;
        }
        if self.failed.set(e.to_string()).is_ok() {
            tracing::error!(volume = %self.name, error = %e, "volume failed; refusing writes until reopened");
        }
    }

    /// Wakes the journal writer.
    fn poke_journal(&self) {
        self.journal_wake.poke();
    }

    /// Wakes the compactor.
    fn poke_compactor(&self) {
        self.compact_wake.poke();
    }

    /// Wakes the destager.
    fn poke(&self) {
        self.wake.poke();
    }

    fn source_offset(&self, c: ChunkIndex) -> u64 {
        self.geo.chunk_offset(c)
    }

    fn slot_offset(&self, s: TargetSlot) -> u64 {
        self.data_start + s.0 * self.geo.chunk()
    }
}

/// What wakes one of a volume's background threads: a flag set by [`Wake::poke`], so that a
/// poke that comes while the thread is busy is not lost.
#[derive(Debug, Default)]
struct Wake {
    poked: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    fn poke(&self) {
        *self.poked.lock() = true;
        self.cv.notify_all();
    }

    /// Returns once poked (since the last return) or after `timeout`.
    fn wait(&self, timeout: std::time::Duration) {
        let mut poked = self.poked.lock();
        if !*poked {
            self.cv.wait_for(&mut poked, timeout);
        }
        *poked = false;
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Volume>();
    is::<DirtyChunk>();
}
