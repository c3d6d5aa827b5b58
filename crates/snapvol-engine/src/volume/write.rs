//! The write path: requests enter an epoch, reserve target space for the preservations they
//! will need, land in the cache and are staged for the journal (claims 17, 22).
//!
//! A request is landed under the locks of its cache shards ([`crate::cache::RangeLock`]):
//! there, once, it is decided which chunks start a new version, the target slots their
//! superseded images will need are reserved (or the request fails with ENOSPC, having changed
//! nothing), the data lands, and the request is staged for the journal, all before another
//! request can land in the same chunks. Staging inside the locks is what keeps the journal's
//! order of overlapping requests the order in which they landed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::cache::{Journaling, LandedVersion, Landing, SourceBlock};
use crate::error::{Device, Error, Result};
use crate::units::{WriteMode, BLOCK};

use super::space::device_of;
use super::{Inner, Staged, JOURNAL_EAGER, STAGING_SHARDS};

/// A write's bytes: borrowed from the caller, or already in a buffer the cache and the journal
/// may keep a reference to (an NBD payload read straight into one). Borrowed bytes are copied
/// once, into such a buffer; shared ones are not copied at all.
#[derive(Debug, Clone, Copy)]
pub(super) enum Bytes<'a> {
    Borrowed(&'a [u8]),
    Shared(&'a Arc<[u8]>),
}

impl<'a> Bytes<'a> {
    fn as_slice(&self) -> &'a [u8] {
        match *self {
            Bytes::Borrowed(d) => d,
            Bytes::Shared(d) => d,
        }
    }

    /// The buffer the cache and the journal share: the request's own, or a copy of it.
    fn share(&self) -> Arc<[u8]> {
        match *self {
            Bytes::Borrowed(d) => Arc::from(d),
            Bytes::Shared(d) => Arc::clone(d),
        }
    }

    /// Bytes `range` of the request: the request itself when that is all of it (a shared
    /// buffer stays shared), else borrowed (a piece of a request is copied when it lands).
    fn slice(&self, range: std::ops::Range<usize>) -> Bytes<'a> {
        match *self {
            Bytes::Shared(d) if range == (0..d.len()) => *self,
            _ => Bytes::Borrowed(&self.as_slice()[range]),
        }
    }
}

impl Inner {
    /// Writes `data` (zeros for `None`) at `offset`: journaled, or in write mode throughput
    /// skipping the journal if it is a data request of at least a chunk.
    pub(super) fn write(&self, offset: u64, len: u64, data: Option<Bytes<'_>>) -> Result<()> {
        let skip =
            self.write_mode == WriteMode::Throughput && data.is_some() && len >= self.geo.chunk();
        self.write_as(offset, len, data, skip)
    }

    /// A FUA write: journaled whatever the write mode (one journal sync makes just this
    /// request durable, where skipping the journal would need a destage), then durable.
    pub(super) fn write_fua(&self, offset: u64, len: u64, data: Option<Bytes<'_>>) -> Result<()> {
        self.write_as(offset, len, data, false)?;
        self.check_writable()?;
        self.journal_flush().inspect_err(|e| self.fail(e))
    }

