//! Crash-point tests: every scripted workload is cut at every I/O index in turn, the power
//! loss keeps, drops, reorders or tears the writes not yet synced, and the volume reopened on
//! what is left must keep every promise of DESIGN.md I1–I6: flushed data present, every
//! acknowledged snapshot exact, no torn request, no leaked target space, `check` clean.
//!
//! Crash-point counts: `every_crash_point_of_every_scripted_workload_recovers` prints
//! `crash points: N` for the exhaustive sweep and asserts N >= 10,000 on its own; the
//! background-destage test prints its own count on top of that.
//!
//! The harness lives in `crashkit/`. A failing point is reported as workload, crash index and
//! loss (`zeroes_and_trims_over_preserved_chunks k=48 Random(127412916913) ...`), which replays
//! exactly. `CRASHKIT_ONLY=<workload>` sweeps one workload; `CRASHKIT_WORKERS=<n>` sets the
//! number of threads (default: the cores, 2 to 4).

mod crashkit;

use std::time::Instant;

use crashkit::{
    assert_live_volume, catching, check_clean_but_torn, crash_at, dry_run, needed_copies, pattern,
    recover_and_check, run_workload, sweep, torn_superblocks, Devices, Images, Loss, Model, Op,
    Outcome, Req, SplitMix, Summary, Workload, KIB,
};
use snapvol_engine::journal::RING_OFFSET;
use snapvol_engine::units::{Geometry, SnapshotSeq};
use snapvol_engine::{Layout, Volume, VolumeOptions, WriteMode};

use Op::{Delete, DestageAll, Flush, Reopen, Snap};

fn write(off: u64, len: u64) -> Op {
    Op::Write { off, len }
}
fn zero(off: u64, len: u64) -> Op {
    Op::Zero { off, len }
}
fn trim(off: u64, len: u64) -> Op {
    Op::Trim { off, len }
}
fn fua(off: u64, len: u64) -> Op {
    Op::Fua { off, len }
}
fn read(off: u64, len: u64) -> Op {
    Op::Read { off, len }
}

// ---------------------------------------------------------------------------------------------
// The scripted workloads. Within a phase (between two snapshots or flushes) the writes mostly
// do not overlap, so each request can be judged all-old or all-new on its own; the oracle
// tracks candidate values per byte for the ones that do.
// ---------------------------------------------------------------------------------------------

/// Unaligned writes that span chunks, zeroes and trims, around three snapshots, one deleted.
fn unaligned_writes_across_three_snapshots() -> Workload {
    Workload {
        name: "unaligned_writes_across_three_snapshots",
        chunk_size: 4096,
        chunks: 64,
        cache_size: 32 * KIB,
        compact_after_records: 4096,
        write_mode: WriteMode::Atomic,
        ops: vec![
            write(0, 20 * KIB),
            write(20 * KIB + 100, 30_000),
            write(64 * KIB + 5, 50_000),
            zero(120 * KIB, 8 * KIB),
            Flush,
            write(130 * KIB, 40 * KIB),
            Snap("a"),
            write(3 * KIB, 2 * KIB),
            write(10 * KIB + 1, 9000),
            zero(30 * KIB, 6 * KIB),
            fua(50 * KIB + 5, 5000),
            write(100 * KIB, 16 * KIB),
            trim(128 * KIB, 8 * KIB),
            read(0, 64 * KIB),
            Snap("b"),
            write(0, 4 * KIB),
            write(8 * KIB - 100, 300),
            write(60 * KIB, 12 * KIB),
            Flush,
            write(90 * KIB + 3, 20_000),
            Delete("a"),
            write(200 * KIB, 10 * KIB),
            Snap("c"),
            DestageAll,
            write(40 * KIB, 4 * KIB),
            write(150 * KIB + 7, 9000),
            zero(170 * KIB, 20 * KIB),
            Flush,
            write(250 * KIB, 6 * KIB),
            write(5 * KIB, KIB),
        ],
    }
}

/// A cache of four 16 KiB chunks: nearly every write makes the destager run on the caller's
/// thread, between snapshots, so crashes land inside destage batches and journal reclaims.
fn cache_pressure_destages_between_snapshots() -> Workload {
    let mut ops = Vec::new();
    for i in 0..8 {
        ops.push(write(i * (40 * KIB + 123), 9000));
    }
    ops.push(Snap("s1"));
    for i in 0..8 {
        ops.push(write(i * (40 * KIB + 123) + 20 * KIB, 7000));
    }
    ops.push(fua(330 * KIB, 3000));
    ops.push(Snap("s2"));
    for i in 0..6 {
        ops.push(write(i * (64 * KIB) + 5 * KIB, 13_000));
    }
    ops.push(Delete("s1"));
    ops.push(zero(448 * KIB, 64 * KIB));
    ops.push(Flush);
    for i in 0..5 {
        ops.push(write(i * (64 * KIB) + 30 * KIB, 6000));
    }
    Workload {
        name: "cache_pressure_destages_between_snapshots",
        chunk_size: 16 * 1024,
        chunks: 32,
        cache_size: 64 * KIB,
        compact_after_records: 4096,
        write_mode: WriteMode::Atomic,
        ops,
    }
}

