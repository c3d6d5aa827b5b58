//! Unaligned I/O (scenario 6): writes and reads at any offset and length read back exactly,
//! and out of bounds changes nothing.

use snapvol_engine::Error;

use crate::common::{assert_bytes_eq, assert_volume, opts, pattern, Fixture, Rng, KIB, MIB};

fn unaligned_io(chunk: u64) {
    let size = (2 * MIB).max(4 * chunk);
    let chunks = size / chunk;
    // Lengths stay moderate with big chunks; boundaries are straddled on purpose instead.
    let span = chunk.min(32 * KIB);
    let fx = Fixture::new();
    let vol = fx.create("vol", size, chunk, None, opts(MIB));
    let mut live = pattern(0, 0, size);
    vol.write(0, &live).unwrap();
    let mut snaps: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rng = Rng::new(6);
    let mut writes: Vec<(u64, u64)> = Vec::new();
    for i in 0..300u64 {
        let (off, len) = match i % 6 {
            // One byte anywhere, or on either side of a chunk edge.
            0 => (rng.below(size), 1),
            1 => (rng.range(1, chunks) * chunk - 1 + rng.below(2), 1),
            // Odd offsets and lengths.
            2 => {
                let off = rng.below(size - 1);
                (off, rng.range(1, 3 * span + 1).min(size - off))
            }
            // Straddling a chunk edge.
            3 => {
                let edge = rng.range(1, chunks) * chunk;
                let len = rng.range(2, 2 * span + 1);
                let before = rng.range(1, len);
                (edge - before, len.min(size - (edge - before)))
            }
            // Ending exactly at the end of the volume.
            4 => {
                let len = rng.range(1, 2 * span);
                (size - len, len)
            }
            _ => {
                let off = rng.below(size - 1);
                (off, rng.range(1, 4097).min(size - off))
            }
        };
        writes.push((off, len));
    }
    writes.push((size - 1, 1));
    writes.push((0, 1));
    for (i, &(off, len)) in writes.iter().enumerate() {
        if i == 100 || i == 200 {
            let name = format!("s{i}");
            vol.snapshot_create(&name).unwrap();
            snaps.push((name, live.clone()));
        }
        let data = pattern(1 + i as u64, off, len);
        vol.write(off, &data).unwrap();
        live[off as usize..(off + len) as usize].copy_from_slice(&data);
        // A read at an odd place around the write.
        let roff = off.saturating_sub(rng.below(span + 3));
        let rlen = rng.range(1, 2 * span + 5).min(size - roff);
        let mut buf = vec![0u8; rlen as usize];
        vol.read(roff, &mut buf).unwrap();
        assert_bytes_eq(
            &buf,
            &live[roff as usize..(roff + rlen) as usize],
            roff,
            &format!("live read after write {i} ({off}+{len})"),
        );
        for (name, data) in &snaps {
            let seq = vol.snapshot(name).unwrap().seq;
            vol.read_snapshot(seq, roff, &mut buf).unwrap();
            assert_bytes_eq(
                &buf,
                &data[roff as usize..(roff + rlen) as usize],
                roff,
                &format!("snapshot {name} read after write {i}"),
            );
        }
    }
    assert_volume(&vol, &live, &snaps, "after the unaligned writes");

    // Out of bounds: refused, and nothing changes.
    vol.destage_all().unwrap();
    let before = vol.info();
    let oob = |r: snapvol_engine::Result<()>, what: &str| match r {
        Err(Error::OutOfBounds { .. }) => {}
        other => panic!("{what}: want OutOfBounds, got {other:?}"),
    };
    oob(vol.write(size - 10, &[0xee; 11]), "write over the end");
    oob(vol.write(size, &[0xee]), "write at the end");
    oob(
        vol.write(u64::MAX - 1, &[0xee; 4]),
        "write whose end overflows",
    );
    oob(
        vol.write_zeroes(size - chunk, chunk + 1),
        "write_zeroes over the end",
    );
    oob(vol.trim(size - 1, 2), "trim over the end");
    let mut buf = [0u8; 2];
    oob(vol.read(size - 1, &mut buf), "read over the end");
    let seq = vol.snapshot(&snaps[0].0).unwrap().seq;
    oob(
        vol.read_snapshot(seq, size - 1, &mut buf),
        "snapshot read over the end",
    );
    vol.destage_all().unwrap();
    let after = vol.info();
    assert_eq!(
        (after.target_used_bytes, after.copies_since_open),
        (before.target_used_bytes, before.copies_since_open),
        "a refused write preserves nothing"
    );
    assert_volume(&vol, &live, &snaps, "after refused out-of-bounds requests");
    vol.close().unwrap();
    let source = std::fs::read(fx.source_path("vol")).unwrap();
    assert_bytes_eq(&source, &live, 0, "the source VLUN after close");
    let vol = fx.open("vol", opts(MIB));
    assert_volume(&vol, &live, &snaps, "after reopening");
    vol.close().unwrap();
}

#[test]
fn unaligned_writes_and_reads_read_back_exactly_and_out_of_bounds_changes_nothing_with_4k_chunks() {
    unaligned_io(4 * KIB);
}

#[test]
fn unaligned_writes_and_reads_read_back_exactly_and_out_of_bounds_changes_nothing_with_16k_chunks()
{
    unaligned_io(16 * KIB);
}

#[test]
fn unaligned_writes_and_reads_read_back_exactly_and_out_of_bounds_changes_nothing_with_1m_chunks() {
    unaligned_io(MIB);
}
