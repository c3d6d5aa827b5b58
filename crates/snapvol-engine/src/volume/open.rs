//! Creating a volume and opening one: formatting the three VLUNs, loading the metadata log,
//! opening the cache journal, and wiring `Inner` and its threads together before recovery
//! (claim 25) runs. Nothing here serves a request; the volume is handed out only once it is
//! consistent.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::cache::Cache;
use crate::catalog::VolumeLock;
use crate::error::{Device, Error, Result};
use crate::format::{self, Superblock};
use crate::journal::{Damage, Held, Journal, JournalHead, LostRecord, Mode as JournalMode};
use crate::names::validate_name;
use crate::paths::{Vluns, VolumePaths};
use crate::units::{Epoch, Geometry, SnapshotSeq};
use crate::vlun::Vlun;

use super::epoch::EpochGate;
use super::metalog::load;
use super::{Inner, Layout, MetaState, Stats, Volume, VolumeOptions, Wake, STAGING_SHARDS};

/// Logs damage the journal scan found: corruption that a salvage skipped, or a damaged last
/// append, which open drops (it cannot be told from an append a crash cut short).
fn report_journal_damage(name: &str, d: &Damage) {
    let at = crate::journal::RING_OFFSET + d.at.pos;
    for lost in &d.lost {
        let held = match lost.held {
            Some(Held::Write { offset, len }) | Some(Held::Zero { offset, len }) => {
                format!("a write of {len:#x} bytes at {offset:#x}")
            }
            Some(Held::Snapshot { seq }) => format!("the creation of snapshot {seq}"),
            Some(Held::Wrap) => "a wrap record".to_owned(),
            None => "unknown (its header is damaged)".to_owned(),
        };
        if d.later_appends_follow {
            tracing::error!(volume = name, record = lost.seq, ring_offset = at, lost = %held, "journal record damaged: salvage skips it");
        } else {
            tracing::warn!(volume = name, record = lost.seq, ring_offset = at, held = %held, "the journal's last append ends with a damaged record: dropped as cut short by a crash (if it was flushed and then damaged, that write is lost)");
        }
    }
}

/// A new volume's id, from the operating system's random source. The superblock, every
/// metadata block and every journal record carry it, so that a block or record left over from
/// another volume (a reused file, a stale journal) is never taken for one of this volume's.
fn random_id() -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id)
        .map_err(|e| Error::io("drawing a random volume id", Device::Other, 0, e.into()))?;
    Ok(id)
}

impl Volume {
    /// Creates a volume on the devices at `paths` (regular files and backend devices are
    /// created; existing block devices are used as they are). When it fails after creating
    /// them, the backend devices are removed again.
    pub fn create(
        name: &str,
        paths: &VolumePaths,
        layout: Layout,
        opts: VolumeOptions,
        lock: VolumeLock,
    ) -> Result<Self> {
        let vluns = paths.create(layout.geometry)?;
        let v = Self::create_on(name, vluns, layout, opts)
            .inspect_err(|_| paths.remove_backend_devices())?;
        v.hold(lock);
        Ok(v)
    }

    /// Opens a volume on the devices at `paths`, recovering from the journal if it was not closed.
    pub fn open(
        name: &str,
        paths: &VolumePaths,
        opts: VolumeOptions,
        lock: VolumeLock,
    ) -> Result<Self> {
        let v = Self::open_on(name, paths.open()?, opts)?;
        v.hold(lock);
        Ok(v)
    }

    /// Opens a volume on the devices at `paths` for reading only (see [`Volume::open_read_only_on`]).
    pub fn open_read_only(name: &str, paths: &VolumePaths, lock: VolumeLock) -> Result<Self> {
        let v = Self::open_read_only_on(name, paths.open_read_only()?)?;
        v.hold(lock);
        Ok(v)
    }

    /// Keeps the store's lock for as long as the volume lives.
    fn hold(&self, lock: VolumeLock) {
        let first = self.inner.lock.set(lock).is_ok();
        debug_assert!(first, "a volume is locked once, when a store opens it");
    }

    /// Opens a volume on any set of VLUNs for reading only: nothing is ever written to them.
    /// What the cache journal holds (a volume that was not closed) is replayed into the RAM
    /// cache and read from there, not destaged; writes, snapshot changes and `destage_all`
    /// fail with [`Error::ReadOnly`]. Live and snapshot reads, block status, `info` and the
    /// snapshot list work as on a volume opened for writing.
    pub fn open_read_only_on(name: &str, vluns: Vluns) -> Result<Self> {
        let opts = VolumeOptions {
            // The replay must fit whatever the journal holds; it is bounded by the journal.
            cache_size: u64::MAX,
            background_destage: false,
            ..VolumeOptions::default()
        };
        Self::open_with(name, vluns, opts, true, JournalMode::Replay).map(|(v, _)| v)
    }

