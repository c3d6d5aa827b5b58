//! snapvol beside Ceph's own tools, against the real cluster `$CEPH_CONF` names:
//!
//! - `rbd import-diff` applies the `rbd diff v1` stream `snapvol export VOL@TO --from VOL@FROM`
//!   writes, and the RBD image then reads byte for byte as the snapshot;
//! - `snapvol import-diff` applies the streams `rbd export-diff` writes (a whole image, then
//!   one `--from-snap`), and the volume's snapshots read byte for byte as the image's.
//!
//! Without `CEPH_CONF` each test says it is skipped and passes, unless `SNAPVOL_REQUIRE_CEPH=1`
//! makes that a failure.

#[path = "serving/mod.rs"]
mod serving;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Instant;

use serving::*;

/// Held for reading by every test, and for writing by a test that disturbs the cluster: the
/// others would only stall behind it.
static OUTAGE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    OUTAGE.read().unwrap_or_else(|e| e.into_inner())
}

/// Whether a cluster is there to test against: without `CEPH_CONF` a skip line (or, with
/// `SNAPVOL_REQUIRE_CEPH=1`, a failure: CI must not pass by skipping).
fn ceph(test: &str) -> bool {
    if std::env::var_os("CEPH_CONF").is_some() {
        return true;
    }
    assert!(
        std::env::var("SNAPVOL_REQUIRE_CEPH").as_deref() != Ok("1"),
        "{test}: SNAPVOL_REQUIRE_CEPH=1 but CEPH_CONF is not set: start a cluster with \
         `scripts/ceph.sh start DIR` and export what it prints"
    );
    // Straight to the stream: the harness hides what `eprintln!` prints for a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: CEPH_CONF is not set (scripts/ceph.sh start DIR starts a cluster)"
    );
    false
}

/// A name of this test and this process, for images, volumes and pools.
fn unique(test: &str) -> String {
    format!("snapvol-interop-{}-{test}", std::process::id())
}

