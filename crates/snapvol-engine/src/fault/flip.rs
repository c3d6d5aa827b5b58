//! Silent corruption: [`CrashVlun::flip_byte`] damages a byte the way bit rot or a
//! misdirected write would, so tests can show that damaged metadata is reported as corrupt.
//!
//! It must not count I/O or ask the controller (it works after a crash too), and must not
//! change which operations are unsynced: only the bytes they carry.

use std::io;

use super::crash_vlun::Images;
use super::media::{Pending, Segment};
use super::{invalid, CrashVlun};

impl CrashVlun {
    /// Corrupts the byte at `offset` by XOR with `mask`, as bit rot would: in the live image,
    /// the durable image and every unsynced write that covers it, so the damage shows in reads
    /// and in every crash image (unless a later punch or truncation zeroes the byte). Counts
    /// no I/O and works after a crash.
    ///
    /// # Errors
    /// `InvalidInput` if `offset` lies past the end of both the live and the durable image.
    pub fn flip_byte(&self, offset: u64, mask: u8) -> io::Result<()> {
        let at = usize::try_from(offset).map_err(|_| invalid("offset out of range"))?;
        let mut im = self.images.write();
        if at >= im.live.len() && at >= im.durable.len() {
            return Err(invalid("offset past the end of the image"));
        }
        let Images {
            live,
            durable,
            pending,
            ..
        } = &mut *im;
        for img in [live, durable] {
            if let Some(b) = img.get_mut(at) {
                *b ^= mask;
            }
        }
        for op in pending.iter_mut() {
            if let Pending::Sectors(segments) = op {
                for seg in segments {
                    if let Segment::Bytes { start, data } = seg {
                        if let Some(b) = at.checked_sub(*start).and_then(|i| data.get_mut(i)) {
                            *b ^= mask;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{read, CrashMode, FaultController, SECTOR as S};
    use super::*;
    use crate::vlun::Vlun;

    #[test]
    fn a_flipped_byte_shows_in_reads_and_in_every_crash_image() {
        let ctl = FaultController::new();
        let v = CrashVlun::new(&ctl, 2 * S as u64);
        v.write_at(&[0x10; 4], 0).expect("write");
        v.sync().expect("sync");
        v.write_at(&[0x20; 4], S as u64).expect("unsynced write");
        v.flip_byte(1, 0xFF).expect("flip durable byte");
        v.flip_byte(S as u64 + 2, 0x01)
            .expect("flip byte under an unsynced write");

        assert_eq!(read(&v, 0, 4).expect("read"), [0x10, 0xEF, 0x10, 0x10]);
        for seed in 0..50 {
            let img = v.crash_image(CrashMode::Random, seed);
            assert_eq!(img[1], 0xEF);
            assert!(img[S + 2] == 0x21 || img[S + 2] == 0x01, "seed {seed}");
        }
        assert_eq!(v.crash_image(CrashMode::KeepAll, 0), v.live_image());
        assert!(v.flip_byte(2 * S as u64, 1).is_err(), "past the end");
    }
}
