//! Snapshot creation and deletion, and per-snapshot space accounting. A creation copies no
//! data and writes one journal record; a deletion unpublishes the snapshot before it frees
//! anything. Nothing here reads or writes a volume's data.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::journaling::snapshot_request;
use crate::error::{Error, Result};
use crate::format::Record;
use crate::metadata::SnapshotMeta;
use crate::names::validate_name;
use crate::units::{SnapshotSeq, WriteMode};

use super::{Inner, PendingSnapshot, SnapshotInfo};

impl Inner {
    pub(super) fn snapshot_create(&self, name: &str) -> Result<SnapshotInfo> {
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
        let throughput = self.write_mode == WriteMode::Throughput;
        if throughput {
            // Writes that skipped the journal must be durable before the snapshot is, since it
            // holds them: most are destaged now, with writers still going, and what lands
            // meanwhile below, with the epoch's door shut.
            self.flush_unjournaled()?;
        }
        let seq = SnapshotSeq(self.gate.current().0 + 1);
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
        let advanced = if throughput {
            // With no writer inside, every write of the snapshot's image has landed: those
            // that skipped the journal are destaged and the source synced before its epoch
            // ends (a crash between leaves no snapshot, and those writes durable).
            self.gate.advance_after(|| self.flush_unjournaled())
        } else {
            Ok(self.gate.advance())
        };
        let advanced = match advanced {
            Ok(epoch) => epoch,
            Err(e) => {
                self.unpublish_pending(seq);
                return Err(e);
            }
        };
        debug_assert_eq!(advanced, crate::units::Epoch::of(seq));
        // One journal append makes it durable with every write acknowledged before it: the
        // staged writes, then the snapshot's record (unless a FLUSH since the epoch advanced
        // journaled the record already, ahead of the first write of its epoch). Its record
        // reaches the metadata log later, with the next destage batch or journal head move
        // (`write_chain`).
        let r = self
            .check_writable()
            .and_then(|()| self.journal_append(Some(snapshot_request(&meta))));
        if let Err(e) = r {
            self.unpublish_pending(seq);
            return Err(e);
        }
        self.stats.snapshots_created.fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %full, seq = seq.0, "snapshot created");
        Ok(SnapshotInfo {
            name: meta.name,
            seq,
            created: meta.created,
            exclusive_bytes: 0,
            shared_bytes: 0,
        })
    }

    /// Takes back a snapshot whose creation failed before it was acknowledged.
    fn unpublish_pending(&self, seq: SnapshotSeq) {
        self.pending.lock().retain(|p| p.meta.seq != seq);
        let mut back = (**self.table.load()).clone();
        back.remove(seq);
        self.table.store(Arc::new(back));
    }

    pub(super) fn snapshot_delete(&self, name: &str) -> Result<()> {
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
        if meta.sb.rollback_to == seq.0 {
            return Err(Error::InvalidArgument(format!(
                "{full} is the snapshot an unfinished rollback is restoring: run \
                 `snapvol snapshot rollback {full}` to finish it before deleting the snapshot"
            )));
        }
        self.commit_locked(&mut meta, vec![Record::SnapshotDelete { seq }])?;
        // The snapshot leaves the table before its copies leave the index: a reader of it
        // that found no pointer (and read the live volume's data instead) then sees it gone
        // when it checks again after reading, and returns an error, never that data.
        let mut next = (**self.table.load()).clone();
        next.remove(seq);
        let next = Arc::new(next);
        self.table.store(Arc::clone(&next));
        self.stats.snapshots_deleted.fetch_add(1, Ordering::Relaxed);
        let freed = self.index.remove_unreferenced_after(&next, seq);
        meta.committed.remove(seq);
        for s in &freed {
            meta.alloc.free(*s);
        }
        self.slots_used.store(meta.alloc.used(), Ordering::SeqCst);
        // No pointer names the freed copies any more (the deletion is committed): give their
        // space back to the file system (a hole; a discard on a device), so that the target
        // takes on disk what it holds. A slot used again gets its space back first
        // (`reserve_space` in the destager). Best effort.
        self.discard_slots(&freed);
        drop(meta);
        tracing::info!(snapshot = %full, freed_chunks = freed.len(), "snapshot deleted");
        // The log may have grown enough to compact: on the compactor thread, or here once the
        // locks are let go.
        drop(_d);
        self.maybe_compact()
    }

    /// Per-snapshot exclusive and shared bytes: a copy read by exactly one live snapshot is
    /// exclusive to it; a copy read by several is shared by each.
    pub(super) fn accounting(&self) -> Vec<SnapshotInfo> {
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
