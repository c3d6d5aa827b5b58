//! A full file system costs a request, never the volume. What broke (issue 10, finding 4): a
//! host file system that filled up failed the volume with EIO until it was reopened (with a
//! message about the snapshot store's cap when there was none), and without snapshots the
//! source write failed after the write had been acknowledged and flushed.
//!
//! Now the journal's ring is allocated when the volume is created, a write gets room for
//! its chunk on the source before it is accepted, the destager gets room for preserved
//! copies and metadata before it writes them, and a destage that finds no room stops
//! cleanly and resumes once there is. A write that cannot get room gets ENOSPC and changes
//! nothing; once space is freed, the same volume takes writes again.
//!
//! Freed slots are given back too (finding 5): the target's allocated size follows what it
//! holds.

#[allow(dead_code)] // each test file uses its own part of the helpers
mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{pattern, Fixture, KIB, MIB};
use snapvol_engine::fault::{CrashMode, CrashVlun, FaultController, IoOp, OpFilter};
use snapvol_engine::units::Geometry;
use snapvol_engine::{CreateOptions, Error, Layout, Store, Vluns, Volume, VolumeOptions};

const CHUNK: u64 = 64 * KIB;

/// The live volume and snapshots as they should read.
struct Oracle {
    live: Vec<u8>,
    snapshots: Vec<(String, Vec<u8>)>,
}

impl Oracle {
    fn assert_matches(&self, vol: &Volume, when: &str) {
        let mut buf = vec![0u8; self.live.len()];
        vol.read(0, &mut buf).unwrap();
        assert!(buf == self.live, "live volume {when}");
        for (name, image) in &self.snapshots {
            let seq = vol.snapshot(name).unwrap().seq;
            vol.read_snapshot(seq, 0, &mut buf).unwrap();
            assert!(&buf == image, "snapshot {name} {when}");
        }
    }
}

fn is_enospc(e: &Error) -> bool {
    e.errno() == libc::ENOSPC
}

/// Writes `pattern(tag)` over `[off, off + len)`: done (the oracle follows), or refused with
/// ENOSPC (nothing changed). Any other outcome fails the test.
fn try_write(vol: &Volume, o: &mut Oracle, tag: u64, off: u64, len: u64) -> bool {
    let data = pattern(tag, off, len);
    match vol.write(off, &data) {
        Ok(()) => {
            o.live[off as usize..(off + len) as usize].copy_from_slice(&data);
            true
        }
        Err(e) if is_enospc(&e) => false,
        Err(e) => panic!("a write failed otherwise than with ENOSPC: {e}"),
    }
}

fn crash_devices(size: u64) -> (Arc<FaultController>, Vluns, [Arc<CrashVlun>; 3]) {
    let ctl = FaultController::new();
    let devs = [
        Arc::new(CrashVlun::new(&ctl, size)),
        Arc::new(CrashVlun::new(&ctl, 0)),
        Arc::new(CrashVlun::new(&ctl, 0)),
    ];
    let vluns = Vluns {
        source: Box::new(devs[0].clone()),
        target: Box::new(devs[1].clone()),
        journal: Box::new(devs[2].clone()),
    };
    (ctl, vluns, devs)
}

/// A volume of `size` bytes (64 KiB chunks, a 4 MiB journal, no cap on the target) on
/// simulated devices whose controller can fill them up.
fn volume_on_crash_devices(
    size: u64,
    opts: VolumeOptions,
) -> (Arc<FaultController>, [Arc<CrashVlun>; 3], Volume) {
    let (ctl, vluns, devs) = crash_devices(size);
    let layout = Layout {
        geometry: Geometry::new(size, CHUNK as u32).unwrap(),
        target_cap: None,
        journal_size: 4 << 20,
        write_mode: Default::default(),
    };
    let vol = Volume::create_on("v", vluns, layout, opts).unwrap();
    (ctl, devs, vol)
}

fn check_clean(devs: &[Arc<CrashVlun>; 3], when: &str) {
    let opts = snapvol_engine::check::CheckOptions {
        data: true,
        ..Default::default()
    };
    let r = snapvol_engine::check::check_with(&*devs[0], &*devs[1], &*devs[2], opts).unwrap();
    assert!(r.is_clean(), "check {when}: {:?}", r.problems);
}

