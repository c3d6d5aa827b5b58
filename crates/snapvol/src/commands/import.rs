//! `snapvol import VOL FILE`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;

use anyhow::{bail, Context, Result};
use snapvol_engine::{Error, Store};

use super::{is_served, open_error, parse_volume, unless_served, volume_options, with_volume};
use crate::cli::ImportArgs;
use crate::output::progress;
use crate::size::format_size;
use crate::transfer::{is_all_zero, pieces, PIECE};

pub fn run(store: &Store, args: ImportArgs) -> Result<()> {
    let name = parse_volume(&args.volume)?;
    let path = args.file.display().to_string();
    let mut file = File::open(&args.file).with_context(|| format!("cannot open {path}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {path}"))?;
    if meta.is_dir() {
        bail!("{path} is a directory, not a raw image");
    }
    // A stream (a character device, a pipe, a socket) has no size to check against the
    // volume's, and seeking to its end says 0: refuse it rather than import nothing.
    let kind = meta.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        let what = if kind.is_char_device() {
            "a character device"
        } else if kind.is_fifo() {
            "a pipe"
        } else {
            "not a regular file"
        };
        bail!(
            "{path} is {what}: import reads a raw image of known size (a file or a block \
             device); nothing was written. Copy the stream into a file first, or write it \
             through NBD while serving (qemu-img convert, nbdcopy)"
        );
    }
    // Seeking to the end measures regular files and block devices alike.
    let len = file
        .seek(SeekFrom::End(0))
        .with_context(|| format!("cannot measure {path} (import reads a file or block device)"))?;
    file.rewind()
        .with_context(|| format!("cannot rewind {path}"))?;

    let vol = match unless_served(store, name, || {
        store.open(name, volume_options(args.cache_size))
    }) {
        Ok(vol) => vol,
        Err(Error::Locked { .. }) if is_served(store, name) => bail!(
            "volume '{name}' is being served by snapvol serve; write the image through NBD \
             instead, e.g. qemu-img convert -n -f raw -O raw {path} nbd://127.0.0.1:10809/{name} \
             (with the address serve listens on)"
        ),
        Err(e) => return Err(open_error(store, e)),
    };
    with_volume(vol, |vol| {
        let size = vol.size();
        if len > size {
            bail!(
                "{path} is {} ({len} bytes), larger than volume '{name}' ({}, {size} bytes); nothing was written",
                format_size(len),
                format_size(size)
            );
        }
        let bar = progress(len, &format!("import {name}"));
        let mut buf = vec![0u8; PIECE];
        for (offset, n) in pieces(len, PIECE) {
            let piece = &mut buf[..n];
            file.read_exact(piece).with_context(|| {
                format!("reading {path} at offset {offset} (did it shrink during the import?)")
            })?;
            if is_all_zero(piece) {
                vol.write_zeroes(offset, n as u64)?;
            } else {
                vol.write(offset, piece)?;
            }
            bar.inc(n as u64);
        }
        vol.flush()?;
        bar.finish_and_clear();
        Ok(())
    })?;
    writeln!(
        std::io::stdout().lock(),
        "imported {} from {path} into {name}",
        format_size(len)
    )?;
    Ok(())
}
