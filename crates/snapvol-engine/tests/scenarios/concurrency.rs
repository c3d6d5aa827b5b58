//! Concurrency (scenario 5): a snapshot holds whole writes, exactly those acknowledged before it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use snapvol_engine::units::SnapshotSeq;
use snapvol_engine::Volume;

use crate::common::{decode_tag, is_pattern, opts, pattern, read_live, Fixture, Rng, KIB, MIB};

const WRITERS: usize = 4;
const INITIAL: u64 = 0xa5a5 << 48;
const SHARED_TAG: u64 = 2 << 56;

fn own_tag(w: usize, n: u64) -> u64 {
    if n == 0 {
        INITIAL
    } else {
        (1 << 56) | ((w as u64) << 48) | n
    }
}

/// A byte range of the volume.
#[derive(Debug, Clone, Copy)]
struct Range {
    off: u64,
    len: u64,
}

impl Range {
    fn end(&self) -> u64 {
        self.off + self.len
    }
}

/// Where each writer writes. Writers 0 and 1 also write, in turns, two partially overlapping
/// halves of one shared region; `history[g - 1]` is which of them wrote shared write `g`.
struct Layout {
    own: [Range; WRITERS],
    shared: Range,
    /// The part of `shared` writer 0 writes: its first two thirds.
    shared_a: Range,
    /// The part writer 1 writes: its last two thirds.
    shared_b: Range,
}

impl Layout {
    fn new() -> Self {
        let own = std::array::from_fn(|w| Range {
            off: w as u64 * MIB + 5000 + 8 * w as u64,
            len: 300_001,
        });
        let shared = Range {
            off: 5 * MIB + 777,
            len: 240_000,
        };
        Self {
            own,
            shared,
            shared_a: Range {
                off: shared.off,
                len: 160_000,
            },
            shared_b: Range {
                off: shared.off + 80_000,
                len: 160_000,
            },
        }
    }
}

/// Progress counters: writes are numbered per writer from 1 (0 = the initial content).
struct Progress {
    issued: [AtomicU64; WRITERS],
    acked: [AtomicU64; WRITERS],
    shared_issued: AtomicU64,
    shared_acked: AtomicU64,
    /// Serializes the shared writes, so they have one order that both writers know.
    shared_lock: Mutex<()>,
    history: RwLock<Vec<usize>>,
}

/// Which versions a snapshot may hold: for each counter, `acked before <= v < issued after`.
#[derive(Debug, Clone)]
struct Window {
    name: String,
    seq: SnapshotSeq,
    own: [(u64, u64); WRITERS],
    shared: (u64, u64),
}

/// Checks one region of one snapshot: a whole write within its window, never a mix.
fn check_own(buf: &[u8], r: Range, w: usize, window: (u64, u64)) -> Result<(), String> {
    let tag = decode_tag(buf, r.off, 0);
    let n = if tag == INITIAL {
        0
    } else if tag >> 48 == (1 << 8) | w as u64 {
        tag & 0xffff_ffff_ffff
    } else {
        return Err(format!(
            "region of writer {w} starts with data tagged {tag:#x}"
        ));
    };
    if !is_pattern(buf, r.off, own_tag(w, n)) {
        return Err(format!(
            "region of writer {w} is torn: starts as version {n} but does not hold it whole"
        ));
    }
    if !(window.0..window.1).contains(&n) {
        return Err(format!(
            "region of writer {w} holds version {n}; writes {}..{} were acknowledged before / issued after the snapshot",
            window.0, window.1
        ));
    }
    Ok(())
}

