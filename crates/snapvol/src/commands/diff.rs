//! `snapvol diff VOL@FROM [VOL@TO] [--json]`: the extents that changed between two points,
//! from metadata alone (`Volume::diff`).

use std::io::Write;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use snapvol_engine::{parse_snapshot_name, parse_volume_or_snapshot, Store, Volume};

use super::{access_read_only, qualify, remote, requalify, with_volume, Access};
use crate::cli::DiffArgs;
use crate::output::{print_json, Align, Table};
use crate::serve::control::Request;
use crate::size::format_size;

/// One changed extent, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Length: whole chunks (the last one clipped to the volume's end).
    pub length: u64,
}

/// A diff as `--json` prints it and the control socket sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    /// `VOL@FROM`.
    pub from: String,
    /// `VOL@TO`, or `VOL` for the live volume.
    pub to: String,
    /// The granularity of the extents.
    pub chunk_size: u32,
    /// Sum of the extents' lengths.
    pub changed_bytes: u64,
    /// Sorted, merged, non-overlapping.
    pub extents: Vec<Extent>,
}

/// Computes the diff of `volume` from snapshot `from` to snapshot `to` (the live volume for
/// `None`) on an open volume: here, or in the server for the control socket.
pub fn compute(vol: &Volume, volume: &str, from: &str, to: Option<&str>) -> Result<Diff> {
    let seq = |s: &str| vol.snapshot_seq(s).map_err(|e| qualify(volume, e));
    let from_seq = seq(from)?;
    let to_seq = to.map(seq).transpose()?;
    let extents: Vec<Extent> = vol
        .diff(from_seq, to_seq)
        .map_err(|e| qualify(volume, e))?
        .into_iter()
        .map(|(offset, length)| Extent { offset, length })
        .collect();
    Ok(Diff {
        from: format!("{volume}@{from}"),
        to: to.map_or_else(|| volume.to_owned(), |t| format!("{volume}@{t}")),
        chunk_size: vol.geometry().chunk_size,
        changed_bytes: extents.iter().map(|e| e.length).sum(),
        extents,
    })
}

pub fn run(store: &Store, args: DiffArgs) -> Result<()> {
    let (volume, from) = parse_snapshot_name(&args.from)?;
    let to = match &args.to {
        None => None,
        Some(spec) => {
            let (other, snap) = parse_volume_or_snapshot(spec)?;
            if other != volume {
                bail!(
                    "a diff is between two points of one volume: '{}' and '{spec}' name \
                     different volumes",
                    args.from
                );
            }
            snap
        }
    };
    let diff = match access_read_only(store, volume)? {
        Access::Local(vol) => with_volume(vol, |vol| compute(vol, volume, from, to))?,
        Access::Served => remote(
            store,
            Request::Diff {
                volume: volume.to_owned(),
                from: from.to_owned(),
                to: to.map(str::to_owned),
            },
        )
        .map_err(|e| requalify(volume, e))?,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &diff)?;
    } else {
        write!(out, "{}", render(&diff))?;
    }
    Ok(())
}

/// Human `diff`: a summary line, then one line per extent.
fn render(d: &Diff) -> String {
    let to = if d.to.contains('@') {
        d.to.clone()
    } else {
        format!("{} (live)", d.to)
    };
    let n = d.extents.len();
    let mut text = format!(
        "{} -> {to}: {} changed in {n} extent{} (chunks of {})\n",
        d.from,
        format_size(d.changed_bytes),
        if n == 1 { "" } else { "s" },
        format_size(u64::from(d.chunk_size)),
    );
    if n > 0 {
        let mut table = Table::new(&[
            ("OFFSET", Align::Right),
            ("LENGTH", Align::Right),
            ("", Align::Left),
        ]);
        for e in &d.extents {
            table.row(vec![
                e.offset.to_string(),
                e.length.to_string(),
                format_size(e.length),
            ]);
        }
        text.push_str(&table.render());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_human_form_names_both_points_and_lists_every_extent() {
        let d = Diff {
            from: "v@a".into(),
            to: "v".into(),
            chunk_size: 65536,
            changed_bytes: 196608,
            extents: vec![
                Extent {
                    offset: 0,
                    length: 65536,
                },
                Extent {
                    offset: 1 << 20,
                    length: 131072,
                },
            ],
        };
        let text = render(&d);
        assert!(
            text.starts_with("v@a -> v (live): 192K changed in 2 extents"),
            "{text}"
        );
        assert!(text.contains("1048576"), "{text}");
        assert_eq!(text.lines().count(), 4, "{text}");
    }
}
