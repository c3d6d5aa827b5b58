//! RBD images against a real cluster: the VLUN contract, growth, discard, allocation queries,
//! many threads at once, and the engine's `rbd:` locations.
//!
//! They run when `CEPH_CONF` is set (`scripts/ceph.sh start DIR` prints it), print a skip
//! line otherwise, and fail instead with `SNAPVOL_REQUIRE_CEPH=1`.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{cluster, pattern, unique, ScratchImage, POOL};
use snapvol_engine::vlun::Vlun;
use snapvol_engine::Location;
use snapvol_rbd::{IoMode, RbdImage, SEARCH_LIMIT};

const MIB: u64 = 1 << 20;

#[test]
fn an_image_is_created_written_read_flushed_resized_and_removed() {
    let Some(cluster) = cluster("image lifecycle") else {
        return;
    };
    let io = cluster.ioctx(POOL).unwrap();
    let scratch = ScratchImage::new(&io, "life", 8 * MIB);
    assert!(io.list_images().unwrap().contains(&scratch.name));
    let e = io.create_image(&scratch.name, MIB).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");

    let img = scratch.open();
    assert_eq!(img.len().unwrap(), 8 * MIB);
    assert!(img.growable());
    // Across an object boundary (objects are 4 MiB).
    let data = pattern(1, 4 * MIB - 1000, 5000);
    img.write_at(&data, 4 * MIB - 1000).unwrap();
    img.sync().unwrap();
    let mut back = vec![0u8; 5000];
    img.read_at(&mut back, 4 * MIB - 1000).unwrap();
    assert_eq!(back, data);

    // Reads past the end see zeroes; writes past the end grow the image.
    let mut tail = vec![7u8; 4096];
    img.read_at(&mut tail, 8 * MIB - 100).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
    img.read_at(&mut tail, 100 * MIB).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
    img.write_at(b"grown", 9 * MIB).unwrap();
    assert_eq!(img.len().unwrap(), 9 * MIB + 5);

    img.set_len(2 * MIB).unwrap();
    assert_eq!(img.len().unwrap(), 2 * MIB);
    img.set_len(16 * MIB).unwrap();
    let mut after = vec![1u8; 5000];
    img.read_at(&mut after, 4 * MIB - 1000).unwrap();
    assert!(after.iter().all(|&b| b == 0), "shrinking dropped the data");

    img.write_at(&[9; 4096], MIB).unwrap();
    img.discard(0, 16 * MIB).unwrap();
    img.sync().unwrap();

    // Another handle sees the flushed state.
    let ro = RbdImage::open(&io, &scratch.name, true).unwrap();
    assert_eq!(ro.len().unwrap(), 16 * MIB);
    let e = ro.write_at(b"x", 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    drop(ro);

    drop(img);
    io.remove_image(&scratch.name).unwrap();
    assert!(!io.list_images().unwrap().contains(&scratch.name));
    let e = RbdImage::open(&io, &scratch.name, false).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
}

/// The contract every VLUN honours, as the engine's own test states it for files and memory.
#[test]
fn an_image_honours_the_vlun_contract_and_punch_zero_reads_back_zeroes() {
    let Some(cluster) = cluster("vlun contract") else {
        return;
    };
    let io = cluster.ioctx(POOL).unwrap();
    let scratch = ScratchImage::new(&io, "contract", 16);
    let v: &dyn Vlun = &scratch.open();
    v.write_at(b"hello", 10).unwrap();
    let mut buf = [1u8; 8];
    v.read_at(&mut buf, 8).unwrap();
    assert_eq!(&buf, b"\0\0hello\0");
    let mut past = [1u8; 4];
    v.read_at(&mut past, 1 << 20).unwrap();
    assert_eq!(past, [0; 4], "reads past the end see zeroes");
    v.sync().unwrap();
    v.punch_zero(10, 5).unwrap();
    let mut five = [1u8; 5];
    v.read_at(&mut five, 10).unwrap();
    assert_eq!(five, [0; 5]);

    // Unaligned ranges that cover one object whole and two in part: rbd_discard would leave
    // pieces under 64 KiB untouched; punch_zero must not.
    let base = 3 * MIB + 12_345;
    let data = pattern(2, base, 6 * MIB as usize);
    v.write_at(&data, base).unwrap();
    let (hole_at, hole_len) = (base + 777, 5 * MIB + 4321);
    v.punch_zero(hole_at, hole_len).unwrap();
    let mut all = vec![0u8; data.len()];
    v.read_at(&mut all, base).unwrap();
    let lo = (hole_at - base) as usize;
    let hi = lo + hole_len as usize;
    assert_eq!(all[..lo], data[..lo], "before the hole");
    assert!(all[lo..hi].iter().all(|&b| b == 0), "inside the hole");
    assert_eq!(all[hi..], data[hi..], "after the hole");
    // Past the end it changes nothing (there is nothing there but zeroes).
    let len = v.len().unwrap();
    v.punch_zero(len - 10, 1000).unwrap();
    assert_eq!(v.len().unwrap(), len);
}

#[test]
fn allocation_queries_find_written_objects_in_a_sparse_image() {
    let Some(cluster) = cluster("next_data/next_hole") else {
        return;
    };
    let io = cluster.ioctx(POOL).unwrap();
    let scratch = ScratchImage::new(&io, "sparse", 512 * MIB);
    let img = scratch.open();
    assert_eq!(img.next_data(0).unwrap(), None, "a new image is all hole");
    assert_eq!(img.next_hole(0).unwrap(), 0);
    img.write_at(&[5; 4096], 20 * MIB).unwrap();
    img.write_at(&[5; 4096], 300 * MIB + 8192).unwrap();
    img.sync().unwrap();

    // RBD allocates in objects (4 MiB): data may be reported from the object's start.
    let first = img.next_data(0).unwrap().unwrap();
    assert!((16 * MIB..=20 * MIB).contains(&first), "{first:#x}");
    let hole = img.next_hole(first).unwrap();
    assert!((20 * MIB + 4096..=24 * MIB).contains(&hole), "{hole:#x}");
    let second = img.next_data(hole).unwrap().unwrap();
    assert!(
        (300 * MIB..=300 * MIB + 8192).contains(&second),
        "{second:#x}"
    );
    assert_eq!(img.next_data(304 * MIB).unwrap(), None);
    assert_eq!(img.next_hole(100 * MIB).unwrap(), 100 * MIB);
}

/// An allocation query looks [`SEARCH_LIMIT`] ahead at most, so that a block-status request on
/// a large sparse volume takes milliseconds, not seconds; answers stay truthful: what is
/// reported as a hole is one, and a far-away extent is still reached by asking again.
#[test]
fn allocation_queries_on_a_large_sparse_image_look_a_bounded_distance_ahead() {
    let Some(cluster) = cluster("bounded allocation queries") else {
        return;
    };
    let io = cluster.ioctx(POOL).unwrap();
    let scratch = ScratchImage::new(&io, "sparse-large", 8 << 30);
    let img = scratch.open();
    let far = (5u64 << 30) + 12 * MIB;
    img.write_at(&[5; 4096], far).unwrap();
    img.sync().unwrap();

    let started = std::time::Instant::now();
    let first = img.next_data(0).unwrap().unwrap();
    assert_eq!(
        first, SEARCH_LIMIT,
        "nothing within the limit: a hole up to it"
    );
    assert_eq!(img.next_hole(first).unwrap(), first, "and a hole there too");
    // As the engine walks: from each answer, ask where its data run ends.
    let mut at = first;
    let data = loop {
        let d = img.next_data(at).unwrap().expect("the data 5 GiB in");
        if img.next_hole(d).unwrap() > d {
            break d;
        }
        at = d;
    };
    eprintln!(
        "found data 5 GiB in, a GiB per query, in {:?}",
        started.elapsed()
    );
    assert!((far - 4 * MIB..=far).contains(&data), "{data:#x}");
    let hole = img.next_hole(data).unwrap();
    assert!((far + 4096..=far + 4 * MIB).contains(&hole), "{hole:#x}");
    assert_eq!(
        img.next_data(far + 4 * MIB).unwrap(),
        Some(far + 4 * MIB + SEARCH_LIMIT)
    );
}

/// Eight threads at once on one image handle: each owns a region it writes and verifies, and
/// all of them also write whole 4 KiB blocks of one shared region. Every block read back must
/// be one write, whole, and at the end each shared block must hold some thread's last write
/// to it.
#[test]
fn eight_threads_write_and_read_distinct_and_overlapping_ranges_at_once() {
    let Some(cluster) = cluster("eight threads") else {
        return;
    };
    const THREADS: u64 = 8;
    const OWN: u64 = 8 * MIB; // each thread's own region
    const SHARED_BLOCKS: u64 = 64;
    const BLOCK: usize = 4096;
    let shared_base = THREADS * OWN;
    let io = cluster.ioctx(POOL).unwrap();
    let scratch = ScratchImage::new(&io, "threads", shared_base + SHARED_BLOCKS * BLOCK as u64);
    let img = Arc::new(scratch.open());

    /// A block stamped with who wrote it: (thread, sequence) in every 16 bytes.
    fn stamp(thread: u64, seq: u64) -> Vec<u8> {
        let mut b = Vec::with_capacity(BLOCK);
        while b.len() < BLOCK {
            b.extend_from_slice(&thread.to_le_bytes());
            b.extend_from_slice(&seq.to_le_bytes());
        }
        b
    }
    fn read_stamp(b: &[u8]) -> Option<(u64, u64)> {
        let first = &b[..16];
        b.chunks(16).all(|c| c == first).then(|| {
            (
                u64::from_le_bytes(first[..8].try_into().unwrap()),
                u64::from_le_bytes(first[8..].try_into().unwrap()),
            )
        })
    }

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let img = img.clone();
            std::thread::spawn(move || {
                let mut last: HashMap<u64, u64> = HashMap::new();
                let mut rng = t * 7919 + 1;
                let mut next = || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                for round in 0..24u64 {
                    // Own region: mixed sizes, unaligned, verified right away.
                    let len = [512usize, 4096, 65_536, 1 << 20][(round % 4) as usize] + 3;
                    let off = t * OWN + next() % (OWN - len as u64);
                    let data = pattern(t * 1000 + round, off, len);
                    img.write_at(&data, off).unwrap();
                    let mut back = vec![0u8; len];
                    img.read_at(&mut back, off).unwrap();
                    assert_eq!(back, data, "thread {t} round {round} at {off:#x}");

                    // Shared region: whole blocks, racing with the other threads.
                    for _ in 0..4 {
                        let block = next() % SHARED_BLOCKS;
                        let seq = round * 4 + 1 + next() % 4;
                        let at = shared_base + block * BLOCK as u64;
                        img.write_at(&stamp(t, seq), at).unwrap();
                        last.insert(block, seq);
                        let mut b = vec![0u8; BLOCK];
                        img.read_at(&mut b, at).unwrap();
                        assert!(read_stamp(&b).is_some(), "torn block {block}");
                    }
                }
                last
            })
        })
        .collect();
    let lasts: Vec<HashMap<u64, u64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    img.sync().unwrap();

    for block in 0..SHARED_BLOCKS {
        let mut b = vec![0u8; BLOCK];
        img.read_at(&mut b, shared_base + block * BLOCK as u64)
            .unwrap();
        let candidates: Vec<(u64, u64)> = (0..THREADS)
            .filter_map(|t| lasts[t as usize].get(&block).map(|&s| (t, s)))
            .collect();
        if candidates.is_empty() {
            assert!(b.iter().all(|&x| x == 0), "block {block} was never written");
        } else {
            let got = read_stamp(&b).unwrap_or_else(|| panic!("torn block {block}"));
            assert!(
                candidates.contains(&got),
                "block {block} holds {got:?}, not a last write of any thread: {candidates:?}"
            );
        }
    }
}

