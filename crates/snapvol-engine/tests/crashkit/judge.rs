//! Judging a recovery: what the reopened volume reads against the oracle, the offline
//! checker, and the preserved copies the live snapshots need.

use snapvol_engine::units::SnapshotSeq;
use snapvol_engine::vlun::Vlun;
use snapvol_engine::Volume;

use super::devices::{Devices, Images};
use super::oracle::{Model, Req, SnapState};
use super::workload::Workload;

/// Without a crash, the running volume reads exactly as the oracle says: the oracle is right
/// before it judges anything.
pub(super) fn assert_running_volume(m: &Model, vol: &Volume) {
    if let Some(at) = first_diff(&read_all(vol, None), &m.image) {
        panic!("the running volume differs from the oracle at byte {at:#x}");
    }
    for s in &m.snaps {
        match (s.state, s.seq) {
            (SnapState::Acked, Some(seq)) => {
                if let Some(at) = first_diff(&read_all(vol, Some(seq)), &s.image) {
                    panic!("running snapshot {} differs at byte {at:#x}", s.name);
                }
            }
            (SnapState::Deleted, _) => {}
            other => panic!("snapshot {} in state {other:?} without a crash", s.name),
        }
    }
}

pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// `[from, to)` minus every range in `holes`, as sorted disjoint ranges.
pub(super) fn subtract(from: u64, to: u64, holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut holes: Vec<_> = holes
        .iter()
        .filter(|&&(a, b)| a < to && from < b)
        .copied()
        .collect();
    holes.sort_unstable();
    let mut out = Vec::new();
    let mut pos = from;
    for (a, b) in holes {
        if a > pos {
            out.push((pos, a));
        }
        pos = pos.max(b);
    }
    if pos < to {
        out.push((pos, to));
    }
    out
}

fn read_all(vol: &Volume, snap: Option<SnapshotSeq>) -> Vec<u8> {
    let mut buf = vec![0u8; vol.size() as usize];
    match snap {
        None => vol.read(0, &mut buf).expect("read the live volume"),
        Some(s) => vol
            .read_snapshot(s, 0, &mut buf)
            .unwrap_or_else(|e| panic!("read snapshot {s}: {e}")),
    }
    buf
}

/// Runs the offline checker (`snapvol_engine::check`, without repair) on three devices and
/// demands a clean report.
pub fn check_clean(source: &dyn Vlun, target: &dyn Vlun, journal: &dyn Vlun, when: &str) {
    check_clean_but_torn(source, target, journal, &[], when);
}

/// As [`check_clean`], except that a superblock copy the power loss tore (`torn`: offsets of
/// copies whose bytes are a mix of what they held before and after an interrupted write) must
/// be reported, as I5 asks, and is the only problem allowed. format.md: "a torn new copy fails
/// its CRC and the old one wins"; recovery's next superblock write goes to that very copy.
pub fn check_clean_but_torn(
    source: &dyn Vlun,
    target: &dyn Vlun,
    journal: &dyn Vlun,
    torn: &[u64],
    when: &str,
) {
    let every_byte = snapvol_engine::check::CheckOptions {
        repair: false,
        data: true,
        journal_in_use: false,
    };
    let report = snapvol_engine::check::check_with(source, target, journal, every_byte)
        .unwrap_or_else(|e| panic!("check could not run {when}: {e}"));
    let torn_loc: Vec<String> = torn
        .iter()
        .map(|off| format!("superblock copy at {off:#x}"))
        .collect();
    let unexpected: Vec<_> = report
        .problems
        .iter()
        .filter(|p| !torn_loc.contains(&p.location))
        .collect();
    assert!(
        unexpected.is_empty(),
        "check is not clean {when}: {unexpected:?}"
    );
    for loc in &torn_loc {
        assert!(
            report.problems.iter().any(|p| &p.location == loc),
            "check did not report the {loc}, torn by the power loss {when} (I5)"
        );
    }
}

