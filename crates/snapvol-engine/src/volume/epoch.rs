//! The epoch gate: the boundary between the writes a snapshot holds and those after it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::units::Epoch;

/// Admits writes into epochs. A snapshot advances the epoch and waits until every write that
/// entered the old epoch has finished landing in the cache, so the boundary between "in the
/// snapshot" and "after it" is exact, without a lock on the write path.
#[derive(Debug)]
pub(super) struct EpochGate {
    epoch: AtomicU64,
    inflight: [AtomicU64; 2],
}

pub(super) struct GateGuard<'a> {
    gate: &'a EpochGate,
    pub(super) epoch: Epoch,
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.gate.inflight[(self.epoch & 1) as usize].fetch_sub(1, Ordering::SeqCst);
    }
}

impl EpochGate {
    pub(super) fn new(epoch: Epoch) -> Self {
        Self {
            epoch: AtomicU64::new(epoch),
            inflight: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    pub(super) fn enter(&self) -> GateGuard<'_> {
        loop {
            let e = self.epoch.load(Ordering::SeqCst);
            self.inflight[(e & 1) as usize].fetch_add(1, Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) == e {
                return GateGuard {
                    gate: self,
                    epoch: e,
                };
            }
            self.inflight[(e & 1) as usize].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Starts epoch `current + 1` and waits for the writers of the old one. Callers serialize.
    pub(super) fn advance(&self) -> Epoch {
        let old = self.epoch.fetch_add(1, Ordering::SeqCst);
        let mut spins = 0u32;
        while self.inflight[(old & 1) as usize].load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        old + 1
    }

    pub(super) fn current(&self) -> Epoch {
        self.epoch.load(Ordering::SeqCst)
    }
}
