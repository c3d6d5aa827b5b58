//! Figures about an open volume for monitoring, as plain numbers: no exposition format here
//! (`snapvol serve --metrics` maps them to Prometheus).
//!
//! Most figures are read when asked for, from state the engine keeps anyway (the index, the
//! snapshot table, the cache's dirty bytes), so monitoring adds nothing to the data path. What
//! must be counted as it happens (destage batches, snapshots taken and deleted) is counted with
//! relaxed atomics: each counter only ever grows, and no reader needs two of them to agree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets of every [`Histogram`], in seconds: from 50 µs (a cached read)
/// to 30 s (a destage batch on a slow network VLUN); longer ones land in the `+Inf` bucket.
pub const BUCKET_BOUNDS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// [`BUCKET_BOUNDS`] in nanoseconds, what [`Histogram::observe`] compares with.
const BOUNDS_NS: [u64; 18] = {
    let mut ns = [0u64; 18];
    let mut i = 0;
    while i < ns.len() {
        ns[i] = (BUCKET_BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// A histogram of durations that any number of threads record into without a lock: one
/// relaxed counter per bucket of [`BUCKET_BOUNDS`] (and one for longer durations), plus the
/// sum. An observation costs two atomic additions.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; BUCKET_BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(BOUNDS_NS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The counts as they stand.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = [0; BUCKET_BOUNDS.len() + 1];
        for (b, c) in buckets.iter_mut().zip(&self.buckets) {
            *b = c.load(Ordering::Relaxed);
        }
        HistogramSnapshot {
            buckets,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A [`Histogram`]'s counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations per bucket of [`BUCKET_BOUNDS`] (not cumulative), then those above the
    /// last bound.
    pub buckets: [u64; BUCKET_BOUNDS.len() + 1],
    /// Sum of every observation, in seconds. Read apart from the buckets, so under concurrent
    /// observations it may include one that they do not yet (or the reverse).
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// Observations in all: the sum of the buckets (so that it always agrees with them).
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// `(upper bound in seconds, observations in that bucket)`, the last one `+Inf`.
    pub fn bounded(&self) -> Vec<(f64, u64)> {
        BUCKET_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets)
            .collect()
    }
}

/// Figures about an open volume at one moment ([`crate::Volume::metrics`]). Counters count
/// from the volume's open; gauges are what holds now. Each figure is read on its own, without
/// a lock, so two of them may differ by what happened between the two reads.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeMetrics {
    /// Live snapshots.
    pub snapshots: u64,
    /// Snapshots taken since the volume was opened.
    pub snapshots_created: u64,
    /// Snapshots deleted since the volume was opened.
    pub snapshots_deleted: u64,
    /// Preserved chunk copies the target holds now, and their bytes.
    pub preserved_chunks: u64,
    pub preserved_bytes: u64,
    /// Chunk copies made to the target since the volume was opened.
    pub copies_made: u64,
    /// Dirty bytes in the RAM cache (copies of write requests waiting for the journal
    /// included), and the bound on them.
    pub dirty_bytes: u64,
    pub cache_limit_bytes: u64,
    /// Chunk buffers of written-out versions the cache keeps for the next writes of less than
    /// a chunk, in bytes (memory beside the dirty bytes, at most 32 MiB).
    pub cache_spare_bytes: u64,
    /// Bytes of the cache journal's ring holding records not yet destaged, and its size.
    pub journal_used_bytes: u64,
    pub journal_size_bytes: u64,
    /// Destage batches completed since the volume was opened, and the chunks they destaged.
    pub destage_batches: u64,
    pub destaged_chunks: u64,
    /// Of those batches, the ones whose copies were written while the batch before them
    /// committed (a run of batches overlaps them).
    pub destage_overlapped: u64,
    /// How long those batches took.
    pub destage_duration: HistogramSnapshot,
    /// How long each write request waited for room in the cache, or was paced to the destage
    /// rate (zero when neither): the part of a write's latency that destaging causes.
    pub cache_wait: HistogramSnapshot,
    /// Compactions of the metadata log completed since the volume was opened, the records
    /// committed while they were under way (which each then appended to its fresh chain),
    /// and how long each took from its capture to its switch.
    pub compactions: u64,
    pub compaction_tail_records: u64,
    pub compaction_duration: HistogramSnapshot,
    /// Reads of preserved copies that failed their checksum since the volume was opened.
    pub checksum_failures: u64,
    /// The volume refuses writes until reopened (an I/O error, or its lock was lost).
    pub failed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_holds_them() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50)); // on the first bound: in it
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60)); // past the last bound
        let s = h.snapshot();
        assert_eq!(s.count(), 4);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[6], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(s.buckets[BUCKET_BOUNDS.len()], 1);
        assert!(
            (s.sum_seconds - 60.003_101).abs() < 1e-9,
            "{}",
            s.sum_seconds
        );
        let bounded = s.bounded();
        assert_eq!(bounded.len(), BUCKET_BOUNDS.len() + 1);
        assert_eq!(bounded[6], (0.005, 1));
        assert_eq!(bounded.last(), Some(&(f64::INFINITY, 1)));
    }

    #[test]
    fn bucket_bounds_grow() {
        assert!(BUCKET_BOUNDS.windows(2).all(|w| w[0] < w[1]));
        assert!(BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(BOUNDS_NS[0], 50_000);
    }
}
