//! A volume whose store lock is lost (another host broke it to take the volume over) stops
//! at once: every later read, write, flush and snapshot fails, and closing it writes nothing,
//! while writers race with the loss. What was flushed before the loss is what the next
//! holder opens.

#[allow(dead_code)] // each test file uses its own part of the helpers
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use common::{fingerprint, pattern, KIB, MIB};
use snapvol_engine::catalog::DirCatalog;
use snapvol_engine::{
    Catalog, CreateOptions, Error, Hold, Location, Role, Store, VolumeLock, VolumeOptions,
};

/// A directory store whose exclusive locks can be taken away, as a cluster lock is when
/// another host breaks it.
#[derive(Debug)]
struct Breakable {
    dir: DirCatalog,
    broken: Arc<AtomicBool>,
}

#[derive(Debug)]
struct BreakableHold {
    _real: VolumeLock,
    broken: Arc<AtomicBool>,
}

impl Hold for BreakableHold {
    fn lost(&self) -> Option<String> {
        self.broken
            .load(Ordering::SeqCst)
            .then(|| "broken by another host".to_owned())
    }
}

impl Breakable {
    fn wrap(&self, real: VolumeLock) -> VolumeLock {
        VolumeLock::new(Box::new(BreakableHold {
            _real: real,
            broken: self.broken.clone(),
        }))
    }
}

impl Catalog for Breakable {
    fn name(&self) -> String {
        self.dir.name()
    }
    fn prepare(&self) -> snapvol_engine::Result<()> {
        self.dir.prepare()
    }
    fn list(&self) -> snapvol_engine::Result<Vec<String>> {
        self.dir.list()
    }
    fn exists(&self, volume: &str) -> snapvol_engine::Result<bool> {
        self.dir.exists(volume)
    }
    fn reserve(&self, volume: &str) -> snapvol_engine::Result<VolumeLock> {
        Ok(self.wrap(self.dir.reserve(volume)?))
    }
    fn unreserve(&self, volume: &str) {
        self.dir.unreserve(volume)
    }
    fn default_location(&self, volume: &str, role: Role) -> String {
        self.dir.default_location(volume, role)
    }
    fn resolve(&self, volume: &str, written: &str) -> Location {
        self.dir.resolve(volume, written)
    }
    fn read_descriptor(&self, volume: &str) -> snapvol_engine::Result<Vec<u8>> {
        self.dir.read_descriptor(volume)
    }
    fn write_descriptor(&self, volume: &str, bytes: &[u8]) -> snapvol_engine::Result<()> {
        self.dir.write_descriptor(volume, bytes)
    }
    fn lock(&self, volume: &str, exclusive: bool) -> snapvol_engine::Result<VolumeLock> {
        Ok(self.wrap(self.dir.lock(volume, exclusive)?))
    }
    fn remove(&self, volume: &str) -> snapvol_engine::Result<()> {
        self.dir.remove(volume)
    }
    fn control_socket(&self) -> PathBuf {
        self.dir.control_socket()
    }
}

fn store(root: &Path, broken: &Arc<AtomicBool>) -> Store {
    Store::with_catalog(Arc::new(Breakable {
        dir: DirCatalog::new(root),
        broken: broken.clone(),
    }))
}