/// What a power loss right now leaves of the three devices (each cut at its own random point
/// among its unsynced writes), as fresh devices.
fn power_loss(devs: &[Arc<CrashVlun>; 3], seed: u64) -> Vluns {
    let ctl = FaultController::new();
    let dev = |d: &Arc<CrashVlun>, seed| {
        Box::new(CrashVlun::from_image(
            &ctl,
            d.crash_image(CrashMode::Random, seed),
        ))
    };
    Vluns {
        source: dev(&devs[0], seed),
        target: dev(&devs[1], seed + 1),
        journal: dev(&devs[2], seed + 2),
    }
}

/// ENOSPC at each point the engine asks for space, one point per run: a fresh 2 MiB volume
/// (256 KiB cache, destaged by the writers themselves, so the points are the same every run)
/// is readied by `setup`, the fault is armed at point `k`, `body` runs; then the volume must
/// read as the oracle says, close cleanly and pass `check`. Returns how many points there
/// were (runs in which the fault fired).
fn sweep_space_points(
    setup: impl Fn(&Volume, &mut Oracle),
    mut body: impl FnMut(u64, &[Arc<CrashVlun>; 3], &Volume, &mut Oracle),
) -> u64 {
    const SIZE: u64 = 2 * MIB;
    for k in 0.. {
        let opts = VolumeOptions {
            cache_size: 256 * KIB,
            background_destage: false,
            ..VolumeOptions::default()
        };
        let (ctl, devs, vol) = volume_on_crash_devices(SIZE, opts);
        let mut o = Oracle {
            live: vec![0u8; SIZE as usize],
            snapshots: Vec::new(),
        };
        setup(&vol, &mut o);
        let base = ctl.op_count(OpFilter::Only(IoOp::ReserveSpace));
        ctl.fail_at_with(base + k, OpFilter::Only(IoOp::ReserveSpace), libc::ENOSPC);
        body(k, &devs, &vol, &mut o);
        let at = format!("(ENOSPC at space request {k})");
        o.assert_matches(&vol, &at);
        let fired = ctl.faults_injected() > 0;
        vol.close()
            .unwrap_or_else(|e| panic!("point {k}: close: {e}"));
        check_clean(&devs, &at);
        if !fired {
            return k;
        }
    }
    unreachable!()
}

#[test]
fn a_full_file_system_refuses_writes_with_enospc_and_the_volume_takes_them_once_space_is_freed() {
    const SIZE: u64 = 8 * MIB;
    let opts = VolumeOptions {
        cache_size: MIB,
        ..VolumeOptions::default()
    };
    let (ctl, devs, vol) = volume_on_crash_devices(SIZE, opts);
    let mut o = Oracle {
        live: vec![0u8; SIZE as usize],
        snapshots: Vec::new(),
    };
    assert!(try_write(&vol, &mut o, 1, 0, SIZE));
    vol.snapshot_create("s1").unwrap();
    o.snapshots.push(("s1".into(), o.live.clone()));

    // The target's file system fills up: overwrites need their originals preserved, which
    // needs room there.
    ctl.fill_up();
    let mut refused = 0;
    let mut accepted = 0;
    for i in 0..(SIZE / CHUNK) {
        if try_write(&vol, &mut o, 100 + i, i * CHUNK, CHUNK) {
            accepted += 1;
        } else {
            refused += 1;
        }
        let flushed = vol.flush();
        assert!(
            flushed.as_ref().is_ok_or_enospc(),
            "a FLUSH failed otherwise than with ENOSPC: {flushed:?}"
        );
    }
    assert!(refused > 0, "the full file system refused some writes");
    assert!(
        vol.info().snapshots.len() == 1,
        "the volume answers as ever: {:?}",
        vol.info()
    );

    // Everything acknowledged can be flushed while the disk is full (the journal's ring was
    // allocated at create), and a power loss now keeps all of it.
    vol.flush().unwrap();
    let crashed = |seed| power_loss(&devs, seed);
    for seed in [1, 7, 42] {
        let after = Volume::open_on("v", crashed(seed), VolumeOptions::default()).unwrap();
        o.assert_matches(
            &after,
            &format!("after a power loss while full (seed {seed})"),
        );
        after.close().unwrap();
    }

    // Space comes back: the same volume takes every write again.
    ctl.free_space();
    for i in 0..(SIZE / CHUNK) {
        assert!(
            try_write(&vol, &mut o, 200 + i, i * CHUNK, CHUNK),
            "write {i} after space came back"
        );
    }
    vol.flush().unwrap();
    vol.snapshot_create("s2").unwrap();
    o.snapshots.push(("s2".into(), o.live.clone()));
    o.assert_matches(&vol, "after space came back");
    eprintln!(
        "with the file system full: {accepted} writes accepted, {refused} refused with ENOSPC"
    );
    vol.close().unwrap();
    check_clean(&devs, "after the close");
    let reopened = Volume::open_on("v", crashed(0), VolumeOptions::default()).unwrap();
    o.assert_matches(&reopened, "after a reopen");
    reopened.close().unwrap();
}

