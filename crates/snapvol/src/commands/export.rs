//! `snapvol export VOL[@SNAP] FILE`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use snapvol_engine::units::SnapshotSeq;
use snapvol_engine::{parse_volume_or_snapshot, Store, Volume};

use super::{open_error, qualify, with_volume};
use crate::cli::ExportArgs;
use crate::output::progress;
use crate::size::format_size;
use crate::transfer::{pieces, Sink, PIECE};

pub fn run(store: &Store, args: ExportArgs) -> Result<()> {
    let (volume, snapshot) = parse_volume_or_snapshot(&args.source)?;
    let to_stdout = args.file.as_os_str() == "-";
    let path = if to_stdout {
        "standard output".to_owned()
    } else {
        args.file.display().to_string()
    };
    // Read-only: an export writes nothing to the volume's files.
    let vol = store
        .open_read_only(volume)
        .map_err(|e| open_error(store, e))?;
    let size = with_volume(vol, |vol| {
        // Resolve the snapshot before touching the output, so a typo clobbers nothing.
        let seq = match snapshot {
            Some(s) => Some(vol.snapshot(s).map_err(|e| qualify(volume, e))?.seq),
            None => None,
        };
        let size = vol.size();
        let (sink, remove_on_failure) = if to_stdout {
            (
                Sink::Stream(Box::new(io::stdout().lock()) as Box<dyn Write>),
                false,
            )
        } else {
            open_output(&args.file).with_context(|| format!("cannot open {path} for writing"))?
        };
        let bar = progress(size, &format!("export {}", args.source));
        let result = copy_out(vol, seq, size, sink, &bar, &path);
        bar.finish_and_clear();
        if result.is_err() && remove_on_failure {
            // An incomplete image is worse than none.
            let _ = fs::remove_file(&args.file);
        }
        result.map(|()| size)
    })?;
    if !to_stdout {
        writeln!(
            io::stdout().lock(),
            "exported {} ({}) to {path}",
            args.source,
            format_size(size)
        )?;
    }
    Ok(())
}

/// Copies the whole live volume (`seq` = `None`) or snapshot into `sink`.
fn copy_out(
    vol: &Volume,
    seq: Option<SnapshotSeq>,
    size: u64,
    mut sink: Sink<Box<dyn Write>>,
    bar: &ProgressBar,
    path: &str,
) -> Result<()> {
    let mut buf = vec![0u8; PIECE];
    for (offset, n) in pieces(size, PIECE) {
        let piece = &mut buf[..n];
        match seq {
            Some(seq) => vol.read_snapshot(seq, offset, piece)?,
            None => vol.read(offset, piece)?,
        }
        sink.write_piece(offset, piece)
            .with_context(|| format!("writing {path} at offset {offset}"))?;
        bar.inc(n as u64);
    }
    sink.finish(size)
        .with_context(|| format!("finishing {path}"))
}

/// Opens the destination: a regular file is truncated and written sparse; anything else (a
/// block device, a pipe, /dev/null) is written in order without truncation. The flag says
/// whether the output is a regular file, which is removed again if the export fails.
fn open_output(path: &Path) -> io::Result<(Sink<Box<dyn Write>>, bool)> {
    // Not truncated on open: O_TRUNC means nothing to a device; a regular file is cut below.
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if file.metadata()?.is_file() {
        file.set_len(0)?;
        Ok((Sink::Sparse { file, position: 0 }, true))
    } else {
        Ok((Sink::Stream(Box::new(file)), false))
    }
}
