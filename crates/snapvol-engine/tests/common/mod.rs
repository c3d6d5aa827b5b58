//! Shared helpers of the scenario tests: a store in a temporary directory, self-describing
//! data patterns, a small deterministic random generator, and byte comparisons that report
//! where two images differ instead of dumping megabytes.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use snapvol_engine::units::SnapshotSeq;
use snapvol_engine::vlun::Vlun;
use snapvol_engine::{CreateOptions, Store, Volume, VolumeOptions};
use tempfile::TempDir;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

/// A store in a fresh temporary directory, removed when the fixture is dropped.
///
/// Every scenario ends with the checker: when the fixture goes (after the test's volumes,
/// which are declared after it and so dropped first), every volume of the store must check
/// clean, every preserved chunk against its checksum included.
pub struct Fixture {
    _dir: TempDir,
    pub store: Store,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        for name in self.store.list().expect("list the store") {
            let every_byte = snapvol_engine::check::CheckOptions {
                repair: false,
                data: true,
                journal_in_use: false,
            };
            let report = self
                .store
                .check_with(&name, every_byte)
                .unwrap_or_else(|e| panic!("check of volume {name} at the end: {e}"));
            assert!(
                report.is_clean(),
                "volume {name} does not check clean at the end of the scenario: {:?}",
                report.problems
            );
        }
    }
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::new(dir.path().join("store"));
        Self { _dir: dir, store }
    }

    /// Creates volume `name` with the given geometry and target cap.
    pub fn create(
        &self,
        name: &str,
        size: u64,
        chunk: u64,
        target_size: Option<u64>,
        opts: VolumeOptions,
    ) -> Volume {
        let create = CreateOptions {
            chunk_size: u32::try_from(chunk).expect("chunk size fits u32"),
            target_size,
            // A small journal keeps the sparse files small; it also exercises wrapping.
            journal_size: 16 << 20,
            ..CreateOptions::new(size)
        };
        self.store
            .create(name, &create, opts)
            .unwrap_or_else(|e| panic!("create volume {name}: {e}"))
    }

    /// Opens volume `name`.
    pub fn open(&self, name: &str, opts: VolumeOptions) -> Volume {
        self.store
            .open(name, opts)
            .unwrap_or_else(|e| panic!("open volume {name}: {e}"))
    }

    /// The directory of volume `name` in the store.
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self._dir.path().join("store").join(name)
    }

    /// The target VLUN file of a volume created with default locations.
    pub fn target_path(&self, name: &str) -> PathBuf {
        self.volume_dir(name).join("target.svt")
    }

    /// The source VLUN file of a volume created with default locations.
    pub fn source_path(&self, name: &str) -> PathBuf {
        self.volume_dir(name).join("source.raw")
    }

    /// Current length of a volume's target file.
    pub fn target_len(&self, name: &str) -> u64 {
        std::fs::metadata(self.target_path(name))
            .expect("target file exists")
            .len()
    }
}

