//! `snapvol import-diff VOL FILE`: applies an `rbd diff v1` stream ([`crate::diff_transfer`])
//! to the volume opened here or, when `snapvol serve` holds it, sends the stream to the server,
//! which applies it with the same code.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use snapvol_engine::Store;

use super::{access, parse_volume, requalify, with_volume, Access};
use crate::cli::ImportDiffArgs;
use crate::diff_transfer::apply_diff;
use crate::output::progress;
use crate::rbd_diff::Reader;
use crate::serve::diff_socket;

pub fn run(store: &Store, args: ImportDiffArgs) -> Result<()> {
    let name = parse_volume(&args.volume)?;
    let from_stdin = args.file.as_os_str() == "-";
    let path = if from_stdin {
        "standard input".to_owned()
    } else {
        args.file.display().to_string()
    };
    // The bar follows the bytes of a file; a pipe's length is unknown (and the exporting side
    // of a pipe shows its own bar).
    let (input, bar): (Box<dyn Read>, ProgressBar) = if from_stdin {
        (Box::new(io::stdin().lock()), ProgressBar::hidden())
    } else {
        let file = File::open(&args.file).with_context(|| format!("cannot open {path}"))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot read {path}"))?;
        if meta.is_dir() {
            bail!("{path} is a directory, not an rbd diff stream");
        }
        let bar = progress(meta.len(), &format!("import-diff {name}"));
        (Box::new(file), bar)
    };
    let input = BufReader::with_capacity(1 << 20, input);
    let report = match access(store, name)? {
        Access::Local(vol) => with_volume(vol, |vol| {
            let mut reader = Reader::new(input).with_context(|| format!("reading {path}"))?;
            apply_diff(vol, &mut reader, args.force, &mut |at| bar.set_position(at))
        })?,
        Access::Served => diff_socket::import_diff(store, name, args.force, input, &mut |at| {
            bar.set_position(at)
        })
        .map_err(|e| requalify(name, e))?
        .ok_or_else(|| anyhow!("the snapvol server holding the store stopped answering"))?,
    };
    bar.finish_and_clear();
    let created = match &report.created {
        Some(to) => format!("; created snapshot {name}@{to}"),
        None => "; the stream names no to-snapshot, so none was created".to_owned(),
    };
    writeln!(
        io::stdout().lock(),
        "applied {path} to {name}: {}{created}",
        report.summary.describe()
    )?;
    Ok(())
}
