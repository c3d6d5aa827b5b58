//! `qemu:dirty-bitmap:SNAP` metadata contexts (qemu's `docs/interop/nbd.rst`): which
//! snapshots an export offers a bitmap of, and a bitmap's block status, from
//! [`Volume::changed`] — snapshot metadata, so there is no bitmap to lose, leave "in use" or
//! clean up.
//!
//! On `VOL` the bitmap of snapshot SNAP marks what changed since SNAP; on `VOL@B`, what
//! changed between SNAP and B, for every SNAP older than B. Bit 0 (`NBD_STATE_DIRTY`) set is
//! "changed", in whole chunks; no other flag is ever set.

use std::sync::Arc;

use snapvol_engine::units::SnapshotSeq;
use snapvol_engine::{Error, SnapshotInfo, Volume};
use snapvol_nbd::proto::NBD_STATE_DIRTY;
use snapvol_nbd::{DevError, Extent};

use super::devices::dev_err;

/// The namespace and kind shared by every bitmap's context name.
pub const DIRTY_BITMAP: &str = "qemu:dirty-bitmap:";

/// One bitmap an export offers.
#[derive(Debug, Clone)]
struct Bitmap {
    /// `qemu:dirty-bitmap:SNAP`.
    context: String,
    /// SNAP.
    snapshot: String,
    /// SNAP's sequence number when the export was looked up. A snapshot deleted later and
    /// taken again under the same name is another snapshot: its bitmap is not this one.
    since: SnapshotSeq,
}

/// The bitmaps of one export, fixed when the export is looked up (for a connection, when
/// it enters transmission).
#[derive(Debug, Clone)]
pub struct Bitmaps {
    vol: Arc<Volume>,
    /// `VOL` or `VOL@B`, for messages.
    export: String,
    /// The export's snapshot B, or `None` for the live volume.
    until: Option<SnapshotSeq>,
    list: Vec<Bitmap>,
}

impl Bitmaps {
    /// The bitmaps of `export`, `vol` as of snapshot `until` (`None`: the live volume): one
    /// per snapshot in `snapshots` (the volume's, oldest first) older than `until`.
    pub fn new(
        vol: Arc<Volume>,
        export: String,
        snapshots: &[SnapshotInfo],
        until: Option<SnapshotSeq>,
    ) -> Self {
        let list = snapshots
            .iter()
            .filter(|s| until.is_none_or(|b| s.seq < b))
            .map(|s| Bitmap {
                context: format!("{DIRTY_BITMAP}{}", s.name),
                snapshot: s.name.clone(),
                since: s.seq,
            })
            .collect();
        Self {
            vol,
            export,
            until,
            list,
        }
    }

    /// The context names, oldest snapshot first.
    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(|b| b.context.clone()).collect()
    }

    /// Block status of `[offset, offset + len)` in bitmap `context`: `NBD_STATE_DIRTY` where
    /// a chunk changed, 0 elsewhere. The answer runs to the end of the last chunk the request
    /// touches (proto.md lets the last descriptor run past the request; the server clips it
    /// where it must) and covers at most what one [`Volume::changed`] call does. A bitmap
    /// whose snapshot is gone fails with `EIO`: never "clean".
    pub fn status(&self, context: &str, offset: u64, len: u32) -> Result<Vec<Extent>, DevError> {
        let Some(b) = self.list.iter().find(|b| b.context == context) else {
            return Err(DevError::invalid(format!(
                "export {} offers no metadata context {context:?}",
                self.export
            )));
        };
        let chunk = self.vol.geometry().chunk();
        let end = (offset + u64::from(len))
            .next_multiple_of(chunk)
            .min(self.vol.size());
        let runs = self
            .vol
            .changed(b.since, self.until, offset, end - offset)
            .map_err(|e| self.error(b, e))?;
        runs.into_iter()
            .map(|(n, changed)| {
                // One call covers at most 1 GiB, so a run always fits.
                let n = u32::try_from(n)
                    .map_err(|_| DevError::io(format!("a run of {n} bytes in {context}")))?;
                Ok(Extent::new(n, if changed { NBD_STATE_DIRTY } else { 0 }))
            })
            .collect()
    }

    /// The error a client gets when the engine cannot answer for bitmap `b`.
    fn error(&self, b: &Bitmap, e: Error) -> DevError {
        if !matches!(e, Error::SnapshotNotFound(_)) {
            return dev_err(e);
        }
        let vol = self.vol.name();
        let deleted = !self.vol.snapshots().iter().any(|s| s.seq == b.since);
        let why = if deleted {
            format!("snapshot {vol}@{} was deleted", b.snapshot)
        } else {
            "the export's own snapshot was deleted".to_owned()
        };
        DevError::io(format!(
            "{} on export {}: {why}, and the bitmap with it; select another bitmap (on a new \
             connection) or take a full copy",
            b.context, self.export
        ))
    }
}
