//! I/O errors from the VLUNs, injected one at a time: the rules a user relies on when a disk
//! returns `EIO`.
//!
//! 1. An error from any VLUN reaches the caller of some operation as an `Err`; it is never
//!    swallowed, nor retried into a silent success.
//! 2. After a failed write or sync the volume refuses further writes, flushes and snapshots
//!    (`Error::Failed`) until it is reopened; reads return the right data or an error.
//! 3. After a reopen on the same devices nothing that was durable before the error is lost:
//!    every write acknowledged before a flush that returned `Ok` is there, every write request
//!    is all-old or all-new, every acknowledged snapshot reads exactly its oracle, and the
//!    volume works normally again.
//!
//! How: three `MemVlun`s (source, target, journal), each behind a `FaultyVlun` attached to one
//! `FaultController`, run a fixed workload (writes, zeroing, flushes, snapshots, deletes,
//! reads, a full destage, a crash and recovery, a close) with `background_destage: false`, so
//! the I/O order depends only on the calls. A dry run records which device each I/O call of
//! the workload goes to; then, for one device and one kind of call (read, write, sync), the
//! workload runs again once per matching call with an `EIO` armed at exactly that call. One
//! more test does the same with the background destager, where the order is not fixed, and
//! the last three are the smallest cases the sweeps found.
//!
//! A failing sweep lists the fault points that broke a rule, each as `KIND #INDEX on (device,
//! call)` and what went wrong; `SNAPVOL_FAULT_POINT=INDEX` reruns only that point. A case that
//! does not finish within `CASE_TIMEOUT` is reported as a hang. Release builds sweep every
//! point (CI runs them: about 1,300 runs, 10 to 20 s); debug builds every seventh.
//!
//! Where things are: `devices` (the recorded, faulty VLUNs), `workload` (the fixed workload and
//! its oracle), `case` (one run with one armed fault), `checks` (the rules checked after an
//! error and after the reopen), `sweep` (the dry run and the sweep over every fault point),
//! and `smallest` (the smallest cases the sweeps found); the sweeps' tests are below.

mod case;
mod checks;
#[allow(dead_code)] // the sweeps use their own devices; `smallest` pauses one with `SyncHook`
#[path = "../common/mod.rs"]
mod common;
mod devices;
mod smallest;
mod sweep;
mod workload;

use std::time::Instant;

use snapvol_engine::error::Device;

use crate::case::{run_case_guarded, FaultPoint, MAX_HUNG};
use crate::sweep::{only_point, planned, report, sweep};
use crate::workload::Kind;

const KIB: u64 = 1 << 10;
const SIZE: u64 = 512 * KIB;
const CHUNK: u32 = 8 << 10;
/// Small enough that writes destage on the caller's thread many times over the workload.
const CACHE: u64 = 64 * KIB;
/// The smallest journal ring: the workload's first burst fills a quarter of it, so the
/// journal's head moves (source sync, superblock write) on the writer's thread.
const JOURNAL: u64 = 4 << 20;

// ---------------------------------------------------------------------------------------------
// The tests: one per device and kind of call.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_failed_source_read_reaches_the_caller_and_loses_nothing_that_was_durable() {
    sweep(Device::Source, Kind::Read);
}

#[test]
fn a_failed_source_write_reaches_the_caller_fails_the_volume_until_reopened_and_loses_nothing_durable(
) {
    sweep(Device::Source, Kind::Write);
}

#[test]
fn a_failed_source_sync_reaches_the_caller_fails_the_volume_until_reopened_and_loses_nothing_durable(
) {
    sweep(Device::Source, Kind::Sync);
}

#[test]
fn a_failed_target_read_reaches_the_caller_and_loses_nothing_that_was_durable() {
    sweep(Device::Target, Kind::Read);
}

#[test]
fn a_failed_target_write_reaches_the_caller_fails_the_volume_until_reopened_and_loses_nothing_durable(
) {
    sweep(Device::Target, Kind::Write);
}

#[test]
fn a_failed_target_sync_reaches_the_caller_fails_the_volume_until_reopened_and_loses_nothing_durable(
) {
    sweep(Device::Target, Kind::Sync);
}

#[test]
fn a_failed_journal_read_during_recovery_fails_the_open_and_the_next_open_recovers_everything() {
    sweep(Device::Journal, Kind::Read);
}

#[test]
fn a_failed_journal_write_reaches_the_caller_fails_the_volume_until_reopened_and_loses_nothing_durable(
) {
    sweep(Device::Journal, Kind::Write);
}

#[test]
fn a_failed_journal_sync_reaches_the_caller_fails_the_volume_until_reopened_and_loses_nothing_durable(
) {
    sweep(Device::Journal, Kind::Sync);
}

/// With the background destager the I/O order varies from run to run, so the fault lands on
/// whatever call has the chosen index; the error must still reach a caller (as the I/O error,
/// or as `Failed` naming the device once the destager has failed the volume).
#[test]
fn with_the_background_destager_every_injected_error_still_reaches_a_caller_and_loses_nothing_durable(
) {
    let started = Instant::now();
    let (steps, _, calls) = planned();
    let mut failures = Vec::new();
    let mut runs = 0;
    let mut hung = 0;
    let mut fired = 0;
    let mut hit = std::collections::BTreeMap::<String, usize>::new();
    let per_kind = if cfg!(debug_assertions) { 6 } else { 40 };
    let only = only_point();
    for kind in [Kind::Read, Kind::Write, Kind::Sync] {
        let total = calls.iter().filter(|c| kind.filter().matches(c.1)).count() as u64;
        for j in 0..per_kind {
            // Spread over the first 90% of the calls the (deterministic) dry run made.
            let index = total * 9 / 10 * j / per_kind + 1;
            if only.is_some_and(|n| n != index) {
                continue;
            }
            let point = FaultPoint {
                index,
                kind,
                expect: None,
            };
            runs += 1;
            let case = run_case_guarded(steps, true, point);
            fired += usize::from(case.fired);
            if !case.bad.is_empty() {
                failures.push(format!("{kind} #{index}: {}", case.bad.join("; ")));
            }
            *hit.entry(format!("{kind}")).or_default() += usize::from(case.fired);
            hung += usize::from(case.hung);
            if hung >= MAX_HUNG {
                break;
            }
        }
        if hung >= MAX_HUNG {
            failures.push(format!("stopped after {hung} hung cases"));
            break;
        }
    }
    println!(
        "background destager: {runs} runs, {fired} faults fired ({hit:?}), {:.1?}",
        started.elapsed()
    );
    assert!(
        fired * 2 > runs,
        "most injected faults should fire: {fired} of {runs}"
    );
    report("background destager", runs, &failures);
}
