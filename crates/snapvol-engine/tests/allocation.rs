//! The allocation map that NBD `base:allocation` reports: written chunks are data, never
//! written or trimmed ones are holes that read as zeros, for the live volume and snapshots.

use snapvol_engine::{CreateOptions, Store, VolumeOptions};

const CHUNK: u64 = 64 << 10;

fn data_chunks(runs: &[(u64, bool)]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut pos = 0;
    for &(len, data) in runs {
        if data {
            out.extend((pos / CHUNK)..((pos + len) / CHUNK));
        }
        pos += len;
    }
    out
}

#[test]
fn written_chunks_are_data_and_the_rest_are_holes_for_the_volume_and_its_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let vol = store
        .create(
            "v",
            &CreateOptions::new(64 * CHUNK),
            VolumeOptions::default(),
        )
        .unwrap();
    let size = vol.size();
    assert_eq!(vol.allocation(None, 0, size).unwrap(), vec![(size, false)]);

    // Chunks 2 and 3 written: data while cached and after destage.
    vol.write(2 * CHUNK + 100, &vec![7u8; CHUNK as usize])
        .unwrap();
    assert_eq!(data_chunks(&vol.allocation(None, 0, size).unwrap()), [2, 3]);
    vol.destage_all().unwrap();
    assert_eq!(data_chunks(&vol.allocation(None, 0, size).unwrap()), [2, 3]);

    // A snapshot, then chunk 3 trimmed and chunk 10 written on the live volume.
    let s = vol.snapshot_create("s").unwrap().seq;
    vol.trim(3 * CHUNK, CHUNK).unwrap();
    vol.write(10 * CHUNK, &[1u8; 10]).unwrap();
    vol.destage_all().unwrap();
    assert_eq!(
        data_chunks(&vol.allocation(None, 0, size).unwrap()),
        [2, 10]
    );
    // The snapshot still has chunk 3. Chunk 10's original (zeros) was preserved for it when
    // the live volume wrote there, and a preserved copy counts as data.
    let snap_runs = vol.allocation(Some(s), 0, size).unwrap();
    assert_eq!(data_chunks(&snap_runs), [2, 3, 10]);

    // Whatever is reported as a hole reads as zeros, for the volume and the snapshot.
    for (runs, snap) in [
        (vol.allocation(None, 0, size).unwrap(), None),
        (snap_runs, Some(s)),
    ] {
        let mut pos = 0;
        for (len, data) in runs {
            if !data {
                let mut buf = vec![1u8; len as usize];
                match snap {
                    None => vol.read(pos, &mut buf).unwrap(),
                    Some(s) => vol.read_snapshot(s, pos, &mut buf).unwrap(),
                }
                assert!(
                    buf.iter().all(|&b| b == 0),
                    "hole at {pos}+{len} holds data"
                );
            }
            pos += len;
        }
    }

    // Runs cover exactly the range asked for, from an unaligned offset.
    let runs = vol.allocation(None, 5, 3 * CHUNK).unwrap();
    assert_eq!(runs.iter().map(|r| r.0).sum::<u64>(), 3 * CHUNK);
    vol.close().unwrap();
}