    fn write_as(&self, offset: u64, len: u64, data: Option<Bytes<'_>>, skip: bool) -> Result<()> {
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
                let piece = data.map(|d| d.slice((pos - offset) as usize..(end - offset) as usize));
                self.write_as(pos, end - pos, piece, skip)?;
                pos = end;
            }
            return Ok(());
        }
        // Room on the source's file system for what this write will put there, before it is
        // accepted. (Zeroing needs none where it frees whole chunks; where it zeroes part of
        // one, a full file system pauses the destage until space is freed.)
        if data.is_some() {
            self.ensure_source_room(offset, len)?;
        }
        // What the cache takes in one piece: a quarter of it.
        let step = match data {
            Some(_) => self.cache.limit() / 4,
            None => self.cache.limit() / 4 / 512 * self.geo.chunk(),
        }
        .max(self.geo.chunk())
            / self.geo.chunk()
            * self.geo.chunk();
        let result = match data {
            // Nothing to journal: each piece is its own request, as on a disk (a snapshot may
            // fall between two pieces of a request larger than a quarter of the cache).
            Some(data) if skip => pieces(offset, len, step).try_for_each(|(pos, n)| {
                let at = (pos - offset) as usize;
                self.write_small(pos, n, Some(data.slice(at..at + n as usize)), true)
            }),
            _ if len > step => self.write_large(offset, len, data, step),
            _ => self.write_small(offset, len, data, false),
        };
        if self.cache.dirty_bytes() > self.cache.limit() / 4 {
            self.poke();
        }
        result
    }

    /// A request that fits the cache: lands in it, and is staged for the journal — unless
    /// `skip` and no journal record a replay would apply covers its chunks, in which case it
    /// lands without one ([`Journaling::Skipped`]), durable at the next FLUSH.
    fn write_small(
        &self,
        offset: u64,
        len: u64,
        data: Option<Bytes<'_>>,
        skip: bool,
    ) -> Result<()> {
        let chunks = self.geo.split(offset, len).count() as u64;
        // What the versions will hold (and a destage drain), then the copy kept for the journal.
        let versions = match data {
            Some(_) => chunks * self.geo.chunk(),
            None => chunks * 512,
        };
        let cost = versions + if data.is_some() && !skip { len } else { 0 };
        // Paced are requests of a chunk or more, the streams that fill the cache faster than
        // a destage drains it. A smaller one adds at most a chunk, often nothing (a version of
        // its chunk is there already), and pacing it by a chunk's worth would throttle random
        // writes far below what the destager keeps up with.
        let paced = if len >= self.geo.chunk() { versions } else { 0 };
        self.make_room(cost, paced)?;
        let admitted = self.gate.enter();
        let epoch = admitted.epoch;
        // The request's bytes in one buffer (copied at most once): the journal needs them, and
        // whole chunks of them serve as their cache versions too.
        let shared: Option<Arc<[u8]>> = data.map(|d| d.share());
        let req = Landing {
            offset,
            len,
            data: shared.as_ref().map(|d| (d, 0)),
            epoch,
            journal: if skip {
                Journaling::Skipped(self.flush_gen.load(Ordering::SeqCst))
            } else {
                Journaling::Staged
            },
        };
        let staged = self.land(&req, &mut |n| self.reserve(n), |landed, journal| {
            if journal != Journaling::Staged {
                return false;
            }
            self.cache
                .hold(shared.as_ref().map_or(0, |d| d.len() as u64));
            let wseq = self.wseq.fetch_add(1, Ordering::SeqCst);
            self.staged[(wseq as usize) % STAGING_SHARDS]
                .lock()
                .push(Staged {
                    wseq,
                    epoch,
                    offset,
                    len,
                    data: shared.clone(),
                    landed,
                });
            true
        })?;
        drop(admitted);
        if staged
            && self.background_destage
            && self.staged_bytes.fetch_add(len, Ordering::Relaxed) + len >= JOURNAL_EAGER
        {
            self.poke_journal();
        }
        Ok(())
    }

    /// A request too large for the cache or the journal to take at once. It is still one
    /// request: it is journaled whole (and synced) before any of it lands, all in one epoch,
    /// so after a crash it is all-old (not journaled, nothing landed) or all-new (replayed
    /// whole) however much of it had been destaged; then it lands piece by piece. It writes
    /// alone (the epoch gate shut for its duration), so no other request lands between its
    /// journal record and its last piece, which would make the cache and a replay disagree.
    fn write_large(&self, offset: u64, len: u64, data: Option<Bytes<'_>>, step: u64) -> Result<()> {
        let alone = self.gate.alone();
        let epoch = alone.epoch;
        // Room for every preservation it may need, before anything is written (ENOSPC). With
        // the gate shut only destages change the cache meanwhile, and they change no answer:
        // a chunk's superseded image needs preserving for the same snapshots whether its
        // older versions are still cached or already destaged (and preserved).
        let mut pool = 0;
        for piece in pieces(offset, len, step) {
            let lock = self.cache.lock_range(piece.0, piece.1);
            pool += self.needing_preservation(&lock, epoch).len() as u64;
        }
        self.reserve(pool)?;
        let shared: Option<Arc<[u8]>> = data.map(|d| d.share());
        // Pin the journal head before the append: an append that is durable but not yet landed
        // is only in the journal, and a head move between the append and a pin set after it
        // would pass its record (a power cut then loses an acknowledged write). Every append
        // from here on has a generation at least this one.
        let pin = self.journal.lock().generation() + 1;
        self.landing.lock().push(pin);
        let unpin = || {
            let mut pins = self.landing.lock();
            if let Some(i) = pins.iter().position(|&g| g == pin) {
                pins.swap_remove(i);
            }
        };
        let generation = match self.journal_now(epoch, offset, len, shared.clone()) {
            Ok(g) => g,
            Err(e) => {
                unpin();
                self.unreserve(pool);
                return Err(e);
            }
        };
        let landed = (|| {
            for (pos, n) in pieces(offset, len, step) {
                let per_chunk = if data.is_some() {
                    self.geo.chunk()
                } else {
                    512
                };
                let cost = self.geo.split(pos, n).count() as u64 * per_chunk;
                // Not paced: the request is journaled and the gate shut, so a pause here only
                // holds every other writer up. And not refused: it is durable already, and a
                // refusal now would tell the client it failed while the pieces before this
                // one read back new (and a replay brings all of it back). A file system full
                // enough to pause the destage lets it land over the cache's limit instead:
                // its data is in memory anyway, in the request's buffer, which whole chunks
                // share; the writes after it wait, or get ENOSPC, until the destage resumes.
                match self.make_room(cost, 0) {
                    Err(Error::DeviceFull { .. }) => {}
                    r => r?,
                }
                let req = Landing {
                    offset: pos,
                    len: n,
                    data: shared.as_ref().map(|d| (d, (pos - offset) as usize)),
                    epoch,
                    journal: Journaling::In(generation),
                };
                let mut draw = |need: u64| {
                    // Drawn from what was reserved up front; more is a bug in that argument,
                    // and still only taken if the target has it.
                    let extra = need.saturating_sub(pool);
                    pool -= need - extra;
                    self.reserve(extra)
                };
                self.land(&req, &mut draw, |_, _| ())?;
            }
            Ok(())
        })();
        // The request is journaled: a piece that could not land leaves the cache short of
        // it, so refuse to go on rather than guess (a reopen replays it whole). The volume
        // fails before the pin goes: once the pieces that did land are destaged, nothing
        // else holds the record, and a head move between the unpin and the failure would
        // pass it, leaving those pieces on the source and the rest nowhere.
        let landed = landed.inspect_err(|e| self.fail(e));
        self.unreserve(pool);
        unpin();
        drop(alone);
        landed
    }

    /// Waits until `cost` more bytes fit the cache, destaging on this thread when there is no
    /// background destager.
    ///
    /// While destaging is paused because a file system is full, a write the cache has no
    /// room for gets ENOSPC instead of waiting (it changed nothing; it succeeds once space is
    /// freed and the destage resumes).
    ///
    /// With a background destager, a writer is first paced (`pacing`): `drained` is what the
    /// destager will have to write out of what it brings.
    fn make_room(&self, cost: u64, drained: u64) -> Result<()> {
        let started = std::time::Instant::now();
        let r = self.make_room_inner(cost, drained);
        self.stats.cache_wait.observe(started.elapsed());
        r
    }

    fn make_room_inner(&self, cost: u64, drained: u64) -> Result<()> {
        // Without a background destager this thread destages. While destaging is paused for
        // want of space it also tries once itself, so that the first write after space is
        // freed goes through rather than waiting for the destager's next round.
        let stalled = self.out_of_space.load(Ordering::SeqCst) != 0;
        if self.background_destage && !stalled {
            let pause = self
                .pacer
                .delay(drained, self.cache.dirty_bytes(), self.cache.limit());
            if !pause.is_zero() {
                self.poke();
                std::thread::sleep(pause);
            }
        }
        if (!self.background_destage || stalled) && !self.cache.has_room(cost) {
            self.destage_round()?;
        }
        let stuck = || self.failed.get().is_some() || self.out_of_space.load(Ordering::SeqCst) != 0;
        self.cache.wait_for_space(cost, || self.poke(), stuck);
        self.check_writable()?;
        if let Some(device) = device_of(self.out_of_space.load(Ordering::SeqCst)) {
            if !self.cache.has_room(cost) {
                return Err(Error::DeviceFull {
                    device,
                    detail: "the cache is full, and destaging it waits for space".into(),
                });
            }
        }
        Ok(())
    }

    /// The chunks of a locked range in which a write of `epoch` starts a version whose
    /// superseded image a live snapshot needs preserved: the snapshots taken after that image's
    /// epoch and no later than `epoch` (claims 17–20).
    fn needing_preservation(
        &self,
        lock: &crate::cache::RangeLock<'_>,
        epoch: crate::units::Epoch,
    ) -> Vec<crate::units::ChunkIndex> {
        let table = self.table.load();
        lock.new_versions(epoch)
            .into_iter()
            .filter(|v| {
                let boundary = v
                    .supersedes
                    .unwrap_or_else(|| self.index.watermark(v.chunk));
                table.any_alive(boundary, epoch)
            })
            .map(|v| v.chunk)
            .collect()
    }

    /// Lands one request (or one piece of a large one) in the cache. Under the locks of its
    /// shards it decides which chunks start a version whose superseded image must be
    /// preserved, has `admit` reserve that many target slots (an error there changes
    /// nothing), lands the data, and hands the versions it landed in to `then` before any
    /// other request may land in those chunks. Partial blocks that need the source's bytes
    /// are read with the locks released, before anything is decided.
    ///
    /// A request that would skip the journal is staged instead where a journal record that a
    /// replay after a crash would apply covers one of its chunks: the replay would lay that
    /// older write over this one. `then` is told which it was.
    pub(super) fn land<T>(
        &self,
        req: &Landing<'_>,
        admit: &mut dyn FnMut(u64) -> Result<()>,
        then: impl FnOnce(Vec<LandedVersion>, Journaling) -> T,
    ) -> Result<T> {
        let mut source: Vec<SourceBlock> = Vec::new();
        loop {
            let mut lock = self.cache.lock_range(req.offset, req.len);
            let missing = lock.source_blocks(&source);
            if !missing.is_empty() {
                drop(lock);
                for mut block in missing {
                    block.data = vec![0; BLOCK as usize];
                    let at =
                        self.source_offset(block.chunk) + (block.block as u64 * u64::from(BLOCK));
                    self.source
                        .read_at(&mut block.data, at)
                        .map_err(|e| Error::io("read", Device::Source, at, e))?;
                    source.retain(|s| (s.chunk, s.block) != (block.chunk, block.block));
                    source.push(block);
                }
                continue;
            }
            lock.check_order(req.epoch).map_err(|o| {
                Error::corrupt(
                    format!("cache, {}", o.chunk),
                    format!(
                        "a write of epoch {} would land after a version of epoch {}",
                        req.epoch, o.newest
                    ),
                )
            })?;
            let preserve = self.needing_preservation(&lock, req.epoch);
            admit(preserve.len() as u64)?;
            let mut req = *req;
            if matches!(req.journal, Journaling::Skipped(_))
                && !lock.journal_free(self.journal_reclaimed.load(Ordering::SeqCst))
            {
                req.journal = Journaling::Staged;
            }
            // `preserve` is in chunk order, as the range is.
            let landed = lock.land(&req, |c| preserve.binary_search(&c).is_ok(), &source);
            return Ok(then(landed, req.journal));
        }
    }
}

/// The pieces `(offset, length)` a large request lands in: `step`-aligned, `step` at most.
fn pieces(offset: u64, len: u64, step: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = offset + len;
    let mut pos = offset;
    std::iter::from_fn(move || {
        (pos < end).then(|| {
            let next = ((pos / step + 1) * step).min(end);
            let piece = (pos, next - pos);
            pos = next;
            piece
        })
    })
}
