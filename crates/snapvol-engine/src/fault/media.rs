//! The media model of the module docs, as data: what an unsynced operation records (whole
//! 512-byte sectors as they read right after it, or zeroes), how a crash applies it (whole, or
//! torn sector by sector), and the seeded generator that makes such choices replayable.
//!
//! It must not do I/O, count calls or know of the controller: `crash_vlun.rs` records the
//! operations, `power.rs` and a sync replay them, `flip.rs` corrupts them.

use super::SECTOR;

/// A piece of an unsynced operation, starting on a sector boundary.
#[derive(Clone)]
pub(super) enum Segment {
    /// Whole sectors as they read right after the operation (the last one may stop at the end
    /// of the image).
    Bytes { start: usize, data: Vec<u8> },
    /// Whole sectors of zeroes, from a punch.
    Zeros { start: usize, len: usize },
}

/// An operation since the last successful sync.
#[derive(Clone)]
pub(super) enum Pending {
    Sectors(Vec<Segment>),
    SetLen(usize),
}

impl Pending {
    /// Applies the operation to `img`; with `tear`, each sector only if a coin says so.
    pub(super) fn apply(&self, img: &mut Vec<u8>, mut tear: Option<&mut SplitMix64>) {
        match self {
            Pending::SetLen(len) => img.resize(*len, 0),
            Pending::Sectors(segments) => {
                for seg in segments {
                    match seg {
                        Segment::Bytes { start, data } => {
                            for (i, sector) in data.chunks(SECTOR).enumerate() {
                                if tear.as_deref_mut().is_some_and(|rng| !rng.coin()) {
                                    continue;
                                }
                                let at = start + i * SECTOR;
                                let end = at + sector.len();
                                if img.len() < end {
                                    img.resize(end, 0);
                                }
                                img[at..end].copy_from_slice(sector);
                            }
                        }
                        Segment::Zeros { start, len } => {
                            let mut at = *start;
                            while at < start + len {
                                let end = (at + SECTOR).min(start + len);
                                let keep = tear.as_deref_mut().is_none_or(SplitMix64::coin);
                                // Past the end of the image a sector already reads as zero.
                                if keep && at < img.len() {
                                    let end = end.min(img.len());
                                    img[at..end].fill(0);
                                }
                                at = end;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The segments that record a change to `[offset, end)` of `live` (already applied), widened
/// to whole sectors. With `zeros`, whole sectors inside the range are recorded as zeroes
/// rather than copied.
pub(super) fn capture(live: &[u8], offset: usize, end: usize, zeros: bool) -> Vec<Segment> {
    let down = |x: usize| x / SECTOR * SECTOR;
    let up = |x: usize| x.div_ceil(SECTOR) * SECTOR;
    let first = down(offset);
    let last = up(end).min(live.len());
    let bytes = |a: usize, b: usize| Segment::Bytes {
        start: a,
        data: live[a..b].to_vec(),
    };
    let (inner_start, inner_end) = (up(offset), down(end));
    if !zeros || inner_start >= inner_end {
        return vec![bytes(first, last)];
    }
    let mut segs = Vec::with_capacity(3);
    if first < inner_start {
        segs.push(bytes(first, inner_start));
    }
    segs.push(Segment::Zeros {
        start: inner_start,
        len: inner_end - inner_start,
    });
    if inner_end < last {
        segs.push(bytes(inner_end, last));
    }
    segs
}

/// SplitMix64: a tiny deterministic generator, so a failing seed replays exactly.
#[derive(Debug, Clone)]
pub(super) struct SplitMix64(pub(super) u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_4761_CE4E_5B9B);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// A value in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        // The modulo bias is irrelevant for choosing crash states.
        (self.next_u64() % n as u64) as usize
    }

    pub(super) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}
