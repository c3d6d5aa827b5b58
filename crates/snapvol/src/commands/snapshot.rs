//! `snapvol snapshot create|list|delete`.

use std::io::Write;

use anyhow::{anyhow, Result};
use snapvol_engine::{parse_snapshot_name, RollbackReport, SnapshotInfo, Store};

use super::info::snapshot_table;
use super::{
    access, access_read_only, parse_volume, qualify, remote, requalify, with_volume, Access,
};
use crate::output::{print_json, progress, SnapshotJson};
use crate::serve::control::{self, Request};
use crate::size::format_size;

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

pub fn rollback(store: &Store, spec: &str, force: bool) -> Result<()> {
    let (volume, snapshot) = parse_snapshot_name(spec)?;
    let report = match access(store, volume)? {
        Access::Local(vol) => with_volume(vol, |vol| {
            let seq = vol.snapshot_seq(snapshot).map_err(|e| qualify(volume, e))?;
            let bar = progress(0, &format!("rolling back to {spec}"));
            let report = vol.rollback(seq, &mut |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            });
            bar.finish_and_clear();
            report.map_err(|e| {
                anyhow!(
                    "{}; the rollback is not finished: run it again (or open the volume) to \
                     finish it",
                    qualify(volume, e)
                )
            })
        })?,
        Access::Served => {
            let req = Request::Rollback {
                volume: volume.to_owned(),
                snapshot: snapshot.to_owned(),
                force,
            };
            remote_outcome::<RollbackReport>(
                store,
                volume,
                req,
                &format!("{volume} was not rolled back"),
                &format!(
                    "the rollback of {volume} to {spec} may or may not have finished; if it \
                     did not, the volume is rolled back when it is next opened"
                ),
            )?
        }
    };
    writeln!(
        std::io::stdout().lock(),
        "rolled back {volume} to {spec}: rewrote {} in {} extent{} ({} of it zeroed); every snapshot kept",
        format_size(report.rewritten_bytes),
        report.extents,
        if report.extents == 1 { "" } else { "s" },
        format_size(report.zeroed_bytes),
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

/// Sends a request that changes snapshot `spec` to the server (see [`remote_outcome`]).
fn remote_change<T: serde::de::DeserializeOwned>(
    store: &Store,
    volume: &str,
    req: Request,
    spec: &str,
    done: &str,
) -> Result<T> {
    remote_outcome(
        store,
        volume,
        req,
        &format!("snapshot {spec} was not {done}"),
        &format!(
            "snapshot {spec} may or may not have been {done}; `snapvol snapshot list {volume}` \
             shows which, once the server runs again (or with it stopped)"
        ),
    )
}

/// Sends a request that changes `volume` to the server. Once the request may have reached the
/// server, a broken connection (the server stopped or was killed before answering) leaves the
/// outcome unknown: the error says so (`unknown`), and how to find out.
fn remote_outcome<T: serde::de::DeserializeOwned>(
    store: &Store,
    volume: &str,
    req: Request,
    not_done: &str,
    unknown: &str,
) -> Result<T> {
    match control::request(store, &req) {
        Ok(Some(response)) => {
            let value = response.into_result().map_err(|e| requalify(volume, e))?;
            Ok(serde_json::from_value(value)?)
        }
        Ok(None) => Err(anyhow!(
            "the snapvol server holding the store stopped answering; {not_done}"
        )),
        Err(e) => Err(anyhow!(
            "the snapvol server stopped before answering ({e}): {unknown}"
        )),
    }
}