#[test]
fn a_volume_that_lost_its_lock_refuses_everything_writes_nothing_more_and_keeps_what_was_flushed() {
    const WRITERS: u64 = 4;
    const SIZE: u64 = 8 * MIB;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let broken = Arc::new(AtomicBool::new(false));
    let store = store(&root, &broken);
    let create = CreateOptions {
        chunk_size: 64 * KIB as u32,
        journal_size: 16 << 20,
        ..CreateOptions::new(SIZE)
    };
    let vol = store
        .create("v", &create, VolumeOptions::default())
        .unwrap();
    vol.write(0, &pattern(1, 0, SIZE)).unwrap();
    vol.snapshot_create("s1").unwrap();
    assert_eq!(vol.lock_lost(), None);

    // Each writer owns a quarter of the volume and writes it 64 KiB at a time, flushing after
    // each write; it records how far its acknowledged-and-flushed writes got. Meanwhile the
    // lock is broken.
    let vol = Arc::new(vol);
    let quarter = SIZE / WRITERS;
    let flushed: Vec<Arc<AtomicU64>> = (0..WRITERS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let start = Arc::new(Barrier::new(WRITERS as usize + 1));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (vol, flushed, start) = (vol.clone(), flushed[w as usize].clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let base = w * quarter;
                let mut pos = 0;
                loop {
                    let off = base + pos % quarter;
                    let ok = vol
                        .write(off, &pattern(2, off, 64 * KIB))
                        .and_then(|()| vol.flush());
                    match ok {
                        Ok(()) => {
                            if pos < quarter {
                                flushed.store(pos + 64 * KIB, Ordering::SeqCst);
                            }
                            pos += 64 * KIB;
                        }
                        Err(e) => {
                            assert!(matches!(e, Error::Failed(_)), "{e}");
                            assert!(e.to_string().contains("lost the lock"), "{e}");
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    start.wait();
    // Broken once every writer has had a write flushed, while they keep writing.
    while flushed.iter().any(|f| f.load(Ordering::SeqCst) == 0) {
        std::thread::yield_now();
    }
    broken.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }

    // Everything fails now, and says why.
    let lost = vol.lock_lost().expect("the loss is reported");
    assert!(lost.contains("broken by another host"), "{lost}");
    let mut buf = vec![0; 4096];
    for e in [
        vol.read(0, &mut buf).unwrap_err(),
        vol.write(0, &buf).unwrap_err(),
        vol.flush().unwrap_err(),
        vol.snapshot_create("s2").unwrap_err(),
    ] {
        assert!(e.to_string().contains("lost the lock"), "{e}");
    }
    let snap = vol.snapshots()[0].seq;
    assert!(vol.read_snapshot(snap, 0, &mut buf).is_err());

    // A destage fails too; it waits for a batch that was under way when the lock went, which
    // stops at its next device write or commit. A check holds the metadata log still, so it
    // waits for a metadata write that was under way; later ones are refused.
    assert!(vol.destage_all().is_err());
    let _ = vol.check(false);

    // Closing writes nothing to the volume's devices: the next holder owns them.
    let devices = || {
        let mut files = fingerprint(&root.join("v"));
        files.retain(|name, _| name != "lock");
        files
    };
    let before = devices();
    let vol = Arc::try_unwrap(vol).expect("the writers are done");
    assert!(
        vol.close().is_err(),
        "a volume that lost its lock cannot close cleanly"
    );
    let after = devices();
    let changed: Vec<&String> = after
        .keys()
        .filter(|f| after.get(*f) != before.get(*f))
        .collect();
    assert!(changed.is_empty(), "closing wrote to {changed:?}");

    // The next holder recovers every write acknowledged and flushed before the loss, and the
    // snapshot as it was.
    broken.store(false, Ordering::SeqCst);
    let vol = store.open("v", VolumeOptions::default()).unwrap();
    let mut got = vec![0; SIZE as usize];
    vol.read(0, &mut got).unwrap();
    for w in 0..WRITERS {
        let base = w * quarter;
        let upto = flushed[w as usize].load(Ordering::SeqCst);
        assert!(upto > 0, "writer {w} had a flushed write before the loss");
        let done = (base as usize)..((base + upto) as usize);
        assert!(
            got[done.clone()] == pattern(2, base, upto)[..],
            "writer {w}: a flushed write was lost"
        );
    }
    let mut at_s1 = vec![0; SIZE as usize];
    vol.read_snapshot(snap, 0, &mut at_s1).unwrap();
    assert!(at_s1 == pattern(1, 0, SIZE), "the snapshot changed");
    vol.close().unwrap();
}
