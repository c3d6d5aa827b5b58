//! Devices: the three crash-simulating VLUNs of one machine, and the images a power loss
//! leaves on them.

use std::sync::Arc;

use snapvol_engine::fault::{CrashMode, CrashVlun, FaultController};
use snapvol_engine::Vluns;

use super::judge::check_clean;
use super::workload::SplitMix;

/// The three VLUNs of one simulated machine, attached to one controller.
#[derive(Debug)]
pub struct Devices {
    pub ctl: Arc<FaultController>,
    pub source: Arc<CrashVlun>,
    pub target: Arc<CrashVlun>,
    pub journal: Arc<CrashVlun>,
}

/// What a power loss left on the three devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    pub source: Vec<u8>,
    pub target: Vec<u8>,
    pub journal: Vec<u8>,
}

impl Images {
    /// Lengths and CRC-32C of the three images: equal fingerprints, the same crash state.
    pub(super) fn fingerprint(&self) -> [u32; 6] {
        let mut f = [0; 6];
        for (i, img) in [&self.source, &self.target, &self.journal]
            .iter()
            .enumerate()
        {
            f[2 * i] = img.len() as u32;
            f[2 * i + 1] = crc32c::crc32c(img);
        }
        f
    }
}

impl Devices {
    /// Blank devices for a new volume of `size` bytes.
    pub fn blank(size: u64) -> Self {
        let ctl = FaultController::new();
        Self {
            source: Arc::new(CrashVlun::new(&ctl, size)),
            target: Arc::new(CrashVlun::new(&ctl, 0)),
            journal: Arc::new(CrashVlun::new(&ctl, 0)),
            ctl,
        }
    }

    /// The restart: devices whose durable content is `img`, on a fresh controller.
    pub fn restart(img: Images) -> Self {
        let ctl = FaultController::new();
        Self {
            source: Arc::new(CrashVlun::from_image(&ctl, img.source)),
            target: Arc::new(CrashVlun::from_image(&ctl, img.target)),
            journal: Arc::new(CrashVlun::from_image(&ctl, img.journal)),
            ctl,
        }
    }

    pub fn vluns(&self) -> Vluns {
        Vluns {
            source: Box::new(Arc::clone(&self.source)),
            target: Box::new(Arc::clone(&self.target)),
            journal: Box::new(Arc::clone(&self.journal)),
        }
    }

    pub(super) fn check_clean(&self, when: &str) {
        check_clean(&*self.source, &*self.target, &*self.journal, when);
    }

    pub fn unsynced(&self) -> [usize; 3] {
        [
            self.source.unsynced_count(),
            self.target.unsynced_count(),
            self.journal.unsynced_count(),
        ]
    }

    /// What the power loss leaves, device by device, as `loss` decides.
    pub fn crash_images(&self, loss: Loss) -> Images {
        let devs = [&self.source, &self.target, &self.journal];
        let mut imgs = devs.iter().enumerate().map(|(i, d)| {
            let (mode, seed) = loss.mode_for(i, d.unsynced_count());
            d.crash_image(mode, seed)
        });
        Images {
            source: imgs.next().expect("source"),
            target: imgs.next().expect("target"),
            journal: imgs.next().expect("journal"),
        }
    }
}

/// How a power loss treats the writes not yet synced, on all three devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Every unsynced write lost.
    DropAll,
    /// Every unsynced write reached the media.
    KeepAll,
    /// The first half (in issue order) of each device's unsynced writes reached the media.
    KeepFirstHalf,
    /// Any subset, in any order, each possibly torn at 512-byte sectors.
    Random(u64),
    /// Each device differently: the seed picks one of the above per device.
    Mixed(u64),
}

impl Loss {
    /// The `CrashMode` and seed for device `dev` (0 source, 1 target, 2 journal).
    fn mode_for(self, dev: usize, unsynced: usize) -> (CrashMode, u64) {
        let salt = dev as u64 * 0x1000_0000_01B3;
        match self {
            Loss::DropAll => (CrashMode::DropAll, 0),
            Loss::KeepAll => (CrashMode::KeepAll, 0),
            Loss::KeepFirstHalf => (CrashMode::KeepFirst(unsynced / 2), 0),
            Loss::Random(seed) => (CrashMode::Random, seed ^ salt),
            Loss::Mixed(seed) => {
                let mut rng = SplitMix(seed ^ salt ^ 0x5EED);
                let mode = match rng.below(4) {
                    0 => CrashMode::DropAll,
                    1 => CrashMode::KeepAll,
                    2 => CrashMode::KeepFirst(rng.below(unsynced as u64 + 1) as usize),
                    _ => CrashMode::Random,
                };
                (mode, rng.next())
            }
        }
    }

    /// The losses tried at crash index `k`.
    pub fn all_for(k: u64) -> [Loss; 5] {
        let seed = k.wrapping_mul(0x9E37_79B9).wrapping_add(1);
        [
            Loss::DropAll,
            Loss::KeepAll,
            Loss::KeepFirstHalf,
            Loss::Random(seed),
            Loss::Mixed(seed),
        ]
    }
}
