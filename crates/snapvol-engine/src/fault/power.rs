//! Power loss: arming it on the controller ([`FaultController::crash_at`]), the error every
//! call then returns, and what a [`CrashVlun`] leaves on the media ([`CrashMode`],
//! [`CrashVlun::crash_image`]).
//!
//! It must not change a device: a crash image is computed from a copy of the durable image,
//! counts no I/O, and leaves the live image and the unsynced operations as they are.

use std::io;

use super::media::SplitMix64;
use super::{CrashVlun, FaultController};

/// The message of the error every I/O returns once the controller has crashed.
pub const POWER_LOSS_MESSAGE: &str = "simulated power loss";

/// Whether `err` is the error a crashed [`FaultController`] returns.
pub fn is_power_loss(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Other && err.to_string() == POWER_LOSS_MESSAGE
}

pub(super) fn power_loss() -> io::Error {
    io::Error::other(POWER_LOSS_MESSAGE)
}

impl FaultController {
    /// Arms a power loss: the I/O with global index `index` and every later one fail with
    /// "simulated power loss" and have no effect. An index already passed crashes the next
    /// call. Replaces an earlier `crash_at` that has not fired yet.
    pub fn crash_at(&self, index: u64) {
        self.state.lock().crash_at = Some(index);
    }

    /// Crashes now: every later I/O fails.
    pub fn crash_now(&self) {
        self.state.lock().crashed = true;
    }

    /// Whether the simulated power loss has happened.
    pub fn crashed(&self) -> bool {
        self.state.lock().crashed
    }
}

/// Which unsynced operations a simulated power loss lets reach the media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrashMode {
    /// None: the image is exactly the durable one.
    DropAll,
    /// All of them, whole, in order: the image equals the live one.
    KeepAll,
    /// The first `n` of them, whole, in order: an in-order write-back cache that lost its tail.
    KeepFirst(usize),
    /// Each independently kept or lost, the kept ones applied in a random order, and each kept
    /// one possibly torn (only some of its sectors applied). Decided by the seed.
    Random,
}

impl CrashVlun {
    /// What a power loss now would leave on the media, as chosen by `mode`; `rng_seed` makes
    /// [`CrashMode::Random`] reproducible and is ignored by the other modes. Does not change
    /// the device and counts no I/O.
    pub fn crash_image(&self, mode: CrashMode, rng_seed: u64) -> Vec<u8> {
        let im = self.images.read();
        let mut img = im.durable.clone();
        match mode {
            CrashMode::DropAll => {}
            CrashMode::KeepAll | CrashMode::KeepFirst(_) => {
                let n = match mode {
                    CrashMode::KeepFirst(n) => n,
                    _ => im.pending.len(),
                };
                for op in im.pending.iter().take(n) {
                    op.apply(&mut img, None);
                }
            }
            CrashMode::Random => {
                let mut rng = SplitMix64(rng_seed);
                let mut order: Vec<usize> = (0..im.pending.len()).collect();
                rng.shuffle(&mut order);
                for i in order {
                    if !rng.coin() {
                        continue;
                    }
                    let torn = rng.coin();
                    im.pending[i].apply(&mut img, torn.then_some(&mut rng));
                }
            }
        }
        img
    }
}

#[cfg(test)]
mod tests {
    use super::super::{read, SECTOR as S};
    use super::*;
    use crate::vlun::Vlun;

    /// Asserts that every sector of `img` is the same sector of one of `versions`.
    fn each_sector_is_one_of(img: &[u8], versions: &[&[u8]], what: &str) {
        for (i, sector) in img.chunks(S).enumerate() {
            let from = i * S..i * S + sector.len();
            assert!(
                versions.iter().any(|v| v.get(from.clone()) == Some(sector)),
                "{what}: sector {i} is a mix that never existed"
            );
        }
    }