    /// Opens a volume whose cache journal is damaged (a damaged record that intact records of
    /// later appends follow, which [`Volume::open_on`] refuses): every intact record is
    /// replayed, the damaged ones are skipped, and the volume is left consistent and its
    /// journal empty once this returns (recovery persists a head past everything). Returns
    /// the records lost, with what their headers still say they held.
    pub fn open_salvaging_on(
        name: &str,
        vluns: Vluns,
        opts: VolumeOptions,
    ) -> Result<(Self, Vec<LostRecord>)> {
        let (v, damage) = Self::open_with(name, vluns, opts, false, JournalMode::Salvage)?;
        Ok((v, damage.map(|d| d.lost).unwrap_or_default()))
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
        let volume_id = random_id()?;
        Journal::format(&**journal, volume_id, layout.journal_size)?;
        let mut sb = Superblock {
            generation: 0,
            volume_size: geo.size,
            chunk_size: geo.chunk_size,
            target_cap: layout.target_cap.unwrap_or(0),
            data_start,
            meta_head: 0,
            meta_head_copy: 0,
            meta_head_seq: 0,
            last_snapshot_seq: 0,
            volume_id,
            created,
            journal_head: 0,
            journal_head_seq: 1,
            clean: true,
            rollback_to: 0,
            write_mode: layout.write_mode,
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
        Self::open_with(name, vluns, opts, false, JournalMode::Replay).map(|(v, _)| v)
    }

    fn open_with(
        name: &str,
        vluns: Vluns,
        opts: VolumeOptions,
        read_only: bool,
        mode: JournalMode,
    ) -> Result<(Self, Option<Damage>)> {
        let Vluns {
            source,
            target,
            journal,
        } = vluns;
        let loaded = load(&*target, !read_only)?;
        for repaired in &loaded.ditto_repairs {
            tracing::warn!(volume = name, "{repaired}");
        }
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
        let journal_dev: Arc<dyn Vlun> = Arc::from(journal);
        let (journal, records, damage) = Journal::open(
            Box::new(Arc::clone(&journal_dev)),
            loaded.sb.volume_id,
            head,
            loaded.sb.clean,
            mode,
        )?;
        if let Some(d) = &damage {
            report_journal_damage(name, d);
        }
        let ring = journal.ring_len();
        let journal_used = journal.used_gauge();
        let mut alloc = loaded.alloc;
        alloc.set_limit(
            target_cap.map(|cap| cap.saturating_sub(loaded.sb.data_start) / geo.chunk()),
        );
        let slots_used = alloc.used();
        let epoch = Epoch(
            records
                .iter()
                .map(|r| r.request.epoch())
                .fold(loaded.last_seq, u64::max),
        );
        let volume_id = loaded.sb.volume_id;
        let rollback_to =
            (loaded.sb.rollback_to != 0).then_some(SnapshotSeq(loaded.sb.rollback_to));
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
                // Open for writing: no longer closed cleanly once anything is written (the
                // recovery below persists this with the journal head).
                sb: Superblock {
                    clean: loaded.sb.clean && read_only,
                    ..loaded.sb
                },
                alloc,
                chain_slots: loaded.chain_slots,
                next_block: loaded.next_block,
                chain_records: loaded.chain_records,
                committed: loaded.table.clone(),
                compaction: None,
            }),
            slots_used: AtomicU64::new(slots_used),
            reserved: AtomicU64::new(0),
            capacity_hint: AtomicU64::new(0),
            destage_lock: Default::default(),
            admin_lock: Mutex::new(()),
            compact_write: Mutex::new(0),
            compact_ids: AtomicU64::new(0),
            compact_wake: Wake::default(),
            pending: Mutex::new(Vec::new()),
            failed: OnceLock::new(),
            lock: OnceLock::new(),
            stats: Stats::default(),
            wake: Wake::default(),
            reclaim_lock: Mutex::new(()),
            staged_bytes: AtomicU64::new(0),
            journal_wake: Wake::default(),
            shutdown: AtomicBool::new(false),
            read_only,
            live_view: rollback_to.filter(|_| read_only),
            out_of_space: AtomicU8::new(0),
            source_room: (0..geo.chunks().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            source,
            target,
            journal_dev,
            journal_used,
            journal_ring: ring,
            write_mode: loaded.sb.write_mode,
            pacer: super::pacing::Pacer::new(),
            flush_gen: AtomicU64::new(1),
            journal_reclaimed: AtomicU64::new(0),
            source_written: AtomicU64::new(0),
            source_synced: AtomicU64::new(0),
        });
        if read_only {
            inner.replay(records, loaded.created_seq)?;
        } else {
            inner.recover(records, loaded.created_seq)?;
        }
        let mut destager = Vec::new();
        if opts.background_destage {
            type Run = fn(Arc<Inner>);
            let threads: [(&str, Run); 3] = [
                ("destage", Inner::destager_loop),
                ("journal", Inner::journal_loop),
                ("compact", Inner::compactor_loop),
            ];
            for (role, run) in threads {
                let bg = Arc::clone(&inner);
                destager.push(
                    std::thread::Builder::new()
                        .name(format!("{role}-{name}"))
                        .spawn(move || run(bg))
                        .map_err(|e| Error::file(format!("{role} thread"), e))?,
                );
            }
        }
        let v = Self {
            inner,
            destager,
            open: true,
        };
        if let (Some(to), false) = (rollback_to, read_only) {
            v.inner.finish_rollback(to)?;
        }
        Ok((v, damage))
    }
}
