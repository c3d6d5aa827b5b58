//! Incremental export and import on an open volume: [`write_diff`] turns the chunks that
//! changed between two points into an `rbd diff v1` stream, [`apply_diff`] applies one. The
//! commands call them on a volume opened here, `snapvol serve` on the volume it serves (the
//! control socket carries the stream), so both paths are this code.

use std::io::{Read, Write};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use snapvol_engine::units::SnapshotSeq;
use snapvol_engine::{Error, Volume};

use crate::rbd_diff::{Event, Header, Reader, Writer, MAX_PIECE};
use crate::size::format_size;
use crate::transfer::{is_all_zero, pieces};

/// Largest piece an export reads at once.
const READ_STEP: usize = 1 << 20;

/// Largest zeroing request an import makes at once (so progress moves and no one request is
/// huge).
const ZERO_STEP: usize = 64 << 20;

/// What an export will write: the stream's metadata, the two points, and the extents that
/// changed between them.
#[derive(Debug)]
pub struct DiffPlan {
    /// The `f`, `t` and `s` records.
    pub header: Header,
    to: Option<SnapshotSeq>,
    /// Byte extents `(offset, length)` that changed, sorted and merged.
    pub extents: Vec<(u64, u64)>,
}

impl DiffPlan {
    /// Bytes of the volume the stream covers (data and zeroes together).
    pub fn changed_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.1).sum()
    }
}

/// What a stream held: the export's or the import's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSummary {
    /// Bytes carried as data (`w` records).
    pub data_bytes: u64,
    /// Bytes made zero (`z` records).
    pub zeroed_bytes: u64,
    /// Data records (`w` and `z`).
    pub records: u64,
}

impl DiffSummary {
    /// "1.2M of data, 64K zeroed in 3 records".
    pub fn describe(&self) -> String {
        format!(
            "{} of data, {} zeroed in {} record{}",
            format_size(self.data_bytes),
            format_size(self.zeroed_bytes),
            self.records,
            if self.records == 1 { "" } else { "s" }
        )
    }
}

/// Resolves the from-snapshot and the to-point (a snapshot, or the live volume for `None`)
/// and finds what changed between them, from metadata alone. Fails, before anything is
/// written anywhere, when a snapshot is missing or `to` is not newer than `from`.
pub fn plan_export(vol: &Volume, from: &str, to: Option<&str>) -> Result<DiffPlan, Error> {
    let from_seq = vol.snapshot_seq(from)?;
    let to_seq = to.map(|s| vol.snapshot_seq(s)).transpose()?;
    let extents = vol.diff(from_seq, to_seq)?;
    Ok(DiffPlan {
        header: Header {
            from: Some(from.to_owned()),
            to: to.map(str::to_owned),
            size: vol.size(),
        },
        to: to_seq,
        extents,
    })
}

/// Writes the stream of `plan` to `out`: the changed extents as read at the to-point, holes
/// and all-zero chunks as `z` records, the rest as `w` records. `progress` is told the bytes
/// of the extents done so far.
pub fn write_diff(
    vol: &Volume,
    plan: &DiffPlan,
    out: impl Write,
    progress: &mut dyn FnMut(u64),
) -> Result<DiffSummary> {
    let mut emit = Emitter {
        out: Writer::new(out, &plan.header)?,
        zeroes: None,
        summary: DiffSummary::default(),
    };
    let grain = vol.geometry().chunk() as usize;
    let mut buf = vec![0u8; READ_STEP];
    let mut done = 0u64;
    for &(offset, len) in &plan.extents {
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            // At most 64 MiB of runs per call: the loop asks again for the rest.
            let runs = vol.allocation(plan.to, pos, end - pos)?;
            if runs.is_empty() {
                bail!("the volume reported no allocation at offset {pos:#x}");
            }
            for (run, may_hold_data) in runs {
                if !may_hold_data {
                    emit.zero(pos, run)?;
                    done += run;
                    progress(done);
                } else {
                    for (at, n) in pieces(run, READ_STEP) {
                        let piece = &mut buf[..n];
                        match plan.to {
                            Some(seq) => vol.read_snapshot(seq, pos + at, piece)?,
                            None => vol.read(pos + at, piece)?,
                        }
                        emit.piece(pos + at, piece, grain)?;
                        done += n as u64;
                        progress(done);
                    }
                }
                pos += run;
            }
        }
    }
    emit.flush_zeroes()?;
    emit.out.end()?;
    Ok(emit.summary)
}