trait OkOrEnospc {
    fn is_ok_or_enospc(&self) -> bool;
}

impl OkOrEnospc for Result<&(), &Error> {
    fn is_ok_or_enospc(&self) -> bool {
        match self {
            Ok(()) => true,
            Err(e) => is_enospc(e),
        }
    }
}

/// ENOSPC at each point the engine asks for space (the source's room for a write, the
/// target's for preserved copies and for metadata), one at a time: the request that needed it
/// fails with ENOSPC or a destage waits; a retry succeeds; nothing acknowledged is lost and
/// every snapshot reads what it held.
#[test]
fn enospc_at_every_point_the_engine_asks_for_space_costs_only_that_request() {
    const SIZE: u64 = 2 * MIB;
    let mut refusals = 0;
    let points = sweep_space_points(
        |_, _| {},
        |k, _, vol, o| {
            // Each step retried once if the one ENOSPC hit it.
            let mut step = |o: &mut Oracle, f: &dyn Fn(&mut Oracle) -> Result<(), Error>| {
                if let Err(e) = f(o) {
                    assert!(is_enospc(&e), "point {k}: {e}");
                    refusals += 1;
                    f(o).unwrap_or_else(|e| panic!("point {k}: the retry failed: {e}"));
                }
            };
            for round in 0..4u64 {
                step(o, &|o| {
                    let off = round * 7 * CHUNK % SIZE;
                    let data = pattern(round, off, 3 * CHUNK);
                    vol.write(off, &data)?;
                    o.live[off as usize..(off + 3 * CHUNK) as usize].copy_from_slice(&data);
                    Ok(())
                });
                step(o, &|_| vol.flush());
                step(o, &|o| {
                    let name = format!("s{round}");
                    vol.snapshot_create(&name)?;
                    o.snapshots.push((name, o.live.clone()));
                    Ok(())
                });
                step(o, &|_| vol.destage_all());
            }
            step(o, &|o| {
                vol.snapshot_delete("s1")?;
                o.snapshots.retain(|(n, _)| n != "s1");
                Ok(())
            });
        },
    );
    eprintln!("{points} points where the engine asks for space, each refused once: {refusals} requests got ENOSPC and succeeded when retried");
    assert!(points >= 5, "{points}");
}

/// What broke (issue 15): a request larger than a quarter of the cache is journaled whole and
/// then lands piece by piece; a later piece that found the file system full (a destage for its
/// room paused) got ENOSPC after earlier pieces had landed. The client was told the write
/// failed while part of it read back new, and a power loss then replayed all of it.
///
/// ENOSPC at each point the engine asks for space, while such requests overwrite preserved
/// data: each one is done whole (and survives a power loss) or refused having changed
/// nothing, live or after a power loss.
#[test]
fn a_request_larger_than_a_quarter_of_the_cache_lands_whole_or_not_at_all_when_space_runs_out() {
    const SIZE: u64 = 2 * MIB;
    const LEN: u64 = 12 * CHUNK;
    let mut refused = 0;
    let points = sweep_space_points(
        |vol, o| {
            assert!(try_write(vol, o, 1, 0, SIZE));
            vol.snapshot_create("s").unwrap();
            o.snapshots.push(("s".into(), o.live.clone()));
        },
        |k, devs, vol, o| {
            for round in 0..6u64 {
                let off = round * 5 * CHUNK % (SIZE - LEN);
                if try_write(vol, o, 10 + round, off, LEN) {
                    continue;
                }
                refused += 1;
                o.assert_matches(vol, &format!("after a refused request (point {k})"));
                // A power loss now leaves the same: what was acknowledged was journaled and
                // synced before it landed (the journal writer is this thread).
                let after =
                    Volume::open_on("v", power_loss(devs, k), VolumeOptions::default()).unwrap();
                o.assert_matches(&after, &format!("after a power loss (point {k})"));
                after.close().unwrap();
                assert!(try_write(vol, o, 10 + round, off, LEN), "the retry");
            }
            vol.flush().unwrap();
        },
    );
    eprintln!("{points} points where the engine asks for space: {refused} large requests refused (each having changed nothing), the rest landed whole");
    assert!(points >= 5, "{points}");
}

