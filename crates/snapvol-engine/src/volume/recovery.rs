//! Recovery after a crash (claim 25): every write the cache journal holds is examined again.
//! It lands journaled writes through the same path as live writes (`Inner::land`) and never
//! writes a device except through the destager and the journal head move.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::cache::{Journaling, Landing};
use crate::error::{Error, Result};
use crate::journal::{JournalRecord, Request};
use crate::metadata::SnapshotMeta;
use crate::units::{Epoch, SnapshotSeq};

use super::{Inner, PendingSnapshot};

impl Inner {
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
    pub(super) fn recover(&self, records: Vec<JournalRecord>, created_seq: u64) -> Result<()> {
        let (n, bytes, snapshots) = self.replay(records, created_seq)?;
        self.destage_dirty()?;
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

    /// Puts what the journal holds back into the table and the cache: the snapshots taken
    /// since the metadata log's last creation, and every write, each in its epoch. On a
    /// volume opened for writing, the cache is destaged whenever it fills; read-only, it
    /// keeps everything (and only counts the preservations the writes will need). Returns
    /// the number of writes, their bytes and the number of snapshots.
    pub(super) fn replay(
        &self,
        records: Vec<JournalRecord>,
        created_seq: u64,
    ) -> Result<(usize, u64, usize)> {
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
                    writes.push((r.seq, epoch, offset, len, data));
                }
            }
        }
        let (n, bytes) = (writes.len(), writes.iter().map(|w| w.3).sum::<u64>());
        if n > 0 || snapshots > 0 {
            tracing::info!(volume = %self.name, records = n, bytes, snapshots, "recovering writes from the cache journal");
        }
        for (seq, epoch, offset, len, data) in writes {
            let epoch = Epoch(epoch);
            // Journals this version writes hold each chunk's writes in epoch order (the epoch
            // gate); one written out of order (by snapvol before 0.2) is applied in the newer
            // epoch, as the live volume then read it, with a warning.
            let newest = self.cache.lock_range(offset, len).newest_epoch();
            let epoch = match newest {
                Some(n) if n > epoch => {
                    tracing::warn!(volume = %self.name, record = seq, epoch = epoch.0, newer = n.0, "a journal record is out of epoch order; applying it in the newer epoch");
                    n
                }
                _ => epoch,
            };
            let req = Landing {
                offset,
                len,
                data: data.as_ref().map(|d| (d, 0)),
                epoch,
                journal: Journaling::In(0),
            };
            if self.read_only {
                let mut count = |n: u64| {
                    self.reserved
                        .fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                    Ok(())
                };
                self.land(&req, &mut count, |_, _| ())?;
            } else {
                self.land(&req, &mut |n| self.reserve(n), |_, _| ())?;
                if self.cache.dirty_bytes() > self.cache.limit() / 2 {
                    self.destage_dirty()?;
                }
            }
        }
        Ok((n, bytes, snapshots))
    }
}