/// Records going out, with the zero ranges merged while they touch.
struct Emitter<W: Write> {
    out: Writer<W>,
    /// A zero range not written yet: (offset, length).
    zeroes: Option<(u64, u64)>,
    summary: DiffSummary,
}

impl<W: Write> Emitter<W> {
    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        match &mut self.zeroes {
            Some((o, l)) if *o + *l == offset => *l += len,
            _ => {
                self.flush_zeroes()?;
                self.zeroes = Some((offset, len));
            }
        }
        Ok(())
    }

    fn flush_zeroes(&mut self) -> Result<()> {
        if let Some((offset, len)) = self.zeroes.take() {
            self.out.zero(offset, len)?;
            self.summary.zeroed_bytes += len;
            self.summary.records += 1;
        }
        Ok(())
    }

    /// A piece read at `offset`: its all-zero grains as zero ranges, the rest as data.
    fn piece(&mut self, offset: u64, piece: &[u8], grain: usize) -> Result<()> {
        for (start, len, zero) in zero_runs(piece, grain) {
            let at = offset + start as u64;
            if zero {
                self.zero(at, len as u64)?;
            } else {
                self.flush_zeroes()?;
                self.out.data(at, &piece[start..start + len])?;
                self.summary.data_bytes += len as u64;
                self.summary.records += 1;
            }
        }
        Ok(())
    }
}

/// `buf` cut into runs `(start, length, all_zero)` of whole `grain`-sized pieces (the last
/// may be shorter), neighbours of the same kind merged.
fn zero_runs(buf: &[u8], grain: usize) -> Vec<(usize, usize, bool)> {
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    for (i, g) in buf.chunks(grain.max(1)).enumerate() {
        let zero = is_all_zero(g);
        match runs.last_mut() {
            Some((_, len, z)) if *z == zero => *len += g.len(),
            _ => runs.push((i * grain.max(1), g.len(), zero)),
        }
    }
    runs
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// The stream's figures.
    pub summary: DiffSummary,
    /// The snapshot the stream started from, if any.
    pub from: Option<String>,
    /// The snapshot created at the end, if the stream names one.
    pub created: Option<String>,
}

