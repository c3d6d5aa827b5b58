//! The oracle: what every byte of the live volume and every snapshot must read, as far as
//! the user was promised.

use std::sync::Arc;

use snapvol_engine::units::SnapshotSeq;

use super::judge::subtract;

/// One write request as the oracle remembers it.
#[derive(Debug, Clone)]
pub struct Req {
    pub op: usize,
    pub off: u64,
    pub len: u64,
    /// `None`: zeroes.
    pub data: Option<Arc<[u8]>>,
    /// The epoch it was issued in: the seq of the newest snapshot created before it.
    pub epoch: u64,
    /// Write mode throughput, a data write of at least a chunk, not FUA: it may skip the
    /// journal, so until a completed FLUSH or snapshot follows it a crash may tear it (each
    /// byte new or what it held before), as on a disk. Never set in write mode atomic.
    pub tearable: bool,
}

impl Req {
    pub(super) fn covers(&self, at: u64) -> bool {
        self.off <= at && at < self.off + self.len
    }

    pub(super) fn overlaps(&self, other: &Req) -> bool {
        self.off < other.off + other.len && other.off < self.off + self.len
    }

    pub(super) fn byte(&self, at: u64) -> u8 {
        self.data
            .as_ref()
            .map_or(0, |d| d[(at - self.off) as usize])
    }

    /// The part `[from, to)` of it, as a request of its own (the same op).
    fn slice(&self, from: u64, to: u64) -> Req {
        let at = (from - self.off) as usize..(to - self.off) as usize;
        Req {
            off: from,
            len: to - from,
            data: self.data.as_ref().map(|d| Arc::from(&d[at])),
            ..self.clone()
        }
    }

    fn apply(&self, img: &mut [u8]) {
        let r = self.off as usize..(self.off + self.len) as usize;
        match &self.data {
            Some(d) => img[r].copy_from_slice(d),
            None => img[r].fill(0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapState {
    /// `snapshot_create` returned `Ok`: must exist and read exactly its image.
    Acked,
    /// `snapshot_create` was interrupted: may exist; if so, exactly its image.
    CreateInFlight,
    /// `snapshot_delete` returned `Ok`: must not come back.
    Deleted,
    /// `snapshot_delete` was interrupted: may still exist; if so, exactly its image.
    DeleteInFlight,
}

#[derive(Debug, Clone)]
pub struct SnapModel {
    pub name: &'static str,
    pub seq: Option<SnapshotSeq>,
    pub image: Arc<Vec<u8>>,
    pub state: SnapState,
}

/// What the user was promised, operation by operation.
#[derive(Debug, Clone)]
pub struct Model {
    pub chunk: u64,
    /// The volume with every acknowledged write.
    pub image: Vec<u8>,
    /// The volume as of the last completed flush.
    pub settled: Vec<u8>,
    /// Every write request issued, acknowledged or in flight, in order.
    pub writes: Vec<Req>,
    /// The writes not covered by a completed flush, in order: each may or may not have
    /// survived a crash. After a FUA in write mode throughput, the tearable ones issued
    /// before it (cut to the bytes no later journaled write covers); otherwise the writes
    /// issued since the last completed flush.
    pending: Vec<Req>,
    pub epoch: u64,
    pub snaps: Vec<SnapModel>,
    /// Operations that returned (the failing one, if any, is `ops_done`).
    pub ops_done: usize,
    /// The operation that failed, if any.
    pub failed_op: Option<(usize, String)>,
}

impl Model {
    pub fn new(size: u64, chunk: u64) -> Self {
        Self {
            chunk,
            image: vec![0; size as usize],
            settled: vec![0; size as usize],
            writes: Vec::new(),
            pending: Vec::new(),
            epoch: 0,
            snaps: Vec::new(),
            ops_done: 0,
            failed_op: None,
        }
    }

    /// A flush completed: everything acknowledged so far is durable.
    pub fn settle(&mut self) {
        self.settled.clone_from(&self.image);
        self.pending.clear();
    }

    /// A FUA write completed: it is durable, and so is every write that went through the
    /// journal before it (one journal sync covers them all). Writes that may have skipped
    /// the journal (tearable) are not: a FUA destages nothing, so they stay pending, but only
    /// on the bytes no later journaled write covers, since the replay of that later write
    /// lays its data over them. Without tearable writes (always, in write mode atomic) this
    /// is [`Model::settle`].
    pub fn settle_fua(&mut self) {
        if !self.pending.iter().any(|r| r.tearable) {
            return self.settle();
        }
        let pending = std::mem::take(&mut self.pending);
        for (i, r) in pending.iter().enumerate() {
            if !r.tearable {
                r.apply(&mut self.settled);
                continue;
            }
            let later: Vec<_> = pending[i + 1..]
                .iter()
                .filter(|q| !q.tearable)
                .map(|q| (q.off, q.off + q.len))
                .collect();
            for (a, b) in subtract(r.off, r.off + r.len, &later) {
                self.pending.push(r.slice(a, b));
            }
        }
    }

    pub fn write(&mut self, req: Req, acked: bool) {
        if acked {
            req.apply(&mut self.image);
        }
        self.writes.push(req.clone());
        self.pending.push(req);
    }

    /// Writes not covered by a completed flush: each may or may not have survived (and a
    /// tearable one may have survived in part).
    pub fn pending(&self) -> &[Req] {
        &self.pending
    }

    /// Whether write request `op` is pending (wholly or in part).
    pub(super) fn is_pending(&self, op: usize) -> bool {
        self.pending.iter().any(|r| r.op == op)
    }

    pub(super) fn snap_mut(&mut self, name: &str) -> &mut SnapModel {
        self.snaps
            .iter_mut()
            .find(|s| s.name == name)
            .expect("workload deletes a snapshot it created")
    }
}
