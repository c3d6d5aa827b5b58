//! Driving many crash points: one crash point judged in isolation, a sweep over many on
//! worker threads, and the summary of their outcomes.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

use super::devices::Loss;
use super::judge::{recover_and_check, torn_superblocks, Outcome};
use super::run::run_workload;
use super::workload::Workload;

#[derive(Debug, Default)]
pub struct Summary {
    /// Crash points judged: (k, loss) pairs whose images differ from those of the losses tried
    /// before at the same k (the same images would be the same test).
    pub points: u64,
    /// (k, loss) pairs skipped because they gave the images of an earlier loss at that k.
    pub duplicates: u64,
    pub failures: Vec<String>,
    /// Recoveries that kept some unflushed write / lost some.
    pub unflushed_kept: u64,
    pub unflushed_lost: u64,
    /// Recoveries where an unflushed large write of write mode throughput shows in part.
    pub unflushed_torn: u64,
    /// Interrupted snapshot creations that survived / did not.
    pub snapshot_kept: u64,
    pub snapshot_lost: u64,
    /// Interrupted snapshot deletions that took effect / did not.
    pub delete_done: u64,
    pub delete_undone: u64,
    /// Crash images with a torn superblock copy.
    pub torn_superblocks: u64,
}

impl Summary {
    fn count(&mut self, o: Outcome) {
        self.unflushed_kept += u64::from(o.unflushed_kept);
        self.unflushed_lost += u64::from(o.unflushed_lost);
        self.unflushed_torn += u64::from(o.unflushed_torn);
        match o.interrupted_snapshot {
            Some(true) => self.snapshot_kept += 1,
            Some(false) => self.snapshot_lost += 1,
            None => {}
        }
        match o.interrupted_delete {
            Some(true) => self.delete_undone += 1,
            Some(false) => self.delete_done += 1,
            None => {}
        }
    }

    /// Adds another summary's counts and failures.
    pub fn absorb(&mut self, o: Summary) {
        self.points += o.points;
        self.duplicates += o.duplicates;
        self.failures.extend(o.failures);
        self.unflushed_kept += o.unflushed_kept;
        self.unflushed_lost += o.unflushed_lost;
        self.unflushed_torn += o.unflushed_torn;
        self.snapshot_kept += o.snapshot_kept;
        self.snapshot_lost += o.snapshot_lost;
        self.delete_done += o.delete_done;
        self.delete_undone += o.delete_undone;
        self.torn_superblocks += o.torn_superblocks;
    }

    /// One line on what the recoveries gave back.
    pub fn outcomes(&self) -> String {
        format!(
            "unflushed writes kept in {} / lost in {} / large ones torn in {} recoveries; \
             interrupted snapshots kept {} / lost {}; interrupted deletes done {} / undone {}; \
             torn superblock copies {}",
            self.unflushed_kept,
            self.unflushed_lost,
            self.unflushed_torn,
            self.snapshot_kept,
            self.snapshot_lost,
            self.delete_done,
            self.delete_undone,
            self.torn_superblocks
        )
    }
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

const WORKER_PREFIX: &str = "crashkit-";

/// Panics on the harness's worker threads are caught and reported as failures with their
/// location; they are not printed as they happen (a failing run would print thousands).
fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let ours = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with(WORKER_PREFIX));
            if ours {
                let msg = payload_text(info.payload());
                let loc = info
                    .location()
                    .map(|l| format!(" ({}:{})", l.file(), l.line()))
                    .unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg}{loc}")));
            } else {
                prev(info);
            }
        }));
    });
}

fn payload_text(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

/// Runs `f`, turning a panic into `Err(message with location)`.
pub fn catching<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_quiet_hook();
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        LAST_PANIC
            .with(|l| l.borrow_mut().take())
            .unwrap_or_else(|| payload_text(&*p))
    })
}