    #[test]
    fn unsynced_writes_can_vanish() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 4 * S as u64);
        v.write_at(&[7; 100], 0).expect("write");
        assert_eq!(
            read(&v, 0, 100).expect("read"),
            vec![7; 100],
            "reads see it"
        );

        assert_eq!(v.crash_image(CrashMode::DropAll, 0), vec![0; 4 * S]);
        assert_eq!(v.crash_image(CrashMode::KeepAll, 0), v.live_image());
        let lost = (0..64)
            .filter(|&seed| v.crash_image(CrashMode::Random, seed)[0] == 0)
            .count();
        assert!(
            lost > 0 && lost < 64,
            "Random keeps some, loses some ({lost}/64 lost)"
        );
    }

    #[test]
    fn any_subset_of_unsynced_writes_may_survive_not_just_a_prefix() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 3 * S as u64);
        v.write_at(&[1; S], 0).expect("write");
        v.write_at(&[2; S], S as u64).expect("write");
        v.write_at(&[3; S], 0).expect("rewrite of sector 0");
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let img = v.crash_image(CrashMode::Random, seed);
            seen.insert((img[0], img[S]));
        }
        // Sector 0 may hold the durable zeroes or either version, whatever sector 1 holds:
        // a newer write can be lost while an older one, or a later one elsewhere, survives.
        let all: std::collections::BTreeSet<_> = [0, 1, 3]
            .into_iter()
            .flat_map(|a| [(a, 0), (a, 2)])
            .collect();
        assert_eq!(seen, all);
    }

    #[test]
    fn synced_writes_survive_every_mode() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 0);
        v.write_at(&[1; 3 * S], 0).expect("write");
        v.set_len(8 * S as u64).expect("set_len");
        v.sync().expect("sync");
        assert_eq!(v.unsynced_count(), 0);
        assert_eq!(v.durable_image(), v.live_image());
        // Unsynced traffic elsewhere, even growth and a punch, must not disturb them.
        v.write_at(&[2; S], 5 * S as u64).expect("write");
        v.punch_zero(6 * S as u64, 2 * S as u64).expect("punch");
        v.write_at(&[3; 2 * S], 9 * S as u64)
            .expect("write past the end");

        let mut modes = vec![CrashMode::DropAll, CrashMode::KeepAll];
        modes.extend((0..=3).map(CrashMode::KeepFirst));
        for (mode, seed) in modes
            .into_iter()
            .map(|m| (m, 0))
            .chain((0..200).map(|s| (CrashMode::Random, s)))
        {
            let img = v.crash_image(mode, seed);
            assert_eq!(&img[..3 * S], &[1; 3 * S][..], "{mode:?} seed {seed}");
            assert!(
                img.len() >= 8 * S,
                "{mode:?} seed {seed}: synced length kept"
            );
        }
    }

    #[test]
    fn keep_all_is_the_live_image_and_keep_first_replays_in_order() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 2 * S as u64);
        v.write_at(&[1; 10], 3).expect("write");
        v.write_at(&[2; 2 * S], 700)
            .expect("write that grows the device");
        v.punch_zero(100, 2 * S as u64).expect("punch");
        v.set_len(S as u64 + 5).expect("shrink");
        v.set_len(4 * S as u64).expect("regrow");
        assert_eq!(read(&v, S as u64 + 5, 10).expect("read"), vec![0; 10]);

        assert_eq!(v.crash_image(CrashMode::KeepAll, 0), v.live_image());
        assert_eq!(v.crash_image(CrashMode::KeepFirst(0), 0), v.durable_image());
        let first = v.crash_image(CrashMode::KeepFirst(1), 0);
        assert_eq!(first.len(), 2 * S);
        assert_eq!(
            &first[..16],
            &[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
        );
        assert_eq!(v.crash_image(CrashMode::KeepFirst(5), 0), v.live_image());

        v.sync().expect("sync");
        assert_eq!(v.durable_image(), v.live_image());
    }

    #[test]
    fn a_torn_write_is_all_old_or_all_new_per_512_byte_sector() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 16 * S as u64);
        let old: Vec<u8> = (0..16 * S).map(|i| (i / S) as u8 + 1).collect();
        v.write_at(&old, 0).expect("write");
        v.sync().expect("sync");
        // Aligned, then unaligned and partly overlapping.
        v.write_at(&[0xAB; 8 * S], 0).expect("write");
        let after_first = v.live_image();
        v.write_at(&[0xCD; 3 * S], 7 * S as u64 + 100)
            .expect("write");
        let new = v.live_image();

        let (mut torn, mut whole) = (0, 0);
        for seed in 0..500 {
            let img = v.crash_image(CrashMode::Random, seed);
            each_sector_is_one_of(&img, &[&old, &after_first, &new], &format!("seed {seed}"));
            // Sectors 0..7 belong to the first write alone (the second rewrites sector 7).
            let first_new = img[..7 * S]
                .chunks(S)
                .filter(|s| s.iter().all(|&b| b == 0xAB))
                .count();
            match first_new {
                0 => {}
                7 => whole += 1,
                _ => torn += 1,
            }
        }
        assert!(torn > 0, "some crashes tear the 8-sector write");
        assert!(whole > 0, "some crashes keep it whole");
    }

    #[test]
    fn the_same_seed_gives_the_same_crash_image() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 0);
        for i in 0..20u8 {
            v.write_at(&[i; 3 * S], u64::from(i) * 2 * S as u64)
                .expect("write");
        }
        for seed in 0..20 {
            let a = v.crash_image(CrashMode::Random, seed);
            assert_eq!(a, v.crash_image(CrashMode::Random, seed), "seed {seed}");
        }
        assert_ne!(
            v.crash_image(CrashMode::Random, 1),
            v.crash_image(CrashMode::Random, 2)
        );
    }

    #[test]
    fn a_crash_at_index_n_makes_io_n_and_later_fail_with_no_effect() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 0);
        v.write_at(b"kept", 0).expect("I/O 0");
        v.sync().expect("I/O 1");
        assert_eq!(ctl.io_count(), 2);
        ctl.crash_at(3);
        v.write_at(b"late", 0).expect("I/O 2 is before the crash");
        assert!(!ctl.crashed());

        let err = v.write_at(b"lost", 8).expect_err("I/O 3 crashes");
        assert!(is_power_loss(&err), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::Other);
        assert!(ctl.crashed());
        assert!(
            v.sync().is_err_and(|e| is_power_loss(&e)),
            "later I/O fails"
        );
        assert!(v.set_len(0).is_err());
        assert!(v.punch_zero(0, 4).is_err());
        assert_eq!(ctl.io_count(), 7, "failed calls are counted too");

        assert_eq!(v.live_image(), b"late", "the crashed write changed nothing");
        assert_eq!(
            v.durable_image(),
            b"kept",
            "the crashed sync changed nothing"
        );
        assert_eq!(v.crash_image(CrashMode::DropAll, 0), b"kept");
        assert_eq!(v.crash_image(CrashMode::KeepAll, 0), b"late");

        // Restart on what the power loss left, with a fresh controller.
        let ctl2 = FaultController::new();
        let restarted = CrashVlun::from_image(&ctl2, v.crash_image(CrashMode::DropAll, 0));
        assert_eq!(read(&restarted, 0, 4).expect("read"), b"kept");
        assert_eq!(restarted.crash_image(CrashMode::DropAll, 0), b"kept");
    }

    #[test]
    fn reads_after_a_crash_fail() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 16);
        read(&v, 0, 4).expect("alive");
        ctl.crash_at(ctl.io_count());
        let err = read(&v, 0, 4).expect_err("read after crash");
        assert!(is_power_loss(&err));
        assert!(v.len().is_err_and(|e| is_power_loss(&e)), "len too");
    }
}
