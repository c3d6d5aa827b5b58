//! The engine on RBD images under the faults that apply to a network block device, against a
//! real cluster: an `EIO` from one call of one image, and the client stopping dead at one call
//! (its process killed, its host gone: what librbd acknowledged is in the cluster, nothing
//! after it). The volume's three VLUNs are RBD images, each behind the engine's `FaultyVlun`;
//! a fixed workload of writes, flushes, snapshots and destages runs until the fault, then the
//! volume is opened again on the same images, as another host would after a takeover.
//!
//! Rules, as for files: the error reaches a caller; nothing acknowledged before a flush that
//! returned `Ok` is lost; every snapshot whose creation returned reads exactly what it held.
//! Fault points are spread evenly over every call of the workload (creation included).

mod common;

use std::sync::Arc;

use common::{cluster, pattern, ScratchImage, POOL};
use snapvol_engine::fault::{FaultController, FaultyVlun, OpFilter};
use snapvol_engine::units::{Geometry, SnapshotSeq};
use snapvol_engine::vlun::Vlun;
use snapvol_engine::{Layout, Vluns, Volume, VolumeOptions};
use snapvol_rbd::IoCtx;

const KIB: u64 = 1 << 10;
const SIZE: u64 = 2 << 20;
const CHUNK: u32 = 64 << 10;
/// Fault points per kind of fault.
const POINTS: u64 = 12;

