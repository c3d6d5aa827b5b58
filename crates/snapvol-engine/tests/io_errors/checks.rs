//! The rules checked after an error (a failed volume refuses writes, reads stay right) and
//! after the reopen (nothing durable lost, requests whole, snapshots exact, the volume works).

use std::sync::Arc;

use snapvol_engine::{Error, Volume, VolumeOptions};

use crate::case::Held;
use crate::devices::Machine;
use crate::workload::{
    first_difference, pattern, read_snapshot_by_name, Acked, Model, SnapModel, SnapState,
};
use crate::{KIB, SIZE};

/// Whether the failed write `w` is in the volume whole (`Ok(true)`) or not at all
/// (`Ok(false)`); `Err` says how it is torn.
pub(crate) fn whole_or_nothing(v: &Volume, model: &Model, w: &Acked) -> Result<bool, String> {
    let r = w.off as usize..(w.off + w.len) as usize;
    let mut got = vec![0u8; r.len()];
    v.read(w.off, &mut got)
        .map_err(|e| format!("is followed by a failed read: {e}"))?;
    let mut new = vec![0u8; r.len()];
    Acked {
        off: 0,
        ..w.clone()
    }
    .apply(&mut new);
    if got == model.live[r.clone()] {
        return Ok(false);
    }
    if got == new {
        return Ok(true);
    }
    let old_until = got
        .iter()
        .zip(&model.live[r])
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    let new_until = got.iter().zip(&new).position(|(a, b)| a != b).unwrap_or(0);
    Err(format!(
        "made it durable torn: part old, part new (old up to {:#x}, new up to {:#x} of {:#x}+{:#x})",
        w.off + old_until as u64,
        w.off + new_until as u64,
        w.off,
        w.len
    ))
}

/// A failed volume refuses every kind of write with `Error::Failed`.
pub(crate) fn check_refuses_writes(v: &Volume, bad: &mut Vec<String>) {
    let mut expect_failed = |what: &str, r: Result<(), Error>| match r {
        Err(Error::Failed(_)) => {}
        Ok(()) => bad.push(format!("after the error, {what} returned Ok")),
        Err(e) => bad.push(format!(
            "after the error, {what} failed with {e}, not Failed"
        )),
    };
    expect_failed("a write", v.write(0, &[0xAB; 4096]));
    expect_failed("write-zeroes", v.write_zeroes(8192, 4096));
    expect_failed("a flush", v.flush());
    expect_failed("a snapshot", v.snapshot_create("probe").map(|_| ()));
    expect_failed("destage_all", v.destage_all());
}

/// Reads of a failed volume return the data it was given or an error, never anything else.
/// Only the range of a write that failed may hold old or new bytes.
pub(crate) fn check_reads_after_failure(
    v: &Volume,
    model: &Model,
    failed_write: Option<&Acked>,
    bad: &mut Vec<String>,
) {
    let mut buf = vec![0u8; SIZE as usize];
    if v.read(0, &mut buf).is_ok() {
        let mut want = model.live.clone();
        if let Some(w) = failed_write {
            // Either is acceptable in its range: take the new bytes where they were read.
            let r = w.off as usize..(w.off + w.len) as usize;
            let mut piece = vec![0u8; r.len()];
            Acked {
                off: 0,
                ..w.clone()
            }
            .apply(&mut piece);
            for ((want, got), new) in want[r.clone()].iter_mut().zip(&buf[r]).zip(&piece) {
                if got == new {
                    *want = *new;
                }
            }
        }
        if let Some(i) = first_difference(&buf, &want) {
            bad.push(format!(
                "after the error, the live volume reads wrong data at {i:#x}"
            ));
        }
    }
    for s in &model.snaps {
        if s.state != SnapState::Live {
            continue;
        }
        if read_snapshot_by_name(v, &s.name, 0, &mut buf).is_ok() {
            if let Some(i) = first_difference(&buf, &s.image) {
                bad.push(format!(
                    "after the error, snapshot {} reads wrong data at {i:#x}",
                    s.name
                ));
            }
        }
    }
}

