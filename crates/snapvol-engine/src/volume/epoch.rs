//! The epoch gate: the boundary between the writes a snapshot holds and those after it.
//!
//! Every write request is admitted into the current epoch and lands in the cache (and is
//! staged for the journal) before it leaves the gate. A snapshot *closes* the gate: writers
//! arriving from then on wait at the door, the writers already inside finish landing, and
//! only then does the epoch advance and the door open again. So no write of epoch *e + 1*
//! lands anywhere before every write of epoch *e* has landed: each chunk's versions, and the
//! journal's records, come in epoch order whatever the threads' timing — the order that
//! snapshot reads, destage planning and journal replay rely on. The wait costs new writers
//! the time the writers inside take to copy their data into the cache, once per snapshot.
//!
//! A request too large for the cache to take at once is admitted *alone*: it closes the gate
//! for as long as it takes to land, so that nothing lands between its journal record and its
//! last piece (see `write::write_large`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::units::Epoch;

/// Admits writes into epochs; see the module documentation.
#[derive(Debug)]
pub(super) struct EpochGate {
    epoch: AtomicU64,
    /// Writers inside the gate (all of the current epoch).
    inside: AtomicU64,
    /// Set while a snapshot or a lone writer has the door shut.
    closed: AtomicBool,
    /// One closer at a time.
    closers: Mutex<()>,
    /// Where writers wait while the door is shut.
    door: Mutex<()>,
    opened: Condvar,
}

/// A writer inside the gate; dropping it lets the writer out.
#[derive(Debug)]
pub(super) struct Admitted<'a> {
    gate: &'a EpochGate,
    /// The epoch the writer was admitted in.
    pub(super) epoch: Epoch,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.gate.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The gate held shut by a lone writer; dropping it opens the door.
#[derive(Debug)]
pub(super) struct Alone<'a> {
    gate: &'a EpochGate,
    _one_closer: MutexGuard<'a, ()>,
    /// The epoch the lone writer writes in.
    pub(super) epoch: Epoch,
}

impl Drop for Alone<'_> {
    fn drop(&mut self) {
        self.gate.open();
    }
}

impl EpochGate {
    pub(super) fn new(epoch: Epoch) -> Self {
        Self {
            epoch: AtomicU64::new(epoch.0),
            inside: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            closers: Mutex::new(()),
            door: Mutex::new(()),
            opened: Condvar::new(),
        }
    }

    /// Admits a writer into the current epoch, waiting while the door is shut.
    pub(super) fn enter(&self) -> Admitted<'_> {
        loop {
            if self.closed.load(Ordering::SeqCst) {
                let mut door = self.door.lock();
                while self.closed.load(Ordering::SeqCst) {
                    self.opened.wait(&mut door);
                }
                continue;
            }
            self.inside.fetch_add(1, Ordering::SeqCst);
            // A closer that shut the door after we looked either counts us (it shut the door
            // after our increment: it waits for us, and the epoch cannot move while we are
            // inside) or we see the door shut now and step back out.
            if !self.closed.load(Ordering::SeqCst) {
                return Admitted {
                    gate: self,
                    epoch: Epoch(self.epoch.load(Ordering::SeqCst)),
                };
            }
            self.inside.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Once every writer of the current epoch has landed, runs `before` with the door still
    /// shut (no write lands meanwhile), then starts epoch `current + 1` and returns it. If
    /// `before` fails, the epoch stays and the door opens again.
    pub(super) fn advance_after<E>(
        &self,
        before: impl FnOnce() -> std::result::Result<(), E>,
    ) -> std::result::Result<Epoch, E> {
        let _one_closer = self.closers.lock();
        self.shut_and_drain();
        let ran = before();
        let next = ran.map(|()| Epoch(self.epoch.fetch_add(1, Ordering::SeqCst) + 1));
        self.open();
        next
    }

    /// Starts epoch `current + 1` once every writer of the current one has landed; returns it.
    pub(super) fn advance(&self) -> Epoch {
        match self.advance_after(|| Ok::<(), std::convert::Infallible>(())) {
            Ok(next) => next,
        }
    }

    /// Shuts the door for one writer alone, once every writer inside has landed.
    pub(super) fn alone(&self) -> Alone<'_> {
        let one_closer = self.closers.lock();
        self.shut_and_drain();
        Alone {
            gate: self,
            _one_closer: one_closer,
            epoch: Epoch(self.epoch.load(Ordering::SeqCst)),
        }
    }

    /// The current epoch.
    pub(super) fn current(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::SeqCst))
    }

    fn shut_and_drain(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // The writers inside are copying into the cache: microseconds, except for a lone
        // writer, which only another closer waits for.
        let mut spins = 0u32;
        while self.inside.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else if spins < 256 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }

    fn open(&self) {
        let _door = self.door.lock();
        self.closed.store(false, Ordering::SeqCst);
        self.opened.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;

    #[test]
    fn a_snapshot_waits_for_the_writers_inside_and_holds_back_new_ones_until_it_advanced() {
        let gate = EpochGate::new(Epoch(7));
        let inside = gate.enter();
        assert_eq!(inside.epoch, Epoch(7));
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let gate = &gate;
            s.spawn(move || tx.send(gate.advance()).unwrap());
            // The closer shuts the door, then waits for the writer inside.
            while !gate.closed.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            // A writer arriving now is admitted only into the new epoch.
            let late = s.spawn(move || gate.enter().epoch);
            assert!(
                rx.try_recv().is_err(),
                "advanced with a writer still inside"
            );
            drop(inside);
            assert_eq!(rx.recv().unwrap(), Epoch(8));
            assert_eq!(late.join().unwrap(), Epoch(8));
        });
    }

    #[test]
    fn a_lone_writer_keeps_the_epoch_and_everyone_else_out_until_it_is_done() {
        let gate = EpochGate::new(Epoch(3));
        let alone = gate.alone();
        assert_eq!(alone.epoch, Epoch(3));
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            let waiting = s.spawn(|| {
                let w = gate.enter();
                assert!(
                    done.load(Ordering::SeqCst),
                    "admitted while the lone writer wrote"
                );
                w.epoch
            });
            let snapshot = s.spawn(|| {
                let e = gate.advance();
                assert!(
                    done.load(Ordering::SeqCst),
                    "advanced while the lone writer wrote"
                );
                e
            });
            std::thread::sleep(Duration::from_millis(20));
            done.store(true, Ordering::SeqCst);
            drop(alone);
            let e = waiting.join().unwrap();
            assert!(e == Epoch(3) || e == Epoch(4));
            assert_eq!(snapshot.join().unwrap(), Epoch(4));
        });
    }
}
