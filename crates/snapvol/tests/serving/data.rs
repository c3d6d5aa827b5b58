//! Data: deterministic patterns, sparse image files, and comparing two files.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;

/// `len` bytes of a deterministic pseudo-random sequence chosen by `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A sparse image file of `size` bytes holding `pattern(len, seed)` at each `(offset, len,
/// seed)` and zeroes elsewhere.
pub fn write_image(path: &Path, size: u64, regions: &[(u64, u64, u64)]) {
    let mut f = File::create(path).expect("create image");
    f.set_len(size).expect("size image");
    for &(offset, len, seed) in regions {
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(offset)).expect("seek");
        f.write_all(&pattern(usize::try_from(len).expect("len"), seed))
            .expect("write image");
    }
    f.sync_all().expect("sync image");
}

/// Asserts that two files have the same bytes, naming the first difference.
pub fn assert_same_file(a: &Path, b: &Path) {
    let la = fs::metadata(a).expect("stat").len();
    let lb = fs::metadata(b).expect("stat").len();
    assert_eq!(la, lb, "{} and {} differ in size", a.display(), b.display());
    let mut fa = File::open(a).expect("open");
    let mut fb = File::open(b).expect("open");
    let mut ba = vec![0u8; 4 << 20];
    let mut bb = vec![0u8; 4 << 20];
    let mut offset = 0u64;
    loop {
        let n = fa.read(&mut ba).expect("read");
        if n == 0 {
            break;
        }
        fb.read_exact(&mut bb[..n]).expect("read");
        if ba[..n] != bb[..n] {
            let i = (0..n).find(|&i| ba[i] != bb[i]).unwrap_or(0);
            panic!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                offset + i as u64
            );
        }
        offset += n as u64;
    }
}
