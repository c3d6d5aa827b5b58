//! `snapvol list`.

use std::io::Write;

use anyhow::{bail, Result};
use snapvol_engine::{Error, Store, VolumeInfo};

use super::{is_served, remote, unless_served};
use crate::output::{print_json, Align, ListEntryJson, Table};
use crate::serve::control::Request;
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
        writeln!(out, "no volumes in {}", store.name())?;
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

/// Opens a volume read-only to read its figures; one that `snapvol serve` holds is asked
/// through the control socket. Any other holder is listed as in use; a volume that vanished
/// meanwhile is left out; any other failure is listed with its error.
fn inspect(store: &Store, name: String) -> Option<ListEntryJson> {
    let mut entry = ListEntryJson {
        name,
        size: None,
        chunk_size: None,
        snapshots: None,
        in_use: false,
        served: false,
        holder: None,
        error: None,
    };
    let mut fill = |info: &VolumeInfo| {
        entry.size = Some(info.size);
        entry.chunk_size = Some(info.chunk_size);
        entry.snapshots = Some(info.snapshots.len());
    };
    match unless_served(store, &entry.name, || store.open_read_only(&entry.name)) {
        Ok(vol) => {
            fill(&vol.info());
            if let Err(e) = vol.close() {
                entry.error = Some(e.to_string());
            }
        }
        Err(Error::Locked { holder, .. }) => {
            let req = Request::Info {
                volume: entry.name.clone(),
            };
            match is_served(store, &entry.name).then(|| remote::<VolumeInfo>(store, req)) {
                Some(Ok(info)) => {
                    fill(&info);
                    entry.served = true;
                }
                Some(Err(e)) => entry.error = Some(e.to_string()),
                None => {}
            }
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
            (_, Some(error)) => format!("error: {error}"),
            _ if e.served => "served".to_owned(),
            (Some(holder), None) => format!("in use by {holder}"),
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
    fn served_volumes_show_their_figures_and_others_in_use_dashes_and_their_holder() {
        let entries = vec![
            ListEntryJson {
                name: "a".into(),
                size: Some(1 << 30),
                chunk_size: Some(65536),
                snapshots: Some(3),
                in_use: false,
                served: false,
                holder: None,
                error: None,
            },
            ListEntryJson {
                name: "live".into(),
                size: Some(10 << 30),
                chunk_size: Some(65536),
                snapshots: Some(0),
                in_use: true,
                served: true,
                holder: Some("process 7 (snapvol serve)".into()),
                error: None,
            },
            ListEntryJson {
                name: "busy".into(),
                size: None,
                chunk_size: None,
                snapshots: None,
                in_use: true,
                served: false,
                holder: Some("process 42 (snapvol import busy x)".into()),
                error: None,
            },
        ];
        assert_eq!(
            render(&entries),
            "NAME  SIZE  CHUNK  SNAPSHOTS  STATUS\n\
             a       1G    64K          3\n\
             live   10G    64K          0  served\n\
             busy     -      -          -  in use by process 42 (snapvol import busy x)\n"
        );
    }
}
