//! Workloads: the scripted operations, and the patterns and random numbers they are made of.

use snapvol_engine::units::Geometry;
use snapvol_engine::{Layout, VolumeOptions, WriteMode};

use super::JOURNAL_SIZE;

/// One operation of a scripted workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `write` of pattern data unique to this operation.
    Write {
        off: u64,
        len: u64,
    },
    /// `write_zeroes`.
    Zero {
        off: u64,
        len: u64,
    },
    /// `trim` (reads as zero afterwards, like `write_zeroes`).
    Trim {
        off: u64,
        len: u64,
    },
    /// `write_fua` of pattern data.
    Fua {
        off: u64,
        len: u64,
    },
    Flush,
    Snap(&'static str),
    Delete(&'static str),
    DestageAll,
    /// `close`, then `open_on` the same devices.
    Reopen,
    /// Reads the live volume and compares with the oracle (no crash involved).
    Read {
        off: u64,
        len: u64,
    },
}

/// A deterministic workload on a small volume.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: &'static str,
    pub chunk_size: u32,
    pub chunks: u64,
    pub cache_size: u64,
    pub compact_after_records: u64,
    /// The volume's write mode. In throughput, a data write of at least a chunk may be torn
    /// by a crash until a FLUSH or snapshot follows it (the oracle's `Req::tearable`).
    pub write_mode: WriteMode,
    pub ops: Vec<Op>,
}

impl Workload {
    pub fn size(&self) -> u64 {
        self.chunks * u64::from(self.chunk_size)
    }

    pub(super) fn layout(&self) -> Layout {
        let geometry = Geometry::new(self.size(), self.chunk_size).expect("workload geometry");
        Layout {
            geometry,
            target_cap: None,
            journal_size: JOURNAL_SIZE,
            write_mode: self.write_mode,
        }
    }

    /// The same script on a volume created in write mode throughput, its name marked so.
    pub fn in_throughput(self) -> Workload {
        Workload {
            name: Box::leak(format!("{}@throughput", self.name).into_boxed_str()),
            write_mode: WriteMode::Throughput,
            ..self
        }
    }

    /// Whether a write request of `len` bytes may be torn by a crash until a FLUSH or a
    /// snapshot follows it: in write mode throughput a data write of at least a chunk, not
    /// FUA, skips the journal unless a journal record still covers one of its chunks (engine
    /// state the oracle does not model, so it allows both).
    pub(super) fn tearable(&self, len: u64, data: bool, fua: bool) -> bool {
        self.write_mode == WriteMode::Throughput
            && data
            && !fua
            && len >= u64::from(self.chunk_size)
    }

    pub(super) fn options(&self, background_destage: bool) -> VolumeOptions {
        VolumeOptions {
            cache_size: self.cache_size,
            compact_after_records: self.compact_after_records,
            background_destage,
        }
    }

    /// Checks that the script itself makes sense: ranges inside the volume, names unique.
    pub(super) fn validate(&self) {
        let mut created = Vec::new();
        for (i, op) in self.ops.iter().enumerate() {
            match *op {
                Op::Write { off, len }
                | Op::Zero { off, len }
                | Op::Trim { off, len }
                | Op::Fua { off, len }
                | Op::Read { off, len } => assert!(
                    len > 0 && off + len <= self.size(),
                    "{}: op {i} {op:?} lies outside the volume",
                    self.name
                ),
                Op::Snap(name) => {
                    assert!(
                        !created.contains(&name),
                        "{}: snapshot name {name} reused",
                        self.name
                    );
                    created.push(name);
                }
                _ => {}
            }
        }
    }
}

/// Pattern bytes for operation `tag`: pseudo-random, so a byte of one write rarely equals the
/// byte another write (or the zero fill) puts in the same place.
pub fn pattern(tag: u64, len: u64) -> Vec<u8> {
    let mut rng = SplitMix(tag.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xC0FF_EE00);
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

/// SplitMix64, for patterns and seeds that replay exactly.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_4761_CE4E_5B9B);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
