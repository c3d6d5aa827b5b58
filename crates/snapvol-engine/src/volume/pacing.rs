//! Admission pacing: once the cache is more than a quarter full, writers are admitted at the
//! rate the destager drains it, faster while the cache is below half full and slower above,
//! the way Linux throttles writers of dirty pages (`balance_dirty_pages`).
//!
//! Without it, a writer waits only when the cache is full, and then for a whole destage batch
//! (its preservations, its metadata commit and its syncs), after which room for the whole batch
//! comes free at once: most writes wait for nothing and some for hundreds of milliseconds. When
//! the disk is what limits the volume, the mean wait is the same either way (the closed loop of
//! a client with a fixed queue depth sees queue depth / throughput), so spreading it evenly
//! lowers the tail without costing throughput. The cache's hard bound stays where it was
//! (`Cache::wait_for_space`); pacing only keeps writers from reaching it in bursts.
//!
//! Nor does pacing make anyone wait longer than the bound would: a writer at the bound waits
//! for the batch under way to end, so no pause, and no slot of the clock, lies further ahead
//! than a batch takes. (Without that cap, writers arriving with the cache nearly full were
//! given slots up to half a second apart, and kept them after the batch had emptied the cache.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The pacer of one volume.
#[derive(Debug)]
pub(super) struct Pacer {
    origin: Instant,
    /// The destager's drain rate in bytes a second, smoothed over batches (0: not known yet).
    rate: AtomicU64,
    /// How long a destage batch takes, in nanoseconds, smoothed the same way.
    batch: AtomicU64,
    /// When the next admission slot starts, in nanoseconds since `origin`.
    next: Mutex<u64>,
}

/// The longest a writer is paced for: past that, the cache's hard bound decides.
const MAX_PAUSE: Duration = Duration::from_millis(500);

impl Pacer {
    pub(super) fn new() -> Self {
        Self {
            origin: Instant::now(),
            rate: AtomicU64::new(0),
            batch: AtomicU64::new(0),
            next: Mutex::new(0),
        }
    }

    /// Notes a destage batch of `bytes` that took `took`.
    pub(super) fn observe(&self, bytes: u64, took: Duration) {
        let nanos = took.as_nanos().max(1) as u64;
        smooth(&self.rate, (bytes as f64 * 1e9 / nanos as f64) as u64);
        smooth(&self.batch, nanos);
    }

    /// How long a writer of `cost` bytes waits before it lands, with `dirty` of `limit` bytes
    /// in the cache. Each writer takes the next slot of a clock that admits bytes at the drain
    /// rate times `(limit - dirty) / (limit - limit / 2)`: 1.5 times the drain rate at a
    /// quarter full, the drain rate at half full, nothing at the limit. No slot lies more than
    /// a batch's duration ahead (nor [`MAX_PAUSE`]).
    pub(super) fn delay(&self, cost: u64, dirty: u64, limit: u64) -> Duration {
        self.delay_at(cost, dirty, limit, self.origin.elapsed().as_nanos() as u64)
    }

    /// [`Pacer::delay`] at `now` nanoseconds since the pacer was made.
    fn delay_at(&self, cost: u64, dirty: u64, limit: u64, now: u64) -> Duration {
        let rate = self.rate.load(Ordering::Relaxed);
        if cost == 0 || rate == 0 || dirty <= limit / 4 {
            return Duration::ZERO;
        }
        let setpoint = limit / 2;
        let ratio = (limit.saturating_sub(dirty) as f64 / (limit - setpoint) as f64).max(0.05);
        let pause = (cost as f64 * 1e9 / (rate as f64 * ratio)) as u64;
        let batch = self.batch.load(Ordering::Relaxed);
        let cap = MAX_PAUSE.as_nanos() as u64;
        let cap = if batch == 0 { cap } else { batch.min(cap) };
        let until = {
            let mut next = self.next.lock();
            let start = (*next).max(now);
            *next = (start + pause).min(now + cap);
            *next
        };
        Duration::from_nanos(until - now)
    }
}

/// Folds `sample` into `avg`: a quarter of the new sample, so smoothed over a few batches
/// (the first sample is taken as it is).
fn smooth(avg: &AtomicU64, sample: u64) {
    let _ = avg.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        Some(if old == 0 {
            sample
        } else {
            (old / 4) * 3 + sample / 4
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A pacer that saw the destager drain 320 MiB/s in batches of 100 ms.
    fn draining_320_mib_s() -> Pacer {
        let p = Pacer::new();
        p.observe(32 * MIB, Duration::from_millis(100));
        p
    }

    /// What `n` writers of a MiB arriving together at `now` wait, with `dirty` of a 128 MiB
    /// cache.
    fn arrivals(p: &Pacer, n: usize, dirty: u64, now: u64) -> Vec<Duration> {
        (0..n)
            .map(|_| p.delay_at(MIB, dirty, 128 * MIB, now))
            .collect()
    }

    #[test]
    fn nobody_waits_until_the_rate_is_known_or_below_a_quarter_of_the_cache() {
        let p = Pacer::new();
        assert_eq!(p.delay(MIB, 100 * MIB, 128 * MIB), Duration::ZERO);
        p.observe(32 * MIB, Duration::from_millis(100));
        assert_eq!(p.delay(MIB, 32 * MIB, 128 * MIB), Duration::ZERO);
    }

    #[test]
    fn writers_at_half_full_are_admitted_at_the_drain_rate_one_after_another() {
        let p = draining_320_mib_s();
        // 320 MiB/s: a MiB every 3.125 ms. Four writers arrive together at t = 1 s: each
        // takes the slot after the one before.
        let now = 1_000_000_000;
        let waits: Vec<u128> = arrivals(&p, 4, 64 * MIB, now)
            .iter()
            .map(Duration::as_micros)
            .collect();
        assert_eq!(waits, [3125, 6250, 9375, 12500]);
        // One that comes after those slots have passed waits only for its own.
        let later = p.delay_at(MIB, 64 * MIB, 128 * MIB, now + 100_000_000);
        assert_eq!(later.as_micros(), 3125);
    }

    #[test]
    fn the_fuller_the_cache_the_slower_writers_are_admitted() {
        let at = |dirty| draining_320_mib_s().delay_at(MIB, dirty, 128 * MIB, 0);
        assert!(at(40 * MIB) < at(64 * MIB));
        assert!(at(64 * MIB) < at(100 * MIB));
        assert!(at(128 * MIB) <= MAX_PAUSE);
    }

    #[test]
    fn nobody_is_paced_longer_than_a_batch_takes_however_full_the_cache() {
        // 320 MiB/s in batches of 100 ms. At the limit a MiB would take 20 / 320 s at the
        // floor ratio (62.5 ms): sixteen writers arriving together would get slots a second
        // apart. Each waits at most a batch, the time the cache's bound would make it wait.
        let p = draining_320_mib_s();
        let now = 1_000_000_000;
        let waits: Vec<u128> = arrivals(&p, 16, 128 * MIB, now)
            .iter()
            .map(Duration::as_millis)
            .collect();
        assert_eq!(waits[0], 62);
        assert!(waits[1..].iter().all(|&w| w == 100), "{waits:?}");
        // Nor did the clock run ahead meanwhile: once that batch's time has passed and the
        // cache is back at half full, a writer waits only for its own slot.
        let later = p.delay_at(MIB, 64 * MIB, 128 * MIB, now + 100_000_000);
        assert_eq!(later.as_micros(), 3125);
    }
}
