//! The smallest cases the sweeps found, one rule each.

use std::sync::{mpsc, Arc, Mutex, PoisonError};

use snapvol_engine::error::Device;
use snapvol_engine::fault::{FaultController, FaultyVlun};
use snapvol_engine::units::Geometry;
use snapvol_engine::vlun::{MemVlun, Vlun};
use snapvol_engine::{Error, Layout, Vluns, Volume};

use crate::case::{Held, CASE_TIMEOUT};
use crate::common::SyncHook;
use crate::devices::opts;
use crate::workload::{pattern, Kind};
use crate::{CHUNK, JOURNAL, KIB, SIZE};

/// Three in-memory devices, each behind its own controller, so a test can fail exactly the
/// next call of one kind on one device.
struct Devices {
    ctl: [Arc<FaultController>; 3],
    mem: [Arc<MemVlun>; 3],
}

impl Devices {
    fn new() -> Self {
        Self {
            ctl: [
                FaultController::new(),
                FaultController::new(),
                FaultController::new(),
            ],
            mem: [
                Arc::new(MemVlun::new(SIZE)),
                Arc::new(MemVlun::new(0)),
                Arc::new(MemVlun::new(0)),
            ],
        }
    }

    fn vluns(&self) -> Vluns {
        let v = |i: usize| -> Box<dyn Vlun> {
            Box::new(FaultyVlun::new(&self.ctl[i], Arc::clone(&self.mem[i])))
        };
        Vluns {
            source: v(0),
            target: v(1),
            journal: v(2),
        }
    }

    /// Fails the next call of `kind` on device `i` (0 source, 1 target, 2 journal).
    fn fail_next(&self, i: usize, kind: Kind) {
        let ctl = &self.ctl[i];
        ctl.fail_at(ctl.op_count(kind.filter()), kind.filter());
    }
}

fn layout() -> Layout {
    Layout {
        journal_size: JOURNAL,
        ..Layout::new(Geometry::new(SIZE, CHUNK).expect("geometry"))
    }
}