/// A clean close and reopen in the middle, twice: the second life must recover the first's
/// snapshots and the journal must restart cleanly.
fn close_and_reopen_in_the_middle() -> Workload {
    Workload {
        name: "close_and_reopen_in_the_middle",
        chunk_size: 4096,
        chunks: 128,
        cache_size: 48 * KIB,
        compact_after_records: 4096,
        write_mode: WriteMode::Atomic,
        ops: vec![
            write(7, 30_000),
            write(100 * KIB, 64 * KIB),
            Snap("before"),
            write(20 * KIB + 9, 8000),
            write(110 * KIB, 4 * KIB),
            Reopen,
            write(300 * KIB + 1, 12_000),
            write(0, 512),
            read(0, 40 * KIB),
            Snap("middle"),
            write(120 * KIB + 17, 30_000),
            Delete("before"),
            Reopen,
            write(400 * KIB, 50 * KIB),
            fua(5 * KIB, 3 * KIB),
            write(60 * KIB, 6000),
            Snap("after"),
            write(200 * KIB + 3, 9000),
            trim(480 * KIB, 32 * KIB),
        ],
    }
}

/// Whole-chunk zeroes (source hole punches), partial zeroes and trims over chunks that
/// snapshots still need, then deletes and a full destage.
fn zeroes_and_trims_over_preserved_chunks() -> Workload {
    Workload {
        name: "zeroes_and_trims_over_preserved_chunks",
        chunk_size: 16 * 1024,
        chunks: 48,
        cache_size: 64 * KIB,
        compact_after_records: 4096,
        write_mode: WriteMode::Atomic,
        ops: vec![
            write(0, 256 * KIB),
            write(256 * KIB + 1, 200 * KIB),
            Snap("full"),
            zero(0, 64 * KIB),
            trim(96 * KIB, 32 * KIB),
            zero(160 * KIB + 100, 5000),
            trim(200 * KIB + 3, 40 * KIB),
            Snap("holes"),
            write(16 * KIB, 16 * KIB),
            zero(300 * KIB, 100 * KIB),
            Delete("full"),
            write(500 * KIB, 20 * KIB),
            DestageAll,
            trim(0, 768 * KIB),
            Snap("empty"),
            write(700 * KIB + 11, 20_000),
            Delete("holes"),
            zero(8 * KIB, 4 * KIB),
        ],
    }
}

/// Five snapshots in a row share one copy of each chunk overwritten after them; deletes in
/// the middle of the range; a tiny log-compaction threshold so checkpoints happen (and crash).
fn many_snapshots_share_copies_while_the_log_compacts() -> Workload {
    let size = 128 * KIB;
    Workload {
        name: "many_snapshots_share_copies_while_the_log_compacts",
        chunk_size: 4096,
        chunks: 32,
        cache_size: 16 * KIB,
        compact_after_records: 6,
        write_mode: WriteMode::Atomic,
        ops: vec![
            write(0, size),
            Snap("s1"),
            Snap("s2"),
            Snap("s3"),
            write(1000, 30_000),
            Snap("s4"),
            Snap("s5"),
            write(0, 64 * KIB),
            write(64 * KIB + 100, 60 * KIB),
            Delete("s2"),
            Delete("s4"),
            Snap("s6"),
            write(10 * KIB, 20 * KIB),
            Delete("s1"),
            Delete("s3"),
            Snap("s7"),
            write(90 * KIB + 5, 30_000),
            DestageAll,
            Delete("s6"),
            write(3, 100),
            Delete("s5"),
            write(50 * KIB, 8 * KIB),
        ],
    }
}

/// Writes that overlap inside a phase, FUA writes among them, and flushes between: the oracle
/// tracks every candidate value per byte, and judges atomicity on the parts no later write
/// covers.
fn overlapping_writes_with_fua_and_flushes() -> Workload {
    Workload {
        name: "overlapping_writes_with_fua_and_flushes",
        chunk_size: 4096,
        chunks: 48,
        cache_size: 16 * KIB,
        compact_after_records: 4096,
        write_mode: WriteMode::Atomic,
        ops: vec![
            write(0, 96 * KIB),
            Snap("base"),
            write(1000, 9000),
            write(5000, 9000),
            fua(7000, 2000),
            write(3 * KIB, 30 * KIB),
            write(20 * KIB + 1, 4000),
            Flush,
            write(100 * KIB, 40 * KIB),
            fua(110 * KIB + 50, 100),
            zero(120 * KIB, 10 * KIB),
            write(125 * KIB, 10 * KIB),
            Snap("over"),
            write(0, 192 * KIB),
            fua(64 * KIB, 64 * KIB),
            write(60 * KIB + 7, 9 * KIB),
            trim(150 * KIB, 20 * KIB),
            write(160 * KIB, 1),
        ],
    }
}

