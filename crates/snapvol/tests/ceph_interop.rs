//! snapvol beside Ceph's own tools, against the real cluster `$CEPH_CONF` names:
//!
//! - `rbd import-diff` applies the `rbd diff v1` stream `snapvol export VOL@TO --from VOL@FROM`
//!   writes, and the RBD image then reads byte for byte as the snapshot;
//! - `snapvol import-diff` applies the streams `rbd export-diff` writes (a whole image, then
//!   one `--from-snap`), and the volume's snapshots read byte for byte as the image's;
//! - the OSD stopped for 20 s under client I/O and started again (issue 13, part 5): a volume
//!   of a store in a pool keeps being served, requests wait (or fail with EIO) during the
//!   outage, and afterwards every acknowledged-and-flushed write and the snapshot read back
//!   exactly, without a restart of `serve`.
//!
//! Without `CEPH_CONF` each test says it is skipped and passes, unless `SNAPVOL_REQUIRE_CEPH=1`
//! makes that a failure. The outage test stops the OSD of the cluster `CEPH_CONF` names with
//! `scripts/ceph.sh stop-osd` (so the cluster must be one that script started, with
//! `CEPH_CONF` at `DIR/ceph.conf`); the other tests of this binary do not run meanwhile.

#[path = "serving/mod.rs"]
mod serving;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serving::*;

/// Held for reading by every test, and for writing by a test that disturbs the cluster: the
/// others would only stall behind it.
static OUTAGE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    OUTAGE.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    OUTAGE.write().unwrap_or_else(|e| e.into_inner())
}

/// A name of this test and this process, for images, volumes and pools.
fn unique(test: &str) -> String {
    format!("snapvol-interop-{}-{test}", std::process::id())
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
    qemu_io_ok(&live, &between);
    env.snapvol_ok(&["snapshot", "create", "vol@s2"]);
    qemu_io_ok(&live, &["write -P 0x9e 0 1M", "write -P 0xaf 40M 64k"]);

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
        assert_eq!(env.snapshot_names(volume), ["a", "b"], "{volume}");
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

/// `snapvol --store rbd:POOL` run in `dir`, its control sockets in `dir/run`.
fn pool_snapvol(dir: &Path, pool: &TestPool) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_remove("SNAPVOL_STORE")
        .env_remove("RUST_LOG")
        .env("SNAPVOL_RUN_DIR", dir.join("run"))
        .arg("--store")
        .arg(pool.store());
    cmd
}

/// `snapvol serve` of a pool store as a child process; killed if dropped.
struct PoolServer {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl PoolServer {
    /// Starts the server on a free port and waits until it serves `volume`.
    fn start(dir: &Path, pool: &TestPool, volume: &str) -> Self {
        let log = dir.join("serve.log");
        let port = free_port();
        let child = pool_snapvol(dir, pool)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("server log"))
            .spawn()
            .expect("start snapvol serve");
        let mut server = PoolServer {
            child: Some(child),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let served = nbd_list(port).is_some_and(|l| l.contains(&format!("\"{volume}\"")));
            if served {
                return server;
            }
            assert!(
                server.is_running(),
                "snapvol serve exited:\n{}",
                server.log()
            );
            assert!(
                Instant::now() < deadline,
                "snapvol serve did not serve {volume} within 60 s:\n{}",
                server.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    /// SIGTERM; the server must exit with status 0 within 60 s.
    fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "snapvol serve did not stop within 60 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        };
        assert!(
            status.success(),
            "snapvol serve exited with {status}:\n{}",
            self.log()
        );
    }
}

impl Drop for PoolServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `nbdinfo --list --json` of the server on `port`, or `None` while it does not answer.
fn nbd_list(port: u16) -> Option<String> {
    let out = output_within(
        tool("nbdinfo").args(["--list", "--json", &format!("nbd://127.0.0.1:{port}")]),
        LIMIT,
    );
    out.status.success().then(|| text(&out.stdout))
}

/// Seconds since the epoch, as the Python client stamps its requests.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// One request of the outage client (see `tests/clients/outage_writer.py`).
#[derive(Debug)]
struct Request {
    kind: String,
    who: String,
    /// The slot (writes, reads) or the last write before it (flushes).
    i: u64,
    t0: f64,
    t1: f64,
    ok: bool,
    /// The errno's name (`EIO`) of a request that failed.
    errno: Option<String>,
    bad: bool,
}

/// The requests the client reported so far, and its final verification line if it came.
fn client_events(output: &str) -> (Vec<Request>, Option<serde_json::Value>) {
    let mut requests = Vec::new();
    let mut verify = None;
    for line in output.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("client line {line:?}: {e}"));
        if v["ev"] == "verify" {
            verify = Some(v);
            continue;
        }
        requests.push(Request {
            kind: v["ev"].as_str().expect("ev").to_owned(),
            who: v["who"].as_str().expect("who").to_owned(),
            i: v["i"].as_u64().expect("i"),
            t0: v["t0"].as_f64().expect("t0"),
            t1: v["t1"].as_f64().expect("t1"),
            ok: v["ok"].as_bool().expect("ok"),
            errno: v["errno"].as_str().map(str::to_owned),
            bad: v["bad"].as_bool().unwrap_or(false),
        });
    }
    (requests, verify)
}

