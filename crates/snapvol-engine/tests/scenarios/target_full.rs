//! Target full (scenario 4): ENOSPC, nothing changed, no snapshot invalidated, space back on
//! delete.

use snapvol_engine::{Error, Volume};

use crate::common::{assert_volume, opts, pattern, Fixture, KIB, MIB};

fn target_full(flush_every_write: bool) {
    const SIZE: u64 = 4 * MIB;
    const CHUNK: u64 = 64 * KIB;
    const CAP: u64 = 2 * MIB;
    let fx = Fixture::new();
    let vol = fx.create("vol", SIZE, CHUNK, Some(CAP), opts(32 * MIB));
    assert_eq!(vol.info().target_size, Some(CAP));
    let flush = |vol: &Volume| {
        if flush_every_write {
            vol.destage_all().unwrap();
        }
    };
    let mut live = pattern(0, 0, SIZE);
    vol.write(0, &live).unwrap();
    vol.destage_all().unwrap();

    // s1 alone needs the originals of chunks 0..4.
    vol.snapshot_create("s1").unwrap();
    let snap1 = live.clone();
    for c in 0..4 {
        let data = pattern(10 + c, c * CHUNK, CHUNK);
        vol.write(c * CHUNK, &data).unwrap();
        flush(&vol);
        live[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize].copy_from_slice(&data);
    }
    // s1 and s2 share the originals of everything overwritten from now on.
    vol.snapshot_create("s2").unwrap();
    let snap2 = live.clone();
    let mut snaps = vec![("s1".to_owned(), snap1), ("s2".to_owned(), snap2.clone())];

    // Unaligned writes over two chunks each, until the target cannot hold their originals.
    let mut chunks_overwritten_after_s2 = 0;
    let mut failed = None;
    for k in 0.. {
        let off = (4 + 2 * k) * CHUNK + 1000;
        let len = 2 * CHUNK - 2000;
        assert!(
            off + len <= SIZE,
            "a {CAP}-byte target took more than {} preserved chunks without ENOSPC",
            2 * k
        );
        let data = pattern(100 + k, off, len);
        match vol.write(off, &data) {
            Ok(()) => {
                flush(&vol);
                live[off as usize..(off + len) as usize].copy_from_slice(&data);
                chunks_overwritten_after_s2 += 2;
            }
            Err(Error::NoSpace { .. }) => {
                failed = Some((off, data));
                break;
            }
            Err(e) => panic!("write {k} failed with {e} where ENOSPC or success was due"),
        }
    }
    let (off, data) = failed.expect("the loop ends at the failure");
    assert!(
        chunks_overwritten_after_s2 > 0,
        "the target should hold some preservations"
    );
    // The failed write changed nothing; acknowledged writes and every snapshot are intact.
    assert_volume(&vol, &live, &snaps, "after ENOSPC");
    // A write that needs no preservation still succeeds: chunk 4 is preserved for s2 already.
    let fix = pattern(7, 4 * CHUNK + 10, 100);
    vol.write(4 * CHUNK + 10, &fix)
        .expect("a write needing no preservation succeeds on a full target");
    live[(4 * CHUNK + 10) as usize..(4 * CHUNK + 110) as usize].copy_from_slice(&fix);
    // Everything acknowledged can be made durable: the promised space was really there.
    vol.destage_all()
        .expect("destaging acknowledged writes on a full target");
    assert_volume(&vol, &live, &snaps, "after ENOSPC and a flush");
    assert!(
        fx.target_len("vol") <= CAP,
        "the target file ({} bytes) exceeds its cap of {CAP}",
        fx.target_len("vol")
    );

    // Deleting s1 frees the copies only it read; the same write now succeeds.
    vol.snapshot_delete("s1").unwrap();
    snaps.remove(0);
    vol.write(off, &data)
        .expect("the write that hit ENOSPC succeeds once a snapshot is deleted");
    flush(&vol);
    live[off as usize..off as usize + data.len()].copy_from_slice(&data);
    chunks_overwritten_after_s2 += 2;
    assert_volume(&vol, &live, &snaps, "after deleting s1 and retrying");
    vol.destage_all().unwrap();
    assert_eq!(
        vol.info().target_used_bytes,
        chunks_overwritten_after_s2 * CHUNK,
        "s2 holds one copy per chunk overwritten after it"
    );
    vol.close().unwrap();
    assert!(
        fx.target_len("vol") <= CAP,
        "the target file exceeds its cap"
    );

    let vol = fx.open("vol", opts(32 * MIB));
    assert_eq!(vol.info().target_size, Some(CAP));
    assert_eq!(
        vol.info().target_used_bytes,
        chunks_overwritten_after_s2 * CHUNK
    );
    assert_volume(&vol, &live, &snaps, "after reopening");
    vol.close().unwrap();
}

#[test]
fn a_full_target_fails_the_write_with_enospc_and_invalidates_nothing_when_flushing_every_write() {
    target_full(true);
}