/// A seeded mix of every operation, for breadth the scripts above do not think of.
fn seeded_mix(seed: u64, chunk: u64, chunks: u64) -> Workload {
    const NAMES: [&str; 8] = ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"];
    let size = chunk * chunks;
    let mut rng = SplitMix(seed);
    let mut ops = Vec::new();
    let (mut created, mut live) = (0, Vec::new());
    for _ in 0..48 {
        let off = rng.below(size - 1);
        let len = match rng.below(3) {
            0 => 1 + rng.below(3000),
            1 => 1 + rng.below(3 * chunk),
            _ => 4096 * (1 + rng.below(8)),
        }
        .min(size - off);
        ops.push(match rng.below(20) {
            0..=9 => write(off, len),
            10 => zero(off, len),
            11 => trim(off, len),
            12 => fua(off, len),
            13 | 14 => Flush,
            15 | 16 if created < NAMES.len() => {
                live.push(NAMES[created]);
                created += 1;
                Snap(NAMES[created - 1])
            }
            17 if !live.is_empty() => Delete(live.remove(rng.below(live.len() as u64) as usize)),
            18 => DestageAll,
            19 => Reopen,
            _ => write(off, len),
        });
    }
    Workload {
        name: Box::leak(format!("seeded_mix_{seed:x}").into_boxed_str()),
        chunk_size: u32::try_from(chunk).expect("chunk size"),
        chunks,
        cache_size: 24 * KIB,
        compact_after_records: 8,
        write_mode: WriteMode::Atomic,
        ops,
    }
}

// ---------------------------------------------------------------------------------------------
// Write mode throughput: data writes of at least a chunk skip the journal where no replayable
// record covers their chunks, and are durable only once a FLUSH, a snapshot, `destage_all` or
// a clean close destages them; until then a crash may tear them. These scripts mix them with
// small (journaled) writes into the same chunks so that both paths, and the switch between
// them, are cut at every I/O.
// ---------------------------------------------------------------------------------------------

/// Large writes (aligned and not) and small ones into the same chunks, snapshots taken with no
/// FLUSH before them (the snapshot itself must destage the large writes), FUA writes small and
/// large (a FUA promises itself and the journaled writes, not the large ones before it), zeroes
/// and trims, deletes, and a cache of four chunks so destages run in the middle of it all.
fn large_and_small_writes_share_chunks_around_unflushed_snapshots() -> Workload {
    Workload {
        name: "large_and_small_writes_share_chunks_around_unflushed_snapshots",
        chunk_size: 16 * 1024,
        chunks: 32,
        cache_size: 64 * KIB,
        compact_after_records: 4096,
        write_mode: WriteMode::Throughput,
        ops: vec![
            write(0, 64 * KIB),
            write(5 * KIB, 3000),
            write(64 * KIB + 100, 40_000),
            write(16 * KIB, 32 * KIB),
            Flush,
            // Chunk 0 still has the small write's record in the journal: this one is staged.
            write(0, 16 * KIB),
            write(100 * KIB, 50_000),
            write(110 * KIB + 7, 200),
            Snap("a"),
            write(0, 128 * KIB),
            fua(20 * KIB, 2000),
            write(200 * KIB + 3, 20_000),
            fua(256 * KIB, 32 * KIB),
            zero(32 * KIB, 16 * KIB),
            trim(150 * KIB, 20 * KIB),
            write(140 * KIB, 48 * KIB),
            Snap("b"),
            Delete("a"),
            write(300 * KIB, 64 * KIB + 5),
            write(310 * KIB, 100),
            Flush,
            write(0, 512 * KIB),
            Snap("c"),
            write(400 * KIB + 9, 30_000),
            Delete("b"),
            write(8 * KIB, 4 * KIB),
            write(48 * KIB, 16 * KIB),
            write(240 * KIB + 1, 20 * KIB),
        ],
    }
}

/// Small 4 KiB chunks and a 16 KiB cache: large writes over chunks whose small writes the
/// journal still holds (staged, so a replay never lays the older write over them), then again
/// once `destage_all` moved the journal head past them (they skip it again), a clean close in
/// the middle (it must make the skipped writes durable), snapshots back to back with no FLUSH,
/// and a log that compacts.
fn large_writes_into_chunks_the_journal_still_holds() -> Workload {
    Workload {
        name: "large_writes_into_chunks_the_journal_still_holds",
        chunk_size: 4096,
        chunks: 64,
        cache_size: 16 * KIB,
        compact_after_records: 8,
        write_mode: WriteMode::Throughput,
        ops: vec![
            write(0, 8 * KIB + 100),
            write(4 * KIB + 5, 10),
            write(2 * KIB, 8 * KIB),
            Flush,
            write(3 * KIB, 5 * KIB),
            DestageAll,
            write(0, 12 * KIB),
            Snap("s1"),
            write(1000, 5000),
            write(6000, 20_000),
            zero(0, 4 * KIB),
            Snap("s2"),
            Snap("s3"),
            write(0, 64 * KIB),
            Delete("s1"),
            fua(30 * KIB, 8 * KIB),
            write(100 * KIB, 4 * KIB),
            write(100 * KIB + 1, 4095),
            write(128 * KIB - 3, 10 * KIB),
            Reopen,
            write(128 * KIB, 4 * KIB + 1),
            trim(64 * KIB, 64 * KIB),
            write(70 * KIB, 5000),
            Snap("s4"),
            Delete("s2"),
            write(200 * KIB, 40 * KIB),
            Flush,
            write(10 * KIB, 30 * KIB),
            Delete("s3"),
            write(12 * KIB, 100),
        ],
    }
}