/// Checks the shared region: the image after some shared write `g` in the window.
fn check_shared(
    buf: &[u8],
    l: &Layout,
    window: (u64, u64),
    history: &[usize],
) -> Result<(), String> {
    let s = l.shared;
    let version = |tag: u64| -> Result<u64, String> {
        if tag == INITIAL {
            Ok(0)
        } else if tag >> 56 == SHARED_TAG >> 56 {
            Ok(tag & 0xffff_ffff_ffff)
        } else {
            Err(format!("shared region holds data tagged {tag:#x}"))
        }
    };
    // First third: only writer 0 writes it; last third: only writer 1.
    let ga = version(decode_tag(buf, s.off, 0))?;
    let gb = version(decode_tag(buf, s.off, (l.shared_a.end() - s.off) as usize))?;
    for (g, who) in [(ga, 0), (gb, 1)] {
        if g > 0 && history.get(g as usize - 1) != Some(&who) {
            return Err(format!(
                "shared region: write {g} appears where writer {who} writes"
            ));
        }
    }
    let tag = |g| if g == 0 { INITIAL } else { SHARED_TAG | g };
    let mid = (l.shared_b.off - s.off) as usize..(l.shared_a.end() - s.off) as usize;
    let a_part = &buf[..mid.start];
    let m_part = &buf[mid.clone()];
    let b_part = &buf[mid.end..];
    let whole = is_pattern(a_part, s.off, tag(ga))
        && is_pattern(m_part, s.off + mid.start as u64, tag(ga.max(gb)))
        && is_pattern(b_part, s.off + mid.end as u64, tag(gb));
    if !whole {
        return Err(format!(
            "shared region is torn (last writes seen: {ga} by writer 0, {gb} by writer 1)"
        ));
    }
    // Some point g of the window must have exactly these last writes.
    let (mut last_a, mut last_b) = (0u64, 0u64);
    for g in 0..window.1 {
        if g > 0 {
            match history[g as usize - 1] {
                0 => last_a = g,
                _ => last_b = g,
            }
        }
        if g >= window.0 && (last_a, last_b) == (ga, gb) {
            return Ok(());
        }
    }
    Err(format!(
        "shared region holds writes {ga} and {gb}, no point between shared writes {} and {}",
        window.0, window.1
    ))
}

fn check_snapshot_window(
    vol: &Volume,
    l: &Layout,
    win: &Window,
    p: &Progress,
) -> Result<(), String> {
    let read = |r: Range| -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; r.len as usize];
        vol.read_snapshot(win.seq, r.off, &mut buf)
            .map_err(|e| format!("read: {e}"))?;
        Ok(buf)
    };
    let ctx = |e: String| format!("snapshot {}: {e}", win.name);
    for w in 0..WRITERS {
        check_own(&read(l.own[w])?, l.own[w], w, win.own[w]).map_err(ctx)?;
    }
    let history = p.history.read().unwrap().clone();
    check_shared(&read(l.shared)?, l, win.shared, &history).map_err(ctx)
}