/// Crashes `w` at I/O index `k`, then judges every loss in `losses` whose images differ from
/// the previous ones. Returns (points judged, duplicates, failures).
///
/// `deterministic_ios`: the workload's I/O count without a crash, when every run issues the
/// same I/O (no background destager); a crash index below it must then stop the workload.
pub fn crash_at(
    w: &Workload,
    k: u64,
    losses: &[Loss],
    background: bool,
    deterministic_ios: Option<u64>,
) -> Summary {
    let mut out = Summary::default();
    let run = match catching(|| run_workload(w, Some(k), background)) {
        Ok(run) => run,
        Err(msg) => {
            out.points = 1;
            out.failures
                .push(format!("{} k={k}: workload: {msg}", w.name));
            return out;
        }
    };
    if let Some(n) = deterministic_ios {
        if k < n && run.model.failed_op.is_none() {
            out.points = 1;
            out.failures.push(format!(
                "{} k={k}: the workload issued {} I/O calls and finished; the dry run issued {n} \
                 (not deterministic)",
                w.name, run.ios
            ));
            return out;
        }
    }
    let mut seen: Vec<[u32; 6]> = Vec::new();
    let stopped = match &run.model.failed_op {
        Some((i, e)) => format!("op {i} failed: {e}"),
        None => "the workload finished".to_owned(),
    };
    for &loss in losses {
        let img = run.devices.crash_images(loss);
        let fingerprint = img.fingerprint();
        if seen.contains(&fingerprint) {
            out.duplicates += 1;
            continue;
        }
        seen.push(fingerprint);
        out.points += 1;
        let torn = torn_superblocks(&run.devices, &img);
        out.torn_superblocks += u64::from(!torn.is_empty());
        match catching(|| recover_and_check(w, &run.model, img, &torn)) {
            Ok(outcome) => out.count(outcome),
            Err(msg) => out.failures.push(format!(
                "{} k={k} {loss:?} ({stopped}; unsynced s/t/j {:?}): {msg}",
                w.name,
                run.devices.unsynced()
            )),
        }
    }
    out
}

/// Every crash point copies the 4 MiB journal image twice (`crash_image`, then `from_image`),
/// some 20,000 times a run. glibc hands freed buffers that size back to the kernel and
/// page-faults them in again on the next copy, which made the sweep spend two thirds of its
/// time in the kernel. Keeping freed memory in the process halves the run time.
fn keep_freed_memory() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        #[allow(unsafe_code)]
        // SAFETY: `mallopt` only sets allocator tunables (under glibc's own lock); it touches
        // no memory of ours and is valid to call at any time from any thread.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        }
    });
}

/// How many worker threads to use: the machine's cores, at least 2, at most 4.
pub fn workers() -> usize {
    if let Some(n) = std::env::var("CRASHKIT_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .clamp(2, 4)
}

/// Judges every crash index in `ks`, spread over worker threads. Stops early after a few
/// failures (they are usually the same bug).
/// `deterministic_ios` as for [`crash_at`].
pub fn sweep(
    w: &Workload,
    ks: &[u64],
    background: bool,
    deterministic_ios: Option<u64>,
) -> Summary {
    const MAX_FAILURES: usize = 6;
    keep_freed_memory();
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Summary::default());
    std::thread::scope(|scope| {
        for t in 0..workers() {
            std::thread::Builder::new()
                .name(format!("{WORKER_PREFIX}{t}"))
                .spawn_scoped(scope, || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&k) = ks.get(i) else { break };
                    if out.lock().expect("summary").failures.len() >= MAX_FAILURES {
                        break;
                    }
                    let one = crash_at(w, k, &Loss::all_for(k), background, deterministic_ios);
                    out.lock().expect("summary").absorb(one);
                })
                .expect("spawn crash worker");
        }
    });
    let mut s = out.into_inner().expect("summary");
    s.failures.sort();
    s
}

/// Runs `w` without a crash: its I/O count, and a sanity check of the script and the oracle.
pub fn dry_run(w: &Workload, background: bool) -> u64 {
    w.validate();
    let run = run_workload(w, None, background);
    assert!(
        run.model.failed_op.is_none(),
        "{}: the workload fails without a crash",
        w.name
    );
    assert_eq!(run.model.ops_done, w.ops.len());
    run.ios
}