/// The write-mode-throughput sweep: the scripts above, and existing ones run in throughput.
/// `CRASHKIT_THROUGHPUT=all` runs every scripted workload in throughput too (minutes more).
fn throughput_workloads() -> Vec<Workload> {
    let mut out = vec![
        large_and_small_writes_share_chunks_around_unflushed_snapshots(),
        large_writes_into_chunks_the_journal_still_holds(),
    ];
    if std::env::var("CRASHKIT_THROUGHPUT").is_ok_and(|v| v == "all") {
        out.extend(
            scripted_workloads()
                .into_iter()
                .map(Workload::in_throughput),
        );
    } else {
        // The cheapest of the others (a minute of the crash binary's run in all).
        out.extend([
            zeroes_and_trims_over_preserved_chunks().in_throughput(),
            seeded_mix(0x5EED_0005, 16 * 1024, 48).in_throughput(),
        ]);
    }
    out
}

fn scripted_workloads() -> Vec<Workload> {
    vec![
        unaligned_writes_across_three_snapshots(),
        cache_pressure_destages_between_snapshots(),
        close_and_reopen_in_the_middle(),
        zeroes_and_trims_over_preserved_chunks(),
        many_snapshots_share_copies_while_the_log_compacts(),
        overlapping_writes_with_fua_and_flushes(),
        seeded_mix(0x5EED_0001, 4096, 96),
        seeded_mix(0x5EED_0002, 4096, 96),
        seeded_mix(0x5EED_0003, 16 * 1024, 32),
        seeded_mix(0x5EED_0004, 4096, 128),
        seeded_mix(0x5EED_0005, 16 * 1024, 48),
        seeded_mix(0x5EED_0006, 4096, 64),
    ]
}

