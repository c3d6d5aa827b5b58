//! `snapvol snapshot create|list|delete`.

use std::io::Write;

use anyhow::Result;
use snapvol_engine::{parse_snapshot_name, Store, VolumeOptions};

use super::info::snapshot_table;
use super::{open_volume, parse_volume, qualify, with_volume};
use crate::output::{print_json, SnapshotJson};

pub fn create(store: &Store, spec: &str) -> Result<()> {
    let (volume, snapshot) = parse_snapshot_name(spec)?;
    let vol = open_volume(store, volume, VolumeOptions::default())?;
    with_volume(vol, |vol| {
        vol.snapshot_create(snapshot)
            .map_err(|e| qualify(volume, e))
    })?;
    writeln!(
        std::io::stdout().lock(),
        "created snapshot {volume}@{snapshot}"
    )?;
    Ok(())
}

pub fn delete(store: &Store, spec: &str) -> Result<()> {
    let (volume, snapshot) = parse_snapshot_name(spec)?;
    let vol = open_volume(store, volume, VolumeOptions::default())?;
    with_volume(vol, |vol| {
        vol.snapshot_delete(snapshot)
            .map_err(|e| qualify(volume, e))
    })?;
    writeln!(
        std::io::stdout().lock(),
        "deleted snapshot {volume}@{snapshot}"
    )?;
    Ok(())
}

pub fn list(store: &Store, volume: &str, json: bool) -> Result<()> {
    let name = parse_volume(volume)?;
    let vol = open_volume(store, name, VolumeOptions::default())?;
    let snapshots = with_volume(vol, |vol| Ok(vol.snapshots()))?;
    let mut out = std::io::stdout().lock();
    if json {
        let items: Vec<SnapshotJson> = snapshots.iter().map(SnapshotJson::from).collect();
        print_json(&mut out, &items)?;
    } else if snapshots.is_empty() {
        writeln!(out, "volume {name} has no snapshots")?;
    } else {
        write!(out, "{}", snapshot_table(&snapshots))?;
    }
    Ok(())
}
