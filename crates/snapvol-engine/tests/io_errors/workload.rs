//! The workload and its oracle: the fixed list of steps every case runs, and the model of
//! what the volume must hold after each of them.

use std::fmt;
use std::sync::Arc;

use snapvol_engine::fault::OpFilter;
use snapvol_engine::{Error, Volume};

use crate::{CHUNK, KIB, SIZE};

/// Random steps of the workload after its first burst.
const STEPS: u64 = 110;

/// The kind of I/O call a sweep injects the error into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    Sync,
}

impl Kind {
    /// The controller's filter; "write" counts everything that changes an image.
    pub(crate) fn filter(self) -> OpFilter {
        match self {
            Kind::Read => OpFilter::Reads,
            Kind::Write => OpFilter::Writes,
            Kind::Sync => OpFilter::Syncs,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Sync => "sync",
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Step {
    Write {
        off: u64,
        data: Arc<[u8]>,
    },
    Zero {
        off: u64,
        len: u64,
    },
    Flush,
    Snapshot(String),
    Delete(String),
    ReadLive {
        off: u64,
        len: u64,
    },
    ReadSnapshot {
        name: String,
        off: u64,
        len: u64,
    },
    DestageAll,
    /// Flush, die like a killed process, and reopen: recovery replays the journal.
    FlushAndCrash,
    Close,
}

/// splitmix64 of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0) % n
    }
}

/// `len` bytes of the pattern tagged `tag` as it lies at volume offset `off`: every aligned
/// 8-byte word depends on the tag and on its position, so a misplaced or stale piece shows.
pub(crate) fn pattern(tag: u64, off: u64, len: u64) -> Vec<u8> {
    let (first, end) = (off / 8, (off + len).div_ceil(8));
    let words: Vec<u8> = (first..end)
        .flat_map(|w| (tag ^ mix(w)).to_le_bytes())
        .collect();
    let skip = (off - first * 8) as usize;
    words[skip..skip + len as usize].to_vec()
}

/// The fixed workload: a burst of large writes that fills a quarter of the journal (so the
/// journal's head moves on the writer's thread), then requests of every shape over the
/// 512 KiB volume mixed with flushes, snapshots (some deleted), reads and a full destage, a
/// crash with recovery in the middle, and a close at the end.
pub(crate) fn workload() -> Vec<Step> {
    let mut rng = Rng(0x5eed_0e10);
    let mut steps = Vec::new();
    for (i, off) in [0, SIZE / 2, 0, SIZE / 2, SIZE / 4].into_iter().enumerate() {
        steps.push(Step::Write {
            off,
            data: Arc::from(pattern(100 + i as u64, off, SIZE / 2)),
        });
    }
    let mut snaps: Vec<String> = Vec::new();
    let mut made = 0;
    for i in 0..STEPS {
        if i == STEPS / 2 {
            steps.push(Step::FlushAndCrash);
            continue;
        }
        let roll = rng.below(100);
        let step = match roll {
            0..=59 => {
                let len = match rng.below(4) {
                    0 => rng.below(4096) + 1,
                    1 => (rng.below(8) + 1) * 4096,
                    2 => rng.below(32 * KIB) + 1,
                    _ => u64::from(CHUNK) * (rng.below(3) + 1),
                };
                let off = match rng.below(3) {
                    0 => rng.below(SIZE),
                    _ => rng.below(SIZE / 4096) * 4096,
                }
                .min(SIZE - len);
                Step::Write {
                    off,
                    data: Arc::from(pattern(1000 + i, off, len)),
                }
            }
            60..=64 => {
                let len = rng.below(3 * u64::from(CHUNK)) + 1;
                Step::Zero {
                    off: rng.below(SIZE - len),
                    len,
                }
            }
            65..=73 => Step::Flush,
            74..=80 => {
                made += 1;
                let name = format!("s{made}");
                snaps.push(name.clone());
                Step::Snapshot(name)
            }
            81..=83 if snaps.len() > 2 => Step::Delete(snaps.remove(0)),
            84..=88 if !snaps.is_empty() => {
                let len = rng.below(48 * KIB) + 1;
                Step::ReadSnapshot {
                    name: snaps[rng.below(snaps.len() as u64) as usize].clone(),
                    off: rng.below(SIZE - len),
                    len,
                }
            }
            89..=90 => Step::DestageAll,
            _ => {
                let len = rng.below(48 * KIB) + 1;
                Step::ReadLive {
                    off: rng.below(SIZE - len),
                    len,
                }
            }
        };
        steps.push(step);
    }
    steps.push(Step::Close);
    steps
}

/// An acknowledged write request: data, or zeroes when `data` is `None`.
#[derive(Debug, Clone)]
pub(crate) struct Acked {
    pub(crate) off: u64,
    pub(crate) len: u64,
    pub(crate) data: Option<Arc<[u8]>>,
}

impl Acked {
    pub(crate) fn apply(&self, img: &mut [u8]) {
        let range = self.off as usize..(self.off + self.len) as usize;
        match &self.data {
            Some(d) => img[range].copy_from_slice(d),
            None => img[range].fill(0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SnapState {
    /// Acknowledged: must be there after a reopen.
    Live,
    /// Its creation failed: it may or may not be there.
    MaybeCreated,
    /// Deleted, acknowledged: must be gone.
    Deleted,
    /// Its deletion failed: it may or may not be there.
    MaybeDeleted,
}

#[derive(Debug, Clone)]
pub(crate) struct SnapModel {
    pub(crate) name: String,
    pub(crate) image: Vec<u8>,
    pub(crate) state: SnapState,
}

/// What the volume must hold.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    /// Every acknowledged write applied.
    pub(crate) live: Vec<u8>,
    /// The live image as of the last flush (or snapshot, destage, close) that returned `Ok`.
    pub(crate) durable: Vec<u8>,
    /// Writes acknowledged since then, in order: a reopen may keep any prefix of them.
    pub(crate) pending: Vec<Acked>,
    pub(crate) snaps: Vec<SnapModel>,
}

impl Model {
    pub(crate) fn new() -> Self {
        Self {
            live: vec![0; SIZE as usize],
            durable: vec![0; SIZE as usize],
            pending: Vec::new(),
            snaps: Vec::new(),
        }
    }

    pub(crate) fn acked(&mut self, w: Acked) {
        w.apply(&mut self.live);
        self.pending.push(w);
    }

    pub(crate) fn made_durable(&mut self) {
        for w in self.pending.drain(..) {
            w.apply(&mut self.durable);
        }
        debug_assert!(self.durable == self.live);
    }

    pub(crate) fn snap(&self, name: &str) -> Option<&SnapModel> {
        self.snaps.iter().find(|s| s.name == name)
    }
}

/// First differing offset of two images, for messages.
pub(crate) fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or(Some(a.len().min(b.len())))
}

pub(crate) fn read_snapshot_by_name(
    vol: &Volume,
    name: &str,
    off: u64,
    buf: &mut [u8],
) -> Result<(), Error> {
    let seq = vol.snapshot(name)?.seq;
    vol.read_snapshot(seq, off, buf)
}
