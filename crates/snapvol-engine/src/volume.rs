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

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::{Condvar, Mutex};

use crate::cache::{Cache, DirtyChunk, Payload};
use crate::destage::{self, SourceWrite};
use crate::error::{Device, Error, Result};
use crate::format::{
    self, MetaBlock, Record, Superblock, BLOCK_SIZE, MAX_RECORD_LEN, META_PAYLOAD,
};
use crate::journal::{Journal, JournalHead, JournalRecord, Request, DEFAULT_JOURNAL_SIZE};
use crate::metadata::{Allocator, Entry, Index, SnapshotMeta, SnapshotTable};
use crate::store::{validate_name, VolumeLock, DEFAULT_CACHE_SIZE};
use crate::units::{ChunkIndex, Epoch, Geometry, SnapshotSeq, TargetSlot, BLOCK};
use crate::vlun::{FileVlun, Vlun};

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
}

/// Admits writes into epochs. A snapshot advances the epoch and waits until every write that
/// entered the old epoch has finished landing in the cache, so the boundary between "in the
/// snapshot" and "after it" is exact, without a lock on the write path.
#[derive(Debug)]
struct EpochGate {
    epoch: AtomicU64,
    inflight: [AtomicU64; 2],
}

struct GateGuard<'a> {
    gate: &'a EpochGate,
    epoch: Epoch,
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.gate.inflight[(self.epoch & 1) as usize].fetch_sub(1, Ordering::SeqCst);
    }
}

impl EpochGate {
    fn new(epoch: Epoch) -> Self {
        Self {
            epoch: AtomicU64::new(epoch),
            inflight: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    fn enter(&self) -> GateGuard<'_> {
        loop {
            let e = self.epoch.load(Ordering::SeqCst);
            self.inflight[(e & 1) as usize].fetch_add(1, Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) == e {
                return GateGuard {
                    gate: self,
                    epoch: e,
                };
            }
            self.inflight[(e & 1) as usize].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Starts epoch `current + 1` and waits for the writers of the old one. Callers serialize.
    fn advance(&self) -> Epoch {
        let old = self.epoch.fetch_add(1, Ordering::SeqCst);
        let mut spins = 0u32;
        while self.inflight[(old & 1) as usize].load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        old + 1
    }

    fn current(&self) -> Epoch {
        self.epoch.load(Ordering::SeqCst)
    }
}

/// Metadata that changes only on commit; guarded by one mutex that the data path never takes.
#[derive(Debug)]
struct MetaState {
    sb: Superblock,
    alloc: Allocator,
    /// Slots holding blocks of the current metadata chain.
    chain_slots: Vec<TargetSlot>,
    /// Byte offset where the next metadata block goes, if the current slot has room.
    next_block: Option<u64>,
    /// Records in the current chain.
    chain_records: u64,
    /// The snapshots whose creation is in the metadata log: what a checkpoint writes. (The
    /// table the data path sees also holds the snapshots still pending.)
    committed: SnapshotTable,
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
    /// Serializes destage batches with snapshot deletion; holds the buffer a batch gathers its
    /// preserved copies in, kept from batch to batch (no fresh zeroed pages each time).
    destage_lock: Mutex<Vec<u8>>,
    /// Serializes snapshot creation and deletion.
    admin_lock: Mutex<()>,
    /// Snapshots not yet in the metadata log, oldest first.
    pending: Mutex<Vec<PendingSnapshot>>,
    failed: OnceLock<String>,
    stats: Stats,
    wake_lock: Mutex<bool>,
    wake: Condvar,
    /// Serializes journal head moves (which release the journal during their source sync).
    reclaim_lock: Mutex<()>,
    /// Bytes of write data staged for the journal.
    staged_bytes: AtomicU64,
    journal_wake_lock: Mutex<bool>,
    journal_wake: Condvar,
    shutdown: AtomicBool,
}

/// An open volume. Dropping it flushes and closes it; [`Volume::close`] does the same and
/// reports errors.
#[derive(Debug)]
pub struct Volume {
    inner: Arc<Inner>,
    /// The background destager and the journal writer that feeds it.
    destager: Vec<JoinHandle<()>>,
    open: bool,
    _lock: Option<VolumeLock>,
}

/// A write request waiting for the journal: its bytes, and the cache versions it landed in.
#[derive(Debug)]
struct Staged {
    wseq: u64,
    epoch: Epoch,
    offset: u64,
    len: u64,
    data: Option<Arc<[u8]>>,
    landed: Vec<(ChunkIndex, u64)>,
}

const STAGING_SHARDS: usize = 16;

/// Staged write data at which the journal writer appends without waiting for the destager.
const JOURNAL_EAGER: u64 = 4 << 20;
/// Largest batch the destager takes at once.
const MAX_BATCH: u64 = 32 << 20;
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random_id() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut id = [0u8; 16];
    for (i, part) in id.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(now_ms() ^ (i as u64) << 32 ^ u64::from(std::process::id()));
        part.copy_from_slice(&h.finish().to_le_bytes());
    }
    id
}

/// The devices a volume lives on.
#[derive(Debug)]
pub struct Vluns {
    /// The live volume's data.
    pub source: Box<dyn Vlun>,
    /// The snapshot store.
    pub target: Box<dyn Vlun>,
    /// The persistent cache journal.
    pub journal: Box<dyn Vlun>,
}

/// Where a volume's devices are, as files or block devices.
#[derive(Debug, Clone)]
pub struct VolumePaths {
    /// Source VLUN.
    pub source: std::path::PathBuf,
    /// Target VLUN.
    pub target: std::path::PathBuf,
    /// Cache journal.
    pub journal: std::path::PathBuf,
}

impl VolumePaths {
    fn create(&self, geo: Geometry) -> Result<Vluns> {
        let src =
            FileVlun::create(&self.source, geo.size).map_err(|e| Error::file(&self.source, e))?;
        let len = src.len().map_err(|e| Error::file(&self.source, e))?;
        if len < geo.size {
            return Err(Error::InvalidArgument(format!(
                "source {} holds {len} bytes, less than the volume size {}",
                self.source.display(),
                geo.size
            )));
        }
        let tgt = FileVlun::create(&self.target, 0).map_err(|e| Error::file(&self.target, e))?;
        let jnl = FileVlun::create(&self.journal, 0).map_err(|e| Error::file(&self.journal, e))?;
        Ok(Vluns {
            source: Box::new(src),
            target: Box::new(tgt),
            journal: Box::new(jnl),
        })
    }

    fn open(&self) -> Result<Vluns> {
        let open = |p: &Path| FileVlun::open(p).map_err(|e| Error::file(p, e));
        Ok(Vluns {
            source: Box::new(open(&self.source)?),
            target: Box::new(open(&self.target)?),
            journal: Box::new(open(&self.journal)?),
        })
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
}

impl Layout {
    /// A layout with an unlimited target and the default journal.
    pub fn new(geometry: Geometry) -> Self {
        Self {
            geometry,
            target_cap: None,
            journal_size: DEFAULT_JOURNAL_SIZE,
        }
    }
}

impl Volume {
    /// Creates a volume on files at `paths` (regular files are created; existing block devices
    /// are used as they are).
    pub fn create(
        name: &str,
        paths: &VolumePaths,
        layout: Layout,
        opts: VolumeOptions,
        lock: VolumeLock,
    ) -> Result<Self> {
        let vluns = paths.create(layout.geometry)?;
        let mut v = Self::create_on(name, vluns, layout, opts)?;
        v._lock = Some(lock);
        Ok(v)
    }

    /// Opens a volume on files at `paths`, recovering from the journal if it was not closed.
    pub fn open(
        name: &str,
        paths: &VolumePaths,
        opts: VolumeOptions,
        lock: VolumeLock,
    ) -> Result<Self> {
        let mut v = Self::open_on(name, paths.open()?, opts)?;
        v._lock = Some(lock);
        Ok(v)
    }