/// Offsets of the superblock copies that the power loss left torn in `img`: neither as they
/// were durably nor as the interrupted write made them, so a mix of the two.
pub fn torn_superblocks(dev: &Devices, img: &Images) -> Vec<u64> {
    let (durable, live) = (dev.target.durable_image(), dev.target.live_image());
    let block = |v: &[u8], off: usize| v.get(off..off + 4096).map(<[u8]>::to_vec);
    [0usize, 4096]
        .into_iter()
        .filter(|&off| {
            let got = block(&img.target, off);
            got != block(&durable, off) && got != block(&live, off)
        })
        .map(|off| off as u64)
        .collect()
}

/// The live volume after recovery: every byte holds its settled value or the value of a write
/// issued after the last completed flush; and each such write shows whole or not at all, judged
/// on the bytes no later write touches and that tell its data apart from every other candidate.
/// A tearable write (write mode throughput, see [`Req::tearable`]) is exempt from the last
/// rule only: each of its bytes may be new or old. Returns how many of those shown in part.
pub fn assert_live_volume(m: &Model, got: &[u8]) -> usize {
    let mut torn_tearable = 0;
    const STRIDE: usize = 4096;
    let pending = m.pending();
    for (block, (g, s)) in got.chunks(STRIDE).zip(m.settled.chunks(STRIDE)).enumerate() {
        if g == s {
            continue;
        }
        for (i, (&g, &s)) in g.iter().zip(s).enumerate() {
            let at = (block * STRIDE + i) as u64;
            assert!(
                g == s || pending.iter().any(|r| r.covers(at) && r.byte(at) == g),
                "live byte {at:#x} reads {g:#04x}: neither its flushed value {s:#04x} nor the \
                 value of any write issued after the last completed flush ({} such writes; \
                 flushed data lost or corrupted)",
                pending.len()
            );
        }
    }
    for (i, r) in pending.iter().enumerate() {
        let range = r.off as usize..(r.off + r.len) as usize;
        let applied = match &r.data {
            Some(d) => got[range.clone()] == **d,
            None => got[range.clone()].iter().all(|&b| b == 0),
        };
        if applied {
            continue;
        }
        let later: Vec<_> = pending[i + 1..]
            .iter()
            .map(|q| (q.off, q.off + q.len))
            .collect();
        let earlier: Vec<&Req> = pending[..i].iter().filter(|q| q.overlaps(r)).collect();
        let telling = |at: u64| {
            let v = r.byte(at);
            v != m.settled[at as usize] && !earlier.iter().any(|q| q.covers(at) && q.byte(at) == v)
        };
        let visible = subtract(r.off, r.off + r.len, &later);
        let seen = visible
            .iter()
            .flat_map(|&(a, b)| a..b)
            .find(|&at| got[at as usize] == r.byte(at) && telling(at));
        let Some(seen) = seen else { continue };
        if r.tearable {
            // It may have skipped the journal and been cut as its chunks reached the source.
            let torn = visible
                .iter()
                .flat_map(|&(a, b)| a..b)
                .any(|at| got[at as usize] != r.byte(at));
            torn_tearable += usize::from(torn);
            continue;
        }
        if let Some(torn) = visible
            .iter()
            .flat_map(|&(a, b)| a..b)
            .find(|&at| got[at as usize] != r.byte(at))
        {
            panic!(
                "torn request: write of op {} at {:#x}+{:#x} shows its data at {seen:#x} but \
                 not at {torn:#x} (reads {:#04x}, its data is {:#04x}); no later write touches \
                 either byte",
                r.op,
                r.off,
                r.len,
                got[torn as usize],
                r.byte(torn)
            );
        }
    }
    torn_tearable
}

