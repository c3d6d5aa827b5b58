//! `snapvol snapshot create|list|delete`.

use std::io::Write;

use anyhow::{anyhow, Result};
use snapvol_engine::{parse_snapshot_name, SnapshotInfo, Store};

use super::info::snapshot_table;
use super::{
    access, access_read_only, parse_volume, qualify, remote, requalify, with_volume, Access,
};
use crate::output::{print_json, SnapshotJson};
use crate::serve::control::{self, Request};

pub fn create(store: &Store, spec: &str) -> Result<()> {
    let (volume, snapshot) = parse_snapshot_name(spec)?;
    match access(store, volume)? {
        Access::Local(vol) => {
            with_volume(vol, |vol| {
                vol.snapshot_create(snapshot)
                    .map_err(|e| qualify(volume, e))
            })?;
        }
        Access::Served => {
            let req = Request::SnapshotCreate {
                volume: volume.to_owned(),
                snapshot: snapshot.to_owned(),
            };
            remote_change::<SnapshotInfo>(
                store,
                volume,
                req,
                &format!("{volume}@{snapshot}"),
                "taken",
            )?;
        }
    }
    writeln!(
        std::io::stdout().lock(),
        "created snapshot {volume}@{snapshot}"
    )?;
    Ok(())
}

pub fn delete(store: &Store, spec: &str) -> Result<()> {
    let (volume, snapshot) = parse_snapshot_name(spec)?;
    match access(store, volume)? {
        Access::Local(vol) => {
            with_volume(vol, |vol| {
                vol.snapshot_delete(snapshot)
                    .map_err(|e| qualify(volume, e))
            })?;
        }
        Access::Served => {
            let req = Request::SnapshotDelete {
                volume: volume.to_owned(),
                snapshot: snapshot.to_owned(),
            };
            remote_change::<()>(
                store,
                volume,
                req,
                &format!("{volume}@{snapshot}"),
                "deleted",
            )?;
        }
    }
    writeln!(
        std::io::stdout().lock(),
        "deleted snapshot {volume}@{snapshot}"
    )?;
    Ok(())
}

pub fn list(store: &Store, volume: &str, json: bool) -> Result<()> {
    let name = parse_volume(volume)?;
    let snapshots: Vec<SnapshotInfo> = match access_read_only(store, name)? {
        Access::Local(vol) => with_volume(vol, |vol| Ok(vol.snapshots()))?,
        Access::Served => remote(
            store,
            Request::SnapshotList {
                volume: name.to_owned(),
            },
        )?,
    };
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

/// Sends a request that changes `volume` to the server. Once the request may have reached the
/// server, a broken connection (the server stopped or was killed before answering) leaves the
/// outcome unknown: the error says so, and how to find out.
fn remote_change<T: serde::de::DeserializeOwned>(
    store: &Store,
    volume: &str,
    req: Request,
    spec: &str,
    done: &str,
) -> Result<T> {
    match control::request(store, &req) {
        Ok(Some(response)) => {
            let value = response.into_result().map_err(|e| requalify(volume, e))?;
            Ok(serde_json::from_value(value)?)
        }
        Ok(None) => Err(anyhow!(
            "the snapvol server holding the store stopped answering; snapshot {spec} was not {done}"
        )),
        Err(e) => Err(anyhow!(
            "the snapvol server stopped before answering ({e}): snapshot {spec} may or may not \
             have been {done}; `snapvol snapshot list {volume}` shows which, once the server \
             runs again (or with it stopped)"
        )),
    }
}