    /// Creates a volume on any set of VLUNs: writes both superblock copies to the target and
    /// formats the journal.
    pub fn create_on(
        name: &str,
        vluns: Vluns,
        layout: Layout,
        opts: VolumeOptions,
    ) -> Result<Self> {
        validate_name(name)?;
        let geo = layout.geometry;
        let Vluns {
            source,
            target,
            journal,
        } = &vluns;
        let data_start = format::data_start(geo.chunk_size);
        let min_target = data_start + 16 * geo.chunk();
        let cap = match layout.target_cap {
            Some(c) => Some(c),
            None if !target.growable() => Some(
                target
                    .len()
                    .map_err(|e| Error::io("size", Device::Target, 0, e))?,
            ),
            None => None,
        };
        if let Some(c) = cap {
            if c < min_target {
                return Err(Error::InvalidArgument(format!(
                    "target size {c} is too small: the snapshot store needs at least {min_target} bytes with {} chunks",
                    geo.chunk_size
                )));
            }
        }
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let volume_id = random_id();
        Journal::format(&**journal, volume_id, layout.journal_size)?;
        let mut sb = Superblock {
            generation: 0,
            volume_size: geo.size,
            chunk_size: geo.chunk_size,
            target_cap: layout.target_cap.unwrap_or(0),
            data_start,
            meta_head: 0,
            meta_head_seq: 0,
            last_snapshot_seq: 0,
            volume_id,
            created,
            journal_head: 0,
            journal_head_seq: 1,
        };
        // Both copies valid from the start; generation 1 is the current one.
        for g in 0..2 {
            sb.generation = g;
            target
                .write_at(&sb.encode(), format::superblock_offset(g))
                .map_err(|e| Error::io("write superblock", Device::Target, 0, e))?;
        }
        target
            .sync()
            .map_err(|e| Error::io("sync", Device::Target, 0, e))?;
        source
            .sync()
            .map_err(|e| Error::io("sync", Device::Source, 0, e))?;
        Self::open_on(name, vluns, opts)
    }

    /// Opens a volume on any set of VLUNs: reads the superblock, replays the metadata log, and
    /// recovers what the cache journal holds (claim 25).
    pub fn open_on(name: &str, vluns: Vluns, opts: VolumeOptions) -> Result<Self> {
        let Vluns {
            source,
            target,
            journal,
        } = vluns;
        let loaded = load(&*target)?;
        let geo = Geometry::new(loaded.sb.volume_size, loaded.sb.chunk_size)?;
        let src_len = source
            .len()
            .map_err(|e| Error::io("size", Device::Source, 0, e))?;
        if src_len < geo.size && !source.growable() {
            return Err(Error::InvalidArgument(format!(
                "source VLUN holds {src_len} bytes, less than the volume size {}",
                geo.size
            )));
        }
        let target_cap = match loaded.sb.target_cap {
            0 if !target.growable() => Some(
                target
                    .len()
                    .map_err(|e| Error::io("size", Device::Target, 0, e))?,
            ),
            0 => None,
            c => Some(c),
        };
        let head = JournalHead {
            pos: loaded.sb.journal_head,
            seq: loaded.sb.journal_head_seq,
        };
        let (journal, records) = Journal::open(journal, loaded.sb.volume_id, head)?;
        let ring = journal.ring_len();
        let slots_used = loaded.alloc.used();
        let epoch = records
            .iter()
            .map(|r| r.request.epoch())
            .fold(loaded.last_seq, u64::max);
        let volume_id = loaded.sb.volume_id;
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            geo,
            data_start: loaded.sb.data_start,
            target_cap,
            volume_id,
            // What the cache holds (at most a quarter of the ring) and one request journaled
            // whole (at most half) always fit the ring once it is emptied (journal_append).
            cache: Cache::new(geo, opts.cache_size.min(ring / 4)),
            compact_after_records: opts.compact_after_records,
            background_destage: opts.background_destage,
            index: loaded.index,
            table: ArcSwap::from_pointee(loaded.table.clone()),
            gate: EpochGate::new(epoch),
            wseq: AtomicU64::new(1),
            staged: (0..STAGING_SHARDS).map(|_| Mutex::default()).collect(),
            max_record: (ring / 2).max(geo.chunk()),
            landing: Mutex::new(Vec::new()),
            journal: Mutex::new(journal),
            append_lock: Mutex::new(()),
            meta: Mutex::new(MetaState {
                sb: loaded.sb,
                alloc: loaded.alloc,
                chain_slots: loaded.chain_slots,
                next_block: loaded.next_block,
                chain_records: loaded.chain_records,
                committed: loaded.table.clone(),
            }),
            slots_used: AtomicU64::new(slots_used),
            reserved: AtomicU64::new(0),
            capacity_hint: AtomicU64::new(0),
            destage_lock: Mutex::new(Vec::new()),
            admin_lock: Mutex::new(()),
            pending: Mutex::new(Vec::new()),
            failed: OnceLock::new(),
            stats: Stats::default(),
            wake_lock: Mutex::new(false),
            wake: Condvar::new(),
            reclaim_lock: Mutex::new(()),
            staged_bytes: AtomicU64::new(0),
            journal_wake_lock: Mutex::new(false),
            journal_wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            source,
            target,
        });
        inner.recover(records, loaded.created_seq)?;
        let mut destager = Vec::new();
        if opts.background_destage {
            let bg = Arc::clone(&inner);
            destager.push(
                std::thread::Builder::new()
                    .name(format!("destage-{name}"))
                    .spawn(move || bg.destager_loop())
                    .map_err(|e| Error::file("destager thread", e))?,
            );
            let bg = Arc::clone(&inner);
            destager.push(
                std::thread::Builder::new()
                    .name(format!("journal-{name}"))
                    .spawn(move || bg.journal_loop())
                    .map_err(|e| Error::file("journal thread", e))?,
            );
        }
        Ok(Self {
            inner,
            destager,
            open: true,
            _lock: None,
        })
    }

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
        self.inner.write(offset, data.len() as u64, Some(data))
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
    /// run without data reads as zeros. Covers at most 64 MiB (callers ask again for the rest).
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

    /// Writes `data` at `offset` and makes it durable before returning (NBD's FUA).
    pub fn write_fua(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write(offset, data)?;
        self.flush()
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
        let meta = i.meta.lock();
        let metadata_bytes = 2 * BLOCK_SIZE as u64 + meta.chain_slots.len() as u64 * i.geo.chunk();
        drop(meta);
        VolumeInfo {
            name: i.name.clone(),
            size: i.geo.size,
            chunk_size: i.geo.chunk_size,
            target_size: i.target_cap,
            target_used_bytes: i.index.len() as u64 * i.geo.chunk(),
            metadata_bytes,
            target_file_bytes: i.target.len().unwrap_or(0),
            snapshots: i.accounting(),
            preserved_chunks: i.index.len() as u64,
            copies_since_open: i.stats.copies_made.load(Ordering::Relaxed),
            dirty_bytes: i.cache.dirty_bytes(),
        }
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
        for handle in self.destager.drain(..) {
            let _ = handle.join();
        }
    }

    fn shutdown(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.open) {
            return Ok(());
        }
        self.stop_destager();
        self.inner.check_writable()?;
        self.inner.drain().inspect_err(|e| self.inner.fail(e))
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(volume = %self.inner.name, error = %e, "flush on close failed");
        }
    }
}

/// What `load` finds in a target VLUN.
struct Loaded {
    sb: Superblock,
    index: Index,
    table: SnapshotTable,
    alloc: Allocator,
    chain_slots: Vec<TargetSlot>,
    next_block: Option<u64>,
    chain_records: u64,
    /// Highest snapshot sequence number the log refers to: no new snapshot may take it.
    last_seq: u64,
    /// Highest snapshot sequence number whose creation the log holds (or held, before the
    /// snapshot was deleted): journal snapshot records above it are still to apply.
    created_seq: u64,
}