#[test]
fn concurrent_snapshots_hold_whole_writes_acknowledged_before_them_and_none_issued_after() {
    const SIZE: u64 = 8 * MIB;
    const CHUNK: u64 = 16 * KIB;
    const SNAPSHOTS: usize = 40;
    let fx = Fixture::new();
    // A small cache keeps the destager busy while writes, snapshots and reads go on.
    let vol = fx.create("vol", SIZE, CHUNK, None, opts(2 * MIB));
    vol.write(0, &pattern(INITIAL, 0, SIZE)).unwrap();
    vol.destage_all().unwrap();
    let l = Layout::new();
    let p = Progress {
        issued: std::array::from_fn(|_| AtomicU64::new(0)),
        acked: std::array::from_fn(|_| AtomicU64::new(0)),
        shared_issued: AtomicU64::new(0),
        shared_acked: AtomicU64::new(0),
        shared_lock: Mutex::new(()),
        history: RwLock::new(Vec::new()),
    };
    let stop = AtomicBool::new(false);
    let windows: RwLock<Vec<Window>> = RwLock::new(Vec::new());
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let reads_checked = AtomicU64::new(0);

    std::thread::scope(|scope| {
        for w in 0..WRITERS {
            let (vol, l, p, stop) = (&vol, &l, &p, &stop);
            scope.spawn(move || {
                let r = l.own[w];
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    p.issued[w].store(n, Ordering::SeqCst);
                    vol.write(r.off, &pattern(own_tag(w, n), r.off, r.len))
                        .unwrap();
                    p.acked[w].store(n, Ordering::SeqCst);
                    if w < 2 && n % 3 == 0 {
                        let part = if w == 0 { l.shared_a } else { l.shared_b };
                        let _order = p.shared_lock.lock().unwrap();
                        let g = p.shared_issued.load(Ordering::SeqCst) + 1;
                        p.history.write().unwrap().push(w);
                        p.shared_issued.store(g, Ordering::SeqCst);
                        vol.write(part.off, &pattern(SHARED_TAG | g, part.off, part.len))
                            .unwrap();
                        p.shared_acked.store(g, Ordering::SeqCst);
                    }
                }
            });
        }
        for reader in 0..2u64 {
            let (vol, l, p, stop, windows, errors, reads_checked) =
                (&vol, &l, &p, &stop, &windows, &errors, &reads_checked);
            scope.spawn(move || {
                let mut rng = Rng::new(100 + reader);
                while !stop.load(Ordering::SeqCst) {
                    let win = {
                        let all = windows.read().unwrap();
                        if all.is_empty() {
                            None
                        } else {
                            Some(all[rng.below(all.len() as u64) as usize].clone())
                        }
                    };
                    let Some(win) = win else {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    if let Err(e) = check_snapshot_window(vol, l, &win, p) {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("concurrent reader: {e}"));
                        return;
                    }
                    reads_checked.fetch_add(1, Ordering::Relaxed);
                }
            });
        }

        let mut rng = Rng::new(7);
        for i in 0..SNAPSHOTS {
            std::thread::sleep(Duration::from_millis(rng.below(15)));
            let own_before: [u64; WRITERS] =
                std::array::from_fn(|w| p.acked[w].load(Ordering::SeqCst));
            let shared_before = p.shared_acked.load(Ordering::SeqCst);
            let name = format!("snap{i}");
            let seq = vol.snapshot_create(&name).unwrap().seq;
            let own =
                std::array::from_fn(|w| (own_before[w], p.issued[w].load(Ordering::SeqCst) + 1));
            let shared = (shared_before, p.shared_issued.load(Ordering::SeqCst) + 1);
            windows.write().unwrap().push(Window {
                name,
                seq,
                own,
                shared,
            });
            if i % 7 == 3 {
                vol.destage_all().unwrap();
            }
        }
        stop.store(true, Ordering::SeqCst);
    });

    let errors = errors.into_inner().unwrap();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let windows = windows.into_inner().unwrap();
    assert!(
        p.acked.iter().all(|a| a.load(Ordering::SeqCst) > 0)
            && p.shared_acked.load(Ordering::SeqCst) > 0,
        "every writer made progress"
    );
    let check_all = |vol: &Volume, when: &str| {
        for win in &windows {
            if let Err(e) = check_snapshot_window(vol, &l, win, &p) {
                panic!("{when}: {e}");
            }
        }
        // The live volume holds the last acknowledged writes.
        let mut buf = read_live(vol);
        for w in 0..WRITERS {
            let r = l.own[w];
            let n = p.acked[w].load(Ordering::SeqCst);
            let got = &buf[r.off as usize..r.end() as usize];
            assert!(
                is_pattern(got, r.off, own_tag(w, n)),
                "{when}: live region of writer {w} is not its last write {n}"
            );
        }
        let g = p.shared_acked.load(Ordering::SeqCst);
        let s = l.shared;
        let got = buf.split_off(s.off as usize);
        let history = p.history.read().unwrap();
        if let Err(e) = check_shared(&got[..s.len as usize], &l, (g, g + 1), &history) {
            panic!("{when}: live {e}");
        }
    };
    check_all(&vol, "after the writers stopped");
    assert!(
        reads_checked.load(Ordering::Relaxed) > 0,
        "the concurrent readers checked some snapshots"
    );
    vol.close().unwrap();
    let vol = fx.open("vol", opts(2 * MIB));
    check_all(&vol, "after reopening");
    vol.close().unwrap();
}
