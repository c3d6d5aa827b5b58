//! `snapvol info`.

use std::io::Write;

use anyhow::Result;
use snapvol_engine::{SnapshotInfo, Store, VolumeInfo};

use super::{access_read_only, parse_volume, remote, with_volume, Access};
use crate::output::{key_values, print_json, rfc3339, Align, InfoJson, Table};
use crate::serve::control::Request;
use crate::size::format_size;

pub fn run(store: &Store, volume: &str, json: bool) -> Result<()> {
    let name = parse_volume(volume)?;
    let info = match access_read_only(store, name)? {
        Access::Local(vol) => with_volume(vol, |vol| Ok(vol.info()))?,
        Access::Served => remote(
            store,
            Request::Info {
                volume: name.to_owned(),
            },
        )?,
    };
    let mut out = std::io::stdout().lock();
    if json {
        print_json(&mut out, &InfoJson::from(&info))?;
    } else {
        write!(out, "{}", render(&info))?;
    }
    Ok(())
}

/// Human `info`: key/value lines, then the snapshot table.
pub fn render(info: &VolumeInfo) -> String {
    let target_size = match info.target_size {
        Some(cap) => format_size(cap),
        None => "unlimited (grows as needed)".to_owned(),
    };
    let mut lines = vec![
        ("volume", info.name.clone()),
        (
            "size",
            format!("{} ({} bytes)", format_size(info.size), info.size),
        ),
        ("chunk size", format_size(u64::from(info.chunk_size))),
        ("write mode", info.write_mode.to_string()),
        ("snapshots", info.snapshots.len().to_string()),
        ("target size", target_size),
        (
            "target used",
            format!(
                "{} in {} preserved chunk{}",
                format_size(info.target_used_bytes),
                info.preserved_chunks,
                if info.preserved_chunks == 1 { "" } else { "s" }
            ),
        ),
    ];
    if info.pending_preserve_bytes > 0 {
        lines.push((
            "pending",
            format!(
                "{} of originals to preserve once the cache is destaged",
                format_size(info.pending_preserve_bytes)
            ),
        ));
    }
    if info.checksum_errors > 0 {
        lines.push((
            "damaged reads",
            format!(
                "{} read{} of preserved chunks failed their checksum (see the log; \
                 snapvol check --data)",
                info.checksum_errors,
                if info.checksum_errors == 1 { "" } else { "s" }
            ),
        ));
    }
    if let Some(snap) = &info.rollback_to {
        lines.push((
            "rollback",
            format!(
                "unfinished: the live volume is becoming {0}@{snap} (the next open for \
                 writing finishes it, or run snapvol snapshot rollback {0}@{snap})",
                info.name
            ),
        ));
    }
    lines.push(("metadata", format_size(info.metadata_bytes)));
    lines.push(("target file", format_size(info.target_file_bytes)));
    let mut text = key_values(&lines);
    if !info.snapshots.is_empty() {
        text.push('\n');
        text.push_str(&snapshot_table(&info.snapshots));
    }
    text
}

/// The snapshot table shared by `info` and `snapshot list`.
pub fn snapshot_table(snapshots: &[SnapshotInfo]) -> String {
    let mut table = Table::new(&[
        ("SNAPSHOT", Align::Left),
        ("CREATED", Align::Left),
        ("EXCLUSIVE", Align::Right),
        ("SHARED", Align::Right),
    ]);
    for s in snapshots {
        table.row(vec![
            s.name.clone(),
            rfc3339(s.created),
            format_size(s.exclusive_bytes),
            format_size(s.shared_bytes),
        ]);
    }
    table.render()
}