#[test]
fn a_full_target_fails_the_write_with_enospc_and_invalidates_nothing_with_writes_in_the_cache() {
    target_full(false);
}

#[test]
fn a_write_fails_with_enospc_only_when_the_target_cannot_hold_its_preservation() {
    const SIZE: u64 = 4 * MIB;
    const CHUNK: u64 = 64 * KIB;
    const CAP: u64 = 2 * MIB;
    const CACHED: u64 = 16;
    const MORE: u64 = 4;
    let fx = Fixture::new();
    let vol = fx.create("vol", SIZE, CHUNK, Some(CAP), opts(32 * MIB));
    let mut live = pattern(0, 0, SIZE);
    vol.write(0, &live).unwrap();
    vol.destage_all().unwrap();
    vol.snapshot_create("s1").unwrap();
    let snaps = vec![("s1".to_owned(), live.clone())];
    // 16 overwrites wait in the cache: 16 copies are promised. With 4 more, the target holds
    // 20 copies of 64 KiB and its metadata: well within 2 MiB.
    for c in 0..CACHED {
        let data = pattern(10 + c, c * CHUNK, CHUNK);
        vol.write(c * CHUNK, &data).unwrap();
        live[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize].copy_from_slice(&data);
    }
    let len_before = fx.target_len("vol");
    let results = std::thread::scope(|scope| {
        let flusher = scope.spawn(|| vol.destage_all());
        // Overwrite more chunks while the 16 copies are being written and committed (the
        // target file grows when they are written). Whatever the timing, the space is there:
        // a correct engine accepts these writes.
        while fx.target_len("vol") == len_before && !flusher.is_finished() {
            std::hint::spin_loop();
        }
        let results: Vec<_> = (0..MORE)
            .map(|i| {
                let c = 20 + i;
                let data = pattern(100 + c, c * CHUNK, CHUNK);
                (c, data.clone(), vol.write(c * CHUNK, &data))
            })
            .collect();
        flusher.join().unwrap().unwrap();
        results
    });
    let mut failures = Vec::new();
    for (c, data, r) in results {
        match r {
            Ok(()) => live[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize].copy_from_slice(&data),
            Err(e) => failures.push(format!("chunk {c}: {e}")),
        }
    }
    vol.destage_all().unwrap();
    let used = vol.info().target_used_bytes;
    assert!(
        failures.is_empty(),
        "writes failed although the target holds {used} of {CAP} bytes of copies: {failures:?}"
    );
    assert_eq!(used, (CACHED + MORE) * CHUNK);
    assert_volume(&vol, &live, &snaps, "after the writes");
    vol.close().unwrap();
}

#[test]
fn snapshots_taken_on_a_full_target_never_grow_it_past_its_cap() {
    const SIZE: u64 = MIB;
    const CHUNK: u64 = 4 * KIB;
    const CAP: u64 = 256 * KIB;
    let fx = Fixture::new();
    let vol = fx.create("vol", SIZE, CHUNK, Some(CAP), opts(4 * MIB));
    let mut live = pattern(0, 0, SIZE);
    vol.write(0, &live).unwrap();
    vol.destage_all().unwrap();
    vol.snapshot_create("base").unwrap();
    let snaps = vec![("base".to_owned(), live.clone())];
    // Fill the target with originals for "base" until a write gets ENOSPC.
    let mut filled = false;
    for c in 0..SIZE / CHUNK {
        let data = pattern(1, c * CHUNK, CHUNK);
        match vol.write(c * CHUNK, &data) {
            Ok(()) => {
                vol.destage_all().unwrap();
                live[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize].copy_from_slice(&data);
            }
            Err(Error::NoSpace { .. }) => {
                filled = true;
                break;
            }
            Err(e) => panic!("overwriting chunk {c}: {e}"),
        }
    }
    assert!(filled, "the target never filled up");
    // Every snapshot adds metadata. Once it no longer fits, taking one must fail, not write
    // past the cap (on a block device that is an I/O error; in a file, a target that is
    // larger than the size it was given).
    let mut taken = 0;
    for i in 0..1000 {
        let name = format!("{i:0>128}");
        match vol.snapshot_create(&name) {
            Ok(_) => taken += 1,
            Err(Error::NoSpace { .. }) => break,
            Err(e) => panic!("snapshot {i} on a full target: {e}"),
        }
        let len = fx.target_len("vol");
        assert!(
            len <= CAP,
            "after {taken} snapshots on a full target its file holds {len} bytes, past its cap of {CAP}"
        );
    }
    assert_volume(
        &vol,
        &live,
        &snaps,
        &format!("after {taken} more snapshots"),
    );
    vol.close().unwrap();
    let vol = fx.open("vol", opts(4 * MIB));
    assert_volume(&vol, &live, &snaps, "after reopening");
    vol.close().unwrap();
}
