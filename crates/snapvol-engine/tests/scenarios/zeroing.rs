//! write_zeroes and trim (scenario 7): the ranges read as zero and snapshots keep the originals.

use std::collections::BTreeSet;

use snapvol_engine::Volume;

use crate::common::{assert_bytes_eq, assert_volume, opts, pattern, Fixture, KIB, MIB};

fn zero_and_trim(flush_between: bool) {
    const SIZE: u64 = 2 * MIB;
    const CHUNK: u64 = 64 * KIB;
    const C: u64 = CHUNK;
    let fx = Fixture::new();
    let vol = fx.create("vol", SIZE, CHUNK, None, opts(16 * MIB));
    let mut live = pattern(0, 0, SIZE);
    vol.write(0, &live).unwrap();
    vol.destage_all().unwrap();
    vol.snapshot_create("s1").unwrap();
    let mut snaps = vec![("s1".to_owned(), live.clone())];
    let mut touched = BTreeSet::new();

    type Op = fn(&Volume, u64, u64) -> snapvol_engine::Result<()>;
    let zero: Op = |v, o, l| v.write_zeroes(o, l);
    let trim: Op = |v, o, l| v.trim(o, l);
    let ops: [(Op, u64, u64); 7] = [
        (zero, 2 * C, 4 * C),          // whole chunks
        (zero, 8 * C + 100, C + 4900), // partial chunks, unaligned
        (trim, 12 * C, 4 * C),         // whole chunks
        (trim, 18 * C + 4096, 4096),   // one block inside a chunk
        (trim, 20 * C + 1, 2 * C - 2), // partial at both ends
        (zero, 24 * C - 1, 2),         // two bytes over a chunk edge
        (trim, SIZE - C - 3, C + 3),   // up to the end of the volume
    ];
    for (op, off, len) in ops {
        op(&vol, off, len).unwrap();
        if flush_between {
            vol.destage_all().unwrap();
        }
        live[off as usize..(off + len) as usize].fill(0);
        touched.extend(off / C..(off + len).div_ceil(C));
        assert_volume(&vol, &live, &snaps, &format!("after zeroing {off}+{len}"));
    }
    vol.destage_all().unwrap();
    assert_eq!(
        vol.info().target_used_bytes,
        touched.len() as u64 * C,
        "each zeroed or trimmed chunk's original is preserved once for s1"
    );

    // A snapshot of the zeroed state keeps reading zeroes after the ranges are rewritten.
    vol.snapshot_create("s2").unwrap();
    snaps.push(("s2".to_owned(), live.clone()));
    for (i, (_, off, len)) in ops.iter().enumerate() {
        let data = pattern(50 + i as u64, *off, *len);
        vol.write(*off, &data).unwrap();
        live[*off as usize..(*off + *len) as usize].copy_from_slice(&data);
    }
    // And zeroing over rewritten data, again in whole and partial chunks.
    vol.snapshot_create("s3").unwrap();
    snaps.push(("s3".to_owned(), live.clone()));
    vol.trim(0, 3 * C).unwrap();
    vol.write_zeroes(9 * C + 10, 3 * C).unwrap();
    live[..(3 * C) as usize].fill(0);
    live[(9 * C + 10) as usize..(12 * C + 10) as usize].fill(0);
    assert_volume(&vol, &live, &snaps, "after rewriting and zeroing again");
    vol.close().unwrap();
    let source = std::fs::read(fx.source_path("vol")).unwrap();
    assert_bytes_eq(&source, &live, 0, "the source VLUN after close");
    let vol = fx.open("vol", opts(16 * MIB));
    assert_volume(&vol, &live, &snaps, "after reopening");
    vol.close().unwrap();
}

#[test]
fn zeroed_and_trimmed_ranges_read_as_zero_and_snapshots_keep_the_originals() {
    zero_and_trim(true);
}

#[test]
fn zeroed_and_trimmed_ranges_read_as_zero_and_snapshots_keep_the_originals_without_flushes() {
    zero_and_trim(false);
}
