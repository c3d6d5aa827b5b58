//! The write path: requests enter an epoch, reserve target space for the preservations they
//! will need, land in the cache and are staged for the journal (claims 17, 22).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::cache::Payload;
use crate::error::{Device, Error, Result};
use crate::units::{ChunkIndex, Epoch};

use super::{Inner, Staged, JOURNAL_EAGER, STAGING_SHARDS};

impl Inner {
    pub(super) fn write(&self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<()> {
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
}