/// The same race with the background destager: requests larger than a quarter of the cache
/// from one thread and chunk writes from two others, over preserved data, while the file
/// system fills up and is freed again and snapshots are taken. Each thread owns its range,
/// so after every request its range must read all new (done) or all as before (ENOSPC).
#[test]
fn racing_writers_on_a_file_system_that_fills_and_frees_lose_or_tear_nothing() {
    const SIZE: u64 = 8 * MIB;
    const LARGE: u64 = 2 * MIB;
    let opts = VolumeOptions {
        cache_size: MIB,
        ..VolumeOptions::default()
    };
    let (ctl, devs, vol) = volume_on_crash_devices(SIZE, opts);
    let vol = Arc::new(vol);
    vol.write(0, &pattern(1, 0, SIZE)).unwrap();
    vol.snapshot_create("s0").unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Thread t owns [t * SIZE / 4, (t + 1) * SIZE / 4); thread 0 writes it whole in large
    // requests, the others chunk by chunk.
    let writers: Vec<_> = (0..3u64)
        .map(|t| {
            let (vol, stop) = (vol.clone(), stop.clone());
            std::thread::spawn(move || {
                let base = t * SIZE / 4;
                let mut image = pattern(1, base, SIZE / 4);
                let (mut done, mut refused) = (0u64, 0u64);
                for tag in 100.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let (off, len) = if t == 0 {
                        (base + (tag % 2) * (SIZE / 4 - LARGE), LARGE)
                    } else {
                        (base + (tag * 7 % (SIZE / 4 / CHUNK)) * CHUNK, CHUNK)
                    };
                    let data = pattern(tag, off, len);
                    let at = (off - base) as usize..(off - base + len) as usize;
                    match vol.write(off, &data) {
                        Ok(()) => {
                            image[at.clone()].copy_from_slice(&data);
                            done += 1;
                        }
                        Err(e) if is_enospc(&e) => refused += 1,
                        Err(e) => panic!("thread {t}: a write failed otherwise: {e}"),
                    }
                    let mut back = vec![0u8; len as usize];
                    vol.read(off, &mut back).unwrap();
                    assert!(
                        back == image[at],
                        "thread {t}: request {tag} at {off} reads neither all new nor all old"
                    );
                }
                (base, image, done, refused)
            })
        })
        .collect();
    for round in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(15));
        if round % 2 == 0 {
            ctl.fill_up();
        } else {
            ctl.free_space();
        }
        // A snapshot, like a write, may be refused with ENOSPC while the file system is full
        // (and change nothing).
        if round % 3 == 2 {
            match vol.snapshot_create(&format!("s{round}")) {
                Ok(_) => {}
                Err(e) if is_enospc(&e) => {}
                Err(e) => panic!("a snapshot failed otherwise than with ENOSPC: {e}"),
            }
        }
    }
    ctl.free_space();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut live = pattern(1, 0, SIZE);
    for w in writers {
        let (base, image, done, refused) = w.join().unwrap();
        eprintln!("writer at {base}: {done} requests done, {refused} refused with ENOSPC");
        live[base as usize..base as usize + image.len()].copy_from_slice(&image);
    }
    vol.flush().unwrap();
    let o = Oracle {
        live,
        snapshots: vec![("s0".into(), pattern(1, 0, SIZE))],
    };
    o.assert_matches(&vol, "after the race");
    let after = Volume::open_on("v", power_loss(&devs, 3), VolumeOptions::default()).unwrap();
    o.assert_matches(&after, "after a power loss");
    after.close().unwrap();
    Arc::try_unwrap(vol).unwrap().close().unwrap();
    check_clean(&devs, "after the race");
}

/// What broke (issue 10, finding 5): after many snapshot deletions a target file kept its
/// size on disk with thousands of free slots. Freed slots are now holes.
#[test]
fn deleted_snapshots_give_their_space_back_to_the_file_system() {
    let fx = Fixture::new();
    let vol = fx.create("v", 16 * MIB, CHUNK, None, common::opts(4 * MIB));
    vol.write(0, &pattern(1, 0, 16 * MIB)).unwrap();
    for i in 0..4u64 {
        vol.snapshot_create(&format!("s{i}")).unwrap();
        vol.write(0, &pattern(10 + i, 0, 16 * MIB)).unwrap();
    }
    vol.destage_all().unwrap();
    let target = fx.target_path("v");
    let allocated = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
    let full = allocated(&target);
    assert!(full >= 64 * MIB, "four copies of 16 MiB preserved: {full}");
    for i in 0..4u64 {
        vol.snapshot_delete(&format!("s{i}")).unwrap();
    }
    let info = vol.info();
    assert_eq!(info.target_used_bytes, 0);
    let after = allocated(&target);
    eprintln!(
        "target allocated: {full} bytes with four snapshots, {after} after deleting them (metadata {} bytes)",
        info.metadata_bytes
    );
    assert!(
        after <= info.metadata_bytes + 2 * MIB,
        "the target still takes {after} bytes on disk for {} of metadata",
        info.metadata_bytes
    );
    vol.close().unwrap();
}

