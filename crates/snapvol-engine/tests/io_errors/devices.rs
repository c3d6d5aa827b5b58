//! Devices: `MemVlun`s behind one `FaultController`, with a record of every call.

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};

use snapvol_engine::error::Device;
use snapvol_engine::fault::{FaultController, FaultyVlun, IoOp};
use snapvol_engine::units::Geometry;
use snapvol_engine::vlun::{MemVlun, Vlun};
use snapvol_engine::{Error, Layout, Vluns, Volume, VolumeOptions};

use crate::{CACHE, CHUNK, JOURNAL, SIZE};

/// Every I/O call of a run, in the order the controller admitted it (exact when one thread
/// does the I/O), and the calls that failed with the injected `EIO`.
#[derive(Debug, Default)]
struct Log {
    calls: Vec<(Device, IoOp)>,
    failed: Vec<(Device, IoOp)>,
}

/// One device as the engine sees it: the faulty wrapper, recorded.
#[derive(Debug)]
struct Recorded {
    device: Device,
    inner: FaultyVlun<Arc<MemVlun>>,
    log: Arc<Mutex<Log>>,
}

impl Recorded {
    fn call<T>(
        &self,
        op: IoOp,
        f: impl FnOnce(&FaultyVlun<Arc<MemVlun>>) -> io::Result<T>,
    ) -> io::Result<T> {
        // Logged before the controller admits it: with one I/O thread the log's order is the
        // controller's.
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.calls.push((self.device, op));
        drop(log);
        let r = f(&self.inner);
        if let Err(e) = &r {
            if e.raw_os_error() == Some(libc::EIO) {
                let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
                log.failed.push((self.device, op));
            }
        }
        r
    }
}

impl Vlun for Recorded {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.call(IoOp::Read, |v| v.read_at(buf, offset))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.call(IoOp::Write, |v| v.write_at(buf, offset))
    }
    fn sync(&self) -> io::Result<()> {
        self.call(IoOp::Sync, Vlun::sync)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn growable(&self) -> bool {
        self.inner.growable()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.call(IoOp::SetLen, |v| v.set_len(len))
    }
    fn punch_zero(&self, offset: u64, len: u64) -> io::Result<()> {
        self.call(IoOp::PunchZero, |v| v.punch_zero(offset, len))
    }
    fn growth_room(&self) -> Option<u64> {
        self.inner.growth_room()
    }
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        self.inner.next_data(offset)
    }
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        self.inner.next_hole(offset)
    }
}

/// The three devices of one simulated machine. The memory outlives every open of the volume,
/// so a reopen sees exactly what the engine wrote.
pub(crate) struct Machine {
    pub(crate) ctl: Arc<FaultController>,
    mem: [Arc<MemVlun>; 3],
    log: Arc<Mutex<Log>>,
    /// The fault fired while a volume was being killed.
    pub(crate) fired_in_kill: AtomicBool,
    /// A caller has seen an error.
    pub(crate) error_reported: AtomicBool,
}

const DEVICES: [Device; 3] = [Device::Source, Device::Target, Device::Journal];

impl Machine {
    pub(crate) fn new() -> Self {
        Self {
            ctl: FaultController::new(),
            mem: [
                Arc::new(MemVlun::new(SIZE)),
                Arc::new(MemVlun::new(0)),
                Arc::new(MemVlun::new(0)),
            ],
            log: Arc::default(),
            fired_in_kill: AtomicBool::new(false),
            error_reported: AtomicBool::new(false),
        }
    }

    fn vlun(&self, i: usize) -> Box<dyn Vlun> {
        Box::new(Recorded {
            device: DEVICES[i],
            inner: FaultyVlun::new(&self.ctl, Arc::clone(&self.mem[i])),
            log: Arc::clone(&self.log),
        })
    }

    fn vluns(&self) -> Vluns {
        Vluns {
            source: self.vlun(0),
            target: self.vlun(1),
            journal: self.vlun(2),
        }
    }

    pub(crate) fn create(&self, opts: &VolumeOptions) -> Volume {
        let layout = Layout {
            journal_size: JOURNAL,
            ..Layout::new(Geometry::new(SIZE, CHUNK).expect("geometry"))
        };
        Volume::create_on("v", self.vluns(), layout, opts.clone()).expect("create the volume")
    }

    pub(crate) fn open(&self, opts: &VolumeOptions) -> Result<Volume, Error> {
        Volume::open_on("v", self.vluns(), opts.clone())
    }

    pub(crate) fn calls(&self) -> Vec<(Device, IoOp)> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .calls
            .clone()
    }

    pub(crate) fn failed_calls(&self) -> Vec<(Device, IoOp)> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failed
            .clone()
    }
}

pub(crate) fn opts(background: bool) -> VolumeOptions {
    VolumeOptions {
        cache_size: CACHE,
        background_destage: background,
        ..VolumeOptions::default()
    }
}
