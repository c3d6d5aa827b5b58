//! Model-based test: random sequences of writes, zeroing, flushes, snapshot create and delete,
//! rollback, close and reopen, checked against a plain in-memory oracle (a `Vec<u8>` per
//! snapshot, and the chunks each write touched, which is what a diff must say).

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use snapvol_engine::units::{Geometry, SnapshotSeq};
use snapvol_engine::vlun::{MemVlun, Vlun};
use snapvol_engine::{Layout, Vluns, Volume, VolumeOptions};

#[derive(Debug, Clone)]
enum Op {
    Write {
        off: u64,
        len: u64,
        seed: u8,
    },
    Zero {
        off: u64,
        len: u64,
    },
    Flush,
    Snap,
    Delete(usize),
    Reopen,
    /// Flush, then die like a killed process: recovery must bring back every write.
    FlushAndKill,
    ReadLive {
        off: u64,
        len: u64,
    },
    ReadSnap {
        idx: usize,
        off: u64,
        len: u64,
    },
    /// Diff between snapshot `from` and snapshot `to` (the live volume when `None`); the pair
    /// is put in order first.
    Diff {
        from: usize,
        to: Option<usize>,
    },
    Rollback(usize),
}

fn range(size: u64) -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        // Small, unaligned.
        (0..size, 1..3000u64),
        // Spanning several chunks.
        (0..size, 1..(size / 3)),
        // Block aligned.
        (0..size / 4096, 1..8u64).prop_map(|(b, n)| (b * 4096, n * 4096)),
    ]
    .prop_map(move |(off, len)| (off, len.min(size - off).max(1).min(size - off)))
    .prop_filter("non-empty", |(_, l)| *l > 0)
}

fn op(size: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (range(size), any::<u8>()).prop_map(|((off, len), seed)| Op::Write { off, len, seed }),
        2 => range(size).prop_map(|(off, len)| Op::Zero { off, len }),
        2 => Just(Op::Flush),
        3 => Just(Op::Snap),
        1 => any::<usize>().prop_map(Op::Delete),
        1 => Just(Op::Reopen),
        1 => Just(Op::FlushAndKill),
        2 => range(size).prop_map(|(off, len)| Op::ReadLive { off, len }),
        3 => (any::<usize>(), range(size)).prop_map(|(idx, (off, len))| Op::ReadSnap { idx, off, len }),
        3 => (any::<usize>(), any::<Option<usize>>()).prop_map(|(from, to)| Op::Diff { from, to }),
        1 => any::<usize>().prop_map(Op::Rollback),
    ]
}

fn pattern(seed: u8, off: u64, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| u64::from(seed).wrapping_mul(31).wrapping_add((off + i) * 7) as u8 | 1)
        .collect()
}

struct Harness {
    source: Arc<MemVlun>,
    target: Arc<MemVlun>,
    journal: Arc<MemVlun>,
    vol: Option<Volume>,
    live: Vec<u8>,
    /// Name, content, and how many writes came before it (an index into `writes`).
    snaps: Vec<(String, Vec<u8>, usize)>,
    /// The chunks each write touched, in order: a zeroing and a rollback are writes too.
    writes: Vec<BTreeSet<u64>>,
    chunk: u64,
    next_name: usize,
    cache: u64,
    background: bool,
}

impl Harness {
    fn new(size: u64, chunk: u32, cache: u64, background: bool) -> Self {
        let source = Arc::new(MemVlun::new(size));
        let target = Arc::new(MemVlun::new(0));
        let journal = Arc::new(MemVlun::new(0));
        let vluns = Vluns {
            source: Box::new(source.clone()),
            target: Box::new(target.clone()),
            journal: Box::new(journal.clone()),
        };
        let mut layout = Layout::new(Geometry::new(size, chunk).unwrap());
        layout.journal_size = 4 << 20;
        let vol = Volume::create_on(
            "v",
            vluns,
            layout,
            VolumeOptions {
                cache_size: cache,
                compact_after_records: 4,
                background_destage: background,
            },
        )
        .unwrap();
        Self {
            source,
            target,
            journal,
            vol: Some(vol),
            live: vec![0; size as usize],
            snaps: Vec::new(),
            writes: Vec::new(),
            chunk: u64::from(chunk),
            next_name: 0,
            cache,
            background,
        }
    }