/// `rbd`, `rados` or `ceph` with `args`.
fn ceph_cmd(tool: &str, args: &[&str]) -> Command {
    assert!(
        Path::new("/usr/bin").join(tool).is_file() || which(tool),
        "`{tool}` is not installed: install the Debian package ceph-common"
    );
    let mut cmd = Command::new(tool);
    cmd.args(args);
    cmd
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Runs a Ceph tool, which must succeed; returns its stdout.
fn ceph_ok(tool: &str, args: &[&str]) -> String {
    text(&run_ok(&mut ceph_cmd(tool, args)).stdout)
}

fn s(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// An RBD image in pool `rbd`, removed with its snapshots when dropped.
struct RbdImage {
    spec: String,
}

impl RbdImage {
    /// Names an image (not created yet); a leftover of an earlier run is removed.
    fn new(test: &str) -> Self {
        let image = RbdImage {
            spec: format!("rbd/{}", unique(test)),
        };
        image.remove();
        image
    }

    /// `rbd/IMAGE@SNAP`.
    fn at(&self, snap: &str) -> String {
        format!("{}@{snap}", self.spec)
    }

    fn remove(&self) {
        for args in [
            &["snap", "purge", "--no-progress", &self.spec][..],
            &["rm", "--no-progress", &self.spec][..],
        ] {
            let _ = ceph_cmd("rbd", args).output();
        }
    }

    /// `rbd export SPEC FILE`.
    fn export(&self, spec: &str, file: &Path) {
        let _ = fs::remove_file(file);
        ceph_ok("rbd", &["export", "--no-progress", spec, s(file)]);
    }

    /// The image's snapshot names, oldest first.
    fn snapshots(&self) -> Vec<String> {
        let out = ceph_ok("rbd", &["snap", "ls", "--format", "json", &self.spec]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("rbd snap ls --format json");
        v.as_array()
            .expect("an array")
            .iter()
            .map(|s| s["name"].as_str().expect("a name").to_owned())
            .collect()
    }
}

impl Drop for RbdImage {
    fn drop(&mut self) {
        self.remove();
    }
}

/// What an `rbd diff v1` stream holds, read independently of snapvol's reader.
#[derive(Debug, Default)]
struct Stream {
    from: Option<String>,
    to: Option<String>,
    size: Option<u64>,
    /// `(offset, length)` of each data record.
    data: Vec<(u64, u64)>,
    /// `(offset, length)` of each zero record.
    zero: Vec<(u64, u64)>,
}

impl Stream {
    fn parse(path: &Path) -> Self {
        let b = fs::read(path).expect("read the stream");
        assert!(
            b.starts_with(b"rbd diff v1\n"),
            "{}: no header",
            path.display()
        );
        let le = |at: usize, n: usize| -> u64 {
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(&b[at..at + n]);
            u64::from_le_bytes(v)
        };
        let name = |at: usize| -> (String, usize) {
            let n = usize::try_from(le(at, 4)).unwrap();
            (text(&b[at + 4..at + 4 + n]), at + 4 + n)
        };
        let mut st = Stream::default();
        let mut at = 12;
        loop {
            let tag = b[at];
            at += 1;
            match tag {
                b'f' | b't' => {
                    let (n, next) = name(at);
                    *if tag == b'f' {
                        &mut st.from
                    } else {
                        &mut st.to
                    } = Some(n);
                    at = next;
                }
                b's' => {
                    st.size = Some(le(at, 8));
                    at += 8;
                }
                b'w' => {
                    let (off, len) = (le(at, 8), le(at + 8, 8));
                    st.data.push((off, len));
                    at += 16 + usize::try_from(len).unwrap();
                }
                b'z' => {
                    st.zero.push((le(at, 8), le(at + 8, 8)));
                    at += 16;
                }
                b'e' => break,
                other => panic!("{}: unknown tag {other:#x} at {}", path.display(), at - 1),
            }
        }
        assert_eq!(
            at,
            b.len(),
            "{}: bytes after the end record",
            path.display()
        );
        st
    }

    fn data_bytes(&self) -> u64 {
        self.data.iter().map(|r| r.1).sum()
    }

    fn zero_bytes(&self) -> u64 {
        self.zero.iter().map(|r| r.1).sum()
    }
}

/// Writes an `rbd diff v1` stream of the image size `size` without from- or to-snapshot:
/// `data` as `(offset, length, seed)` data records, `zero` as zero records.
fn hand_made_stream(path: &Path, size: u64, data: &[(u64, u64, u64)], zero: &[(u64, u64)]) {
    let mut b = b"rbd diff v1\n".to_vec();
    b.push(b's');
    b.extend_from_slice(&size.to_le_bytes());
    for &(off, len, seed) in data {
        b.push(b'w');
        b.extend_from_slice(&off.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&pattern(usize::try_from(len).unwrap(), seed));
    }
    for &(off, len) in zero {
        b.push(b'z');
        b.extend_from_slice(&off.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
    }
    b.push(b'e');
    fs::write(path, b).expect("write the stream");
}

/// Asserts that `range` of file `path` reads as zeroes.
fn assert_zero(path: &Path, (off, len): (u64, u64)) {
    let b = fs::read(path).expect("read");
    let (off, len) = (usize::try_from(off).unwrap(), usize::try_from(len).unwrap());
    if let Some(i) = b[off..off + len].iter().position(|&x| x != 0) {
        panic!("{}: byte {} is not zero", path.display(), off + i);
    }
}

/// Volume `vol` of a directory store: s1 and s2 taken with data written, zeroed and trimmed
/// between them through `serve`; `snapvol export vol@s2 --from vol@s1` applied by `rbd
/// import-diff` to the image of s1 makes it read as s2, and creates s2 on the image.
#[test]
fn rbd_import_diff_applies_what_snapvol_export_from_writes() {
    if !ceph("rbd import-diff of snapvol export --from") {
        return;
    }
    let _outage = shared();
    let started = Instant::now();
    let env = Env::new();
    const SIZE: u64 = 64 * MIB;
    // s1: data from an image file (some of it where RBD objects (4 MiB) begin and end).
    let base = env.path("base.img");
    write_image(
        &base,
        SIZE,
        &[
            (0, 8 * MIB, 1),
            (16 * MIB, 8 * MIB, 2),
            (40 * MIB, 4 * MIB, 3),
            (60 * MIB, 4 * MIB, 4),
        ],
    );
    env.create("vol", "64M");
    env.snapvol_ok(&["import", "vol", s(&base)]);
    env.snapvol_ok(&["snapshot", "create", "vol@s1"]);

    // Between s1 and s2, through NBD: writes inside chunks, across chunk and object
    // boundaries and into holes, zeroes written over data, data trimmed (whole objects and a
    // part of one), the last chunk; after s2, writes that s2 must not see.
    let server = env.serve();
    let live = server.uri("vol");
    let between = [
        "write -P 0x5a 1049088 12288",  // 1M + 512: inside chunk 16
        "write -P 0x6b 4128768 131072", // 4M - 64K: across the first object boundary
        "write -P 0x7c 30M 1M",         // where s1 has a hole
        "write -z 17412096 3137536",    // 16.6M, about 3M of zeroes over data
        "discard 40M 4M",               // a whole object of data trimmed
        "discard 2M 192k",              // a part of one
        "write -P 0x8d 67047424 4096",  // 64M - 64K + 4K: the last chunk
    ];
    qemu_io_cmds(&live, &between);
    env.snapvol_ok(&["snapshot", "create", "vol@s2"]);
    qemu_io_cmds(&live, &["write -P 0x9e 0 1M", "write -P 0xaf 40M 64k"]);

    // The stream, through the server and offline: the same bytes.
    let served = env.path("served.diff");
    env.snapvol_ok(&["export", "vol@s2", s(&served), "--from", "vol@s1"]);
    server.stop();
    let diff = env.path("s1-s2.diff");
    env.snapvol_ok(&["export", "vol@s2", s(&diff), "--from", "vol@s1"]);
    assert!(
        fs::read(&served).unwrap() == fs::read(&diff).unwrap(),
        "the served and the offline export --from differ"
    );
    let st = Stream::parse(&diff);
    assert_eq!(
        (st.from.as_deref(), st.to.as_deref(), st.size),
        (Some("s1"), Some("s2"), Some(SIZE)),
        "{st:?}"
    );
    assert!(
        st.zero.len() >= 2 && st.zero_bytes() >= 7 * MIB && !st.data.is_empty(),
        "the stream must carry the zeroed and trimmed ranges as zero records: {st:?}"
    );
    assert!(
        st.data_bytes() < 4 * MIB,
        "the stream carries more data than changed: {st:?}"
    );

    let s1 = env.path("s1.img");
    let s2 = env.path("s2.img");
    env.snapvol_ok(&["export", "vol@s1", s(&s1)]);
    env.snapvol_ok(&["export", "vol@s2", s(&s2)]);
    assert_same_file(&s1, &base);
    assert_zero(&s2, (40 * MIB, 4 * MIB));
    assert_zero(&s2, (2 * MIB, 192 * KIB));

    // The image: s1 in full, its snapshot, then the stream.
    let image = RbdImage::new("export");
    ceph_ok("rbd", &["import", "--no-progress", s(&s1), &image.spec]);
    ceph_ok("rbd", &["snap", "create", "--no-progress", &image.at("s1")]);
    ceph_ok(
        "rbd",
        &["import-diff", "--no-progress", s(&diff), &image.spec],
    );
    assert_eq!(image.snapshots(), ["s1", "s2"], "import-diff creates s2");
    for (spec, want) in [
        (image.at("s2"), &s2),
        (image.spec.clone(), &s2),
        (image.at("s1"), &s1),
    ] {
        let got = env.path("rbd-export.img");
        image.export(&spec, &got);
        assert_same_file(&got, want);
    }
    eprintln!(
        "rbd import-diff of snapvol's stream ({} data records, {} zero records): {:.1} s",
        st.data.len(),
        st.zero.len(),
        started.elapsed().as_secs_f64()
    );
}

/// An RBD image with snapshots a and b, written (rbd bench, and a hand-made stream of data
/// and zeroes through `rbd import-diff`) between them: `rbd export-diff` of a (whole) and of
/// a..b, applied by `snapvol import-diff`, make a volume whose snapshots read as the image's.
/// A volume made from `rbd export` of a plus `snapvol snapshot create` takes the same stream.
#[test]
fn snapvol_import_diff_applies_what_rbd_export_diff_writes() {
    if !ceph("snapvol import-diff of rbd export-diff") {
        return;
    }
    let _outage = shared();
    let started = Instant::now();
    let env = Env::new();
    const SIZE: u64 = 64 * MIB;
    let image = RbdImage::new("import");

    // a: the image imported from a file.
    let base = env.path("base.img");
    write_image(
        &base,
        SIZE,
        &[
            (0, 12 * MIB, 11),
            (20 * MIB, 8 * MIB, 12),
            (48 * MIB, 16 * MIB, 13),
        ],
    );
    ceph_ok("rbd", &["import", "--no-progress", s(&base), &image.spec]);
    ceph_ok("rbd", &["snap", "create", "--no-progress", &image.at("a")]);

    // Between a and b: random 4 KiB writes all over, then data at odd offsets and zeroes:
    // a whole object (4 MiB, RBD removes it), part of one, and a range across two.
    bench(&image.spec, "4M", "4K");
    let changes = env.path("changes.diff");
    hand_made_stream(
        &changes,
        SIZE,
        &[(5 * MIB + 512, 100_000, 21), (36 * MIB - 4096, 12288, 22)],
        &[
            (8 * MIB, 4 * MIB),
            (21 * MIB + 4096, 65536),
            (51 * MIB, 2 * MIB),
        ],
    );
    ceph_ok(
        "rbd",
        &["import-diff", "--no-progress", s(&changes), &image.spec],
    );
    ceph_ok("rbd", &["snap", "create", "--no-progress", &image.at("b")]);
    // After b, writes that b must not see.
    bench(&image.spec, "1M", "64K");

    let want_a = env.path("want-a.img");
    let want_b = env.path("want-b.img");
    image.export(&image.at("a"), &want_a);
    image.export(&image.at("b"), &want_b);
    assert_same_file(&want_a, &base);
    assert_zero(&want_b, (8 * MIB, 4 * MIB));
    assert_zero(&want_b, (21 * MIB + 4096, 65536));

    let whole = env.path("a.diff");
    let diff = env.path("a-b.diff");
    ceph_ok(
        "rbd",
        &["export-diff", "--no-progress", &image.at("a"), s(&whole)],
    );
    ceph_ok(
        "rbd",
        &[
            "export-diff",
            "--no-progress",
            "--from-snap",
            "a",
            &image.at("b"),
            s(&diff),
        ],
    );
    let st = Stream::parse(&diff);
    assert_eq!(
        (st.from.as_deref(), st.to.as_deref(), st.size),
        (Some("a"), Some("b"), Some(SIZE)),
        "{st:?}"
    );
    assert!(
        !st.zero.is_empty() && !st.data.is_empty(),
        "the test means rbd export-diff to write data and zero records: {st:?}"
    );

    // A volume made of rbd's streams alone: the whole image of a, then a..b.
    env.create("chain", "64M");
    env.snapvol_ok(&["import-diff", "chain", s(&whole)]);
    env.snapvol_ok(&["import-diff", "chain", s(&diff)]);
    // A volume made from rbd export of a, plus a snapshot: the stream applies on top.
    env.create("vol", "64M");
    env.snapvol_ok(&["import", "vol", s(&want_a)]);
    env.snapvol_ok(&["snapshot", "create", "vol@a"]);
    env.snapvol_ok(&["import-diff", "vol", s(&diff)]);

    for volume in ["chain", "vol"] {
        assert_eq!(snapshot_names(&env, volume), ["a", "b"], "{volume}");
        for (spec, want) in [
            (format!("{volume}@a"), &want_a),
            (format!("{volume}@b"), &want_b),
            (volume.to_owned(), &want_b),
        ] {
            let got = env.path("snapvol-export.img");
            let _ = fs::remove_file(&got);
            env.snapvol_ok(&["export", &spec, s(&got)]);
            assert_same_file(&got, want);
        }
        let check = env.snapvol_ok(&["check", volume]);
        assert!(check.contains("is clean"), "{check}");
    }
    eprintln!(
        "snapvol import-diff of rbd's stream ({} data records, {} zero records): {:.1} s",
        st.data.len(),
        st.zero.len(),
        started.elapsed().as_secs_f64()
    );
}

/// `rbd bench --io-type write --io-pattern rand` of `total` bytes in `size` writes.
fn bench(spec: &str, total: &str, size: &str) {
    ceph_ok(
        "rbd",
        &[
            "bench",
            "--io-type",
            "write",
            "--io-pattern",
            "rand",
            "--io-size",
            size,
            "--io-total",
            total,
            "--io-threads",
            "4",
            spec,
        ],
    );
}

/// The snapshot names of `volume`, oldest first.
fn snapshot_names(env: &Env, volume: &str) -> Vec<String> {
    let list = env.snapvol_json(&["snapshot", "list", volume, "--json"]);
    list.as_array()
        .expect("an array")
        .iter()
        .map(|s| s["name"].as_str().expect("a name").to_owned())
        .collect()
}

/// qemu-io `commands` then a flush, all of which must succeed.
fn qemu_io_cmds(uri: &str, commands: &[&str]) {
    let mut args = Vec::new();
    for c in commands.iter().chain(&["flush"]) {
        args.extend(["-c", c]);
    }
    let (status, out) = qemu_io(&args, uri);
    assert!(
        status.success() && !out.to_lowercase().contains("fail"),
        "qemu-io {commands:?} on {uri}: {status}\n{out}"
    );
}