/// Batches (what the destager uses: a batch's originals, copies and new data) keep many
/// requests in flight at once; several threads submit theirs together, some racing on shared
/// blocks, one growing the image past its end; every batch reads back what was written, in
/// both I/O modes, and bytes past the end read as zeroes.
#[test]
fn batches_of_many_requests_from_racing_threads_read_back_what_was_written() {
    let Some(cluster) = cluster("batches") else {
        return;
    };
    const THREADS: u64 = 4;
    const OWN: u64 = 16 * MIB;
    const BLOCK: usize = 64 << 10;
    const SHARED_BLOCKS: u64 = 32;
    let shared_base = THREADS * OWN;
    let size = shared_base + SHARED_BLOCKS * BLOCK as u64;
    let io = cluster.ioctx(POOL).unwrap();
    let scratch = ScratchImage::new(&io, "batches", size);
    let img = Arc::new(scratch.open());
    let mut sync_img = scratch.open();
    sync_img.set_io_mode(IoMode::Sync);
    let sync_img = Arc::new(sync_img);

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let img = if t % 2 == 0 {
                img.clone()
            } else {
                sync_img.clone()
            };
            std::thread::spawn(move || {
                for round in 0..3u64 {
                    // 200 disjoint ranges of this thread's region (more than one batch keeps
                    // in flight at once), of mixed sizes, unaligned.
                    let ranges: Vec<(u64, usize)> = (0..200u64)
                        .map(|i| {
                            let len = [512usize, 4096, 65_536 + 7][(i % 3) as usize];
                            (t * OWN + i * 80_000 + round * 11, len)
                        })
                        .collect();
                    let datas: Vec<Vec<u8>> = ranges
                        .iter()
                        .map(|&(off, len)| pattern(t * 100 + round, off, len))
                        .collect();
                    let writes: Vec<(u64, &[u8])> = ranges
                        .iter()
                        .zip(&datas)
                        .map(|(&(off, _), d)| (off, &d[..]))
                        .collect();
                    img.write_many(&writes).unwrap();
                    // Shared blocks, whole, racing with the other threads' batches.
                    let stamp = vec![(t * 16 + round) as u8 + 1; BLOCK];
                    let shared: Vec<(u64, &[u8])> = (0..SHARED_BLOCKS)
                        .filter(|b| (b + t + round) % 3 == 0)
                        .map(|b| (shared_base + b * BLOCK as u64, &stamp[..]))
                        .collect();
                    img.write_many(&shared).unwrap();

                    let mut backs: Vec<Vec<u8>> =
                        ranges.iter().map(|&(_, len)| vec![0u8; len]).collect();
                    let mut reads: Vec<(u64, &mut [u8])> = ranges
                        .iter()
                        .zip(backs.iter_mut())
                        .map(|(&(off, _), b)| (off, &mut b[..]))
                        .collect();
                    img.read_many(&mut reads).unwrap();
                    for ((off, _), (back, data)) in ranges.iter().zip(backs.iter().zip(&datas)) {
                        assert!(back == data, "thread {t} round {round}: range at {off:#x}");
                    }
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    img.sync().unwrap();
    for b in 0..SHARED_BLOCKS {
        let mut block = vec![0u8; BLOCK];
        img.read_at(&mut block, shared_base + b * BLOCK as u64)
            .unwrap();
        assert!(
            block.iter().all(|&x| x == block[0]),
            "shared block {b} is torn: a mix of two threads' writes"
        );
    }

    // A batch that writes past the end grows the image once, to the furthest end; a batch
    // that reads across and past the end gets zeroes there.
    let tail = pattern(9, size, 5000);
    img.write_many(&[(size + MIB, &tail[..]), (size - 100, &tail[..200])])
        .unwrap();
    assert_eq!(img.len().unwrap(), size + MIB + 5000);
    let (mut a, mut b, mut c) = (vec![1u8; 300], vec![1u8; 5000], vec![1u8; 100]);
    img.read_many(&mut [
        (size - 100, &mut a[..]),
        (size + MIB, &mut b[..]),
        (size + 2 * MIB, &mut c[..]),
    ])
    .unwrap();
    assert_eq!(&a[..200], &tail[..200]);
    assert!(
        a[200..].iter().all(|&x| x == 0),
        "a never-written gap reads as zero"
    );
    assert_eq!(b, tail);
    assert!(c.iter().all(|&x| x == 0), "past the end reads as zero");
    img.read_many(&mut []).unwrap();
    img.write_many(&[]).unwrap();

    let ro = RbdImage::open(&io, &scratch.name, true).unwrap();
    let e = ro.write_many(&[(0, &tail[..])]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
}

/// Both ways of reaching librbd give the same bytes (the aio one is the default).
#[test]
fn synchronous_and_aio_calls_read_each_others_writes() {
    let Some(cluster) = cluster("io modes") else {
        return;
    };
    let io = cluster.ioctx(POOL).unwrap();
    let scratch = ScratchImage::new(&io, "modes", 8 * MIB);
    let aio = scratch.open();
    let mut sync = scratch.open();
    sync.set_io_mode(IoMode::Sync);
    let data = pattern(3, 12345, 3 * MIB as usize);
    sync.write_at(&data, 12345).unwrap();
    sync.sync().unwrap();
    let mut back = vec![0u8; data.len()];
    aio.read_at(&mut back, 12345).unwrap();
    assert_eq!(back, data);
    aio.write_at(&data[..1000], 0).unwrap();
    aio.sync().unwrap();
    let mut small = vec![0u8; 1000];
    sync.read_at(&mut small, 0).unwrap();
    assert_eq!(small, data[..1000]);
}

#[test]
fn rbd_locations_create_open_and_remove_images_through_the_engine() {
    let Some(_cluster) = cluster("rbd: locations") else {
        return;
    };
    snapvol_rbd::register(None, "admin".into());
    let name = unique("loc");
    let loc = Location::parse(&format!("rbd:{POOL}/{name}"));
    /// Removes the image if the test fails before it does.
    struct Cleanup<'a>(&'a Location);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = self.0.remove();
        }
    }
    let _cleanup = Cleanup(&loc);
    {
        let v = loc.create(4 * MIB).unwrap();
        v.write_at(b"through the engine", 4096).unwrap();
        v.sync().unwrap();
        let Err(again) = loc.create(MIB) else {
            panic!("creating twice must fail");
        };
        assert!(
            again.to_string().contains(&format!("rbd:{POOL}/{name}")),
            "{again}"
        );
    }
    {
        let ro = loc.open_read_only().unwrap();
        let mut buf = [0u8; 18];
        ro.read_at(&mut buf, 4096).unwrap();
        assert_eq!(&buf, b"through the engine");
        assert!(ro.write_at(b"x", 0).is_err());
    }
    loc.remove().unwrap();
    loc.remove().expect("removing a missing image is no error");
    let Err(e) = loc.open() else {
        panic!("opening a removed image must fail");
    };
    assert!(e.to_string().contains("No such file"), "{e}");

    for bad in ["rbd:nopool", "rbd:/x", "rbd:p/", "rbd:p/ns/x"] {
        let e = Location::parse(bad).open().err().unwrap().to_string();
        assert!(e.contains("invalid RBD location"), "{bad}: {e}");
    }
    let e = Location::parse("rbd:no-such-pool-here/x")
        .open()
        .err()
        .unwrap();
    assert!(e.to_string().contains("rados_ioctx_create"), "{e}");
}
