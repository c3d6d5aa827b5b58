//! The journal writer: appends staged requests to the persistent cache journal, makes flushes
//! durable, and moves the journal head once the data before it is on the source. It never
//! writes the source or the target's data area, and moves the head only past appends whose
//! data the destager has made durable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Device, Error, Result};
use crate::journal::{JournalHead, Request};
use crate::metadata::SnapshotMeta;
use crate::units::{Epoch, WriteMode};

use super::destager::Turn;
use super::{millis, Inner, JOURNAL_EAGER, STAGING_SHARDS};

impl Inner {
    /// The journal writer: appends what is staged once a few MiB have gathered, so that the
    /// destager finds its batches journaled and journaling overlaps destaging; and moves the
    /// journal head once a quarter of the ring is in use (a source sync the destager need not
    /// wait for).
    pub(super) fn journal_loop(self: Arc<Self>) {
        loop {
            self.journal_wake.wait(Duration::from_millis(100));
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

    /// FLUSH: every write acknowledged so far becomes durable. Journaled writes by reaching
    /// the journal — no destage is forced; in write mode throughput, the writes that skipped
    /// the journal by being destaged, and the source synced.
    pub(super) fn flush(&self) -> Result<()> {
        self.check_writable()?;
        self.journal_flush().inspect_err(|e| self.fail(e))?;
        if self.write_mode == WriteMode::Throughput {
            self.flush_unjournaled()?;
        }
        Ok(())
    }

    /// Makes every write that skipped the journal and was acknowledged before this call
    /// durable: destages the chunks holding one (with their older versions, preserving
    /// originals first as any destage does), then syncs the source unless a sync since the
    /// last such destage did. A destage error reaches the caller (ENOSPC while a file system
    /// is full leaves the volume writable); the writes stay dirty and the next FLUSH tries
    /// again.
    pub(super) fn flush_unjournaled(&self) -> Result<()> {
        // Writes acknowledged before now landed in this generation or an older one; writes
        // landing from now on go to the next, and this FLUSH need not wait for them.
        let generation = self.flush_gen.fetch_add(1, Ordering::SeqCst);
        // With none of them in the cache there is no destage to ask for, and asking would wait
        // for the batches of journaled writes under way (a batch that preserves originals takes
        // a commit's syncs). A chunk a batch has taken stays in the cache until the batch
        // retires it, so one under way is seen here and waited for.
        while self.cache.holds_unjournaled(generation) {
            self.destage_while(Turn::Asked, Some(generation), |_| true)?;
            if !self.cache.holds_unjournaled(generation) {
                break;
            }
            // What is left waits behind a write still staged for the journal in the same
            // chunk, or for the journal record of a snapshot whose epoch has begun: journal
            // both, then take the chunks again.
            self.check_writable()?;
            self.journal_append_upto(self.gate.current().0)?;
        }
        self.sync_unjournaled()
    }

    /// Syncs the source unless a sync since the last destage of writes that skipped the
    /// journal did: their data is durable nowhere else. (Journaled data needs no such sync
    /// until the journal's head moves past it, which syncs the source first.)
    pub(super) fn sync_unjournaled(&self) -> Result<()> {
        if self.source_synced.load(Ordering::SeqCst) < self.source_written.load(Ordering::SeqCst) {
            self.sync_source().inspect_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// Syncs the source, and records that the sync covers every destage batch counted in
    /// `source_written` before it began.
    fn sync_source(&self) -> Result<()> {
        let written = self.source_written.load(Ordering::SeqCst);
        self.source
            .sync()
            .map_err(|e| Error::io("sync", Device::Source, 0, e))?;
        self.source_synced.fetch_max(written, Ordering::SeqCst);
        Ok(())
    }

    /// Appends every staged request to the journal (one record each), syncs it, and marks the
    /// cache versions they landed in as journaled.
    pub(super) fn journal_flush(&self) -> Result<()> {
        self.journal_append(None).map(|_| ())
    }

    /// Journals one request now (one record, synced), after everything staged before it.
    /// Returns the journal append holding it.
    pub(super) fn journal_now(
        &self,
        epoch: Epoch,
        offset: u64,
        len: u64,
        data: Option<Arc<[u8]>>,
    ) -> Result<u64> {
        self.journal_append(Some(Request::Write {
            epoch: epoch.0,
            offset,
            len,
            data,
        }))
        .map(|generation| generation.expect("an append that carries a request is never empty"))
    }

    /// Appends every staged request (one record each, in request order), then `extra`, to the
    /// journal, syncs it, and marks the cache versions the staged requests landed in as
    /// journaled. Returns the append's generation, if anything was appended. Any failure fails
    /// the volume: the staged requests are gone from the staging list.
    pub(super) fn journal_append(&self, extra: Option<Request>) -> Result<Option<u64>> {
        let up_to = match &extra {
            Some(Request::Snapshot { seq, .. }) => *seq,
            _ => 0,
        };
        self.journal_append_inner(extra, up_to)
    }

    /// Appends every staged request and the records of the snapshots up to `up_to` not yet
    /// journaled (those whose epoch has begun, when `up_to` is the current epoch).
    pub(super) fn journal_append_upto(&self, up_to: u64) -> Result<Option<u64>> {
        self.journal_append_inner(None, up_to)
    }

    fn journal_append_inner(&self, extra: Option<Request>, up_to: u64) -> Result<Option<u64>> {
        let _append = self.append_lock.lock();
        self.check_writable()?;
        let r = (|| {
            let mut journal = self.journal.lock();
            // Every staging shard at once: a consistent cut. A request staged before another
            // that overlaps it (it landed first) is then never left for a later append.
            let mut staged = Vec::new();
            let mut shards: Vec<_> = self.staged.iter().map(|s| s.lock()).collect();
            for shard in &mut shards {
                staged.append(shard);
            }
            drop(shards);
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
            let writes = staged
                .iter()
                .map(|s| Request::Write {
                    epoch: s.epoch.0,
                    offset: s.offset,
                    len: s.len,
                    data: s.data.clone(),
                })
                .chain(extra.clone().filter(|r| matches!(r, Request::Write { .. })));
            let requests = self.with_snapshot_records(writes, up_to);
            if requests.is_empty() {
                return Ok(None);
            }
            if journal.append_cost(&requests) > journal.free() {
                // Make room: destage everything already journaled and move the head past it.
                drop(journal);
                let made_room = (|| {
                    self.destage_dirty()?;
                    self.reclaim_journal(true)
                })();
                if let Err(e @ Error::DeviceFull { .. }) = made_room {
                    // A full file system paused the destage: nothing was appended, so the
                    // requests go back to be journaled by a later append, and this one fails
                    // with ENOSPC (the volume goes on).
                    self.staged_bytes.fetch_add(taken, Ordering::Relaxed);
                    for s in staged {
                        self.staged[(s.wseq as usize) % STAGING_SHARDS]
                            .lock()
                            .push(s);
                    }
                    return Err(e);
                }
                made_room?;
                journal = self.journal.lock();
            }
            let generation = journal.append(&requests)?;
            // Snapshots whose records are now durable may enter the metadata log; before the
            // journal lock is released, so no head move can pass a record not yet marked.
            let journaled: Vec<u64> = requests
                .iter()
                .filter_map(|r| match r {
                    Request::Snapshot { seq, .. } => Some(*seq),
                    Request::Write { .. } => None,
                })
                .collect();
            for p in self.pending.lock().iter_mut() {
                if journaled.contains(&p.meta.seq.0) {
                    p.durable = true;
                }
            }
            let mut bytes = 0;
            for s in &staged {
                for v in &s.landed {
                    self.cache.mark_journaled(v.chunk, v.id, generation);
                }
                bytes += s.data.as_ref().map_or(0, |d| d.len() as u64);
            }
            drop(journal);
            self.cache.release(bytes);
            Ok(Some(generation))
        })();
        r.inspect_err(|e| self.fail(e))
    }

    /// The records of an append: `writes` (in request order, so in epoch order), with the
    /// record of every snapshot taken but not yet journaled put before the first write of its
    /// epoch, and those up to snapshot `up_to` at the end if no write of their epoch came.
    ///
    /// A snapshot's record precedes every write of its epoch in the journal, whichever append
    /// journals it (a FLUSH may come between a snapshot's epoch advancing and its own append).
    /// A write of its epoch may then reach the destager, which preserves originals for the
    /// snapshot and names it in the metadata log, only once the snapshot's creation is durable
    /// and goes into the log first (`write_chain`); and recovery never finds a preservation
    /// for a snapshot it does not know.
    fn with_snapshot_records(
        &self,
        writes: impl Iterator<Item = Request>,
        up_to: u64,
    ) -> Vec<Request> {
        let waiting: Vec<Request> = self
            .pending
            .lock()
            .iter()
            .filter(|p| !p.durable)
            .map(|p| snapshot_request(&p.meta))
            .collect();
        let mut waiting = waiting.into_iter().peekable();
        let mut requests = Vec::new();
        for w in writes {
            while let Some(s) = waiting.next_if(|s| s.epoch() <= w.epoch()) {
                requests.push(s);
            }
            requests.push(w);
        }
        requests.extend(waiting.take_while(|s| s.epoch() <= up_to));
        requests
    }

    /// Moves the journal's head past every append whose data is all on the source: syncs the
    /// source, then persists the new head in the superblock. Without `force`, only once a
    /// quarter of the ring is in use (each move costs two syncs).
    pub(super) fn reclaim_journal(&self, force: bool) -> Result<()> {
        // A full file system refuses the log write before anything is written: the head then
        // simply stays where it is for now (`fail` passes over it).
        self.reclaim_journal_inner(force)
            .inspect_err(|e| self.fail(e))
    }

    fn reclaim_journal_inner(&self, force: bool) -> Result<()> {
        let _one_at_a_time = self.reclaim_lock.lock();
        let (head, upto) = {
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
            (head, upto)
        };
        // The source sync may take a while; appends go on meanwhile (they only add after the
        // tail, and this head stays right: everything before it is destaged).
        self.persist_journal_head(head)?;
        self.journal.lock().advance_head(head);
        // No replay applies those appends any more: their chunks may skip the journal again.
        self.journal_reclaimed.fetch_max(upto, Ordering::SeqCst);
        self.cache.forget_footprints(upto);
        Ok(())
    }

    /// Makes `head` the journal's head on disk: the source is synced first (the data of every
    /// record before it must be durable there), then the superblock records it.
    pub(super) fn persist_journal_head(&self, head: JournalHead) -> Result<()> {
        self.sync_source()?;
        let mut meta = self.meta.lock();
        meta.sb.journal_head = head.pos;
        meta.sb.journal_head_seq = head.seq;
        // The head may pass snapshot records: their snapshots go to the metadata log with it.
        self.write_chain(&mut meta, Vec::new())
    }
}

/// The journal record of a snapshot's creation.
pub(super) fn snapshot_request(meta: &SnapshotMeta) -> Request {
    Request::Snapshot {
        seq: meta.seq.0,
        created_ms: millis(meta.created),
        name: meta.name.clone(),
    }
}
