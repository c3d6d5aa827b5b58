//! `snapvol export VOL[@TO] FILE --from VOL@FROM`: the chunks that changed between two points
//! of a volume as an `rbd diff v1` stream ([`crate::diff_transfer`]), from the volume opened
//! read-only here or, when `snapvol serve` holds it, from the server.

use std::fs;
use std::io::{self, BufWriter, Write};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use snapvol_engine::{parse_snapshot_name, parse_volume_or_snapshot, Error, Store};

use super::export::open_truncated;
use super::{is_served, open_error, qualify, requalify, unless_served, with_volume};
use crate::cli::ExportArgs;
use crate::diff_transfer::{plan_export, write_diff, DiffSummary};
use crate::output::progress;
use crate::serve::diff_socket;
use crate::size::format_size;

type Out = BufWriter<Box<dyn Write>>;

pub fn run(store: &Store, args: &ExportArgs, from_spec: &str) -> Result<()> {
    let (volume, to) = parse_volume_or_snapshot(&args.source)?;
    let (from_volume, from) = parse_snapshot_name(from_spec)
        .with_context(|| format!("--from {from_spec}: it takes the older snapshot, VOL@FROM"))?;
    if from_volume != volume {
        bail!(
            "--from {from_spec} is a snapshot of volume '{from_volume}', not of '{volume}': a \
             diff is between two points of one volume"
        );
    }
    let (summary, extents, changed) = match unless_served(store, volume, || {
        store.open_read_only(volume)
    }) {
        Ok(vol) => with_volume(vol, |vol| {
            // Both points are resolved before the output is touched, so a typo clobbers nothing.
            let plan = plan_export(vol, from, to).map_err(|e| qualify(volume, e))?;
            let summary = write_stream(args, plan.changed_bytes(), |out, bar| {
                write_diff(vol, &plan, out, &mut |done| bar.set_position(done))
            })?;
            Ok((summary, plan.extents.len() as u64, plan.changed_bytes()))
        })?,
        Err(Error::Locked { .. }) if is_served(store, volume) => {
            let mut download = diff_socket::export_diff(store, volume, from, to)
                .map_err(|e| requalify(volume, e))?
                .ok_or_else(|| anyhow!("the snapvol server holding the store stopped answering"))?;
            let changed = download.changed_bytes;
            let summary = write_stream(args, changed, |out, bar| download.copy_to(out, bar))?;
            (summary, download.extents, changed)
        }
        Err(e) => return Err(open_error(store, e)),
    };
    if args.file.as_os_str() != "-" {
        let to = to.map_or_else(|| "the live volume".to_owned(), |t| format!("{volume}@{t}"));
        writeln!(
            io::stdout().lock(),
            "exported the changes from {volume}@{from} to {to} into {}: {extents} changed \
             extent{} ({}), {}",
            args.file.display(),
            if extents == 1 { "" } else { "s" },
            format_size(changed),
            summary.describe()
        )?;
    }
    Ok(())
}

/// Opens the output, fills it with `fill` under a progress bar over `total` bytes of the
/// volume, and makes it durable; an output file that did not receive the whole stream is
/// removed.
fn write_stream(
    args: &ExportArgs,
    total: u64,
    fill: impl FnOnce(&mut Out, &ProgressBar) -> Result<DiffSummary>,
) -> Result<DiffSummary> {
    let (out, file): (Box<dyn Write>, Option<fs::File>) = if args.file.as_os_str() == "-" {
        (Box::new(io::stdout().lock()), None)
    } else {
        let (file, regular) = open_truncated(&args.file)
            .with_context(|| format!("cannot open {} for writing", args.file.display()))?;
        let sync = if regular {
            Some(file.try_clone()?)
        } else {
            None
        };
        (Box::new(file), sync)
    };
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let bar = progress(total, &format!("export {} --from", args.source));
    let result = fill(&mut out, &bar).and_then(|summary| {
        out.flush()?;
        if let Some(f) = &file {
            f.sync_all()?;
        }
        Ok(summary)
    });
    bar.finish_and_clear();
    if result.is_err() && file.is_some() {
        // A stream without its end is useless; import-diff would refuse it anyway.
        let _ = fs::remove_file(&args.file);
    }
    result.with_context(|| format!("writing {}", args.file.display()))
}