fn report(what: &str, s: &Summary) {
    assert!(
        s.failures.is_empty(),
        "{what}: {} crash point(s) failed:\n{}",
        s.failures.len(),
        s.failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The exhaustive sweep
// ---------------------------------------------------------------------------------------------

/// Sweeps every crash index of each workload (those `CRASHKIT_ONLY` names, if set) and
/// returns the summary of them all.
fn sweep_every_crash_point(what: &str, workloads: Vec<Workload>) -> Summary {
    let started = Instant::now();
    let mut total = Summary::default();
    for w in workloads {
        if std::env::var("CRASHKIT_ONLY").is_ok_and(|o| o != w.name) {
            continue;
        }
        let t = Instant::now();
        let n = dry_run(&w, false);
        // k = n: the power fails after the last operation returned.
        let ks: Vec<u64> = (0..=n).collect();
        let s = sweep(&w, &ks, false, Some(n));
        eprintln!(
            "{}: {n} I/O calls, {} crash points ({} duplicate images skipped), {} failed, {:.1?}",
            w.name,
            s.points,
            s.duplicates,
            s.failures.len(),
            t.elapsed()
        );
        total.absorb(s);
    }
    eprintln!("{}", total.outcomes());
    eprintln!(
        "crash points: {} ({what}, {:.1?})",
        total.points,
        started.elapsed()
    );
    total
}

#[test]
fn every_crash_point_of_every_scripted_workload_recovers() {
    let total = sweep_every_crash_point("exhaustive sweep", scripted_workloads());
    report("exhaustive sweep", &total);
    assert!(
        total.points >= 10_000,
        "only {} crash points ran; the CI run needs at least 10,000",
        total.points
    );
}

/// Write mode throughput keeps every promise but one of write mode atomic: a crash may tear a
/// large write no FLUSH or snapshot followed (each byte new or old), and nothing else. Flushed
/// data, FUA writes, snapshots (taken without a FLUSH before them too), journaled requests
/// whole, `check` clean, no leaked space: every crash point of every throughput script.
#[test]
fn in_write_mode_throughput_every_crash_point_keeps_flushed_data_snapshots_and_small_writes_whole()
{
    let total = sweep_every_crash_point("write mode throughput", throughput_workloads());
    report("write mode throughput", &total);
    if std::env::var("CRASHKIT_ONLY").is_ok() {
        return;
    }
    assert!(
        total.unflushed_torn > 0 && total.unflushed_kept > 0 && total.unflushed_lost > 0,
        "the throughput sweep reaches torn, kept and lost large writes: {}",
        total.outcomes()
    );
}

// ---------------------------------------------------------------------------------------------
// Background destage: not deterministic, so random crash indices instead of all of them.
// ---------------------------------------------------------------------------------------------

#[test]
fn random_crash_points_with_the_destager_running_concurrently_recover() {
    let started = Instant::now();
    let mut total = Summary::default();
    let mut rng = SplitMix(0xB6_0D_E5_7A);
    for w in [
        cache_pressure_destages_between_snapshots(),
        unaligned_writes_across_three_snapshots(),
        many_snapshots_share_copies_while_the_log_compacts(),
    ] {
        // A generous bound: the background destager issues about as much I/O as the
        // caller-thread one, at other moments.
        let n = dry_run(&w, true).max(dry_run(&w, false));
        let bound = n + n / 2;
        let ks: Vec<u64> = (0..100).map(|_| rng.below(bound + 1)).collect();
        let s = sweep(&w, &ks, true, None);
        eprintln!(
            "{} (background destage): bound {bound}, {} crash points, {} failed",
            w.name,
            s.points,
            s.failures.len()
        );
        total.absorb(s);
    }
    eprintln!("{}", total.outcomes());
    eprintln!(
        "crash points: {} (background destage, {:.1?})",
        total.points,
        started.elapsed()
    );
    report("background destage", &total);
}

/// Large writes that make the journal wrap while its head is past the ring's start: a quarter
/// of the ring destaged (the head moves there), then more than half of it journaled in large
/// writes (each within the largest record, half the ring), then one more that goes on at the
/// ring's start. Every crash point of it must
/// recover what was flushed. (The journal once counted the room of an append that wraps
/// without the ring's end it skips; the volume's limits, a cache of a quarter of the ring and
/// records of at most half of it, kept that from overwriting live records here, so the
/// journal's own test `an_append_that_wraps_never_overwrites_live_records` covers it.)
fn large_writes_wrap_the_journal_past_its_head() -> Workload {
    let ring = crashkit::JOURNAL_SIZE - RING_OFFSET;
    let payload = |n: u64| n - 64;
    Workload {
        name: "large_writes_wrap_the_journal_past_its_head",
        chunk_size: 64 * 1024,
        chunks: 64,
        cache_size: 8 << 20,
        compact_after_records: 4096,
        write_mode: WriteMode::Atomic,
        ops: vec![
            write(0, payload(ring / 4)),
            DestageAll,
            write(1 << 20, payload(ring * 7 / 16)),
            write(3 << 20, payload(ring / 4)),
            write(0, payload(ring * 5 / 16)),
            Flush,
        ],
    }
}

#[test]
fn every_crash_point_of_large_writes_that_wrap_the_journal_recovers() {
    let w = large_writes_wrap_the_journal_past_its_head();
    let n = dry_run(&w, false);
    let s = sweep(&w, &(0..=n).collect::<Vec<_>>(), false, Some(n));
    report("large writes that wrap the journal", &s);
    assert!(s.points > n);
}

// ---------------------------------------------------------------------------------------------
// The harness itself: it must catch what it claims to catch.
// ---------------------------------------------------------------------------------------------

/// A small script for the harness's own tests.
fn flush_then_more() -> Workload {
    Workload {
        name: "flush_then_more",
        chunk_size: 4096,
        chunks: 32,
        cache_size: 16 * KIB,
        compact_after_records: 4096,
        write_mode: WriteMode::Atomic,
        ops: vec![
            write(0, 128 * KIB),
            Snap("a"),
            DestageAll,
            write(100, 10_000),
            write(50 * KIB, 3000),
            Flush,
            write(20 * KIB, 50),
        ],
    }
}

#[test]
fn a_power_loss_right_after_the_last_operation_loses_nothing_flushed() {
    let w = flush_then_more();
    let n = dry_run(&w, false);
    let s = crash_at(&w, n, &[Loss::DropAll, Loss::KeepAll], false, Some(n));
    report("crash after the last operation", &s);
    assert!(s.points >= 1);
}

/// Runs `flush_then_more` to its end, takes the images a power loss leaves, damages them with
/// `damage`, and returns what the judge says about a recovery from them.
fn judge_damaged(damage: impl FnOnce(&mut Images)) -> Result<Outcome, String> {
    let w = flush_then_more();
    let run = run_workload(&w, None, false);
    let mut img = run.devices.crash_images(Loss::DropAll);
    damage(&mut img);
    catching(|| recover_and_check(&w, &run.model, img, &[]))
}

#[test]
fn the_harness_passes_an_undamaged_crash_image() {
    judge_damaged(|_| {}).expect("a clean crash image is judged sound");
}

#[test]
fn the_harness_notices_a_flushed_write_the_journal_lost() {
    // Wipe the journal's ring: the flushed writes it held (not yet on the source) are gone.
    let err =
        judge_damaged(|img| img.journal[RING_OFFSET as usize..].fill(0)).expect_err("noticed");
    assert!(err.contains("flushed data lost"), "{err}");
}

#[test]
fn the_harness_notices_a_snapshot_that_does_not_read_what_it_held() {
    // Chunk 31 is destaged and never overwritten after snapshot `a`, so `a` reads it from the
    // source, and no journal record rewrites it on recovery.
    let err = judge_damaged(|img| img.source[31 * 4096 + 7] ^= 0x40).expect_err("noticed");
    assert!(err.contains("snapshot a"), "{err}");
}

#[test]
fn the_oracle_rejects_a_torn_request_and_accepts_all_old_or_all_new() {
    let size = 64 * KIB;
    let mut m = Model::new(size, 4096);
    m.write(req(0, 0, size), true);
    m.settle();
    m.write(req(1, 10 * KIB + 3, 9000), true);
    m.write(req(2, 40 * KIB, 8 * KIB), true);
    let old = m.settled.clone();
    let mut half = old.clone();
    half[10 * KIB as usize + 3..15 * KIB as usize]
        .copy_from_slice(&m.image[10 * KIB as usize + 3..15 * KIB as usize]);

    assert_live_volume(&m, &old);
    assert_live_volume(&m, &m.image);
    let mut one = old.clone();
    one[40 * KIB as usize..48 * KIB as usize]
        .copy_from_slice(&m.image[40 * KIB as usize..48 * KIB as usize]);
    assert_live_volume(&m, &one);
    let err = catching(|| assert_live_volume(&m, &half)).expect_err("torn");
    assert!(err.contains("torn request: write of op 1"), "{err}");
}

/// Write mode throughput: an unflushed large write may be torn, each byte new or old; the same
/// request in write mode atomic may not; and a torn byte still has to be one of those two.
#[test]
fn the_oracle_lets_only_an_unflushed_large_write_of_write_mode_throughput_tear() {
    let size = 64 * KIB;
    let mut m = Model::new(size, 4096);
    m.write(req(0, 0, size), true);
    m.settle();
    let mut large = req(1, 8 * KIB, 16 * KIB);
    large.tearable = true;
    m.write(large.clone(), true);
    let mut half = m.settled.clone();
    half[8 * KIB as usize..14 * KIB as usize]
        .copy_from_slice(&m.image[8 * KIB as usize..14 * KIB as usize]);
    assert_eq!(assert_live_volume(&m, &half), 1, "counted as torn");
    let mut garbage = half.clone();
    garbage[15 * KIB as usize] ^= 0x5A;
    let err = catching(|| assert_live_volume(&m, &garbage)).expect_err("neither old nor new");
    assert!(err.contains("flushed data lost"), "{err}");

    let mut atomic = Model::new(size, 4096);
    atomic.write(req(0, 0, size), true);
    atomic.settle();
    atomic.write(
        Req {
            tearable: false,
            ..large
        },
        true,
    );
    let err = catching(|| assert_live_volume(&atomic, &half)).expect_err("torn");
    assert!(err.contains("torn request: write of op 1"), "{err}");

    // A completed FLUSH promises it whole.
    m.settle();
    let err = catching(|| assert_live_volume(&m, &half)).expect_err("flushed");
    assert!(err.contains("flushed data lost"), "{err}");
}

/// A FUA write makes durable itself and the journaled writes before it, not a large write that
/// skipped the journal; but where a journaled write came after the large one, it is what a
/// replay leaves, so there the large write's bytes are no longer allowed.
#[test]
fn the_oracle_holds_a_fua_to_itself_and_the_journaled_writes_not_to_an_earlier_large_one() {
    let size = 64 * KIB;
    let mut m = Model::new(size, 4096);
    m.write(req(0, 0, size), true);
    m.settle();
    let mut large = req(1, 0, 16 * KIB);
    large.tearable = true;
    m.write(large, true);
    m.write(req(2, 12 * KIB, 100), true);
    m.write(req(3, 40 * KIB, 4 * KIB), true);
    m.settle_fua();
    let at = |r: std::ops::Range<u64>| r.start as usize..r.end as usize;

    // The large write lost, torn or whole: allowed, with the journaled ones present.
    let mut got = m.image.clone();
    got[at(0..16 * KIB)].copy_from_slice(&m.settled[at(0..16 * KIB)]);
    got[at(12 * KIB..12 * KIB + 100)].copy_from_slice(&m.image[at(12 * KIB..12 * KIB + 100)]);
    assert_live_volume(&m, &got);
    got[at(0..4 * KIB)].copy_from_slice(&m.image[at(0..4 * KIB)]);
    assert_eq!(assert_live_volume(&m, &got), 1, "torn");
    assert_live_volume(&m, &m.image);

    // The FUA write itself lost: flushed data lost.
    let mut lost = m.image.clone();
    lost[at(40 * KIB..44 * KIB)].fill(0);
    let err = catching(|| assert_live_volume(&m, &lost)).expect_err("fua lost");
    assert!(err.contains("flushed data lost"), "{err}");
    // The journaled write after the large one replaced by the large one's bytes.
    let mut over = m.image.clone();
    let large_bytes = pattern(1001, 16 * KIB);
    over[at(12 * KIB..12 * KIB + 100)]
        .copy_from_slice(&large_bytes[12 * KIB as usize..12 * KIB as usize + 100]);
    let err = catching(|| assert_live_volume(&m, &over)).expect_err("older over newer");
    assert!(err.contains("flushed data lost"), "{err}");
}

#[test]
fn the_oracle_counts_one_copy_for_snapshots_taken_between_two_overwrites() {
    let size = 16 * KIB;
    let mut m = Model::new(size, 4096);
    // Chunk 0 written in epoch 0 and 3; snapshots 1, 2, 3 all see the epoch-0 image: one copy.
    // Chunk 1 written in epochs 1 and 2: snapshot 1 has its own copy, snapshot 2 another.
    for (op, off, epoch) in [(0, 0, 0), (1, 4096, 1), (2, 4096, 2), (3, 0, 3)] {
        let mut r = req(op, off, 100);
        r.epoch = epoch;
        m.write(r, true);
    }
    m.settle();
    let live = [SnapshotSeq(1), SnapshotSeq(2), SnapshotSeq(3)];
    assert_eq!(needed_copies(&m, &live, &m.image), (3, 3));
    assert_eq!(needed_copies(&m, &live[2..], &m.image), (1, 1));
}

fn req(op: usize, off: u64, len: u64) -> Req {
    Req {
        op,
        off,
        len,
        data: Some(pattern(op as u64 + 1000, len).into()),
        epoch: 0,
        tearable: false,
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: crash points the sweep found failing, kept as focused tests.
// ---------------------------------------------------------------------------------------------

/// Judges every crash index of `w` with every loss and fails with the list of failing points.
fn every_crash_point_of(w: &Workload) {
    let n = dry_run(w, false);
    let ks: Vec<u64> = (0..=n).collect();
    report(w.name, &sweep(w, &ks, false, Some(n)));
}

/// What broke: `Inner::write` (src/volume.rs) cuts a write longer than `max_record` (a quarter
/// of the journal ring: 1 MiB here; half of it since) into pieces and writes each as a request of its own, so
/// each is journaled as its own record; before the second piece lands, the cache-full path
/// journals and syncs the first. A power loss in between (even one that drops every unsynced
/// write) brings the first MiB back new and the rest old: a torn request.
#[test]
fn a_write_longer_than_a_journal_record_is_all_old_or_all_new_after_a_crash() {
    every_crash_point_of(&Workload {
        name: "a_write_longer_than_a_journal_record",
        chunk_size: 16 * 1024,
        chunks: 128,
        cache_size: 2 << 20,
        compact_after_records: 4096,
        write_mode: WriteMode::Atomic,
        ops: vec![write(0, 1536 * KIB), Flush],
    });
}

/// What broke (found by the sweep: `zeroes_and_trims_over_preserved_chunks`, k=48, Random):
/// `Inner::write` cuts a zeroing request longer than a quarter of the cache (16 KiB here) into
/// chunk-sized requests, journaled as one record each. A power loss during the sync of the
/// flush that appends them kept the sectors of the first three records and lost the fourth;
/// replay applied three quarters of the `write_zeroes`.
#[test]
fn a_write_zeroes_longer_than_a_quarter_of_the_cache_is_all_old_or_all_new_after_a_crash() {
    let w = Workload {
        name: "a_write_zeroes_longer_than_a_quarter_of_the_cache",
        chunk_size: 16 * 1024,
        chunks: 8,
        cache_size: 64 * KIB,
        compact_after_records: 4096,
        write_mode: WriteMode::Atomic,
        ops: vec![write(0, 128 * KIB), DestageAll, zero(0, 64 * KIB), Flush],
    };
    let n = dry_run(&w, false);
    // The flush's journal append is written; its sync is the last I/O and fails.
    let run = run_workload(&w, Some(n - 1), false);
    assert_eq!(
        run.model.failed_op.as_ref().map(|f| f.0),
        Some(3),
        "crash in the flush"
    );
    let kept = run.devices.crash_images(Loss::KeepAll);
    let mut img = kept.clone();
    let lost = run.devices.crash_images(Loss::DropAll).journal;
    // The append's sectors reached the media except the last one: a legal power loss.
    let last = (0..kept.journal.len())
        .rev()
        .find(|&i| kept.journal[i] != lost[i])
        .expect("the append is unsynced");
    let sector = last / 512 * 512..last / 512 * 512 + 512;
    img.journal[sector.clone()].copy_from_slice(&lost[sector]);
    if let Err(e) = catching(|| recover_and_check(&w, &run.model, img, &[])) {
        panic!("{e}");
    }
}

/// What broke (found by the write-mode-throughput harness): `destage_all` and a clean close
/// write every cached chunk to the source, and relied on the journal head's move to sync it.
/// In write mode throughput a large write that skipped the journal leaves the journal empty,
/// so nothing synced the source: `destage_all` returned, or the volume was marked closed
/// cleanly, with the write still in the source's volatile cache, and a power loss then lost
/// data the user had been told was durable (live byte 0x0 read 0x00 after k=9, DropAll).
#[test]
fn in_write_mode_throughput_destage_all_and_a_clean_close_make_large_writes_durable() {
    for (name, last) in [
        ("a_large_write_then_destage_all", DestageAll),
        ("a_large_write_then_a_clean_close", Reopen),
    ] {
        every_crash_point_of(&Workload {
            name,
            chunk_size: 16 * 1024,
            chunks: 8,
            cache_size: 64 * KIB,
            compact_after_records: 4096,
            write_mode: WriteMode::Throughput,
            ops: vec![write(0, 64 * KIB), write(100 * KIB, 20 * KIB), last],
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Rollback: finished or never happened.
// ---------------------------------------------------------------------------------------------

fn rollback_options() -> VolumeOptions {
    VolumeOptions {
        cache_size: 16 * KIB,
        compact_after_records: 16,
        background_destage: false,
    }
}

/// The volume a rollback crash point starts from: three phases of writes around snapshots s1
/// and s2, everything flushed. Returns the volume with what s1, s2 and the live volume hold.
fn rollback_setup(dev: &Devices) -> (Volume, [Vec<u8>; 3]) {
    let (chunk, chunks) = (4096u64, 48u64);
    let size = chunk * chunks;
    let mut layout = Layout::new(Geometry::new(size, chunk as u32).unwrap());
    layout.journal_size = crashkit::JOURNAL_SIZE;
    let vol = Volume::create_on("rb", dev.vluns(), layout, rollback_options()).unwrap();
    vol.write(0, &pattern(1, size)).unwrap();
    vol.snapshot_create("s1").unwrap();
    vol.write(5000, &pattern(2, 60 * KIB)).unwrap();
    vol.trim(100 * KIB, 24 * KIB).unwrap();
    vol.snapshot_create("s2").unwrap();
    vol.write(40 * KIB, &pattern(3, 50 * KIB)).unwrap();
    vol.write_zeroes(150 * KIB, 9000).unwrap();
    vol.flush().unwrap();
    let read = |snap: Option<&str>| {
        let mut buf = vec![0; size as usize];
        match snap {
            Some(s) => vol
                .read_snapshot(vol.snapshot(s).unwrap().seq, 0, &mut buf)
                .unwrap(),
            None => vol.read(0, &mut buf).unwrap(),
        }
        buf
    };
    let images = [read(Some("s1")), read(Some("s2")), read(None)];
    (vol, images)
}

/// A power loss at every I/O of a rollback to s1, with the unsynced writes kept, dropped or
/// torn: the next open leaves the live volume as it was before the rollback (the loss came
/// before the rollback was recorded) or exactly as s1 (the open finished it), never a mix;
/// s1 and s2 read what they held; `check` is clean.
#[test]
fn every_crash_point_of_a_rollback_recovers_to_before_or_to_the_snapshot() {
    let size = 48 * 4096;
    let ios = {
        let dev = Devices::blank(size);
        let (vol, [s1, ..]) = rollback_setup(&dev);
        let base = dev.ctl.io_count();
        let seq = vol.snapshot("s1").unwrap().seq;
        vol.rollback(seq, &mut |_, _| {}).unwrap();
        let mut live = vec![0; s1.len()];
        vol.read(0, &mut live).unwrap();
        assert!(live == s1, "the rollback without a crash gives s1");
        dev.ctl.io_count() - base
    };
    assert!(
        ios > 10,
        "a rollback of this much change does some I/O ({ios})"
    );
    let (mut finished, mut undone, mut points) = (0, 0, 0);
    for k in 0..=ios {
        for loss in [
            Loss::DropAll,
            Loss::KeepAll,
            Loss::Random(k),
            Loss::Mixed(k),
        ] {
            let dev = Devices::blank(size);
            let (vol, [s1, s2, before]) = rollback_setup(&dev);
            dev.ctl.crash_at(dev.ctl.io_count() + k);
            let seq = vol.snapshot("s1").unwrap().seq;
            let _ = vol.rollback(seq, &mut |_, _| {});
            vol.kill();
            let img = dev.crash_images(loss);
            let torn = torn_superblocks(&dev, &img);
            let dev = Devices::restart(img);
            let at = format!("rollback crash at I/O {k} of {ios}, {loss:?}");
            check_clean_but_torn(&*dev.source, &*dev.target, &*dev.journal, &torn, &at);
            // Opened read-only, the volume reads as it will once an open finishes the rollback.
            let ro = Volume::open_read_only_on("rb", dev.vluns())
                .unwrap_or_else(|e| panic!("{at}: read-only open failed: {e}"));
            let mut seen = vec![0; s1.len()];
            ro.read(0, &mut seen).unwrap();
            drop(ro);
            let vol = Volume::open_on("rb", dev.vluns(), rollback_options())
                .unwrap_or_else(|e| panic!("{at}: open failed: {e}"));
            let mut got = vec![0; s1.len()];
            vol.read(0, &mut got).unwrap();
            if got == s1 {
                finished += 1;
            } else if got == before {
                undone += 1;
            } else {
                panic!("{at}: the live volume is neither as before nor s1");
            }
            assert!(got == seen, "{at}: a read-only open read something else");
            for (name, want) in [("s1", &s1), ("s2", &s2)] {
                let seq = vol.snapshot(name).unwrap().seq;
                vol.read_snapshot(seq, 0, &mut got).unwrap();
                assert!(&got == want, "{at}: snapshot {name} changed");
            }
            assert_eq!(vol.rollback_pending(), None, "{at}: the open finished it");
            vol.close().unwrap();
            check_clean_but_torn(&*dev.source, &*dev.target, &*dev.journal, &[], &at);
            points += 1;
        }
    }
    println!("rollback crash points: {points}; finished by the open {finished}, undone {undone}");
    assert!(finished > 0 && undone > 0, "both outcomes are reached");
}