/// The successful flushes the client issued after `since`.
fn flushes_after(client: &Interactive, since: f64) -> usize {
    client_events(&client.output())
        .0
        .iter()
        .filter(|r| r.kind == "flush" && r.ok && r.t0 > since)
        .count()
}

/// Waits (at most `limit`) until the client has completed `n` flushes issued after `since`;
/// false if it did not.
fn wait_for_flushes(client: &Interactive, since: f64, n: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while flushes_after(client, since) < n {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(200));
    }
    true
}

/// The directory of the cluster `CEPH_CONF` names, which `scripts/ceph.sh` must have started.
fn cluster_dir() -> PathBuf {
    let conf = PathBuf::from(std::env::var_os("CEPH_CONF").expect("CEPH_CONF"));
    let dir = conf.parent().expect("CEPH_CONF in a directory").to_owned();
    assert!(
        conf.file_name().is_some_and(|n| n == "ceph.conf") && dir.join("osd/id").is_file(),
        "the outage test stops and starts the OSD with scripts/ceph.sh, so CEPH_CONF must be \
         DIR/ceph.conf of a cluster `scripts/ceph.sh start DIR` started; it is {}",
        conf.display()
    );
    dir
}

/// `scripts/ceph.sh CMD DIR`, which must succeed; returns how long it took.
fn ceph_sh(cmd: &str, dir: &Path) -> Duration {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ceph.sh");
    let started = Instant::now();
    let out = output_within(Command::new("bash").arg(script).arg(cmd).arg(dir), LIMIT);
    assert!(
        out.status.success(),
        "scripts/ceph.sh {cmd} {}: {}\n{}",
        dir.display(),
        out.status,
        text(&out.stderr)
    );
    started.elapsed()
}

/// Starts the OSD again if the test stopped it and then failed: the cluster outlives the test.
struct OsdBack(Option<PathBuf>);

impl Drop for OsdBack {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ceph.sh");
            let _ = Command::new("bash")
                .arg(script)
                .arg("start-osd")
                .arg(dir)
                .output();
        }
    }
}

/// How long the OSD stays down.
const OUTAGE_SECONDS: u64 = 20;