/// A loop-mounted ext4 file system of its own, unmounted and removed when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl SmallFs {
    fn new(mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(mib * MIB)
            .unwrap();
        let run = |cmd: &mut Command| {
            let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
            assert!(
                out.status.success(),
                "{cmd:?} failed (these tests need e2fsprogs and root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&img));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt));
        Self { dir, mnt }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = &self.dir;
    }
}

/// The real thing: a store on a small ext4 file system that fills up under writes and
/// preservations; writes get ENOSPC; a file removed frees space; the same open volume takes
/// writes again; everything acknowledged and flushed reads back, every snapshot intact.
#[test]
fn a_store_on_a_small_ext4_that_fills_up_goes_on_once_space_is_freed() {
    const SIZE: u64 = 32 * MIB;
    let fs = SmallFs::new(96);
    let store = Store::new(fs.mnt.join("store"));
    let create = CreateOptions {
        chunk_size: CHUNK as u32,
        journal_size: 4 << 20,
        ..CreateOptions::new(SIZE)
    };
    let vol = store.create("v", &create, common::opts(2 * MIB)).unwrap();
    // Most of what is left goes to a file that stands for everything else on the disk.
    let filler = fs.mnt.join("filler");
    let free = nix_free(&fs.mnt);
    std::fs::File::create(&filler).unwrap().set_len(0).unwrap();
    fallocate_file(&filler, free.saturating_sub(20 * MIB));
    // A little more, given back later so that a snapshot can be taken.
    let spare = fs.mnt.join("spare");
    fallocate_file(&spare, MIB);

    let mut o = Oracle {
        live: vec![0u8; SIZE as usize],
        snapshots: Vec::new(),
    };
    // Fill the volume until the source's file system refuses.
    let mut first_refused = None;
    for i in 0..(SIZE / MIB) {
        if !try_write(&vol, &mut o, 1 + i, i * MIB, MIB) {
            first_refused.get_or_insert(i);
        }
    }
    vol.flush().unwrap();
    assert!(first_refused.is_some(), "the small file system filled up");
    // A snapshot needs room for its metadata: refused while nothing is free, taken once a
    // little is.
    let refused = vol.snapshot_create("s1").unwrap_err();
    assert_eq!(refused.errno(), libc::ENOSPC, "{refused}");
    std::fs::remove_file(&spare).unwrap();
    vol.snapshot_create("s1").unwrap();
    o.snapshots.push(("s1".into(), o.live.clone()));
    // Overwrites need their originals preserved in the target: refused too.
    let mut refused_overwrites = 0;
    for i in 0..8u64 {
        if !try_write(&vol, &mut o, 500 + i, i * MIB, MIB) {
            refused_overwrites += 1;
        }
        let _ = vol.flush();
    }
    o.assert_matches(&vol, "while the file system is full");

    // Space is freed: the same volume takes every write.
    std::fs::remove_file(&filler).unwrap();
    for i in 0..(SIZE / MIB) {
        assert!(
            try_write(&vol, &mut o, 900 + i, i * MIB, MIB),
            "write {i} after space was freed"
        );
    }
    vol.flush().unwrap();
    o.assert_matches(&vol, "after space was freed");
    eprintln!(
        "ext4 of 96 MiB: writes refused from MiB {} on, {refused_overwrites} of 8 overwrites refused; all taken after freeing",
        first_refused.unwrap()
    );
    vol.close().unwrap();
    let report = store
        .check_with(
            "v",
            snapvol_engine::check::CheckOptions {
                data: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let vol = store.open("v", common::opts(2 * MIB)).unwrap();
    o.assert_matches(&vol, "after a reopen");
    vol.close().unwrap();
}

/// Free bytes on the file system holding `path`.
fn nix_free(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes")
}

fn fallocate_file(path: &Path, len: u64) {
    let status = Command::new("fallocate")
        .args(["-l", &len.to_string()])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}