/// Volume options with a cache of `cache_size` bytes and every other setting at its default.
pub fn opts(cache_size: u64) -> VolumeOptions {
    VolumeOptions {
        cache_size,
        ..VolumeOptions::default()
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The byte that a pattern tagged `tag` holds at absolute volume offset `pos`.
///
/// Every 8-byte aligned word of the volume holds `tag ^ splitmix(word index)`, so the data
/// depends on where it lies (a misplaced chunk is caught) and the tag can be read back from
/// any whole aligned word ([`decode_tag`]).
pub fn byte_at(tag: u64, pos: u64) -> u8 {
    let word = tag ^ splitmix(pos >> 3);
    word.to_le_bytes()[(pos & 7) as usize]
}

/// `len` bytes of the pattern tagged `tag`, as they lie at absolute offset `off`.
pub fn pattern(tag: u64, off: u64, len: u64) -> Vec<u8> {
    (off..off + len).map(|p| byte_at(tag, p)).collect()
}

/// Reads the tag back from `buf` (which lies at absolute offset `off`), using the first whole
/// aligned word at or after `from` (an offset inside `buf`).
pub fn decode_tag(buf: &[u8], off: u64, from: usize) -> u64 {
    let abs = (off + from as u64).next_multiple_of(8);
    let i = (abs - off) as usize;
    let word = u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
    word ^ splitmix(abs >> 3)
}

/// Whether `buf`, lying at absolute offset `off`, is entirely the pattern tagged `tag`.
pub fn is_pattern(buf: &[u8], off: u64, tag: u64) -> bool {
    buf.iter().zip(off..).all(|(&b, p)| b == byte_at(tag, p))
}

/// A small deterministic generator (splitmix64), so every run does the same I/O.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..hi` (`lo < hi`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    /// `k` distinct values of `0..n`, ascending.
    pub fn distinct(&mut self, k: usize, n: u64) -> Vec<u64> {
        let mut picked = std::collections::BTreeSet::new();
        while picked.len() < k {
            picked.insert(self.below(n));
        }
        picked.into_iter().collect()
    }
}

/// Panics with the first and last differing offsets (relative to `base`) when `actual` is not
/// `expected`.
#[track_caller]
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8], base: u64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length differs");
    let Some(first) = actual.iter().zip(expected).position(|(a, b)| a != b) else {
        return;
    };
    let last = actual
        .iter()
        .zip(expected)
        .rposition(|(a, b)| a != b)
        .expect("a difference exists");
    let differing = actual.iter().zip(expected).filter(|(a, b)| a != b).count();
    panic!(
        "{what}: {differing} bytes differ between offsets {:#x} and {:#x}; at {:#x} got {:#04x}, want {:#04x}",
        base + first as u64,
        base + last as u64,
        base + first as u64,
        actual[first],
        expected[first],
    );
}

/// The whole live volume.
pub fn read_live(vol: &Volume) -> Vec<u8> {
    let mut buf = vec![0u8; vol.size() as usize];
    vol.read(0, &mut buf).expect("read the live volume");
    buf
}

/// The whole of snapshot `seq`.
pub fn read_snapshot(vol: &Volume, seq: SnapshotSeq) -> Vec<u8> {
    let mut buf = vec![0u8; vol.size() as usize];
    vol.read_snapshot(seq, 0, &mut buf)
        .unwrap_or_else(|e| panic!("read snapshot {seq}: {e}"));
    buf
}

/// Checks the live volume and every listed snapshot `(name, oracle)` against their oracles,
/// reading each snapshot by the sequence number the volume reports for its name.
#[track_caller]
pub fn assert_volume(vol: &Volume, live: &[u8], snaps: &[(String, Vec<u8>)], when: &str) {
    assert_bytes_eq(&read_live(vol), live, 0, &format!("live volume {when}"));
    for (name, data) in snaps {
        let seq = vol
            .snapshot(name)
            .unwrap_or_else(|e| panic!("snapshot {name} {when}: {e}"))
            .seq;
        assert_bytes_eq(
            &read_snapshot(vol, seq),
            data,
            0,
            &format!("snapshot {name} {when}"),
        );
    }
}

/// Every file of a directory tree with its content and modification time.
pub fn fingerprint(dir: &Path) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("read the volume directory") {
        let entry = entry.expect("directory entry");
        let meta = entry.metadata().expect("metadata");
        if meta.is_file() {
            out.insert(
                entry.file_name().to_string_lossy().into_owned(),
                (
                    std::fs::read(entry.path()).expect("read a file"),
                    meta.modified().expect("mtime"),
                ),
            );
        }
    }
    out
}

/// A VLUN that is `inner` except that every `sync` first runs `before_sync`: a test pauses or
/// stalls a device's syncs with it, the way a disk busy with a long flush holds them.
pub struct SyncHook<V> {
    pub inner: V,
    pub before_sync: Box<dyn Fn() + Send + Sync>,
}

impl<V: std::fmt::Debug> std::fmt::Debug for SyncHook<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHook")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<V: Vlun> Vlun for SyncHook<V> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        (self.before_sync)();
        self.inner.sync()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn growable(&self) -> bool {
        self.inner.growable()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn punch_zero(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.punch_zero(offset, len)
    }
    fn growth_room(&self) -> Option<u64> {
        self.inner.growth_room()
    }
    fn reserve_space(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.reserve_space(offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        self.inner.next_data(offset)
    }
    fn next_hole(&self, offset: u64) -> io::Result<u64> {
        self.inner.next_hole(offset)
    }
}