/// Reopens on the same devices (the fault has fired) and checks that nothing durable was lost,
/// that requests are whole, that snapshots read their oracles, and that the volume works.
pub(crate) fn verify_after_reopen(
    machine: &Machine,
    opts: &VolumeOptions,
    model: &mut Model,
    failed_write: Option<&Acked>,
    bad: &mut Vec<String>,
) {
    let vol = match machine.open(opts) {
        Ok(v) => Held(Some(v)),
        Err(e) => {
            bad.push(format!("reopening after the fault failed: {e}"));
            return;
        }
    };
    let mut live = vec![0u8; SIZE as usize];
    if let Err(e) = vol.read(0, &mut live) {
        bad.push(format!("reading the reopened volume failed: {e}"));
        return;
    }
    // The durable image plus some prefix of what was acknowledged after it (then possibly the
    // write that failed, whole).
    let mut img = model.durable.clone();
    let mut matched = img == live;
    let candidates = model.pending.iter().chain(failed_write);
    for w in candidates {
        if matched {
            break;
        }
        w.apply(&mut img);
        matched = img == live;
    }
    if !matched {
        // Say which request is torn, if one is: part of its range old, part new.
        let mut cur = model.durable.clone();
        let mut torn = None;
        for w in model.pending.iter().chain(failed_write) {
            let r = w.off as usize..(w.off + w.len) as usize;
            let old = cur[r.clone()].to_vec();
            w.apply(&mut cur);
            if torn.is_none() && live[r.clone()] != old[..] && live[r.clone()] != cur[r] {
                torn = Some(format!("{:#x}+{:#x}", w.off, w.len));
            }
        }
        let at = first_difference(&live, &model.durable).unwrap_or(0);
        bad.push(format!(
            "after the reopen the live volume is not the durable image plus a prefix of the {} writes acknowledged after the last flush (first difference from the durable image at {at:#x}; torn request: {})",
            model.pending.len(),
            torn.as_deref().unwrap_or("none")
        ));
        return;
    }
    model.live.clone_from(&live);
    model.durable = live;
    model.pending.clear();

    let present = vol.snapshots();
    for p in &present {
        if model.snap(&p.name).is_none() && p.name != "probe" {
            bad.push(format!(
                "after the reopen an unknown snapshot {} exists",
                p.name
            ));
        }
        if p.name == "probe" {
            bad.push("after the reopen the snapshot a failed volume refused exists".into());
        }
    }
    let mut buf = vec![0u8; SIZE as usize];
    for s in &model.snaps {
        let exists = present.iter().any(|p| p.name == s.name);
        match (s.state, exists) {
            (SnapState::Live, false) => {
                bad.push(format!("snapshot {} was acknowledged and is gone", s.name));
            }
            (SnapState::Deleted, true) => {
                bad.push(format!("snapshot {} was deleted and is back", s.name));
            }
            (_, true) => match read_snapshot_by_name(&vol, &s.name, 0, &mut buf) {
                Ok(()) => {
                    if let Some(i) = first_difference(&buf, &s.image) {
                        bad.push(format!(
                            "after the reopen snapshot {} ({:?}) reads wrong data at {i:#x}",
                            s.name, s.state
                        ));
                    }
                }
                Err(e) => bad.push(format!(
                    "after the reopen snapshot {} fails to read: {e}",
                    s.name
                )),
            },
            (_, false) => {}
        }
    }
    // Keep only the snapshots that are there, now certain.
    model
        .snaps
        .retain(|s| present.iter().any(|p| p.name == s.name));
    for s in &mut model.snaps {
        s.state = SnapState::Live;
    }
    if !bad.is_empty() {
        return;
    }

    // The volume works normally again: write, snapshot, write, close, reopen, read it all.
    let works = (|| -> Result<(), Error> {
        let a = pattern(77, 40 * KIB, 100 * KIB);
        vol.write(40 * KIB, &a)?;
        model.acked(Acked {
            off: 40 * KIB,
            len: a.len() as u64,
            data: Some(Arc::from(a)),
        });
        vol.snapshot_create("after-reopen")?;
        model.snaps.push(SnapModel {
            name: "after-reopen".into(),
            image: model.live.clone(),
            state: SnapState::Live,
        });
        let b = pattern(78, 100 * KIB, 300 * KIB);
        vol.write(100 * KIB, &b)?;
        model.acked(Acked {
            off: 100 * KIB,
            len: b.len() as u64,
            data: Some(Arc::from(b)),
        });
        vol.close()
    })();
    if let Err(e) = works {
        bad.push(format!("after the reopen the volume does not work: {e}"));
        return;
    }
    let vol = match machine.open(opts) {
        Ok(v) => Held(Some(v)),
        Err(e) => {
            bad.push(format!("the second reopen failed: {e}"));
            return;
        }
    };
    if vol.read(0, &mut buf).is_err() || buf != model.live {
        bad.push("after the second reopen the live volume is wrong".into());
    }
    for s in &model.snaps {
        match read_snapshot_by_name(&vol, &s.name, 0, &mut buf) {
            Ok(()) if buf == s.image => {}
            Ok(()) => bad.push(format!(
                "after the second reopen snapshot {} is wrong",
                s.name
            )),
            Err(e) => bad.push(format!("after the second reopen snapshot {}: {e}", s.name)),
        }
    }
    if let Err(e) = vol.close() {
        bad.push(format!("the final close failed: {e}"));
    }
}
