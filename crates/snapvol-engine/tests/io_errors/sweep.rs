//! The dry run that records the workload's I/O, and the sweep that injects one `EIO` at every
//! matching call of it, one run each.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use snapvol_engine::error::Device;
use snapvol_engine::fault::IoOp;

use crate::case::{describe, execute, run_case_guarded, FaultPoint, Outcome, MAX_HUNG};
use crate::checks::verify_after_reopen;
use crate::devices::{opts, Machine};
use crate::workload::{workload, Kind, Model, Step};

/// Violations listed in a failure message; the rest are counted.
const SHOWN: usize = 12;

/// Runs the workload without a fault and returns every I/O call it makes after the volume
/// was created (with their indices counted from the controller's birth), checking that the
/// workload itself passes and that two runs do the same I/O.
fn dry_run(steps: &[Step]) -> (usize, Vec<(Device, IoOp)>) {
    let trace = |steps: &[Step]| {
        let opts = opts(false);
        let machine = Machine::new();
        let mut vol = Some(machine.create(&opts));
        let start = machine.calls().len();
        let mut model = Model::new();
        for (i, step) in steps.iter().enumerate() {
            match execute(step, &mut vol, &machine, &opts, &mut model) {
                Outcome::Ok => {}
                Outcome::Err(e) => {
                    panic!("step {i} ({}) failed without a fault: {e}", describe(step))
                }
                Outcome::Wrong(why) => panic!("step {i} ({}): {why}", describe(step)),
            }
        }
        let calls = machine.calls();
        let mut bad = Vec::new();
        verify_after_reopen(&machine, &opts, &mut model, None, &mut bad);
        assert!(
            bad.is_empty(),
            "the workload fails without a fault: {bad:?}"
        );
        (start, calls)
    };
    let first = trace(steps);
    let second = trace(steps);
    assert_eq!(first, second, "the workload's I/O is not deterministic");
    first
}

/// `SNAPVOL_FAULT_POINT=N` runs only the fault points with index N, to reproduce one case.
pub(crate) fn only_point() -> Option<u64> {
    std::env::var("SNAPVOL_FAULT_POINT")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// The workload, where its calls start in the dry run's record, and that record.
type Plan = (Arc<Vec<Step>>, usize, Vec<(Device, IoOp)>);

/// The workload and its dry run, shared by the tests.
pub(crate) fn planned() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        let steps = Arc::new(workload());
        let (start, calls) = dry_run(&steps);
        (steps, start, calls)
    })
}

/// Injects one `EIO` at every `kind` call the workload makes on `device`, one run each, and
/// checks every rule in each run.
pub(crate) fn sweep(device: Device, kind: Kind) {
    let started = Instant::now();
    let (steps, start, calls) = planned();
    let filter = kind.filter();
    let mut points = Vec::new();
    let mut counted = 0u64;
    for (t, &(d, op)) in calls.iter().enumerate() {
        if !filter.matches(op) {
            continue;
        }
        if t >= *start && d == device {
            points.push(FaultPoint {
                index: counted,
                kind,
                expect: Some((d, op)),
            });
        }
        counted += 1;
    }
    assert!(
        !points.is_empty(),
        "the workload makes no {kind} call on the {device}"
    );
    // Debug builds are about twenty times slower: they take every seventh point.
    let stride = if cfg!(debug_assertions) { 7 } else { 1 };
    let mut failures = Vec::new();
    let mut runs = 0;
    let mut hung = 0;
    let only = only_point();
    for p in points
        .iter()
        .step_by(if only.is_some() { 1 } else { stride })
        .filter(|p| only.is_none_or(|n| n == p.index))
    {
        runs += 1;
        let case = run_case_guarded(steps, false, *p);
        if !case.fired {
            failures.push(format!("{kind} #{}: the fault never fired", p.index));
        }
        if !case.bad.is_empty() {
            failures.push(format!(
                "{kind} #{} on {:?}: {}",
                p.index,
                p.expect,
                case.bad.join("; ")
            ));
        }
        hung += usize::from(case.hung);
        if hung >= MAX_HUNG {
            failures.push(format!("sweep stopped after {hung} hung cases"));
            break;
        }
    }
    println!(
        "{kind} errors on the {device}: {runs} fault points of {} in the workload ({} I/O calls), {:.1?}",
        points.len(),
        calls.len() - start,
        started.elapsed()
    );
    report(&format!("{kind} errors on the {device}"), runs, &failures);
}

pub(crate) fn report(what: &str, runs: usize, failures: &[String]) {
    if failures.is_empty() {
        return;
    }
    let shown: Vec<_> = failures.iter().take(SHOWN).cloned().collect();
    panic!(
        "{what}: {} of {runs} fault points broke a rule; the first ones:\n  {}",
        failures.len(),
        shown.join("\n  ")
    );
}