    fn vol(&self) -> &Volume {
        self.vol.as_ref().unwrap()
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write { off, len, seed } => {
                let data = pattern(seed, off, len);
                self.vol().write(off, &data).unwrap();
                self.live[off as usize..(off + len) as usize].copy_from_slice(&data);
                self.wrote(off, len);
            }
            Op::Zero { off, len } => {
                self.vol().write_zeroes(off, len).unwrap();
                self.live[off as usize..(off + len) as usize].fill(0);
                self.wrote(off, len);
            }
            Op::Flush => self.vol().flush().unwrap(),
            Op::Snap => {
                let name = format!("s{}", self.next_name);
                self.next_name += 1;
                self.vol().snapshot_create(&name).unwrap();
                self.snaps
                    .push((name, self.live.clone(), self.writes.len()));
            }
            Op::Delete(i) => {
                if !self.snaps.is_empty() {
                    let (name, ..) = self.snaps.remove(i % self.snaps.len());
                    self.vol().snapshot_delete(&name).unwrap();
                }
            }
            Op::Reopen => {
                self.vol.take().unwrap().close().unwrap();
                self.reopen();
            }
            Op::FlushAndKill => {
                let vol = self.vol.take().unwrap();
                vol.flush().unwrap();
                vol.kill();
                self.reopen();
            }
            Op::ReadLive { off, len } => {
                let mut buf = vec![0; len as usize];
                self.vol().read(off, &mut buf).unwrap();
                assert_eq!(
                    buf,
                    self.live[off as usize..(off + len) as usize],
                    "live read {off}+{len}"
                );
            }
            Op::ReadSnap { idx, off, len } => {
                if self.snaps.is_empty() {
                    return;
                }
                let (name, data, _) = &self.snaps[idx % self.snaps.len()];
                let seq = self.vol().snapshot(name).unwrap().seq;
                let mut buf = vec![0; len as usize];
                self.vol().read_snapshot(seq, off, &mut buf).unwrap();
                assert_eq!(
                    buf,
                    data[off as usize..(off + len) as usize],
                    "snapshot {name} read {off}+{len}"
                );
            }
            Op::Diff { from, to } => {
                if self.snaps.is_empty() {
                    return;
                }
                let n = self.snaps.len();
                let (from, to) = match to {
                    Some(to) => {
                        let (x, y) = (from % n, to % n);
                        (x.min(y), Some(x.max(y)))
                    }
                    None => (from % n, None),
                };
                if to == Some(from) {
                    let seq = self.seq(from);
                    assert!(
                        self.vol().diff(seq, Some(seq)).is_err(),
                        "a diff from a snapshot to itself is refused"
                    );
                    return;
                }
                let expected = self.changed(from, to);
                let (a, b) = (self.seq(from), to.map(|t| self.seq(t)));
                let mut got = BTreeSet::new();
                for (off, len) in self.vol().diff(a, b).unwrap() {
                    assert!(off % self.chunk == 0 && len % self.chunk == 0);
                    got.extend(off / self.chunk..(off + len) / self.chunk);
                }
                assert_eq!(got, expected, "diff {from} -> {to:?}");
                // Block status over the same span says the same, chunk by chunk.
                let mut runs = BTreeSet::new();
                let mut pos = 0;
                for (len, changed) in self.vol().changed(a, b, 0, self.live.len() as u64).unwrap() {
                    if changed {
                        runs.extend(pos / self.chunk..(pos + len) / self.chunk);
                    }
                    pos += len;
                }
                assert_eq!(pos, self.live.len() as u64);
                assert_eq!(runs, expected, "changed runs {from} -> {to:?}");
                if let Some(to) = b {
                    assert!(
                        self.vol().diff(to, Some(a)).is_err(),
                        "a diff backwards is refused"
                    );
                }
            }
            Op::Rollback(i) => {
                if self.snaps.is_empty() {
                    return;
                }
                let i = i % self.snaps.len();
                let touched = self.changed(i, None);
                let seq = self.seq(i);
                let report = self.vol().rollback(seq, &mut |_, _| {}).unwrap();
                assert_eq!(report.rewritten_bytes, touched.len() as u64 * self.chunk);
                self.live = self.snaps[i].1.clone();
                self.writes.push(touched);
            }
        }
    }

    fn wrote(&mut self, off: u64, len: u64) {
        self.writes
            .push((off / self.chunk..(off + len).div_ceil(self.chunk)).collect());
    }

    fn seq(&self, i: usize) -> SnapshotSeq {
        self.vol().snapshot(&self.snaps[i].0).unwrap().seq
    }

    /// The chunks written after snapshot `from` and before snapshot `to` (or now).
    fn changed(&self, from: usize, to: Option<usize>) -> BTreeSet<u64> {
        let end = to.map_or(self.writes.len(), |t| self.snaps[t].2);
        self.writes[self.snaps[from].2..end]
            .iter()
            .flatten()
            .copied()
            .collect()
    }

    fn reopen(&mut self) {
        let vluns = Vluns {
            source: Box::new(self.source.clone()),
            target: Box::new(self.target.clone()),
            journal: Box::new(self.journal.clone()),
        };
        let opts = VolumeOptions {
            cache_size: self.cache,
            compact_after_records: 4,
            background_destage: self.background,
        };
        self.vol = Some(Volume::open_on("v", vluns, opts).unwrap());
    }

    fn check_all(&self) {
        let size = self.live.len();
        let mut buf = vec![0; size];
        self.vol().read(0, &mut buf).unwrap();
        assert!(buf == self.live, "live volume differs from the oracle");
        for (name, data, _) in &self.snaps {
            let seq = self.vol().snapshot(name).unwrap().seq;
            self.vol().read_snapshot(seq, 0, &mut buf).unwrap();
            assert!(&buf == data, "snapshot {name} differs from the oracle");
        }
        let info = self.vol().info();
        assert_eq!(info.snapshots.len(), self.snaps.len());
        if self.snaps.is_empty() {
            self.vol().flush().unwrap();
            assert_eq!(
                self.vol().info().target_used_bytes,
                0,
                "copies leaked with no snapshot left"
            );
        }
    }
}

