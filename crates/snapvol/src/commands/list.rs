//! `snapvol list`.

use std::io::Write;

use anyhow::{bail, Result};
use snapvol_engine::{Error, Store, VolumeOptions};

use crate::output::{print_json, Align, ListEntryJson, Table};
use crate::size::format_size;

pub fn run(store: &Store, json: bool) -> Result<()> {
    let mut entries = Vec::new();
    for name in store.list()? {
        if let Some(entry) = inspect(store, name) {
            entries.push(entry);
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        print_json(&mut out, &entries)?;
    } else if entries.is_empty() {
        writeln!(out, "no volumes in {}", store.root().display())?;
    } else {
        write!(out, "{}", render(&entries))?;
    }
    let failed = entries.iter().filter(|e| e.error.is_some()).count();
    if failed > 0 {
        bail!(
            "{failed} volume{} could not be opened (see the list above)",
            if failed == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// Opens a volume to read its figures. A volume held by another process is listed as in use;
/// one that vanished meanwhile is left out; any other failure is listed with its error.
fn inspect(store: &Store, name: String) -> Option<ListEntryJson> {
    let mut entry = ListEntryJson {
        name,
        size: None,
        chunk_size: None,
        snapshots: None,
        in_use: false,
        holder: None,
        error: None,
    };
    match store.open(&entry.name, VolumeOptions::default()) {
        Ok(vol) => {
            let info = vol.info();
            entry.size = Some(info.size);
            entry.chunk_size = Some(info.chunk_size);
            entry.snapshots = Some(info.snapshots.len());
            if let Err(e) = vol.close() {
                entry.error = Some(e.to_string());
            }
        }
        Err(Error::Locked { holder, .. }) => {
            entry.in_use = true;
            entry.holder = Some(holder);
        }
        Err(Error::VolumeNotFound(_)) => return None,
        Err(e) => entry.error = Some(e.to_string()),
    }
    Some(entry)
}

fn render(entries: &[ListEntryJson]) -> String {
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("SIZE", Align::Right),
        ("CHUNK", Align::Right),
        ("SNAPSHOTS", Align::Right),
        ("STATUS", Align::Left),
    ]);
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    for e in entries {
        let status = match (&e.holder, &e.error) {
            (Some(holder), _) => format!("in use by {holder}"),
            (None, Some(error)) => format!("error: {error}"),
            (None, None) => String::new(),
        };
        table.row(vec![
            e.name.clone(),
            or_dash(e.size.map(format_size)),
            or_dash(e.chunk_size.map(|c| format_size(u64::from(c)))),
            or_dash(e.snapshots.map(|n| n.to_string())),
            status,
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_in_use_show_dashes_and_their_holder() {
        let entries = vec![
            ListEntryJson {
                name: "a".into(),
                size: Some(1 << 30),
                chunk_size: Some(65536),
                snapshots: Some(3),
                in_use: false,
                holder: None,
                error: None,
            },
            ListEntryJson {
                name: "busy".into(),
                size: None,
                chunk_size: None,
                snapshots: None,
                in_use: true,
                holder: Some("process 42 (snapvol import busy x)".into()),
                error: None,
            },
        ];
        assert_eq!(
            render(&entries),
            "NAME  SIZE  CHUNK  SNAPSHOTS  STATUS\n\
             a       1G    64K          3\n\
             busy     -      -          -  in use by process 42 (snapvol import busy x)\n"
        );
    }
}