/// Issue 13, part 5: a volume of a pool store is served while its client writes (one writer
/// flushing after every 4th write, one never flushing, so that its writes fill the server's
/// write-back cache) and reads a snapshot; the cluster's only OSD is stopped for 20 s and
/// started again, and commands are run meanwhile (`snapshot create`, `info`, `list`, as a
/// user or a monitoring script would). Requests wait or fail with EIO during the outage; the
/// commands wait and go to the server; the same server then still holds the volume (the
/// outage outlasted its lease, which no one else may take from it meanwhile), takes new
/// writes, holds every write it acknowledged, serves s1 exactly as before and s2 as of its
/// request, and `check` through it is clean.
#[test]
fn the_osd_stopped_for_20_s_under_client_io_loses_nothing_and_serving_goes_on() {
    if !ceph("OSD outage under client I/O") {
        return;
    }
    let _outage = exclusive();
    let started = Instant::now();
    let cluster = cluster_dir();
    let env = Env::new();
    let dir = env.dir();
    let pool = TestPool::new("osd");
    let vol = "vol";
    const BLOCK: u64 = 64 * KIB;
    // Slots per writer: at 20 writes a second, not used up in 50 s.
    const SLOTS: u64 = 1024;
    // A 32 MiB journal: a write-back cache of 8 MiB, which the writes during the outage fill.
    run_ok(pool_snapvol(dir, &pool).args([
        "create",
        vol,
        "--size",
        "192M",
        "--journal-size",
        "32M",
    ]));
    let objects = ceph_ok("rados", &["-p", &pool.0, "ls"]);
    assert!(
        objects
            .lines()
            .any(|o| o == format!("snapvol.volume.{vol}")),
        "`snapvol --store rbd:{} create` left no descriptor in the pool (a snapvol without \
         stores in pools?); the pool holds:\n{objects}",
        pool.0
    );
    let mut server = PoolServer::start(dir, &pool, vol);
    let live = server.uri(vol);
    let snap = server.uri(&format!("{vol}@s1"));

    // s1: [0, 128M) all 0x11, the rest zero.
    qemu_io_ok(&live, &["write -P 0x11 0 128M"]);
    run_ok(pool_snapvol(dir, &pool).args(["snapshot", "create", &format!("{vol}@s1")]));
    let want_s1 = env.path("want-s1.img");
    let mut image = vec![0x11u8; usize::try_from(2 * SLOTS * BLOCK).unwrap()];
    image.resize(usize::try_from(192 * MIB).unwrap(), 0);
    fs::write(&want_s1, image).expect("write the image of s1");
    let s1_before = env.path("s1-before.img");
    nbdcopy(&snap, &s1_before);
    assert_same_file(&s1_before, &want_s1);

    // The client, writing over s1's data (each write preserving a chunk for s1).
    let mut client = Interactive::spawn(python_client("outage_writer.py").args([
        live.as_str(),
        snap.as_str(),
        &SLOTS.to_string(),
        &BLOCK.to_string(),
        "0x11",
    ]));
    let mut osd_back = OsdBack(None);
    assert!(
        wait_for_flushes(&client, 0.0, 10, Duration::from_secs(60)),
        "the client did not get going:\n{}\nserver log:\n{}",
        client.output(),
        server.log()
    );

    // The outage.
    let down_at = now();
    osd_back.0 = Some(cluster.clone());
    let took_down = ceph_sh("stop-osd", &cluster);
    // A snapshot asked for during the outage, and looks at the volume (as a monitoring
    // script would): commands that must go to the server holding it, and wait with it.
    thread::sleep(Duration::from_secs(2));
    let s2_asked = now();
    let snapshot = Background::spawn(
        pool_snapvol(dir, &pool).args(["snapshot", "create", &format!("{vol}@s2")]),
        dir,
        "snapshot-s2",
    );
    let look = |k: usize, args: &[&str]| {
        let what = format!("snapvol {}", args.join(" "));
        let cmd = Background::spawn(
            pool_snapvol(dir, &pool).args(args),
            dir,
            &format!("look{k}"),
        );
        (what, cmd)
    };
    let mut looks = vec![
        look(0, &["info", vol, "--json"]),
        look(1, &["list", "--json"]),
        look(2, &["snapshot", "list", vol]),
    ];
    thread::sleep(Duration::from_secs(OUTAGE_SECONDS - 3));
    // More late in the outage, and as the OSD comes back.
    looks.extend((3..6).map(|k| look(k, &["info", vol])));
    thread::sleep(Duration::from_secs(1));
    let running_in_outage = server.is_running();
    let starting = thread::spawn({
        let cluster = cluster.clone();
        move || ceph_sh("start-osd", &cluster)
    });
    thread::sleep(Duration::from_secs(2));
    looks.extend((6..9).map(|k| look(k, &["info", vol])));
    let took_up = starting.join().expect("start-osd");
    osd_back.0 = None;
    let up_at = now();
    assert!(
        running_in_outage,
        "snapvol serve died during the outage:\n{}",
        server.log()
    );

    // Without a restart of the server, the snapshot asked for completes, and the client goes
    // on: flushes issued after the OSD is back complete.
    let out = snapshot.wait_within(Duration::from_secs(90));
    let s2_done = now();
    let mut said = format!(
        "`snapvol snapshot create {vol}@s2`: {}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let mut all_ok = out.status.success();
    for (what, cmd) in looks {
        let out = cmd.wait_within(Duration::from_secs(90));
        all_ok &= out.status.success();
        said += &format!(
            "`{what}`: {}\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    // The commands must have gone to the server, which must still hold the volume; the
    // client goes on: flushes issued after the OSD is back complete.
    thread::sleep(Duration::from_secs(3));
    let lost = server.log().contains("lost the lock");
    let limit = Duration::from_secs(if lost { 30 } else { 90 });
    let resumed = wait_for_flushes(&client, up_at, 10, limit);
    client.send("stop");
    let (status, output) = client.finish();
    let (requests, verify) = client_events(&output);

    // What the client saw during the outage: requests that waited, and errors.
    let mut seen = String::new();
    for (who, kind) in [
        ("flushing", "write"),
        ("flushing", "flush"),
        ("caching", "write"),
        ("reader", "read"),
    ] {
        let during: Vec<f64> = requests
            .iter()
            .filter(|r| r.who == who && r.kind == kind && r.t1 > down_at && r.t0 < up_at)
            .map(|r| r.t1 - r.t0)
            .collect();
        let waited = during.iter().filter(|&&l| l > 1.0).count();
        let longest = during.iter().copied().fold(0.0, f64::max);
        seen += &format!(
            "\n  {who} {kind}s: {} during the outage, {waited} of them waited > 1 s, the \
             longest {longest:.1} s",
            during.len()
        );
    }
    let failed: Vec<&Request> = requests.iter().filter(|r| !r.ok).collect();
    let observed = format!(
        "OSD outage: stop-osd took {:.1} s, down {OUTAGE_SECONDS} s, start-osd took {:.1} s \
         (up {:.1} s after it was stopped); requests:{seen}\n  failed: {} {:?}\n  client \
         verification: {}",
        took_down.as_secs_f64(),
        took_up.as_secs_f64(),
        up_at - down_at,
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>(),
        verify
            .as_ref()
            .map_or("none".to_owned(), ToString::to_string),
    );
    let _ = writeln!(std::io::stderr(), "{observed}");
    assert!(
        !lost,
        "the server lost its volume after the outage.\n{observed}\nThe commands run during \
         the outage printed:\n{said}\nthe server log:\n{}",
        server.log()
    );
    assert!(
        all_ok,
        "commands run during the outage failed:\n{said}\nthe server log:\n{}",
        server.log()
    );
    assert!(
        resumed,
        "flushes issued after the OSD came back did not complete within {limit:?}\n{observed}\n\
         the server log:\n{}",
        server.log()
    );
    assert!(
        status.success(),
        "the client failed: {status}\n{output}\nserver log:\n{}",
        server.log()
    );
    let verify = verify.unwrap_or_else(|| panic!("no verification line:\n{output}"));
    assert!(
        failed.iter().all(|r| r.errno.as_deref() == Some("EIO")),
        "requests failed with other errors than EIO: {failed:?}\nserver log:\n{}",
        server.log()
    );
    let bad_reads: Vec<&Request> = requests.iter().filter(|r| r.bad).collect();
    assert!(
        bad_reads.is_empty(),
        "reads of s1 returned other data than s1's: {bad_reads:?}"
    );
    assert!(verify.get("error").is_none(), "{verify}");
    for key in ["bad", "lost", "torn", "unwritten_changed"] {
        assert_eq!(
            verify[key].as_array().map(Vec::len),
            Some(0),
            "slots {key} after the outage: {verify}\nserver log:\n{}",
            server.log()
        );
    }

    // s2 holds every write acknowledged before it was asked for and none issued after it
    // returned; each slot either of the two.
    let s2 = env.path("s2.img");
    nbdcopy(&server.uri(&format!("{vol}@s2")), &s2);
    let s2 = fs::read(&s2).expect("read s2");
    let (mut before, mut after) = (0, 0);
    for r in requests.iter().filter(|r| r.kind == "write") {
        let at = usize::try_from(r.i * BLOCK).unwrap();
        let got = &s2[at..at + usize::try_from(BLOCK).unwrap()];
        let new =
            r.i.to_le_bytes()
                .repeat(usize::try_from(BLOCK / 8).unwrap());
        let old = vec![0x11u8; new.len()];
        if r.ok && r.t1 < s2_asked {
            before += 1;
            assert!(
                got == new,
                "s2 lacks the write to slot {} acknowledged before it",
                r.i
            );
        } else if r.t0 > s2_done {
            after += 1;
            assert!(
                got == old,
                "s2 holds the write to slot {} issued after it",
                r.i
            );
        } else {
            assert!(
                got == new || got == old,
                "s2 holds neither old nor new in slot {}",
                r.i
            );
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "s2, asked for {:.1} s into the outage, took {:.1} s; it holds the {before} writes \
         acknowledged before, and none of the {after} issued after",
        s2_asked - down_at,
        s2_done - s2_asked
    );

    // New writes, s1 exactly as before, and check through the server; then offline.
    qemu_io_ok(&live, &["write -P 0x77 160M 1M"]);
    qemu_io_verify(&live, &[(0x77, 160 * MIB, MIB)]);
    let s1_after = env.path("s1-after.img");
    nbdcopy(&snap, &s1_after);
    assert_same_file(&s1_after, &want_s1);
    let check = text(&run_ok(pool_snapvol(dir, &pool).args(["check", vol])).stdout);
    assert!(
        check.contains("is clean"),
        "{check}\nserver log:\n{}",
        server.log()
    );
    let log = server.log();
    server.stop();
    let check = text(&run_ok(pool_snapvol(dir, &pool).args(["check", vol])).stdout);
    assert!(
        check.contains("is clean"),
        "offline, after the server stopped: {check}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "OSD outage test: {:.1} s; the server logged:\n{log}",
        started.elapsed().as_secs_f64()
    );
}