fn run(ops: &[Op], size: u64, chunk: u32, cache: u64, background: bool) {
    let mut h = Harness::new(size, chunk, cache, background);
    for op in ops {
        h.apply(op);
    }
    h.check_all();
    // And once more after a close and reopen, from what is on the VLUNs alone.
    h.apply(&Op::Reopen);
    h.check_all();
    // The source VLUN is the live volume byte for byte once closed.
    h.vol.take().unwrap().close().unwrap();
    let mut src = vec![0; size as usize];
    h.source.read_at(&mut src, 0).unwrap();
    assert!(
        src == h.live,
        "source VLUN is not the live volume after close"
    );
    let report = snapvol_engine::check::check(&*h.source, &*h.target, &*h.journal, false)
        .expect("check runs");
    assert!(
        report.is_clean(),
        "check after the run: {:?}",
        report.problems
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("SNAPVOL_MODEL_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000),
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_the_oracle_with_4k_chunks_and_a_tiny_cache(ops in prop::collection::vec(op(64 * 4096), 1..60)) {
        run(&ops, 64 * 4096, 4096, 16 * 4096, true);
    }

    #[test]
    fn engine_matches_the_oracle_with_16k_chunks(ops in prop::collection::vec(op(32 * 16384), 1..60)) {
        run(&ops, 32 * 16384, 16384, 1 << 20, true);
    }

    #[test]
    fn engine_matches_the_oracle_destaging_on_the_callers_thread(ops in prop::collection::vec(op(64 * 8192), 1..60)) {
        run(&ops, 64 * 8192, 8192, 24 * 8192, false);
    }
}
