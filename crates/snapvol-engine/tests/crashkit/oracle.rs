//! The oracle: what every byte of the live volume and every snapshot must read, as far as
//! the user was promised.

use std::sync::Arc;

use snapvol_engine::units::SnapshotSeq;

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
    /// `writes[..durable]` are covered by a completed flush.
    pub durable: usize,
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
            durable: 0,
            epoch: 0,
            snaps: Vec::new(),
            ops_done: 0,
            failed_op: None,
        }
    }

    /// A flush completed: everything acknowledged so far is durable.
    pub fn settle(&mut self) {
        self.settled.clone_from(&self.image);
        self.durable = self.writes.len();
    }

    pub fn write(&mut self, req: Req, acked: bool) {
        if acked {
            req.apply(&mut self.image);
        }
        self.writes.push(req);
    }

    /// Writes after the last completed flush: each may or may not have survived.
    pub fn pending(&self) -> &[Req] {
        &self.writes[self.durable..]
    }

    pub(super) fn snap_mut(&mut self, name: &str) -> &mut SnapModel {
        self.snaps
            .iter_mut()
            .find(|s| s.name == name)
            .expect("workload deletes a snapshot it created")
    }
}
