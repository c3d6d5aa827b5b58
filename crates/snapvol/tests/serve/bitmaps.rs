//! `qemu:dirty-bitmap:SNAP` over NBD, as backup tools use it: nbdinfo, qemu-img's
//! `x-dirty-bitmap`, python3-libnbd the way virtnbdbackup calls it, a whole incremental backup
//! cycle, and the bitmap under writes and snapshot churn.

use std::collections::BTreeSet;

use crate::serving::*;

pub(crate) const CHUNK: u64 = 64 * KIB;
/// The volume of the map tests: 256 chunks.
pub(crate) const SIZE: u64 = 16 * MIB;

/// Chunk numbers covered by `[offset, offset + len)`, which must be whole chunks.
fn chunks_of(offset: u64, len: u64) -> Vec<u64> {
    assert!(
        offset % CHUNK == 0 && len % CHUNK == 0,
        "{offset}+{len} is not whole chunks"
    );
    (offset / CHUNK..(offset + len) / CHUNK).collect()
}

fn set(chunks: &[u64]) -> BTreeSet<u64> {
    chunks.iter().copied().collect()
}

/// Volume `v` (16 MiB, 64 KiB chunks) served, written before and after snapshots s1 and s2:
/// returns the server and the chunks changed since s1, since s2, and between s1 and s2.
pub(crate) fn volume_with_known_changes(env: &Env) -> (Server, [BTreeSet<u64>; 3]) {
    env.create("v", "16M");
    let server = env.serve();
    let live = server.uri("v");
    qemu_io_ok(&live, &["write -P 0x11 0 256k", "write -P 0x12 640k 64k"]);
    env.snapvol_ok(&["snapshot", "create", "v@s1"]);
    // A 4 KiB write inside chunk 2, whole chunks, a write across a chunk boundary (chunks 30
    // and 31), zeroes (chunk 40), a discard (chunk 50), and the last chunk.
    qemu_io_ok(
        &live,
        &[
            "write -P 0x21 136k 4k",
            "write -P 0x22 320k 64k",
            "write -P 0x23 1280k 192k",
            "write -P 0x24 1980k 60k",
            "write -z 2560k 64k",
            "discard 3200k 64k",
            "write -P 0x25 16320k 64k",
        ],
    );
    env.snapvol_ok(&["snapshot", "create", "v@s2"]);
    qemu_io_ok(&live, &["write -P 0x31 6400k 64k", "write -P 0x32 128k 1k"]);
    let between = set(&[2, 5, 20, 21, 22, 30, 31, 40, 50, 255]);
    let since_s2 = set(&[100, 2]);
    let since_s1 = &between | &since_s2;
    (server, [since_s1, since_s2, between])
}

/// The dirty chunks of an `nbdinfo --map=qemu:dirty-bitmap:SNAP` map, checking that every row
/// is whole chunks and either `1 dirty` or `0 clean`.
fn dirty_in(rows: &[MapRow]) -> BTreeSet<u64> {
    let mut dirty = BTreeSet::new();
    for r in rows {
        let chunks = chunks_of(r.offset, r.length);
        match (r.flags, r.description.as_str()) {
            (1, "dirty") => dirty.extend(chunks),
            (0, "clean") => {}
            other => panic!("a dirty-bitmap row that is neither dirty nor clean: {other:?}"),
        }
    }
    dirty
}