/// Reads the newest valid superblock copy.
pub(crate) fn read_superblock(target: &dyn Vlun) -> Result<Superblock> {
    let mut best: Option<Superblock> = None;
    let mut errors = Vec::new();
    for g in 0..2u64 {
        let off = format::superblock_offset(g);
        let mut b = [0u8; BLOCK_SIZE];
        target
            .read_at(&mut b, off)
            .map_err(|e| Error::io("read superblock", Device::Target, off, e))?;
        match Superblock::decode(&b, off) {
            Ok(sb) => {
                if best.as_ref().is_none_or(|x| sb.generation > x.generation) {
                    best = Some(sb);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    match best {
        Some(sb) => {
            for e in errors {
                tracing::warn!(error = %e, "one superblock copy is unusable; using the other");
            }
            Ok(sb)
        }
        None => Err(errors.remove(0)),
    }
}

/// Reads the metadata chain backwards from the superblock's head; returns the blocks oldest
/// first with their offsets.
pub(crate) fn read_chain(target: &dyn Vlun, sb: &Superblock) -> Result<Vec<(u64, MetaBlock)>> {
    let mut chain = Vec::new();
    let mut off = sb.meta_head;
    let mut expect_seq = sb.meta_head_seq;
    while off != 0 {
        if off < sb.data_start || (off - sb.data_start) % BLOCK_SIZE as u64 != 0 {
            return Err(Error::corrupt(
                format!("metadata chain before block seq {}", expect_seq + 1),
                format!("pointer {off:#x} is not a metadata block position"),
            ));
        }
        let mut b = [0u8; BLOCK_SIZE];
        target
            .read_at(&mut b, off)
            .map_err(|e| Error::io("read metadata", Device::Target, off, e))?;
        let blk = MetaBlock::decode(&b, off, &sb.volume_id)?;
        if blk.seq != expect_seq {
            return Err(Error::corrupt(
                format!("metadata block at {off:#x}"),
                format!("sequence {} where {expect_seq} was expected", blk.seq),
            ));
        }
        off = blk.prev;
        expect_seq = expect_seq.wrapping_sub(1);
        // Sequence numbers strictly decrease along the chain, so it cannot loop.
        chain.push((off, blk));
    }
    // `chain` holds (prev offset, block); rebuild (own offset, block) oldest first.
    let mut own = sb.meta_head;
    let mut out = Vec::with_capacity(chain.len());
    for (prev, blk) in chain {
        out.push((own, blk));
        own = prev;
    }
    out.reverse();
    Ok(out)
}

fn load(target: &dyn Vlun) -> Result<Loaded> {
    let sb = read_superblock(target)?;
    let chain = read_chain(target, &sb)?;
    let chunk = u64::from(sb.chunk_size);
    let geo = Geometry::new(sb.volume_size, sb.chunk_size)?;
    let index = Index::default();
    let mut table = SnapshotTable::default();
    let mut last_seq = sb.last_snapshot_seq;
    let mut created_seq = sb.last_snapshot_seq;
    let mut chain_records = 0;
    for (off, blk) in &chain {
        for r in &blk.records {
            chain_records += 1;
            match r {
                Record::SnapshotCreate {
                    seq,
                    created_ms,
                    name,
                } => {
                    if !table.can_append(*seq, name) {
                        return Err(Error::corrupt(
                            format!("metadata block at {off:#x}"),
                            format!("snapshot {name} {seq} out of order or duplicated"),
                        ));
                    }
                    last_seq = last_seq.max(seq.0);
                    created_seq = created_seq.max(seq.0);
                    table.push(SnapshotMeta {
                        seq: *seq,
                        name: name.clone(),
                        created: UNIX_EPOCH + Duration::from_millis(*created_ms),
                    });
                }
                Record::SnapshotDelete { seq } => {
                    table.remove(*seq);
                }
                Record::Preserve {
                    chunk: c,
                    count,
                    slot,
                    lo,
                    hi,
                } => {
                    let end = c.0.checked_add(u64::from(*count));
                    if end.is_none_or(|e| e > geo.chunks()) {
                        return Err(Error::corrupt(
                            format!("metadata block at {off:#x}"),
                            format!("preserve record for {c} x{count} lies beyond the volume"),
                        ));
                    }
                    let max_slots = match sb.target_cap {
                        0 => (u64::MAX - sb.data_start) / chunk,
                        cap => cap.saturating_sub(sb.data_start) / chunk,
                    };
                    {
                        let cap_slots = max_slots;
                        if slot
                            .0
                            .checked_add(u64::from(*count))
                            .is_none_or(|e| e > cap_slots)
                        {
                            return Err(Error::corrupt(
                                format!("metadata block at {off:#x}"),
                                format!("{slot} x{count} lies beyond the target size"),
                            ));
                        }
                    }
                    last_seq = last_seq.max(hi.0);
                    for i in 0..u64::from(*count) {
                        index.insert(
                            ChunkIndex(c.0 + i),
                            Entry {
                                lo: lo.0,
                                hi: hi.0,
                                slot: TargetSlot(slot.0 + i),
                            },
                        );
                    }
                }
            }
        }
    }
    // Copies no live snapshot reads (their snapshot was deleted, or never committed before a
    // crash) are dropped here: the allocator is derived from what the logs still reference.
    index.remove_unreferenced(&table);
    let mut used = Vec::new();
    index.for_each(|_, e| used.push(e.slot.0));
    let mut chain_slots: Vec<TargetSlot> = chain
        .iter()
        .map(|(off, _)| TargetSlot((off - sb.data_start) / chunk))
        .collect();
    chain_slots.dedup();
    used.extend(chain_slots.iter().map(|s| s.0));
    let n = used.len();
    let alloc = Allocator::from_used(used);
    if alloc.used() as usize != n {
        return Err(Error::corrupt(
            "metadata log",
            "two live pointers (or a pointer and a metadata block) share a target slot",
        ));
    }
    let next_block = chain.last().and_then(|(off, _)| {
        let next = off + BLOCK_SIZE as u64;
        ((next - sb.data_start) % chunk != 0).then_some(next)
    });
    Ok(Loaded {
        sb,
        index,
        table,
        alloc,
        chain_slots,
        next_block,
        chain_records,
        last_seq,
        created_seq,
    })
}

impl Inner {
    fn check_writable(&self) -> Result<()> {
        match self.failed.get() {
            Some(why) => Err(Error::Failed(why.clone())),
            None => Ok(()),
        }
    }

    /// Refuses every later write: after an I/O error the engine does not guess what reached
    /// the disk. Reopening the volume recovers from what is durable.
    fn fail(&self, e: &Error) {
        if self.failed.set(e.to_string()).is_ok() {
            tracing::error!(volume = %self.name, error = %e, "volume failed; refusing writes until reopened");
        }
    }

    /// Wakes the journal writer.
    fn poke_journal(&self) {
        let mut w = self.journal_wake_lock.lock();
        *w = true;
        self.journal_wake.notify_all();
    }

    fn poke(&self) {
        let mut w = self.wake_lock.lock();
        *w = true;
        self.wake.notify_all();
    }

    fn source_offset(&self, c: ChunkIndex) -> u64 {
        self.geo.chunk_offset(c)
    }

    fn slot_offset(&self, s: TargetSlot) -> u64 {
        self.data_start + s.0 * self.geo.chunk()
    }

    fn read(&self, offset: u64, buf: &mut [u8], snap: Option<SnapshotSeq>) -> Result<()> {
        self.geo.check_range(offset, buf.len() as u64)?;
        if let Some(s) = snap {
            if !self.table.load().is_alive(s) {
                return Err(Error::SnapshotNotFound(format!("{}@{s}", self.name)));
            }
        }
        for p in self.geo.split(offset, buf.len() as u64) {
            let out = &mut buf[p.req_off..p.req_off + p.len];
            match snap {
                None => self.read_cached(p.chunk, p.within, out, u64::MAX)?,
                Some(s) => self.read_snapshot_piece(p.chunk, p.within, out, s)?,
            }
        }
        if let Some(s) = snap {
            // A snapshot deleted while we read may have had its slots reused: say so rather
            // than return what they hold now.
            if !self.table.load().is_alive(s) {
                return Err(Error::SnapshotNotFound(format!("{}@{s}", self.name)));
            }
        }
        Ok(())
    }

    /// Reads a piece as seen by epochs below `before` from the cache, and the rest from the
    /// source.
    fn read_cached(&self, c: ChunkIndex, within: usize, out: &mut [u8], before: u64) -> Result<()> {
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
    ) -> Result<()> {
        loop {
            if let Some(slot) = self.index.lookup(c, s) {
                let off = self.slot_offset(slot) + within as u64;
                return self
                    .target
                    .read_at(out, off)
                    .map_err(|e| Error::io("read", Device::Target, off, e));
            }
            self.read_cached(c, within, out, s.0)?;
            if self.index.lookup(c, s).is_none() {
                return Ok(());
            }
        }
    }

    fn write(&self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<()> {
        self.check_writable()?;
        self.geo.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // A data request longer than a journal record (half the ring: 256 MiB with the default
        // journal, far more than any NBD request) is taken as several requests.
        if data.is_some() && len > self.max_record {
            let mut pos = offset;
            while pos < offset + len {
                let end = (pos + self.max_record).min(offset + len);
                let piece = data.map(|d| &d[(pos - offset) as usize..(end - offset) as usize]);
                self.write(pos, end - pos, piece)?;
                pos = end;
            }
            return Ok(());
        }
        // What the cache takes in one piece: a quarter of it.
        let step = match data {
            Some(_) => self.cache.limit() / 4,
            None => self.cache.limit() / 4 / 512 * self.geo.chunk(),
        }
        .max(self.geo.chunk())
            / self.geo.chunk()
            * self.geo.chunk();
        let result = if len > step {
            self.write_large(offset, len, data, step)
        } else {
            self.write_small(offset, len, data)
        };
        if self.cache.dirty_bytes() > self.cache.limit() / 4 {
            self.poke();
        }
        result
    }

    /// A request that fits the cache: lands in it, and is staged for the journal.
    fn write_small(&self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<()> {
        let chunks = self.geo.split(offset, len).count() as u64;
        let cost = match data {
            Some(_) => chunks * self.geo.chunk() + len,
            None => chunks * 512,
        };
        self.make_room(cost)?;
        let guard = self.gate.enter();
        let epoch = guard.epoch;
        // Copy the request once: the journal needs it, and whole chunks of it serve as their
        // cache versions too.
        let shared: Option<Arc<[u8]>> = data.map(Arc::from);
        let need = self.reserve_for(offset, len, epoch)?;
        let wseq = self.wseq.fetch_add(1, Ordering::SeqCst);
        let landed = self.land(
            offset,
            len,
            shared.as_ref().map(|d| (d, 0)),
            epoch,
            None,
            need,
        )?;
        self.cache
            .hold(shared.as_ref().map_or(0, |d| d.len() as u64));
        self.staged[(wseq as usize) % STAGING_SHARDS]
            .lock()
            .push(Staged {
                wseq,
                epoch,
                offset,
                len,
                data: shared,
                landed,
            });
        if self.background_destage
            && self.staged_bytes.fetch_add(len, Ordering::Relaxed) + len >= JOURNAL_EAGER
        {
            self.poke_journal();
        }
        Ok(())
    }

    /// A request too large for the cache or the journal to take at once. It is still one
    /// request: it is journaled whole (and synced) before any of it lands, all in one epoch,
    /// so after a crash it is all-old (not journaled, nothing landed) or all-new (replayed
    /// whole) however much of it had been destaged; then it lands piece by piece.
    fn write_large(&self, offset: u64, len: u64, data: Option<&[u8]>, step: u64) -> Result<()> {
        let guard = self.gate.enter();
        let epoch = guard.epoch;
        // Room for every preservation it may need, before anything is written (ENOSPC).
        let mut need = self.reserve_for(offset, len, epoch)?;
        let shared: Option<Arc<[u8]>> = data.map(Arc::from);
        let generation = self
            .journal_now(epoch, offset, len, shared.clone())
            .inspect_err(|_| {
                self.reserved.fetch_sub(need, Ordering::SeqCst);
            })?;
        self.landing.lock().push(generation);
        let landed = (|| {
            let mut pos = offset;
            while pos < offset + len {
                let end = ((pos / step + 1) * step).min(offset + len);
                let per_chunk = if data.is_some() {
                    self.geo.chunk()
                } else {
                    512
                };
                self.make_room(self.geo.split(pos, end - pos).count() as u64 * per_chunk)?;
                let piece = shared.as_ref().map(|d| (d, (pos - offset) as usize));
                self.land(pos, end - pos, piece, epoch, Some(generation), need)?;
                need = 0;
                pos = end;
            }
            Ok(())
        })();
        let mut pins = self.landing.lock();
        if let Some(i) = pins.iter().position(|&g| g == generation) {
            pins.swap_remove(i);
        }
        landed
    }

    /// Waits until `cost` more bytes fit the cache, destaging on this thread when there is no
    /// background destager.
    fn make_room(&self, cost: u64) -> Result<()> {
        if !self.background_destage && self.cache.dirty_bytes() + cost > self.cache.limit() {
            self.destage_round()?;
        }
        self.cache
            .wait_for_space(cost, || self.poke(), || self.failed.get().is_some());
        self.check_writable()
    }

    /// Reserves a target slot for every chunk of the range whose original a live snapshot
    /// will need — up front, so a write that cannot be preserved fails whole, before anything
    /// changes (ENOSPC). Returns how many it reserved.
    fn reserve_for(&self, offset: u64, len: u64, epoch: Epoch) -> Result<u64> {
        let table = self.table.load();
        let mut need = 0;
        for p in self.geo.split(offset, len) {
            if let Some(boundary) = self.cache.new_version_boundary(p.chunk, epoch) {
                let boundary = boundary.unwrap_or_else(|| self.index.watermark(p.chunk));
                if table.any_alive(boundary, epoch) {
                    need += 1;
                }
            }
        }
        self.reserve(need)?;
        Ok(need)
    }

    /// Puts a range into the cache for `epoch` (its bytes, if any, at the given start of the
    /// buffer); `held` is what [`Inner::reserve_for`]
    /// reserved for it (reservations the cache did not take are returned). Returns the
    /// versions it landed in.
    fn land(
        &self,
        offset: u64,
        len: u64,
        data: Option<(&Arc<[u8]>, usize)>,
        epoch: Epoch,
        journaled: Option<u64>,
        held: u64,
    ) -> Result<Vec<(ChunkIndex, u64)>> {
        let table = self.table.load();
        let mut took = 0;
        let mut landed = Vec::new();
        let mut result = Ok(());
        for p in self.geo.split(offset, len) {
            let base = self.source_offset(p.chunk);
            let r = self.cache.write(
                p.chunk,
                p.within,
                data.map_or(Payload::Zero, |(d, base)| {
                    Payload::Shared(d, base + p.req_off)
                }),
                p.len,
                epoch,
                journaled,
                || self.index.watermark(p.chunk),
                |boundary| table.any_alive(boundary, epoch),
                |buf, at| self.source.read_at(buf, base + at as u64),
            );
            match r {
                Ok((reserved, id)) => {
                    took += u64::from(reserved);
                    landed.push((p.chunk, id));
                }
                Err(e) => {
                    result = Err(Error::io("read", Device::Source, base, e));
                    break;
                }
            }
        }
        if took < held {
            self.reserved.fetch_sub(held - took, Ordering::SeqCst);
        } else if took > held {
            // A concurrent destage moved a boundary; keep the books right.
            self.reserved.fetch_add(took - held, Ordering::SeqCst);
        }
        // Part of the request may be in the cache: refuse to go on rather than guess.
        result.inspect_err(|e| self.fail(e))?;
        Ok(landed)
    }

    fn allocation(
        &self,
        snap: Option<SnapshotSeq>,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, bool)>> {
        self.geo.check_range(offset, len)?;
        let end = offset + len.min(64 << 20);
        let before = snap.map_or(u64::MAX, |s| s.0);
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

    fn capacity_slots(&self) -> u64 {
        let chunk = self.geo.chunk();
        match self.target_cap {
            Some(cap) => cap.saturating_sub(self.data_start) / chunk,
            None => {
                let len = self.target.len().unwrap_or(0);
                let room = self.target.growth_room().unwrap_or(u64::MAX / 2);
                len.saturating_add(room).saturating_sub(self.data_start) / chunk
            }
        }
    }

    /// Promises `n` target slots to cached writes, or fails with ENOSPC.
    fn reserve(&self, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let prev = self.reserved.fetch_add(n, Ordering::SeqCst);
        let used = self.slots_used.load(Ordering::SeqCst);
        let want = used + prev + n + self.meta_headroom();
        if want <= self.capacity_hint.load(Ordering::Relaxed) {
            return Ok(());
        }
        let cap = self.capacity_slots();
        // A fixed capacity is exact; free space on a file system is looked at again once half
        // of what was free has been promised.
        let hint = match self.target_cap {
            Some(_) => cap,
            None => want + cap.saturating_sub(want) / 2,
        };
        self.capacity_hint.store(hint, Ordering::Relaxed);
        if want > cap {
            self.reserved.fetch_sub(n, Ordering::SeqCst);
            return Err(Error::NoSpace {
                detail: format!(
                    "{} of {cap} chunk slots used or promised, {n} more needed",
                    want - n
                ),
            });
        }
        Ok(())
    }

    /// Slots data reservations leave free for metadata: room to compact the log (which then
    /// frees the old chain) and to append after that, and the slots held back so that a
    /// snapshot can always be deleted on a full target.
    fn check_room(&self, extra: u64) -> Result<()> {
        let used = self.slots_used.load(Ordering::SeqCst) + self.reserved.load(Ordering::SeqCst);
        let want = used + self.meta_headroom() + extra;
        let cap = self.capacity_slots();
        if want > cap {
            return Err(Error::NoSpace {
                detail: format!("{used} of {cap} chunk slots used or promised"),
            });
        }
        Ok(())
    }

    fn meta_headroom(&self) -> u64 {
        let live = self.live_meta_slots(self.table.load().len());
        META_HEADROOM + live + 2
    }

    fn destager_loop(self: Arc<Self>) {
        loop {
            {
                let mut w = self.wake_lock.lock();
                if !*w {
                    self.wake.wait_for(&mut w, Duration::from_millis(100));
                }
                *w = false;
            }
            if self.shutdown.load(Ordering::SeqCst) {
                return;
            }
            if self.failed.get().is_some() || self.cache.dirty_chunks() == 0 {
                continue;
            }
            if let Err(e) = self.destage_round() {
                self.fail(&e);
            }
        }
    }

    /// The journal writer: appends what is staged once a few MiB have gathered, so that the
    /// destager finds its batches journaled and journaling overlaps destaging; and moves the
    /// journal head once a quarter of the ring is in use (a source sync the destager need not
    /// wait for).
    fn journal_loop(self: Arc<Self>) {
        loop {
            {
                let mut w = self.journal_wake_lock.lock();
                if !*w {
                    self.journal_wake
                        .wait_for(&mut w, Duration::from_millis(100));
                }
                *w = false;
            }
            if self.shutdown.load(Ordering::SeqCst) {
                return;
            }
            if self.failed.get().is_some() {
                continue;
            }
            // An error has failed the volume already (both do).
            if self.staged_bytes.load(Ordering::Relaxed) >= JOURNAL_EAGER {
                let _ = self.journal_flush();
            }
            let _ = self.reclaim_journal(false);
        }
    }

    /// Journals what is staged, destages in batches while the cache is more than lightly
    /// used (everything, when `all`), then frees the journal space whose data is now on the
    /// source.
    fn destage_round(&self) -> Result<()> {
        self.journal_flush()?;
        loop {
            let n = self.destage_batch()?;
            if n == 0 || self.shutdown.load(Ordering::SeqCst) {
                break;
            }
            if self.cache.dirty_bytes() < self.cache.limit() / 8 {
                break;
            }
        }
        if self.background_destage {
            // The journal writer moves the head: its source sync then never holds up a batch.
            self.poke_journal();
            Ok(())
        } else {
            self.reclaim_journal(false)
        }
    }

    /// FLUSH: every write acknowledged so far becomes durable by reaching the journal — no
    /// destage is forced.
    fn flush(&self) -> Result<()> {
        self.check_writable()?;
        self.journal_flush().inspect_err(|e| self.fail(e))
    }

    /// Appends every staged request to the journal (one record each), syncs it, and marks the
    /// cache versions they landed in as journaled.
    fn journal_flush(&self) -> Result<()> {
        self.journal_append(None).map(|_| ())
    }

    /// Journals one request now (one record, synced), after everything staged before it.
    /// Returns the journal append holding it.
    fn journal_now(
        &self,
        epoch: Epoch,
        offset: u64,
        len: u64,
        data: Option<Arc<[u8]>>,
    ) -> Result<u64> {
        self.journal_append(Some(Request::Write {
            epoch,
            offset,
            len,
            data,
        }))?
        .ok_or_else(|| Error::Failed("journal append of a request did not happen".into()))
    }

    /// Appends every staged request (one record each, in request order), then `extra`, to the
    /// journal, syncs it, and marks the cache versions the staged requests landed in as
    /// journaled. Returns the append's generation, if anything was appended. Any failure fails
    /// the volume: the staged requests are gone from the staging list.
    fn journal_append(&self, extra: Option<Request>) -> Result<Option<u64>> {
        let _append = self.append_lock.lock();
        self.check_writable()?;
        let r = (|| {
            let mut journal = self.journal.lock();
            let mut staged = Vec::new();
            for shard in &self.staged {
                staged.append(&mut shard.lock());
            }
            if staged.is_empty() && extra.is_none() {
                return Ok(None);
            }
            staged.sort_unstable_by_key(|s| s.wseq);
            let taken: u64 = staged.iter().map(|s| s.len).sum();
            let _ = self
                .staged_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(taken))
                });
            let mut requests: Vec<_> = staged
                .iter()
                .map(|s| Request::Write {
                    epoch: s.epoch,
                    offset: s.offset,
                    len: s.len,
                    data: s.data.clone(),
                })
                .collect();
            requests.extend(extra);
            let needed = Journal::space_needed(&requests);
            if needed > journal.free() {
                // Make room: destage everything already journaled and move the head past it.
                drop(journal);
                while self.destage_batch()? > 0 {}
                self.reclaim_journal(true)?;
                journal = self.journal.lock();
                if needed > journal.free() {
                    return Err(Error::Failed(format!(
                        "the cache journal cannot hold {needed} bytes of pending writes"
                    )));
                }
            }
            let generation = journal.append(&requests)?;
            // Snapshots whose records are now durable may enter the metadata log; before the
            // journal lock is released, so no head move can pass a record not yet marked.
            if let Some(Request::Snapshot { seq, .. }) = requests.last() {
                let mut pending = self.pending.lock();
                if let Some(p) = pending.iter_mut().find(|p| p.meta.seq.0 == *seq) {
                    p.durable = true;
                }
            }
            let mut bytes = 0;
            for s in &staged {
                for &(c, id) in &s.landed {
                    self.cache.mark_journaled(c, id, generation);
                }
                bytes += s.data.as_ref().map_or(0, |d| d.len() as u64);
            }
            drop(journal);
            self.cache.release(bytes);
            Ok(Some(generation))
        })();
        r.inspect_err(|e| self.fail(e))
    }

    /// Moves the journal's head past every append whose data is all on the source: syncs the
    /// source, then persists the new head in the superblock. Without `force`, only once a
    /// quarter of the ring is in use (each move costs two syncs).
    fn reclaim_journal(&self, force: bool) -> Result<()> {
        self.reclaim_journal_inner(force)
            .inspect_err(|e| self.fail(e))
    }

    fn reclaim_journal_inner(&self, force: bool) -> Result<()> {
        let _one_at_a_time = self.reclaim_lock.lock();
        let head = {
            let journal = self.journal.lock();
            if !force && journal.used() < journal.ring_len() / 4 {
                return Ok(());
            }
            let landing = self
                .landing
                .lock()
                .iter()
                .copied()
                .min()
                .unwrap_or(u64::MAX);
            let oldest = self.cache.oldest_journal_gen().min(landing);
            let upto = journal.generation().min(oldest.saturating_sub(1));
            let Some(head) = journal.head_after(upto) else {
                return Ok(());
            };
            head
        };
        // The source sync may take a while; appends go on meanwhile (they only add after the
        // tail, and this head stays right: everything before it is destaged).
        self.persist_journal_head(head)?;
        self.journal.lock().advance_head(head);
        Ok(())
    }

    /// Makes `head` the journal's head on disk: the source is synced first (the data of every
    /// record before it must be durable there), then the superblock records it.
    fn persist_journal_head(&self, head: JournalHead) -> Result<()> {
        self.source
            .sync()
            .map_err(|e| Error::io("sync", Device::Source, 0, e))?;
        let mut meta = self.meta.lock();
        meta.sb.journal_head = head.pos;
        meta.sb.journal_head_seq = head.seq;
        // The head may pass snapshot records: their snapshots go to the metadata log with it.
        self.write_chain(&mut meta, Vec::new())
    }

    /// Claim 25: every write the journal holds is examined again. It enters the cache as the
    /// dirty data it was, with its epoch; destaging it preserves the original first where a
    /// live snapshot's bit is 0 (its original is still on the source: I1) and not where the
    /// bit is 1, writes it to the source, and clears the dirty designation — until none is
    /// left. Then the head moves past it all.
    ///
    /// Snapshot records whose sequence number lies past `created_seq` (the highest whose
    /// creation the metadata log recorded) are snapshots taken since: they join the table
    /// first, pending, and reach the metadata log with the first commit. Each write's epoch
    /// puts it on the right side of them.
    fn recover(&self, records: Vec<JournalRecord>, created_seq: u64) -> Result<()> {
        let mut writes = Vec::with_capacity(records.len());
        let mut snapshots = 0;
        for r in records {
            match r.request {
                Request::Snapshot {
                    seq,
                    created_ms,
                    name,
                } => {
                    if seq <= created_seq {
                        continue; // in the metadata log already (or deleted since)
                    }
                    let table = self.table.load_full();
                    if !table.can_append(SnapshotSeq(seq), &name) {
                        return Err(Error::corrupt(
                            format!("cache journal record {}", r.seq),
                            format!("snapshot {name} ({seq}) duplicated or out of order"),
                        ));
                    }
                    let meta = SnapshotMeta {
                        seq: SnapshotSeq(seq),
                        name,
                        created: UNIX_EPOCH + Duration::from_millis(created_ms),
                    };
                    let mut next = (*table).clone();
                    next.push(meta.clone());
                    self.table.store(Arc::new(next));
                    self.pending.lock().push(PendingSnapshot {
                        meta,
                        durable: true,
                    });
                    snapshots += 1;
                }
                Request::Write {
                    epoch,
                    offset,
                    len,
                    data,
                } => {
                    if self.geo.check_range(offset, len).is_err() {
                        return Err(Error::corrupt(
                            format!("cache journal record {}", r.seq),
                            "write lies beyond the end of the volume",
                        ));
                    }
                    writes.push((epoch, offset, len, data));
                }
            }
        }
        let (n, bytes) = (writes.len(), writes.iter().map(|w| w.2).sum::<u64>());
        if n > 0 || snapshots > 0 {
            tracing::info!(volume = %self.name, records = n, bytes, snapshots, "recovering writes from the cache journal");
        }
        for (epoch, offset, len, data) in writes {
            for p in self.geo.split(offset, len) {
                let base = self.source_offset(p.chunk);
                self.cache
                    .write(
                        p.chunk,
                        p.within,
                        data.as_ref()
                            .map_or(Payload::Zero, |d| Payload::Shared(d, p.req_off)),
                        p.len,
                        epoch,
                        Some(0),
                        || self.index.watermark(p.chunk),
                        |_| false,
                        |buf, at| self.source.read_at(buf, base + at as u64),
                    )
                    .map_err(|e| Error::io("read", Device::Source, base, e))?;
            }
            if self.cache.dirty_bytes() > self.cache.limit() / 2 {
                while self.destage_batch()? > 0 {}
            }
        }
        while self.destage_batch()? > 0 {}
        // Persist a head past everything replayed, with the journal's new sequence numbers
        // (and the recovered snapshots in the metadata log).
        let mut journal = self.journal.lock();
        let head = journal.tail_head();
        self.persist_journal_head(head)?;
        journal.reset_to(head);
        if n > 0 || snapshots > 0 {
            tracing::info!(volume = %self.name, records = n, bytes, snapshots, "recovery complete");
        }
        Ok(())
    }

    /// Destages everything and empties the journal: what a clean close leaves is a source VLUN
    /// that is the volume, usable without snapvol.
    fn drain(&self) -> Result<()> {
        self.journal_flush()?;
        while self.destage_batch()? > 0 {}
        self.reclaim_journal(true)?;
        self.target
            .sync()
            .map_err(|e| Error::io("sync", Device::Target, 0, e))
    }

    /// One destage batch (claims 14–16): preserve originals once each for every snapshot that
    /// needs them, commit the pointers, then write the new data to the source and clear the
    /// dirty designations. Returns the number of chunks destaged.
    fn destage_batch(&self) -> Result<usize> {
        self.destage_batch_inner().inspect_err(|e| self.fail(e))
    }

    fn destage_batch_inner(&self) -> Result<usize> {
        let mut scratch = self.destage_lock.lock();
        self.check_writable()?;
        let batch = self.cache.collect(MAX_BATCH);
        if batch.is_empty() {
            return Ok(0);
        }
        let table = self.table.load_full();
        let nblocks = self.geo.blocks_per_chunk();
        let chunk = self.geo.chunk_size as usize;

        // Plan (pure): which images each chunk must preserve, for which snapshots.
        let plans: Vec<_> = batch
            .iter()
            .map(|d| {
                destage::plan_chunk(
                    d.chunk,
                    &d.versions,
                    self.index.watermark(d.chunk),
                    &table,
                    nblocks,
                )
            })
            .collect();
        let copies: u64 = plans.iter().map(|p| p.preserve.len() as u64).sum();

        let mut placed = Vec::with_capacity(copies as usize);
        if copies > 0 {
            // Destage the originals to the next free target locations, sequentially.
            // The reservations the batch's writes took become these allocations now, so no
            // slot is ever counted twice.
            let held: u64 = batch
                .iter()
                .flat_map(|d| &d.versions)
                .map(|v| u64::from(v.reserved))
                .sum();
            let runs = {
                let mut meta = self.meta.lock();
                let runs = meta.alloc.allocate(copies);
                self.slots_used.store(meta.alloc.used(), Ordering::SeqCst);
                self.reserved.fetch_sub(held, Ordering::SeqCst);
                runs
            };
            let mut slots = runs
                .iter()
                .flat_map(|&(s, n)| (0..n).map(move |i| TargetSlot(s.0 + i)));
            // Copy i goes to the i-th allocated slot: one buffer, cut into the runs below.
            // Every byte of it is written (read or composed) before it is used.
            let area_len = copies as usize * chunk;
            if scratch.len() < area_len {
                scratch.resize(area_len, 0);
            }
            let area = &mut scratch[..area_len];
            let mut source_buf = Vec::new();
            let mut next = 0;
            for (d, plan) in batch.iter().zip(&plans) {
                if plan.preserve.is_empty() {
                    continue;
                }
                let off = self.source_offset(d.chunk);
                let read_error = |e| Error::io("read original", Device::Source, off, e);
                // One copy that needs the source (the common case): read the original straight
                // into its place and lay the cached versions it holds over it.
                let in_place = plan.needs_source && plan.preserve.len() == 1;
                let src = if plan.needs_source && !in_place {
                    source_buf.resize(chunk, 0);
                    self.source
                        .read_at(&mut source_buf, off)
                        .map_err(read_error)?;
                    Some(&source_buf[..])
                } else {
                    None
                };
                for pres in &plan.preserve {
                    let slot = slots.next().expect("allocated one slot per copy");
                    let buf = &mut area[next * chunk..(next + 1) * chunk];
                    if in_place {
                        self.source.read_at(buf, off).map_err(read_error)?;
                        destage::overlay(&d.versions[..pres.image], buf);
                    } else {
                        destage::compose(&d.versions[..pres.image], src, 0, buf);
                    }
                    placed.push((d.chunk, slot, pres.lo, pres.hi));
                    next += 1;
                }
            }
            let mut at = 0;
            for &(first, n) in &runs {
                let len = n as usize * chunk;
                let off = self.slot_offset(first);
                self.target
                    .write_at(&area[at..at + len], off)
                    .map_err(|e| Error::io("write preserved chunks", Device::Target, off, e))?;
                at += len;
            }
            if scratch.len() > 2 * MAX_BATCH as usize {
                *scratch = Vec::new();
            }
            // Every affected snapshot's log and bitmap now point at the copies: commit.
            let records = destage::records(&placed);
            let mut meta = self.meta.lock();
            self.commit_locked(&mut meta, records)?;
            for &(c, slot, lo, hi) in &placed {
                self.index.insert(c, Entry { lo, hi, slot });
            }
            self.maybe_checkpoint(&mut meta)?;
            drop(meta);
            self.stats.copies_made.fetch_add(copies, Ordering::Relaxed);
        }

        // New data to the source (claims 21, 23).
        let mut compose_buf = vec![0u8; chunk];
        for d in &batch {
            let off = self.source_offset(d.chunk);
            let io = |e| Error::io("write", Device::Source, off, e);
            match destage::source_write(&d.versions, nblocks) {
                SourceWrite::Zero => self.source.punch_zero(off, self.geo.chunk()).map_err(io)?,
                SourceWrite::Whole(bytes) => self.source.write_at(bytes, off).map_err(io)?,
                SourceWrite::Runs(runs) => {
                    let n = d.versions.len();
                    for (b, count) in runs {
                        let bs = BLOCK as usize;
                        let piece = &mut compose_buf[..count * bs];
                        destage::compose(&d.versions[..n], None, b, piece);
                        let at = off + (b * bs) as u64;
                        self.source
                            .write_at(piece, at)
                            .map_err(|e| Error::io("write", Device::Source, at, e))?;
                    }
                }
            }
        }

        // Clear the dirty designations; reservations nothing needed are returned.
        if copies == 0 {
            let held: u64 = batch
                .iter()
                .flat_map(|d| &d.versions)
                .map(|v| u64::from(v.reserved))
                .sum();
            self.reserved.fetch_sub(held, Ordering::SeqCst);
        }
        for d in &batch {
            self.cache.retire(d);
        }
        Ok(batch.len())
    }

    /// Appends records to the metadata log and makes them part of the volume (see
    /// [`Inner::commit_raw`]); the caller checkpoints once its RAM state includes them.
    fn commit_locked(&self, meta: &mut MetaState, records: Vec<Record>) -> Result<()> {
        let may_use_reserve = matches!(records.as_slice(), [Record::SnapshotDelete { .. }]);
        let n = records.len() as u64;
        self.commit_raw(meta, records, may_use_reserve)?;
        meta.chain_records += n;
        Ok(())
    }

    /// Rewrites the metadata log as a fresh chain holding only what is live, once the chain
    /// has grown well past that, and frees the old chain's slots.
    fn maybe_checkpoint(&self, meta: &mut MetaState) -> Result<()> {
        let live = self.index.len() as u64 + meta.committed.len() as u64;
        let live_slots = self.live_meta_slots(meta.committed.len());
        let by_records =
            meta.chain_records >= self.compact_after_records && meta.chain_records >= 4 * live;
        let by_slots = meta.chain_slots.len() as u64 >= 4 + 2 * live_slots;
        if by_records || by_slots {
            self.compact(meta)?;
        }
        Ok(())
    }

    /// Rewrites the durable state as a fresh chain and frees the old one. Returns `false`
    /// (changing nothing) when the target has no room for the new chain.
    fn compact(&self, meta: &mut MetaState) -> Result<bool> {
        let live_slots = self.live_meta_slots(meta.committed.len());
        if live_slots + 1 > self.free_slots(meta) {
            return Ok(false);
        }
        let mut records: Vec<Record> = meta.committed.iter().map(create_record).collect();
        let entries = self.index.sorted();
        let placed: Vec<_> = entries
            .iter()
            .map(|(c, e)| (*c, e.slot, e.lo, e.hi))
            .collect();
        records.extend(destage::records(&placed));
        let old_slots = std::mem::take(&mut meta.chain_slots);
        meta.next_block = None;
        meta.sb.meta_head = 0;
        let n = records.len() as u64;
        // Failing from here on fails the volume (write_chain does); RAM no longer matters.
        self.write_chain(meta, records)?;
        meta.chain_records = n;
        for s in old_slots {
            meta.alloc.free(s);
        }
        self.slots_used.store(meta.alloc.used(), Ordering::SeqCst);
        tracing::debug!(volume = %self.name, records = n, "metadata log compacted");
        Ok(true)
    }

    /// Slots neither in use nor promised to cached writes.
    fn free_slots(&self, meta: &MetaState) -> u64 {
        self.capacity_slots()
            .saturating_sub(meta.alloc.used() + self.reserved.load(Ordering::SeqCst))
    }

    /// New slots `records` would take after the chain head.
    fn slots_for(&self, meta: &MetaState, records: &[Record]) -> u64 {
        let blocks = MetaBlock::pack(records, 0).len() as u64;
        let per_slot = self.geo.chunk() / BLOCK_SIZE as u64;
        let room_in_slot = meta.next_block.map_or(0, |off| {
            (self.geo.chunk() - (off - self.data_start) % self.geo.chunk()) / BLOCK_SIZE as u64
        });
        blocks.saturating_sub(room_in_slot).div_ceil(per_slot)
    }

    /// Appends records to the metadata log and makes them part of the volume (see
    /// [`Inner::write_chain`]), compacting the log first if that is what makes room. Only a
    /// snapshot deletion (`may_use_reserve`) may take the slots held back for it. Fails with
    /// ENOSPC, changing nothing, if the target cannot hold the records.
    fn commit_raw(
        &self,
        meta: &mut MetaState,
        records: Vec<Record>,
        may_use_reserve: bool,
    ) -> Result<()> {
        let reserve = if may_use_reserve { 0 } else { META_HEADROOM };
        let fits =
            |meta: &MetaState| self.slots_for(meta, &records) + reserve <= self.free_slots(meta);
        if !fits(meta) && (!self.compact(meta)? || !fits(meta)) {
            return Err(Error::NoSpace {
                detail: format!(
                    "the metadata log needs {} more chunk slots; {} are free",
                    self.slots_for(meta, &records),
                    self.free_slots(meta)
                ),
            });
        }
        self.write_chain(meta, records)
    }

    /// Writes `records` as new blocks after the chain head, syncs, then points the superblock
    /// (the copy its new generation selects) at the new head and syncs again. The caller made
    /// sure there is room.
    fn write_chain(&self, meta: &mut MetaState, mut records: Vec<Record>) -> Result<()> {
        // Snapshots still pending go first (after the creations a checkpoint rewrites: their
        // sequence numbers are higher), ahead of any record that may name them.
        let created: Vec<SnapshotMeta> = {
            let mut pending = self.pending.lock();
            let durable = pending.iter().take_while(|p| p.durable).count();
            pending.drain(..durable).map(|p| p.meta).collect()
        };
        let last_seq = created.last().map_or(0, |s| s.seq.0);
        let at = records
            .iter()
            .take_while(|r| matches!(r, Record::SnapshotCreate { .. }))
            .count();
        records.splice(at..at, created.iter().map(create_record));
        meta.chain_records += created.len() as u64;
        let blocks = if records.is_empty() && meta.sb.meta_head != 0 {
            Vec::new()
        } else {
            MetaBlock::pack(&records, meta.sb.meta_head_seq + 1)
        };
        let r = (|| {
            let wrote = !blocks.is_empty();
            for mut blk in blocks {
                let off = match meta.next_block {
                    Some(off) => off,
                    None => {
                        let slot = meta.alloc.allocate(1)[0].0;
                        meta.chain_slots.push(slot);
                        self.slot_offset(slot)
                    }
                };
                blk.prev = meta.sb.meta_head;
                self.target
                    .write_at(&blk.encode(&self.volume_id), off)
                    .map_err(|e| Error::io("write metadata", Device::Target, off, e))?;
                meta.sb.meta_head = off;
                meta.sb.meta_head_seq = blk.seq;
                let next = off + BLOCK_SIZE as u64;
                meta.next_block =
                    ((next - self.data_start) % self.geo.chunk() != 0).then_some(next);
            }
            self.slots_used.store(meta.alloc.used(), Ordering::SeqCst);
            if wrote {
                self.target
                    .sync()
                    .map_err(|e| Error::io("sync", Device::Target, 0, e))?;
            }
            self.write_superblock(meta, last_seq)
        })();
        // A failure leaves RAM and disk out of step: stop writing.
        r.inspect_err(|e| self.fail(e))?;
        for s in created {
            meta.committed.push(s);
        }
        Ok(())
    }

    /// Writes `meta.sb` to both copies in turn: the next generation into the copy that holds
    /// the older one, sync, then the generation after it into the other copy, sync. A crash
    /// tears at most the copy being written while the other holds a whole state, and at rest
    /// both copies hold the newest state, so a copy damaged later never makes an open fall
    /// back to stale metadata. `last_seq` is the highest snapshot creation the log now holds.
    fn write_superblock(&self, meta: &mut MetaState, last_seq: u64) -> Result<()> {
        let mut sb = meta.sb.clone();
        sb.last_snapshot_seq = sb.last_snapshot_seq.max(last_seq);
        for _ in 0..2 {
            sb.generation += 1;
            let off = format::superblock_offset(sb.generation);
            self.target
                .write_at(&sb.encode(), off)
                .map_err(|e| Error::io("write superblock", Device::Target, off, e))?;
            self.target
                .sync()
                .map_err(|e| Error::io("sync", Device::Target, off, e))?;
        }
        meta.sb = sb;
        Ok(())
    }

    /// Slots a fresh copy of the live metadata (a checkpoint) would take.
    fn live_meta_slots(&self, snapshots: usize) -> u64 {
        let bytes = self.index.len() as u64 * 37 + snapshots as u64 * MAX_RECORD_LEN as u64;
        let per_slot = self.geo.chunk() / BLOCK_SIZE as u64 * META_PAYLOAD as u64;
        bytes.div_ceil(per_slot).max(1)
    }

    fn snapshot_create(&self, name: &str) -> Result<SnapshotInfo> {
        validate_name(name)?;
        self.check_writable()?;
        let _a = self.admin_lock.lock();
        let full = format!("{}@{name}", self.name);
        let current = self.table.load_full();
        if current.by_name(name).is_some() {
            return Err(Error::SnapshotExists(full));
        }
        // A snapshot needs a record in the metadata log; on a full target it fails here rather
        // than eat the room kept for deleting snapshots.
        self.check_room(1)?;
        let seq = SnapshotSeq(self.gate.current() + 1);
        let meta = SnapshotMeta {
            seq,
            name: name.to_owned(),
            created: SystemTime::now(),
        };
        // Publish first so writes of the new epoch reserve space for it, then close the epoch.
        // It is pending before its epoch begins, so the metadata log never records that epoch
        // without its creation (`write_chain`).
        {
            let mut pending = self.pending.lock();
            pending.push(PendingSnapshot {
                meta: meta.clone(),
                durable: false,
            });
            let mut next = (*current).clone();
            next.push(meta.clone());
            self.table.store(Arc::new(next));
        }
        let advanced = self.gate.advance();
        debug_assert_eq!(advanced, seq.0);
        // One journal append makes it durable with every write acknowledged before it: the
        // staged writes, then the snapshot's record. Its record reaches the metadata log later,
        // with the next destage batch or journal head move (`write_chain`).
        let r = self.check_writable().and_then(|()| {
            self.journal_append(Some(Request::Snapshot {
                seq: seq.0,
                created_ms: millis(meta.created),
                name: name.to_owned(),
            }))
        });
        if let Err(e) = r {
            self.pending.lock().retain(|p| p.meta.seq != seq);
            let mut back = (**self.table.load()).clone();
            back.remove(seq);
            self.table.store(Arc::new(back));
            return Err(e);
        }
        tracing::info!(snapshot = %full, seq = seq.0, "snapshot created");
        Ok(SnapshotInfo {
            name: meta.name,
            seq,
            created: meta.created,
            exclusive_bytes: 0,
            shared_bytes: 0,
        })
    }

    fn snapshot_delete(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        self.check_writable()?;
        let _a = self.admin_lock.lock();
        let full = format!("{}@{name}", self.name);
        let Some(seq) = self.table.load().by_name(name).map(|s| s.seq) else {
            return Err(Error::SnapshotNotFound(full));
        };
        // No destage batch may be between planning and publishing while copies are freed.
        let _d = self.destage_lock.lock();
        let mut meta = self.meta.lock();
        self.commit_locked(&mut meta, vec![Record::SnapshotDelete { seq }])?;
        let mut next = (**self.table.load()).clone();
        next.remove(seq);
        let freed = self.index.remove_unreferenced(&next);
        self.table.store(Arc::new(next));
        meta.committed.remove(seq);
        for s in &freed {
            meta.alloc.free(*s);
        }
        self.slots_used.store(meta.alloc.used(), Ordering::SeqCst);
        self.maybe_checkpoint(&mut meta)?;
        tracing::info!(snapshot = %full, freed_chunks = freed.len(), "snapshot deleted");
        Ok(())
    }

    /// Per-snapshot exclusive and shared bytes: a copy read by exactly one live snapshot is
    /// exclusive to it; a copy read by several is shared by each.
    fn accounting(&self) -> Vec<SnapshotInfo> {
        let table = self.table.load_full();
        let snaps: Vec<_> = table.iter().collect();
        let n = snaps.len();
        let mut exclusive = vec![0u64; n];
        // Difference array over snapshot positions for shared copies.
        let mut shared_diff = vec![0i64; n + 1];
        let chunk = self.geo.chunk();
        let pos = |seq: u64| snaps.partition_point(|s| s.seq.0 < seq);
        self.index.for_each(|_, e| {
            let a = pos(e.lo);
            let b = snaps.partition_point(|s| s.seq.0 <= e.hi);
            match b.saturating_sub(a) {
                0 => {}
                1 => exclusive[a] += chunk,
                _ => {
                    shared_diff[a] += chunk as i64;
                    shared_diff[b] -= chunk as i64;
                }
            }
        });
        let mut acc = 0i64;
        snaps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                acc += shared_diff[i];
                SnapshotInfo {
                    name: s.name.clone(),
                    seq: s.seq,
                    created: s.created,
                    exclusive_bytes: exclusive[i],
                    shared_bytes: acc as u64,
                }
            })
            .collect()
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Volume>();
    is::<DirtyChunk>();
}
