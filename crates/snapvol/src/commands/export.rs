//! `snapvol export VOL[@SNAP] FILE`.
//!
//! The volume is opened read-only here, or, when `snapvol serve` holds it, the server sends
//! the image through the control socket: either way nothing is written to the volume, and a
//! snapshot exported while its volume is being written to is the snapshot exactly.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use snapvol_engine::units::SnapshotSeq;
use snapvol_engine::{parse_volume_or_snapshot, Error, Store, Volume};

use super::{is_served, open_error, qualify, requalify, unless_served, with_volume};
use crate::cli::ExportArgs;
use crate::output::progress;
use crate::serve::control::{self, ImageStream, Response};
use crate::serve::image_stream::{read_frame, Frame};
use crate::size::format_size;
use crate::transfer::{pieces, Sink, PIECE};

type Out = Sink<Box<dyn Write>>;

pub fn run(store: &Store, args: ExportArgs) -> Result<()> {
    if let Some(from) = &args.from {
        return super::export_diff::run(store, &args, from);
    }
    let (volume, snapshot) = parse_volume_or_snapshot(&args.source)?;
    let size = match unless_served(store, volume, || store.open_read_only(volume)) {
        Ok(vol) => with_volume(vol, |vol| {
            // Resolve the snapshot before touching the output, so a typo clobbers nothing.
            let seq = match snapshot {
                Some(s) => Some(vol.snapshot_seq(s).map_err(|e| qualify(volume, e))?),
                None => None,
            };
            write_image(&args, vol.size(), |sink, bar, path| {
                copy_out(vol, seq, sink, bar, path)
            })
        })?,
        Err(Error::Locked { .. }) if is_served(store, volume) => {
            // The server answers "no such snapshot" before sending anything.
            let mut image = control::export(store, volume, snapshot)
                .map_err(|e| requalify(volume, e))?
                .ok_or_else(|| anyhow!("the snapvol server holding the store stopped answering"))?;
            let size = image.size;
            write_image(&args, size, |sink, bar, path| {
                copy_from_server(&mut image, volume, sink, bar, path)
            })?
        }
        Err(e) => return Err(open_error(store, e)),
    };
    if args.file.as_os_str() != "-" {
        writeln!(
            io::stdout().lock(),
            "exported {} ({}) to {}",
            args.source,
            format_size(size),
            args.file.display()
        )?;
    }
    Ok(())
}

/// Opens the output, fills it with `fill` under a progress bar and finishes it; an output file
/// that did not receive the whole image is removed. Returns the size.
fn write_image(
    args: &ExportArgs,
    size: u64,
    fill: impl FnOnce(&mut Out, &ProgressBar, &str) -> Result<()>,
) -> Result<u64> {
    let to_stdout = args.file.as_os_str() == "-";
    let path = if to_stdout {
        "standard output".to_owned()
    } else {
        args.file.display().to_string()
    };
    let (mut sink, remove_on_failure) = if to_stdout {
        (
            Sink::Stream(Box::new(io::stdout().lock()) as Box<dyn Write>),
            false,
        )
    } else {
        open_output(&args.file).with_context(|| format!("cannot open {path} for writing"))?
    };
    let bar = progress(size, &format!("export {}", args.source));
    let result = fill(&mut sink, &bar, &path).and_then(|()| {
        sink.finish(size)
            .with_context(|| format!("finishing {path}"))
    });
    bar.finish_and_clear();
    if result.is_err() && remove_on_failure {
        // An incomplete image is worse than none.
        let _ = fs::remove_file(&args.file);
    }
    result.map(|()| size)
}

/// Copies the whole live volume (`seq` = `None`) or snapshot into `sink`.
fn copy_out(
    vol: &Volume,
    seq: Option<SnapshotSeq>,
    sink: &mut Out,
    bar: &ProgressBar,
    path: &str,
) -> Result<()> {
    let mut buf = vec![0u8; PIECE];
    for (offset, n) in pieces(vol.size(), PIECE) {
        let piece = &mut buf[..n];
        match seq {
            Some(seq) => vol.read_snapshot(seq, offset, piece)?,
            None => vol.read(offset, piece)?,
        }
        sink.write_piece(offset, piece)
            .with_context(|| format!("writing {path} at offset {offset}"))?;
        bar.inc(n as u64);
    }
    Ok(())
}

/// Copies the image the server sends into `sink`, checking that it is whole.
fn copy_from_server(
    image: &mut ImageStream,
    volume: &str,
    sink: &mut Out,
    bar: &ProgressBar,
    path: &str,
) -> Result<()> {
    let mut buf = vec![0u8; PIECE];
    let mut offset = 0u64;
    let cut = |offset: u64| format!("the server's image stream broke off at offset {offset}");
    loop {
        let frame = read_frame(&mut image.frames, &mut buf).with_context(|| cut(offset))?;
        let len = match &frame {
            Frame::Data(n) => *n as u64,
            Frame::Zero(n) => *n,
            Frame::End if offset == image.size => return Ok(()),
            Frame::End => bail!("{}: the image ended short", cut(offset)),
            Frame::Error(answer) => {
                let response: Response =
                    serde_json::from_slice(answer).with_context(|| cut(offset))?;
                let failure = match response.into_result() {
                    Err(e) => requalify(volume, e),
                    Ok(_) => anyhow!(cut(offset)),
                };
                return Err(failure.context(format!(
                    "the server could not read the image at offset {offset}"
                )));
            }
        };
        if offset.checked_add(len).is_none_or(|end| end > image.size) {
            bail!("{}: more data than the image's size", cut(offset));
        }
        match frame {
            Frame::Data(n) => sink.write_piece(offset, &buf[..n]),
            _ => {
                buf.fill(0);
                pieces(len, PIECE).try_for_each(|(at, n)| sink.write_piece(offset + at, &buf[..n]))
            }
        }
        .with_context(|| format!("writing {path} at offset {offset}"))?;
        offset += len;
        bar.inc(len);
    }
}

/// Opens the destination: a regular file is truncated and written sparse; anything else (a
/// block device, a pipe, /dev/null) is written in order without truncation. The flag says
/// whether the output is a regular file, which is removed again if the export fails.
fn open_output(path: &Path) -> io::Result<(Out, bool)> {
    let (file, regular) = open_truncated(path)?;
    if regular {
        Ok((Sink::Sparse { file, position: 0 }, true))
    } else {
        Ok((Sink::Stream(Box::new(file)), false))
    }
}

/// Opens an output for writing from its start: a regular file is emptied, anything else is
/// written over as it is. The flag says whether it is a regular file.
pub(super) fn open_truncated(path: &Path) -> io::Result<(fs::File, bool)> {
    // Not truncated on open: O_TRUNC means nothing to a device; a regular file is cut below.
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let regular = file.metadata()?.is_file();
    if regular {
        file.set_len(0)?;
    }
    Ok((file, regular))
}