/// The writer's thread destages when the cache is full (`background_destage: false`). When
/// that destage cannot append to the journal, the write that triggered it gets the error,
/// but the volume carries on: the next flush returns `Ok` although the writes the failed
/// append held never reach the journal, so they are gone after a reopen.
#[test]
fn a_journal_error_in_a_destage_on_the_writers_thread_fails_the_volume_and_loses_no_flushed_write()
{
    let d = Devices::new();
    let vol = Volume::create_on("v", d.vluns(), layout(), opts(false)).expect("create");
    let vol = Held(Some(vol));
    let a = pattern(1, 0, 24 * KIB);
    vol.write(0, &a)
        .expect("the first write lands in the cache");
    d.fail_next(2, Kind::Write);
    // The cache is full: this write destages first, and the journal append fails.
    let err = vol
        .write(64 * KIB, &pattern(2, 64 * KIB, 24 * KIB))
        .expect_err("the journal's EIO reaches the writer");
    assert!(
        matches!(
            err,
            Error::Io {
                device: Device::Journal,
                ..
            }
        ),
        "the error names the journal: {err}"
    );
    let mut problems = Vec::new();
    let flush = vol.flush();
    if !matches!(flush, Err(Error::Failed(_))) {
        problems.push(format!(
            "a flush after the failed write returned {flush:?}, not Error::Failed"
        ));
    }
    let _ = vol.close();
    let vol = Held(Some(
        Volume::open_on("v", d.vluns(), opts(false)).expect("reopen"),
    ));
    let mut got = vec![0u8; a.len()];
    vol.read(0, &mut got).expect("read");
    if flush.is_ok() && got != a {
        problems.push(
            "the write acknowledged before that flush (which returned Ok) is lost after a reopen"
                .into(),
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("; "));
    vol.close().expect("close");
}

/// A write-zeroes request longer than a quarter of the cache goes into the cache in pieces,
/// each journaled as a request of its own. A destage that starts between two pieces (here on
/// the writer's thread; the background destager does the same at any time) journals the
/// first piece alone, and a power loss before the rest leaves the request torn.
#[test]
fn a_write_zeroes_request_the_engine_splits_is_all_old_or_all_new_after_a_crash_in_its_middle() {
    use snapvol_engine::fault::{CrashMode, CrashVlun};
    let ctl = [
        FaultController::new(),
        FaultController::new(),
        FaultController::new(),
    ];
    let dev = [
        Arc::new(CrashVlun::new(&ctl[0], SIZE)),
        Arc::new(CrashVlun::new(&ctl[1], 0)),
        Arc::new(CrashVlun::new(&ctl[2], 0)),
    ];
    let vluns = |dev: &[Arc<CrashVlun>; 3]| Vluns {
        source: Box::new(Arc::clone(&dev[0])),
        target: Box::new(Arc::clone(&dev[1])),
        journal: Box::new(Arc::clone(&dev[2])),
    };
    let vol = Volume::create_on("v", vluns(&dev), layout(), opts(false)).expect("create");
    let old = pattern(1, 0, 64 * KIB);
    vol.write(0, &old).expect("write");
    vol.destage_all()
        .expect("the old data is on the source, durable");
    // Fill the cache almost to its limit, so that landing the request destages in its middle.
    let fill = pattern(2, 256 * KIB, 56 * KIB);
    vol.write(256 * KIB, &fill).expect("write");
    let mut before = vec![0u8; SIZE as usize];
    vol.read(0, &mut before).expect("read");
    // The power fails at the source's next I/O: the destage's first write. A zeroing request
    // of the whole volume is larger than the cache takes at once, so the engine lands it in
    // pieces.
    ctl[0].crash_at(ctl[0].io_count());
    let r = vol.write_zeroes(0, SIZE);
    assert!(
        r.is_err(),
        "the set-up no longer destages in the middle of the request; make the cache fuller"
    );
    vol.kill();
    // Restart on what the media hold.
    let after = FaultController::new();
    let restarted = |d: &Arc<CrashVlun>| -> Box<dyn Vlun> {
        Box::new(CrashVlun::from_image(
            &after,
            d.crash_image(CrashMode::DropAll, 0),
        ))
    };
    let vol = Volume::open_on(
        "v",
        Vluns {
            source: restarted(&dev[0]),
            target: restarted(&dev[1]),
            journal: restarted(&dev[2]),
        },
        opts(false),
    )
    .expect("recover");
    let mut got = vec![0u8; SIZE as usize];
    vol.read(0, &mut got).expect("read");
    let zeroed = got.iter().filter(|&&b| b == 0).count();
    assert!(
        got == before || zeroed == got.len(),
        "the request is torn: {zeroed:#x} bytes of the volume are zero, the rest is the old data"
    );
    vol.close().expect("close");
}

/// The pause of a source VLUN's next `sync`, once armed: it says so and waits for the test to
/// let it go on. The call that made it has then passed every check a failed volume stops a
/// call at.
#[derive(Debug, Default)]
struct Pause {
    armed: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl Pause {
    /// Arms the pause: the first receiver hears of the paused call, the sender lets it go on
    /// (or its drop does).
    fn arm(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (arrived, arrival) = mpsc::channel();
        let (go, went) = mpsc::channel();
        *self.armed.lock().unwrap_or_else(PoisonError::into_inner) = Some((arrived, went));
        (arrival, go)
    }

    fn pass(&self) {
        let armed = self
            .armed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((arrived, go)) = armed {
            let _ = arrived.send(());
            let _ = go.recv();
        }
    }
}

/// What broke: a metadata commit that fails fails the volume, but it has already taken the
/// durable pending snapshots off the pending list and, for a journal head move, set the new
/// head in RAM. A call on another thread that had passed its checks before (here a head move
/// waiting for its source sync; with the background destager, the journal writer's head move
/// racing a destage batch's commit) went on to write the superblock from that RAM: the
/// journal head past the snapshot's record, the log without its creation. The call returned
/// `Ok` from a failed volume, and the acknowledged snapshot was gone after a reopen.
#[test]
fn a_metadata_commit_racing_one_that_failed_is_refused_and_the_acknowledged_snapshot_survives() {
    let d = Devices::new();
    let pause = Arc::new(Pause::default());
    let source = Arc::new(SyncHook {
        inner: Arc::clone(&d.mem[0]),
        before_sync: Box::new({
            let pause = Arc::clone(&pause);
            move || pause.pass()
        }),
    });
    let vluns = || Vluns {
        source: Box::new(Arc::clone(&source)),
        ..d.vluns()
    };
    let vol = Volume::create_on("v", vluns(), layout(), opts(false)).expect("create");
    let vol = Held(Some(vol));
    vol.snapshot_create("s0").expect("snapshot s0");
    vol.destage_all()
        .expect("s0's creation moves into the metadata log");
    vol.snapshot_create("s1")
        .expect("snapshot s1, durable in the journal only");
    let (moved, deleted) = std::thread::scope(|scope| {
        let (arrival, go) = pause.arm();
        // Moves the journal head past s1's record: the source sync first, then the
        // superblock, with s1's creation going into the log.
        let mover = scope.spawn(|| vol.destage_all());
        arrival
            .recv_timeout(CASE_TIMEOUT)
            .expect("the set-up no longer moves the journal head in destage_all");
        // Meanwhile a commit of its own takes s1's creation along and fails.
        d.fail_next(1, Kind::Write);
        let deleted = vol.snapshot_delete("s0");
        drop(go);
        (mover.join().expect("the head move does not panic"), deleted)
    });
    assert!(
        matches!(
            deleted,
            Err(Error::Io {
                device: Device::Target,
                ..
            })
        ),
        "the set-up no longer fails the deletion's metadata write: {deleted:?}"
    );
    let mut problems = Vec::new();
    if !matches!(moved, Err(Error::Failed(_))) {
        problems.push(format!(
            "the head move that went on after the volume failed returned {moved:?}, not Error::Failed"
        ));
    }
    let _ = vol.close();
    let vol = Held(Some(
        Volume::open_on("v", vluns(), opts(false)).expect("reopen"),
    ));
    if vol.snapshot("s1").is_err() {
        problems.push("snapshot s1 was acknowledged and is gone after a reopen".into());
    }
    assert!(problems.is_empty(), "{}", problems.join("; "));
    vol.close().expect("close");
}