#[test]
fn nbdinfo_maps_exactly_the_chunks_changed_since_the_snapshot_as_dirty() {
    let env = Env::new();
    let (server, [since_s1, since_s2, between]) = volume_with_known_changes(&env);
    let map = |bitmap: &str, export: &str| {
        dirty_in(&nbdinfo_map_of(
            &format!("qemu:dirty-bitmap:{bitmap}"),
            &server.uri(export),
            SIZE,
        ))
    };
    assert_eq!(map("s1", "v"), since_s1);
    assert_eq!(map("s2", "v"), since_s2);
    assert_eq!(map("s1", "v@s2"), between);

    // nbdinfo --list shows which export offers which bitmap.
    let out = run_ok(
        tool("nbdinfo")
            .args(["--list", "--json"])
            .arg(server.uri("")),
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nbdinfo JSON");
    let contexts = |name: &str| -> Vec<String> {
        let e = list["exports"]
            .as_array()
            .expect("exports")
            .iter()
            .find(|e| e["export-name"] == name)
            .unwrap_or_else(|| panic!("no export {name} in {list}"));
        serde_json::from_value(e["contexts"].clone()).expect("contexts")
    };
    let base = "base:allocation";
    let (b1, b2) = ("qemu:dirty-bitmap:s1", "qemu:dirty-bitmap:s2");
    assert_eq!(contexts("v"), vec![base, b1, b2]);
    assert_eq!(contexts("v@s1"), vec![base]);
    assert_eq!(contexts("v@s2"), vec![base, b1]);

    // A snapshot taken while serving brings its bitmap at once; a deleted one takes it away.
    env.snapvol_ok(&["snapshot", "create", "v@s3"]);
    env.snapvol_ok(&["snapshot", "delete", "v@s1"]);
    let e = nbdinfo_json(&server.uri("v"));
    let listed: Vec<String> = serde_json::from_value(e["contexts"].clone()).expect("contexts");
    assert_eq!(listed, vec![base, b2, "qemu:dirty-bitmap:s3"]);
    assert_eq!(map("s3", "v"), BTreeSet::new());
    let out = output_within(
        tool("nbdinfo")
            .arg(format!("--map={b1}"))
            .arg(server.uri("v")),
        LIMIT,
    );
    assert!(
        !out.status.success(),
        "a deleted snapshot's bitmap was mapped"
    );
    server.stop();
}

#[test]
fn qemu_img_map_with_x_dirty_bitmap_shows_the_changed_chunks_as_not_data() {
    let env = Env::new();
    let (server, [since_s1, _, between]) = volume_with_known_changes(&env);
    for (export, expected) in [("v", since_s1), ("v@s2", between)] {
        let opts = format!(
            "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},export={export},\
             x-dirty-bitmap=qemu:dirty-bitmap:s1",
            server.port()
        );
        let out = run_ok(tool("qemu-img").args(["map", "--output=json", "--image-opts", &opts]));
        let map: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("qemu-img map JSON");
        let mut next = 0;
        let mut dirty = BTreeSet::new();
        for e in &map {
            let (start, length) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            assert_eq!(start, next, "qemu-img map of {export} has a gap: {map:?}");
            next += length;
            // qemu's documented quirk: with x-dirty-bitmap, "data": false means dirty.
            if e["data"] == false {
                dirty.extend(chunks_of(start, length));
            }
        }
        assert_eq!(next, SIZE, "qemu-img map of {export} does not cover it");
        assert_eq!(dirty, expected, "{export}: {map:?}");
    }
    server.stop();
}

/// Runs the Python client `script` with `args`, which must succeed; returns its JSON report.
fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out = run_ok(python_client(script).args(args));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{script} {args:?}: {e}: {}", text(&out.stdout)))
}

/// Runs tests/clients/dirty_bitmap.py with `args`; returns its JSON report.
fn dirty_bitmap_py(args: &[&str]) -> serde_json::Value {
    python_json("dirty_bitmap.py", args)
}

/// `(offset, length, flags)` extents of a dirty_bitmap.py map.
fn extents(v: &serde_json::Value) -> Vec<(u64, u64, u64)> {
    serde_json::from_value(v.clone()).expect("extents")
}

#[test]
fn python_libnbd_reads_both_contexts_as_virtnbdbackup_does_and_gets_the_changed_chunks() {
    let env = Env::new();
    let (server, [since_s1, since_s2, between]) = volume_with_known_changes(&env);
    for (export, bitmap, expected) in [
        ("v", "s1", since_s1),
        ("v", "s2", since_s2),
        ("v@s2", "s1", between),
    ] {
        // The script checks each reply: one callback per context, dirty values 0 or 1,
        // allocation values within 0..3.
        let r = dirty_bitmap_py(&["map", &server.uri(export), bitmap]);
        assert_eq!(r["size"], SIZE);
        let mut dirty = BTreeSet::new();
        for (off, len, flags) in extents(&r["dirty"]) {
            if flags == 1 {
                dirty.extend(chunks_of(off, len));
            }
        }
        assert_eq!(dirty, expected, "{export} {bitmap}: {r}");
        // base:allocation alongside: the never-written chunk 200 reads as a hole of zeroes.
        let at_200 = extents(&r["allocation"])
            .into_iter()
            .find(|&(off, len, _)| off <= 200 * CHUNK && 200 * CHUNK < off + len)
            .expect("allocation covers chunk 200");
        assert_eq!(at_200.2, 3, "{r}");
    }

    // One request at a time. Without REQ_ONE the answer is whole chunks from an aligned
    // offset, the last one running to the end of its chunk; with REQ_ONE, exactly one
    // descriptor per context, no longer than the request.
    let live = server.uri("v");
    let probe = |offset: u64, count: u64, flags: &[&str]| {
        let (o, c) = (offset.to_string(), count.to_string());
        let mut args = vec!["probe", &live, "s1", &o, &c];
        args.extend(flags);
        dirty_bitmap_py(&args)
    };
    let pairs = |v: &serde_json::Value| -> Vec<(u64, u64)> {
        serde_json::from_value(v.clone()).expect("descriptors")
    };
    let r = probe(CHUNK, 4 * CHUNK + 10, &[]);
    assert_eq!(
        pairs(&r["dirty"]),
        vec![(CHUNK, 0), (CHUNK, 1), (2 * CHUNK, 0), (CHUNK, 1)],
        "{r}"
    );
    let r = probe(5 * CHUNK + 100, 3 * CHUNK, &["req-one"]);
    assert_eq!(pairs(&r["dirty"]), vec![(CHUNK - 100, 1)], "{r}");
    assert_eq!(pairs(&r["allocation"]).len(), 1, "{r}");
    let r = probe(6 * CHUNK, 1000, &["req-one"]);
    assert_eq!(pairs(&r["dirty"]), vec![(1000, 0)], "{r}");
    let r = probe(20 * CHUNK, 3 * CHUNK, &["req-one"]);
    assert_eq!(pairs(&r["dirty"]), vec![(3 * CHUNK, 1)], "{r}");
    server.stop();
}