#[derive(Debug, Clone, Copy)]
enum Op {
    Write(u64, u64, u64),
    Flush,
    Snapshot(&'static str),
    Destage,
}

/// Overwrites that preserve originals for two snapshots, flushes between them, and destages
/// on the writer's thread (a small cache, no background destager), so that the calls come in
/// the same order every run.
const WORKLOAD: &[Op] = &[
    Op::Write(0, 256 * KIB, 1),
    Op::Write(128 * KIB, 64 * KIB, 2),
    Op::Flush,
    Op::Snapshot("s1"),
    Op::Write(64 * KIB, 512 * KIB, 3),
    Op::Write(1024 * KIB, 64 * KIB, 4),
    Op::Flush,
    Op::Write(0, 64 * KIB, 5),
    Op::Snapshot("s2"),
    Op::Write(192 * KIB, 320 * KIB, 6),
    Op::Flush,
    Op::Destage,
    Op::Write(512 * KIB, 128 * KIB, 7),
    Op::Flush,
];

fn options() -> VolumeOptions {
    VolumeOptions {
        cache_size: 256 * KIB,
        background_destage: false,
        ..VolumeOptions::default()
    }
}

/// What the workload has made durable: the volume as of the last successful flush, the
/// ranges written since (whose content a fault may leave old or new), and each snapshot whose
/// creation returned, with its content.
#[derive(Default)]
struct Oracle {
    live: Vec<u8>,
    durable: Vec<u8>,
    unflushed: Vec<(u64, u64)>,
    snapshots: Vec<(&'static str, Vec<u8>)>,
}

/// Runs the workload until the first error; returns whether one happened.
fn run(vol: &Volume, oracle: &mut Oracle) -> bool {
    for op in WORKLOAD {
        let done = match *op {
            Op::Write(off, len, seed) => {
                let data = pattern(seed, off, len as usize);
                // Counted as unflushed before it is tried: a failed write may land.
                oracle.unflushed.push((off, len));
                let r = vol.write(off, &data);
                if r.is_ok() {
                    oracle.live[off as usize..(off + len) as usize].copy_from_slice(&data);
                }
                r
            }
            Op::Flush => vol.flush().map(|()| {
                oracle.durable.clone_from(&oracle.live);
                oracle.unflushed.clear();
            }),
            Op::Snapshot(name) => vol.snapshot_create(name).map(|_| {
                // A snapshot holds every acknowledged write and is durable when it returns.
                oracle.snapshots.push((name, oracle.live.clone()));
                oracle.durable.clone_from(&oracle.live);
                oracle.unflushed.clear();
            }),
            Op::Destage => vol.destage_all(),
        };
        if done.is_err() {
            return true;
        }
    }
    false
}

/// Three fresh images: source, target, journal.
fn images(io: &IoCtx) -> [ScratchImage; 3] {
    [
        ScratchImage::new(io, "fault-src", SIZE),
        ScratchImage::new(io, "fault-tgt", 0),
        ScratchImage::new(io, "fault-jnl", 0),
    ]
}

fn vluns(images: &[ScratchImage; 3], ctl: Option<&Arc<FaultController>>) -> Vluns {
    let open = |i: usize| -> Box<dyn Vlun> {
        let image = images[i].open();
        match ctl {
            Some(ctl) => Box::new(FaultyVlun::new(ctl, image)),
            None => Box::new(image),
        }
    };
    Vluns {
        source: open(0),
        target: open(1),
        journal: open(2),
    }
}

enum Fault {
    Eio(u64),
    Stop(u64),
}

/// One run with `fault` armed; checks the rules after reopening. Returns the calls made.
fn case(io: &IoCtx, fault: Option<Fault>) -> u64 {
    let images = images(io);
    let ctl = FaultController::new();
    match fault {
        Some(Fault::Eio(i)) => ctl.fail_at(i, OpFilter::Any),
        Some(Fault::Stop(i)) => ctl.crash_at(i),
        None => {}
    }
    let layout = Layout {
        journal_size: 4 << 20,
        ..Layout::new(Geometry::new(SIZE, CHUNK).unwrap())
    };
    let mut oracle = Oracle {
        live: vec![0; SIZE as usize],
        durable: vec![0; SIZE as usize],
        ..Oracle::default()
    };
    let created = Volume::create_on("v", vluns(&images, Some(&ctl)), layout, options());
    let failed = match &created {
        Ok(vol) => run(vol, &mut oracle),
        Err(_) => true,
    };
    let calls = ctl.io_count();
    if fault.is_none() {
        assert!(!failed, "the workload failed without a fault");
    }
    let Ok(vol) = created else {
        return calls; // the fault hit the creation: there is no volume to reopen
    };
    vol.kill();

    // Reopened on the same images, without faults, as the next holder would.
    let vol = match Volume::open_on("v", vluns(&images, None), options()) {
        Ok(v) => v,
        // A fault inside the creation's own writes leaves a volume that never existed.
        Err(e) if oracle.snapshots.is_empty() && oracle.durable.iter().all(|&b| b == 0) => {
            eprintln!("reopen of a volume that had nothing durable: {e}");
            return calls;
        }
        Err(e) => panic!("reopen after the fault: {e}"),
    };
    let mut got = vec![0; SIZE as usize];
    vol.read(0, &mut got).unwrap();
    let mut check = oracle.durable.clone();
    for &(off, len) in &oracle.unflushed {
        // Old or new: take what the volume has there.
        let r = off as usize..(off + len) as usize;
        check[r.clone()].copy_from_slice(&got[r]);
    }
    assert!(got == check, "a flushed write was lost or damaged");
    let live: Vec<(String, SnapshotSeq)> = vol
        .snapshots()
        .into_iter()
        .map(|s| (s.name, s.seq))
        .collect();
    for (name, content) in &oracle.snapshots {
        let seq = live
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("snapshot {name} was lost"))
            .1;
        let mut at = vec![0; SIZE as usize];
        vol.read_snapshot(seq, 0, &mut at).unwrap();
        assert!(&at == content, "snapshot {name} changed");
    }
    // And it works: a write and a flush go through.
    vol.write(0, &pattern(99, 0, 4096)).unwrap();
    vol.flush().unwrap();
    vol.close().unwrap();
    calls
}

#[test]
fn on_rbd_an_eio_or_a_dead_client_at_any_call_loses_nothing_flushed_and_no_snapshot() {
    let Some(cluster) = cluster("faults") else {
        return;
    };
    let io = cluster.ioctx(POOL).unwrap();
    let calls = case(&io, None);
    assert!(calls > 50, "the workload made only {calls} calls");
    for k in 0..POINTS {
        let at = 1 + k * (calls - 1) / POINTS;
        case(&io, Some(Fault::Eio(at)));
        case(&io, Some(Fault::Stop(at)));
    }
}
