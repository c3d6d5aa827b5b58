//! Running the workload: one case with one armed fault, on its own thread so that a hang is
//! reported, and the rule violations it finds.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use snapvol_engine::error::Device;
use snapvol_engine::fault::IoOp;
use snapvol_engine::{Error, Volume, VolumeOptions};

use crate::checks::{
    check_reads_after_failure, check_refuses_writes, verify_after_reopen, whole_or_nothing,
};
use crate::devices::{opts, Machine};
use crate::workload::{
    first_difference, read_snapshot_by_name, Acked, Kind, Model, SnapModel, SnapState, Step,
};

/// How one step ended.
pub(crate) enum Outcome {
    Ok,
    /// The engine returned an error.
    Err(Error),
    /// The engine returned wrong data or broke a rule: the test fails.
    Wrong(String),
}

/// Runs one step on the volume (taking it for a close, replacing it for a crash) and updates
/// the model for what was acknowledged.
pub(crate) fn execute(
    step: &Step,
    vol: &mut Option<Volume>,
    machine: &Machine,
    opts: &VolumeOptions,
    model: &mut Model,
) -> Outcome {
    let v = vol
        .as_ref()
        .expect("the volume is open during the workload");
    let result = match step {
        Step::Write { off, data } => v.write(*off, data).map(|()| {
            model.acked(Acked {
                off: *off,
                len: data.len() as u64,
                data: Some(Arc::clone(data)),
            });
        }),
        Step::Zero { off, len } => v.write_zeroes(*off, *len).map(|()| {
            model.acked(Acked {
                off: *off,
                len: *len,
                data: None,
            });
        }),
        Step::Flush => v.flush().map(|()| model.made_durable()),
        Step::DestageAll => v.destage_all().map(|()| model.made_durable()),
        Step::Snapshot(name) => {
            let image = model.live.clone();
            match v.snapshot_create(name) {
                Ok(_) => {
                    model.made_durable();
                    model.snaps.push(SnapModel {
                        name: name.clone(),
                        image,
                        state: SnapState::Live,
                    });
                    Ok(())
                }
                Err(e) => {
                    model.snaps.push(SnapModel {
                        name: name.clone(),
                        image,
                        state: SnapState::MaybeCreated,
                    });
                    Err(e)
                }
            }
        }
        Step::Delete(name) => {
            let r = v.snapshot_delete(name);
            if let Some(s) = model.snaps.iter_mut().find(|s| &s.name == name) {
                s.state = if r.is_ok() {
                    SnapState::Deleted
                } else {
                    SnapState::MaybeDeleted
                };
            }
            r
        }
        Step::ReadLive { off, len } => {
            let mut buf = vec![0u8; *len as usize];
            match v.read(*off, &mut buf) {
                Ok(()) => {
                    let want = &model.live[*off as usize..(*off + *len) as usize];
                    if let Some(i) = first_difference(&buf, want) {
                        return Outcome::Wrong(format!(
                            "a live read returned wrong data at offset {:#x}",
                            *off + i as u64
                        ));
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Step::ReadSnapshot { name, off, len } => {
            let mut buf = vec![0u8; *len as usize];
            match read_snapshot_by_name(v, name, *off, &mut buf) {
                Ok(()) => {
                    let snap = model
                        .snap(name)
                        .expect("the workload reads known snapshots");
                    let want = &snap.image[*off as usize..(*off + *len) as usize];
                    if let Some(i) = first_difference(&buf, want) {
                        return Outcome::Wrong(format!(
                            "snapshot {name} returned wrong data at offset {:#x}",
                            *off + i as u64
                        ));
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Step::FlushAndCrash => match v.flush() {
            Ok(()) => {
                model.made_durable();
                // A fault met before now by a background thread that no caller has seen: the
                // thread fails the volume once the call that met it returns, which may be
                // after this flush and after a kill (which then reports nothing). The error
                // must still reach a caller: ask until the volume refuses.
                let before = machine.ctl.faults_injected();
                if before > 0 && !machine.error_reported.load(Ordering::SeqCst) {
                    if let Err(e) = wait_for_refusal(v) {
                        return Outcome::Err(e);
                    }
                }
                // A killed process reports nothing: an error that a background thread meets
                // from here on, while the process dies, has no caller left to reach.
                let failed_unseen = vol.take().expect("open").kill().is_some();
                if failed_unseen || machine.ctl.faults_injected() > before {
                    machine.fired_in_kill.store(true, Ordering::SeqCst);
                }
                machine.open(opts).map(|reopened| *vol = Some(reopened))
            }
            Err(e) => Err(e),
        },
        Step::Close => {
            let r = vol.take().expect("open").close();
            if r.is_ok() {
                model.made_durable();
            }
            r
        }
    };
    match result {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Err(e),
    }
}

/// How long a background thread may take to fail the volume after meeting an error.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Flushes until the volume refuses (a flush with nothing staged writes nothing) and returns
/// that error, or `Ok` if it still accepts after `REFUSAL_TIMEOUT`.
fn wait_for_refusal(v: &Volume) -> Result<(), Error> {
    let deadline = Instant::now() + REFUSAL_TIMEOUT;
    while Instant::now() < deadline {
        v.flush()?;
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Whether an operation's error names `device`: an I/O error on it, or the refusal of a
/// volume that failed because of it (its message carries the device's name).
fn names_device(e: &Error, device: Device) -> bool {
    match e {
        Error::Io { device: d, .. } => *d == device,
        Error::Failed(why) => why.contains(&device.to_string()),
        _ => false,
    }
}

/// Where to inject, and what the test expects of the call it lands on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FaultPoint {
    /// Index among the calls `kind` counts, since the controller was made.
    pub(crate) index: u64,
    pub(crate) kind: Kind,
    /// The call the dry run saw at that index (deterministic runs only).
    pub(crate) expect: Option<(Device, IoOp)>,
}

/// One workload run with one armed fault; returns the rule violations found (empty: the run
/// obeyed every rule) and whether the fault fired.
fn run_case(
    steps: &[Step],
    background: bool,
    point: FaultPoint,
    progress: &Progress,
) -> (Vec<String>, bool) {
    let opts = opts(background);
    let machine = Machine::new();
    let mut vol = Held(Some(machine.create(&opts)));
    machine.ctl.fail_at(point.index, point.kind.filter());
    let mut model = Model::new();
    let mut bad = Vec::new();
    let mut first_error: Option<(usize, Error)> = None;
    // A write that failed may or may not have landed (whole, never in part).
    let mut failed_write: Option<Acked> = None;
    let mut i = 0;
    while i < steps.len() {
        let step = &steps[i];
        progress.set(format!("step {i} ({})", describe(step)));
        i += 1;
        match execute(step, &mut vol.0, &machine, &opts, &mut model) {
            Outcome::Ok => {}
            Outcome::Wrong(why) => {
                bad.push(format!("step {} ({}): {why}", i - 1, describe(step)));
                return (bad, machine.ctl.faults_injected() > 0);
            }
            Outcome::Err(e) => {
                if first_error.is_some() {
                    bad.push(format!(
                        "step {} ({}): a second error after the volume was found working again: {e}",
                        i - 1,
                        describe(step)
                    ));
                    break;
                }
                match step {
                    Step::Write { off, data } => {
                        failed_write = Some(Acked {
                            off: *off,
                            len: data.len() as u64,
                            data: Some(Arc::clone(data)),
                        });
                    }
                    Step::Zero { off, len } => {
                        failed_write = Some(Acked {
                            off: *off,
                            len: *len,
                            data: None,
                        });
                    }
                    _ => {}
                }
                first_error = Some((i - 1, e));
                machine.error_reported.store(true, Ordering::SeqCst);
                let Some(v) = &vol.0 else { break };
                // Is the volume failed, or did it shrug off a read error?
                let fatal = point.kind != Kind::Read
                    || {
                        match v.flush() {
                            Ok(()) => {
                                model.made_durable();
                                false
                            }
                            Err(Error::Failed(_)) => true,
                            Err(other) => {
                                bad.push(format!(
                                "after a read error, flush failed with {other} instead of Ok or Failed"
                            ));
                                true
                            }
                        }
                    };
                if fatal {
                    // The flush first: a volume that is not failed when it should be may make
                    // a write wait for cache space forever.
                    progress.set(format!("probing after the error of step {}", i - 1));
                    match v.flush() {
                        Err(Error::Failed(_)) => {
                            check_refuses_writes(v, &mut bad);
                            check_reads_after_failure(v, &model, failed_write.as_ref(), &mut bad);
                            if vol.take().close().is_ok() {
                                bad.push("close of a failed volume returned Ok".into());
                            }
                        }
                        other => {
                            bad.push(format!(
                                "the volume is not failed after the error of step {} ({}): a flush returned {other:?}",
                                i - 1,
                                describe(step)
                            ));
                            if other.is_ok() {
                                // A flush that returned Ok promised every acknowledged write:
                                // hold the engine to it after the reopen.
                                model.made_durable();
                            }
                            check_reads_after_failure(v, &model, failed_write.as_ref(), &mut bad);
                            if vol.take().close().is_ok() {
                                model.made_durable();
                            }
                        }
                    }
                    break;
                }
                // The volume works, and the flush made what it holds durable: a write that
                // failed must be there whole or not at all.
                if let Some(w) = failed_write.take() {
                    match whole_or_nothing(v, &model, &w) {
                        Ok(true) => {
                            model.acked(w);
                            model.made_durable();
                        }
                        Ok(false) => {}
                        Err(why) => {
                            bad.push(format!(
                                "step {} ({}) failed, and the flush after it {why}",
                                i - 1,
                                describe(step)
                            ));
                            break;
                        }
                    }
                }
                // Go on with the workload.
            }
        }
    }
    let fired = machine.ctl.faults_injected() > 0;
    // A fault the workload did not reach (the background destager's I/O varies) must not
    // fire during the checks below.
    machine.ctl.disarm();
    if let Some(v) = vol.0.take() {
        bad.push("the workload ended with the volume still open".into());
        v.kill();
    }
    let hits = machine.failed_calls();
    match (&first_error, fired) {
        (None, true) if machine.fired_in_kill.load(Ordering::SeqCst) => {}
        (None, true) => bad.push(format!(
            "the injected EIO (on {:?}) was swallowed: every operation returned Ok",
            hits.first()
        )),
        (Some((step, e)), true) => {
            let dev = hits.first().map(|h| h.0);
            if !dev.is_some_and(|d| names_device(e, d)) {
                bad.push(format!(
                    "step {step} ({}): the error {e:?} does not name the device the EIO hit ({dev:?})",
                    describe(&steps[*step])
                ));
            }
            if !background && !matches!(e, Error::Io { .. }) {
                bad.push(format!(
                    "step {step}: the first error is {e}, not the I/O error itself"
                ));
            }
        }
        (Some((step, e)), false) => bad.push(format!(
            "step {step}: an error without any injected fault: {e}"
        )),
        (None, false) => {}
    }
    if let (Some(want), Some(got)) = (point.expect, hits.first()) {
        if want != *got {
            bad.push(format!(
                "the fault landed on {got:?}, the dry run had {want:?} there: the I/O order is not deterministic"
            ));
        }
    }
    if hits.len() > 1 {
        bad.push(format!("more than one injected failure: {hits:?}"));
    }
    progress.set("reopening and verifying");
    verify_after_reopen(&machine, &opts, &mut model, failed_write.as_ref(), &mut bad);
    (bad, fired)
}

/// An open volume that a panicking test thread forgets instead of closing: closing a volume
/// the engine panicked in may panic again, and a panic during a panic aborts every test.
pub(crate) struct Held(pub(crate) Option<Volume>);

impl Held {
    pub(crate) fn take(&mut self) -> Volume {
        self.0.take().expect("the volume is open")
    }

    pub(crate) fn close(mut self) -> Result<(), Error> {
        self.take().close()
    }
}

impl std::ops::Deref for Held {
    type Target = Volume;

    fn deref(&self) -> &Volume {
        self.0.as_ref().expect("the volume is open")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.0.take());
        }
    }
}

/// What a case is doing, for the message when it hangs.
#[derive(Debug, Clone, Default)]
struct Progress(Arc<Mutex<String>>);

impl Progress {
    fn set(&self, what: impl Into<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = what.into();
    }

    fn get(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A case takes milliseconds; one that takes this long is stuck in the engine.
pub(crate) const CASE_TIMEOUT: Duration = Duration::from_secs(10);
/// A sweep stops after this many stuck cases (each leaves a thread behind).
pub(crate) const MAX_HUNG: usize = 2;

/// Runs a case on its own thread, so that an engine call that never returns is reported as a
/// hang instead of stopping the test suite. The stuck thread is left behind.
pub(crate) fn run_case_guarded(
    steps: &Arc<Vec<Step>>,
    background: bool,
    point: FaultPoint,
) -> Case {
    let (tx, rx) = mpsc::channel();
    let progress = Progress::default();
    let (steps, p) = (Arc::clone(steps), progress.clone());
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_case(&steps, background, point, &p)
        }));
        let r = r.unwrap_or_else(|payload| {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            (vec![format!("panicked during {}: {msg}", p.get())], true)
        });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(CASE_TIMEOUT) {
        Ok((bad, fired)) => Case {
            bad,
            fired,
            hung: false,
        },
        Err(mpsc::RecvTimeoutError::Timeout) => Case {
            bad: vec![format!(
                "hangs: {} did not return within {CASE_TIMEOUT:?}",
                progress.get()
            )],
            fired: true,
            hung: true,
        },
        Err(mpsc::RecvTimeoutError::Disconnected) => Case {
            bad: vec![format!("panicked during {}", progress.get())],
            fired: true,
            hung: false,
        },
    }
}

pub(crate) struct Case {
    pub(crate) bad: Vec<String>,
    pub(crate) fired: bool,
    pub(crate) hung: bool,
}

pub(crate) fn describe(step: &Step) -> String {
    match step {
        Step::Write { off, data } => format!("write {:#x}+{:#x}", off, data.len()),
        Step::Zero { off, len } => format!("zero {off:#x}+{len:#x}"),
        Step::ReadLive { off, len } => format!("read {off:#x}+{len:#x}"),
        Step::ReadSnapshot { name, off, len } => format!("read {name} {off:#x}+{len:#x}"),
        other => format!("{other:?}"),
    }
}