/// Bounds on the preserved chunk copies the live snapshots need: for chunk `c`, snapshot `s`
/// needs a copy iff some write to `c` was issued in an epoch `>= s`; two such snapshots share
/// one copy iff no write to `c` has an epoch between them. Writes after the last flush may or
/// may not have survived: where the recovered volume cannot tell, both are allowed.
pub fn needed_copies(m: &Model, live: &[SnapshotSeq], got: &[u8]) -> (u64, u64) {
    let chunks = m.image.len() as u64 / m.chunk;
    let (settled, pending): (Vec<&Req>, Vec<&Req>) =
        m.writes.iter().partition(|r| !m.is_pending(r.op));
    let count = |epochs: &[u64]| -> u64 {
        let mut groups: Vec<usize> = live
            .iter()
            .filter(|s| epochs.iter().any(|&e| e >= s.0))
            .map(|s| epochs.iter().filter(|&&e| e < s.0).count())
            .collect();
        groups.sort_unstable();
        groups.dedup();
        groups.len() as u64
    };
    let (mut lo, mut hi) = (0, 0);
    for c in 0..chunks {
        let (start, end) = (c * m.chunk, (c + 1) * m.chunk);
        let touches = |r: &&Req| r.off < end && start < r.off + r.len;
        let mut epochs: Vec<u64> = settled
            .iter()
            .copied()
            .filter(touches)
            .map(|r| r.epoch)
            .collect();
        let p: Vec<&Req> = pending.iter().copied().filter(touches).collect();
        let without = count(&epochs);
        if p.is_empty() {
            lo += without;
            hi += without;
            continue;
        }
        epochs.extend(p.iter().map(|r| r.epoch));
        let with = count(&epochs);
        let span = start as usize..end as usize;
        let survived = got[span.clone()] != m.settled[span]
            && (start..end).any(|at| {
                got[at as usize] != m.settled[at as usize] && p.iter().any(|r| r.covers(at))
            });
        lo += if survived { with } else { with.min(without) };
        hi += with.max(without);
    }
    (lo, hi)
}

/// What a recovery gave back, beyond what it must: to show the sweep covers both sides of
/// every "may".
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Some write after the last completed flush survived.
    pub unflushed_kept: bool,
    /// Some write after the last completed flush is missing.
    pub unflushed_lost: bool,
    /// Some tearable write (write mode throughput) shows in part.
    pub unflushed_torn: bool,
    /// A snapshot whose creation was interrupted: `Some(survived)`.
    pub interrupted_snapshot: Option<bool>,
    /// A snapshot whose deletion was interrupted: `Some(still there)`.
    pub interrupted_delete: Option<bool>,
}

/// What a recovered volume reads: the live volume and every snapshot.
struct Recovered {
    live: Vec<u8>,
    snaps: Vec<(SnapshotSeq, Vec<u8>)>,
    outcome: Outcome,
}