/// Applies the stream in `reader` (its header already read) to the live volume, then creates
/// its to-snapshot. Everything the header makes impossible is refused before the first write:
/// a size other than the volume's, a from-snapshot the volume does not have, a to-snapshot it
/// already has, and (unless `force`) a live volume that changed since the from-snapshot. With
/// a from-snapshot the changes are guarded: a failure part-way (a stream cut short, a crash)
/// leaves the live volume as the from-snapshot. `progress` is told the stream bytes read.
pub fn apply_diff(
    vol: &Volume,
    reader: &mut Reader<impl Read>,
    force: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<ImportReport> {
    let name = vol.name().to_owned();
    let header = reader.header().clone();
    let nothing = "nothing was written";
    if header.size != vol.size() {
        bail!(
            "the stream is for a volume of {} ({} bytes) but volume '{name}' is {} ({} bytes); \
             import-diff does not resize volumes: {nothing}",
            format_size(header.size),
            header.size,
            format_size(vol.size()),
            vol.size()
        );
    }
    let from_seq = match &header.from {
        Some(from) => Some(vol.snapshot_seq(from).map_err(|_| {
            anyhow!(
                "volume '{name}' has no snapshot '{from}', which the stream starts from \
                         (see: snapvol snapshot list {name}): {nothing}"
            )
        })?),
        None => None,
    };
    if let Some(to) = &header.to {
        if vol.snapshot_seq(to).is_ok() {
            bail!(
                "snapshot '{name}@{to}', which the stream ends with, already exists (was this \
                 stream imported before?): {nothing}"
            );
        }
    }
    if let (Some(seq), Some(from), false) = (from_seq, &header.from, force) {
        if let Some(at) = first_difference(vol, seq)? {
            bail!(
                "volume '{name}' has changed since {name}@{from} (first at offset {at:#x}), so \
                 the stream would be applied on top of those changes; roll it back to \
                 {name}@{from} first, or pass --force to apply it anyway: {nothing}"
            );
        }
    }

    let guard = from_seq.map(|s| vol.guarded_changes(s)).transpose()?;
    let summary = apply_records(vol, reader, progress)?;
    match guard {
        Some(guard) => guard.finish()?,
        None => vol.flush()?,
    }
    if let Some(to) = &header.to {
        vol.snapshot_create(to).with_context(|| {
            format!("the stream was applied, but creating snapshot '{name}@{to}' failed")
        })?;
    }
    Ok(ImportReport {
        summary,
        from: header.from,
        created: header.to,
    })
}

/// Where the live volume's content first differs from snapshot `seq`'s, if it does. Only the
/// chunks written since `seq` (from metadata) are compared: a chunk written back to what it
/// was, as when a failed import was undone, has not changed.
fn first_difference(vol: &Volume, seq: SnapshotSeq) -> Result<Option<u64>> {
    let mut old = vec![0u8; READ_STEP];
    let mut new = vec![0u8; READ_STEP];
    for (offset, len) in vol.diff(seq, None)? {
        for (at, n) in pieces(len, READ_STEP) {
            vol.read_snapshot(seq, offset + at, &mut old[..n])?;
            vol.read(offset + at, &mut new[..n])?;
            if let Some(i) = old[..n].iter().zip(&new[..n]).position(|(a, b)| a != b) {
                return Ok(Some(offset + at + i as u64));
            }
        }
    }
    Ok(None)
}

/// Writes the stream's records into the live volume, up to its end record.
fn apply_records(
    vol: &Volume,
    reader: &mut Reader<impl Read>,
    progress: &mut dyn FnMut(u64),
) -> Result<DiffSummary> {
    drain(reader, |event, position| {
        match event {
            Event::Data { offset, data } => vol.write(offset, data)?,
            Event::Zero { offset, len } => {
                for (at, n) in pieces(len, ZERO_STEP) {
                    vol.write_zeroes(offset + at, n as u64)?;
                }
            }
        }
        progress(position);
        Ok(())
    })
}

/// Reads `reader`'s records up to the end record, handing each piece to `each` with the
/// stream bytes read so far; returns what the stream held.
pub fn drain(
    reader: &mut Reader<impl Read>,
    mut each: impl FnMut(Event<'_>, u64) -> Result<()>,
) -> Result<DiffSummary> {
    let mut summary = DiffSummary::default();
    let mut buf = vec![0u8; MAX_PIECE];
    while let Some(event) = reader.next(&mut buf)? {
        match event {
            Event::Data { data, .. } => summary.data_bytes += data.len() as u64,
            Event::Zero { len, .. } => summary.zeroed_bytes += len,
        }
        each(event, reader.position())?;
    }
    summary.records = reader.records();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_runs_split_a_piece_at_grains_and_merge_neighbours() {
        let mut buf = vec![0u8; 10];
        buf[4] = 1;
        buf[9] = 1;
        assert_eq!(
            zero_runs(&buf, 2),
            vec![(0, 4, true), (4, 2, false), (6, 2, true), (8, 2, false)]
        );
        assert_eq!(zero_runs(&[0; 5], 2), vec![(0, 5, true)]);
        assert_eq!(zero_runs(&[1; 5], 4), vec![(0, 5, false)]);
        assert!(zero_runs(&[], 4).is_empty());
    }

    #[test]
    fn touching_zero_ranges_become_one_record_and_data_splits_them() {
        let mut emit = Emitter {
            out: Writer::new(
                Vec::new(),
                &Header {
                    from: None,
                    to: None,
                    size: 100,
                },
            )
            .unwrap(),
            zeroes: None,
            summary: DiffSummary::default(),
        };
        emit.zero(0, 10).unwrap();
        emit.zero(10, 10).unwrap();
        emit.piece(20, &[0, 0, 5, 5], 2).unwrap();
        emit.zero(30, 5).unwrap();
        emit.flush_zeroes().unwrap();
        assert_eq!(
            emit.summary,
            DiffSummary {
                data_bytes: 2,
                zeroed_bytes: 27,
                records: 3
            }
        );
        let stream = emit.out.end().unwrap();
        let mut r = Reader::new(&stream[..]).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            r.next(&mut buf).unwrap(),
            Some(Event::Zero { offset: 0, len: 22 })
        );
        assert_eq!(
            r.next(&mut buf).unwrap(),
            Some(Event::Data {
                offset: 22,
                data: &[5, 5]
            })
        );
        assert_eq!(
            r.next(&mut buf).unwrap(),
            Some(Event::Zero { offset: 30, len: 5 })
        );
        assert_eq!(r.next(&mut buf).unwrap(), None);
    }
}
