//! `kill -9` of the real binary in the middle of heavy writes.
//!
//! The rule: whatever moment a `snapvol` process dies at, the next open recovers a volume in
//! which every snapshot holds exactly what it held, byte for byte, and every write request is
//! all-old or all-new. `import` writes its image in 4 MiB requests and flushes only at the end,
//! so after a kill any subset of its pieces may be new, but each piece whole.
//!
//! The test creates a 64 MiB volume, imports image A and snapshots it as `v@a`, then again and
//! again starts `snapvol import v B_i` (a different image each time, with a small cache so the
//! destager runs during the import), kills it with SIGKILL after a random delay spread over an
//! import's duration, and checks: the volume opens (recovering the journal), `check` finds
//! nothing wrong, every snapshot exports exactly its oracle, and the live volume is, piece by
//! piece, either what it was or B_i. It then takes a snapshot of the result (`v@k_i`, checked
//! in every later round) and deletes the oldest so that target space gets reused.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_snapvol");
const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;
/// The size of `import`'s write requests.
const PIECE: u64 = 4 * MIB;
const PIECES: usize = (SIZE / PIECE) as usize;
/// Kills the test must do (it tries a few more times if an import finishes first).
const KILLS: usize = 20;
/// Snapshots of killed rounds kept at once (older ones are deleted).
const KEEP: usize = 2;
/// The cache of the killed imports: small, so the destager works during the import.
const CACHE: &str = "16M";

/// splitmix64 of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Image `image`'s piece `piece`: random bytes depending on both (and on the position, so a
/// misplaced piece shows), or zeroes for about one piece in eleven (`import` writes those as
/// write-zeroes requests).
fn piece_bytes(image: u64, piece: usize) -> Vec<u8> {
    let mut buf = vec![0u8; PIECE as usize];
    if (image * 7 + piece as u64) % 11 != 3 {
        let seed = mix(image << 32 | piece as u64);
        for (w, word) in buf.chunks_exact_mut(8).enumerate() {
            word.copy_from_slice(&mix(seed ^ w as u64).to_le_bytes());
        }
    }
    buf
}

/// What each 4 MiB piece of a volume or snapshot holds: the image it came from.
type Oracle = [u64; PIECES];

/// A store in a temporary directory, and the `snapvol` commands run against it.
struct Env {
    dir: TempDir,
}

impl Env {
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(self.dir.path())
            .env_remove("SNAPVOL_STORE")
            .env_remove("RUST_LOG")
            .arg("--store")
            .arg(self.store())
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("snapvol runs")
    }

    /// Runs a command that must succeed; returns its stdout.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "snapvol {args:?} failed ({})\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes image `image` to `path`.
    fn write_image(&self, path: &Path, image: u64) {
        let mut f = File::create(path).expect("create the image file");
        for p in 0..PIECES {
            f.write_all(&piece_bytes(image, p))
                .expect("write the image");
        }
    }

    /// Exports `spec` (`v` or `v@snap`) and returns, piece by piece, whether each piece is
    /// `want[p]`'s or `alt[p]`'s (`Some(false)` / `Some(true)`), or `None` if neither.
    fn export_pieces(&self, spec: &str, want: &Oracle, alt: Option<&Oracle>) -> Vec<Option<bool>> {
        // To standard output: no 64 MiB file to write and read back.
        let out = self
            .command(&["export", spec, "-"])
            .output()
            .expect("snapvol runs");
        assert!(
            out.status.success(),
            "snapvol export {spec} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.stdout.len() as u64,
            SIZE,
            "{spec}: the export has the volume's size"
        );
        let pieces = out
            .stdout
            .chunks(PIECE as usize)
            .enumerate()
            .map(|(p, got)| {
                if got == piece_bytes(want[p], p) {
                    Some(false)
                } else if alt.is_some_and(|a| got == piece_bytes(a[p], p)) {
                    Some(true)
                } else {
                    None
                }
            })
            .collect();
        pieces
    }

    /// Exports snapshot `v@name` and checks it is exactly `oracle`, byte for byte.
    #[track_caller]
    fn assert_snapshot(&self, name: &str, oracle: &Oracle, when: &str) {
        let spec = format!("v@{name}");
        let pieces = self.export_pieces(&spec, oracle, None);
        let wrong: Vec<usize> = (0..PIECES).filter(|&p| pieces[p].is_none()).collect();
        assert!(
            wrong.is_empty(),
            "{when}: snapshot {spec} differs from what it held in the 4 MiB pieces {wrong:?}"
        );
    }

    /// The names of the volume's snapshots, as `info --json` reports them (opening the volume
    /// recovers what the journal holds).
    fn snapshot_names(&self) -> Vec<String> {
        let text = self.ok(&["info", "v", "--json"]);
        let info: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: not JSON:\n{text}"));
        assert_eq!(info["size"], SIZE, "info reports the volume's size");
        info["snapshots"]
            .as_array()
            .expect("a snapshot list")
            .iter()
            .map(|s| s["name"].as_str().expect("a name").to_owned())
            .collect()
    }
}