/// Everything a recovery must give back, judged on a volume just opened on crash images.
fn assert_recovered(m: &Model, vol: &Volume) -> Recovered {
    let live = read_all(vol, None);
    let infos = vol.snapshots();
    let mut snap_images = Vec::new();
    for info in &infos {
        let sm = m.snaps.iter().find(|s| s.name == info.name);
        let Some(sm) = sm else {
            panic!(
                "snapshot {} ({}) exists after recovery but was never created",
                info.name, info.seq
            );
        };
        let got = read_all(vol, Some(info.seq));
        match sm.state {
            SnapState::Deleted => panic!(
                "snapshot {} came back after its deletion was acknowledged",
                sm.name
            ),
            SnapState::Acked => assert_eq!(
                Some(info.seq),
                sm.seq,
                "snapshot {} changed its sequence number",
                sm.name
            ),
            SnapState::CreateInFlight => {
                // Its record is committed only after the flush that makes every earlier write
                // durable, so the live volume cannot be older than it (no write came after it).
                if let Some(at) = first_diff(&live, &sm.image) {
                    panic!(
                        "snapshot {} (creation interrupted) survived, but the live volume is not \
                         the image it holds: first difference at byte {at:#x}",
                        sm.name
                    );
                }
            }
            SnapState::DeleteInFlight => {}
        }
        if let Some(at) = first_diff(&got, &sm.image) {
            panic!(
                "snapshot {} ({:?}) reads {:#04x} at byte {at:#x} where it held {:#04x} when it \
                 was taken",
                sm.name, sm.state, got[at], sm.image[at]
            );
        }
        snap_images.push((info.seq, got));
    }
    for sm in &m.snaps {
        if sm.state == SnapState::Acked {
            assert!(
                infos.iter().any(|i| i.name == sm.name),
                "snapshot {} was acknowledged but is gone after recovery",
                sm.name
            );
        }
    }
    let torn = assert_live_volume(m, &live);
    let mut outcome = Outcome {
        unflushed_kept: live != m.settled,
        unflushed_lost: live != m.image,
        unflushed_torn: torn > 0,
        ..Outcome::default()
    };
    for sm in &m.snaps {
        let there = infos.iter().any(|i| i.name == sm.name);
        match sm.state {
            SnapState::CreateInFlight => outcome.interrupted_snapshot = Some(there),
            SnapState::DeleteInFlight => outcome.interrupted_delete = Some(there),
            _ => {}
        }
    }

    let info = vol.info();
    let live_seqs: Vec<_> = infos.iter().map(|i| i.seq).collect();
    let (lo, hi) = needed_copies(m, &live_seqs, &live);
    let used = info.target_used_bytes / m.chunk;
    assert!(
        lo <= used && used <= hi,
        "target holds {used} preserved chunks; the {} live snapshots need between {lo} and {hi} \
         (leaked or missing copies)",
        live_seqs.len()
    );
    Recovered {
        live,
        snaps: snap_images,
        outcome,
    }
}

/// Recovers from `img` and judges the result; then checks that a clean close keeps it, and that
/// deleting every snapshot gives all target space back.
///
/// `torn`: superblock copies the power loss tore (see [`torn_superblocks`]).
pub fn recover_and_check(w: &Workload, m: &Model, img: Images, torn: &[u64]) -> Outcome {
    let dev = Devices::restart(img);
    check_clean_but_torn(
        &*dev.source,
        &*dev.target,
        &*dev.journal,
        torn,
        "on the crash images, before recovery",
    );
    let opts = w.options(false);
    let vol = Volume::open_on("crash", dev.vluns(), opts.clone())
        .unwrap_or_else(|e| panic!("recovery failed: open_on returned {e}"));
    let Recovered {
        live,
        snaps,
        outcome,
    } = assert_recovered(m, &vol);
    vol.close()
        .unwrap_or_else(|e| panic!("close after recovery: {e}"));
    dev.check_clean("after recovery and a clean close");

    // What recovery gave back is now durable: a second open sees exactly the same.
    let vol = Volume::open_on("crash", dev.vluns(), opts)
        .unwrap_or_else(|e| panic!("reopen after recovery: {e}"));
    if let Some(at) = first_diff(&read_all(&vol, None), &live) {
        panic!("the live volume changed across a clean close after recovery, at byte {at:#x}");
    }
    for (seq, img) in &snaps {
        if let Some(at) = first_diff(&read_all(&vol, Some(*seq)), img) {
            panic!("snapshot {seq} changed across a clean close after recovery, at byte {at:#x}");
        }
    }
    for s in vol.snapshots() {
        vol.snapshot_delete(&s.name)
            .unwrap_or_else(|e| panic!("delete {} after recovery: {e}", s.name));
    }
    vol.destage_all()
        .unwrap_or_else(|e| panic!("destage_all after recovery: {e}"));
    let used = vol.info().target_used_bytes;
    assert_eq!(
        used, 0,
        "with every snapshot deleted and the cache destaged the target still holds {used} \
         bytes of preserved data (leaked target space)"
    );
    vol.close().unwrap_or_else(|e| panic!("final close: {e}"));
    dev.check_clean("after deleting every snapshot");
    outcome
}