#[test]
fn an_incremental_backup_reads_only_the_dirty_extents_and_equals_snapvol_export() {
    let env = Env::new();
    let size = 256 * MIB;
    env.create("v", "256M");
    let server = env.serve();
    let live = server.uri("v");
    let base = env.path("base.img");
    write_image(
        &base,
        size,
        &[
            (0, 8 * MIB, 1),
            (100 * MIB, 3 * MIB, 2),
            (250 * MIB, MIB, 3),
        ],
    );
    run_ok(tool("nbdcopy").arg("--flush").arg(&base).arg(&live));
    env.snapvol_ok(&["snapshot", "create", "v@s1"]);
    let full = env.path("full.img");
    nbdcopy(&server.uri("v@s1"), &full);

    // Change 1.5 MiB worth of chunks (and zero and discard some), then take s2; later writes
    // must not reach the backup.
    qemu_io_ok(
        &live,
        &[
            "write -P 0x51 4k 8k",
            "write -P 0x52 5M 640k",
            "write -z 100M 256k",
            "discard 101M 128k",
            "write -P 0x53 180M 64k",
            "write -P 0x54 255M 128k",
            "write -P 0x55 7M 64k",
        ],
    );
    env.snapvol_ok(&["snapshot", "create", "v@s2"]);
    qemu_io_ok(&live, &["write -P 0x66 0 1M", "write -P 0x67 200M 1M"]);

    let r = dirty_bitmap_py(&["backup", &server.uri("v@s2"), "s1", full.to_str().unwrap()]);
    let exported = run_ok(env.snapvol().args(["export", "v@s2", "-"]));
    assert_eq!(exported.stdout.len() as u64, size);
    let backup = std::fs::read(&full).expect("read full.img");
    if let Some(i) = (0..backup.len()).find(|&i| backup[i] != exported.stdout[i]) {
        panic!("the backup differs from snapvol export v@s2 at byte {i}: {r}");
    }
    // Only the dirty chunks were read, 21 of them (1 + 10 + 4 + 2 + 1 + 2 + 1), not the 256
    // MiB volume; those base:allocation reports as zeroes (some of the 6 zeroed or discarded
    // ones, depending on whether they are still in the cache) were zeroed without reading.
    assert_eq!(r["dirty_bytes"], 21 * CHUNK, "{r}");
    let (read, zeroed) = (
        r["bytes_read"].as_u64().unwrap(),
        r["bytes_zeroed"].as_u64().unwrap(),
    );
    assert_eq!(read + zeroed, 21 * CHUNK, "{r}");
    assert!(read >= 15 * CHUNK, "{r}");
    server.stop();
}

#[test]
fn the_bitmap_stays_exact_under_writes_and_snapshot_churn() {
    let env = Env::new();
    env.create("v", "256M");
    let server = env.serve();
    let store = env.store();
    let uri = format!("nbd://127.0.0.1:{}", server.port());
    let chunk = CHUNK.to_string();
    let store = store.to_str().unwrap();
    let r = python_json("bitmap_race.py", &[BIN, store, &uri, "v", &chunk, "8", "7"]);
    assert_eq!(r["problems"], serde_json::json!([]), "{r}");
    for n in [
        "writes",
        "walks",
        "rounds",
        "deleted_errors",
        "dirty_chunks",
    ] {
        assert!(r[n].as_u64().unwrap() > 0, "no {n}: {r}");
    }
    // Only the deleted bitmaps failed, and the server said so at debug level only: no warning
    // or error in its log once the race began (the harness's probe of the port before it
    // leaves a warning of its own).
    let log = server.log();
    let race = &log[log
        .find("v@base")
        .expect("the race's base snapshot in the log")..];
    assert!(
        !race.contains("WARN") && !race.contains("ERROR"),
        "the server complained:\n{race}"
    );
    server.stop();
}