// ---- `snapvol check` ----------------------------------------------------------------------

/// Runs `snapvol check v`, which verifies every checksum, pointer and reference of the
/// volume's metadata and its journal; it must find nothing wrong after any kill.
#[track_caller]
fn check_volume(env: &Env, when: &str) {
    let out = env.run(&["check", "v"]);
    assert!(
        out.status.success(),
        "{when}: snapvol check found problems ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_snapshot_survives_kill_9_of_an_import_at_random_moments_and_requests_stay_whole() {
    let started = Instant::now();
    let env = Env {
        dir: tempfile::tempdir().expect("temporary directory"),
    };
    env.ok(&["create", "v", "--size", "64M", "--chunk-size", "64K"]);
    let image_file = env.path("image.raw");
    let image_arg = image_file.to_str().expect("utf-8 path").to_owned();

    // Image A, and the snapshot that must hold it whatever happens later.
    env.write_image(&image_file, 0);
    env.ok(&["import", "v", &image_arg]);
    env.ok(&["snapshot", "create", "v@a"]);
    let mut snaps: Vec<(String, Oracle)> = vec![("a".into(), [0; PIECES])];

    // How long an import takes here, preserving what it overwrites as the killed ones will.
    env.write_image(&image_file, 1);
    let t = Instant::now();
    env.ok(&["import", "v", &image_arg, "--cache-size", CACHE]);
    let mut import_time = t.elapsed();
    let mut live: Oracle = [1; PIECES];
    env.ok(&["snapshot", "create", "v@k0"]);
    snaps.push(("k0".into(), live));
    println!("one import of 64 MiB takes {import_time:.2?}");

    let mut rng = 0x6b69_6c6c_u64;
    let mut kills = 0;
    let mut finished = 0;
    let mut new_pieces = 0;
    let mut round = 0u64;
    let mut verify_time = Duration::ZERO;
    while kills < KILLS {
        round += 1;
        assert!(
            round <= 2 * KILLS as u64,
            "only {kills} of {round} imports could be killed before they finished"
        );
        let image = round + 1;
        env.write_image(&image_file, image);
        let new: Oracle = [image; PIECES];
        // Anywhere from before the volume is open to the last pieces.
        rng += 1;
        let delay = Duration::from_micros(mix(rng) % (import_time.as_micros() as u64 + 1));
        let mut child = env
            .command(&["import", "v", &image_arg, "--cache-size", CACHE])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the import");
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL the import");
        let out = child.wait_with_output().expect("reap the import");
        let verifying = Instant::now();
        let when = format!("round {round} (killed after {delay:.2?})");
        match out.status.signal() {
            Some(9) => kills += 1,
            _ => {
                assert!(
                    out.status.success(),
                    "{when}: the import failed by itself ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                finished += 1;
                // Imports run faster than the first one did: aim the kills earlier.
                import_time = import_time * 4 / 5;
            }
        }

        // What the kill left is consistent as it lies, before anything replays the journal.
        check_volume(&env, &format!("{when}, before the reopen"));
        // Reopen: the journal is replayed, the snapshots are all there, nothing is corrupt.
        let names = env.snapshot_names();
        let want: Vec<&str> = snaps.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, want, "{when}: the snapshots after the reopen");
        check_volume(&env, &format!("{when}, after the reopen"));

        // Every snapshot is exactly what it was.
        for (name, oracle) in &snaps {
            env.assert_snapshot(name, oracle, &when);
        }

        // The live volume: each 4 MiB request all-old or all-new.
        let pieces = env.export_pieces("v", &live, Some(&new));
        let torn: Vec<usize> = (0..PIECES).filter(|&p| pieces[p].is_none()).collect();
        assert!(
            torn.is_empty(),
            "{when}: the live volume's 4 MiB pieces {torn:?} are neither what they held nor the new image's"
        );
        for (p, is_new) in pieces.iter().enumerate() {
            if *is_new == Some(true) {
                live[p] = image;
                new_pieces += 1;
            }
        }

        // Keep what survived as a snapshot, and let the oldest kept one go.
        let name = format!("k{round}");
        env.ok(&["snapshot", "create", &format!("v@{name}")]);
        // (It is exported and compared in the next round.)
        snaps.push((name, live));
        if snaps.len() > KEEP + 1 {
            let (old, _) = snaps.remove(1);
            env.ok(&["snapshot", "delete", &format!("v@{old}")]);
        }
        verify_time += verifying.elapsed();
    }

    // A last look after a clean open and close.
    check_volume(&env, "at the end");
    for (name, oracle) in &snaps {
        env.assert_snapshot(name, oracle, "at the end");
    }
    println!(
        "{kills} imports killed with SIGKILL, {finished} finished first; {new_pieces} of {} pieces were new afterwards; {:.1?} in all, {verify_time:.1?} of it checking",
        (kills + finished) * PIECES,
        started.elapsed()
    );
}
