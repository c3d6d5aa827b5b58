//! Incremental export and import (`export --from`, `import-diff`) with the real binary: a
//! chain of streams restores every snapshot byte for byte (`chain`), streams travel through
//! shell pipes between stores, served or not (`pipes`), what the header makes impossible is
//! refused before anything is written and a stream cut short leaves the from-snapshot
//! (`errors`), a `kill -9` in the middle of an import leaves the from-snapshot too (`kill`),
//! and the stream is exactly the bytes the format says (`bytes`).
//!
//! Volumes are written through the engine in the test process (the binary is not running on
//! them then), which reaches offsets and zeroing requests that `import` does not.

#[path = "../serving/mod.rs"]
mod serving;

mod bytes;
mod chain;
mod errors;
mod kill;
mod pipes;

use std::fs;
use std::path::Path;

use snapvol_engine::{Store, Volume, VolumeOptions};

use crate::serving::*;

/// Opens `volume` of `env`'s store through the engine, runs `f` on it, and closes it.
fn edit(env: &Env, volume: &str, f: impl FnOnce(&Volume)) {
    let store = Store::new(env.store());
    let vol = store
        .open(volume, VolumeOptions::default())
        .unwrap_or_else(|e| panic!("open {volume}: {e}"));
    f(&vol);
    vol.close().expect("close the volume");
}

/// `snapvol create VOLUME --size SIZE --chunk-size CHUNK`.
fn create(env: &Env, volume: &str, size: &str, chunk: &str) {
    env.snapvol_ok(&["create", volume, "--size", size, "--chunk-size", chunk]);
}

/// Exports `spec` (VOL or VOL@SNAP) to `file` in `env`'s directory; returns its path.
fn export(env: &Env, spec: &str, file: &str) -> std::path::PathBuf {
    let path = env.path(file);
    env.snapvol_ok(&["export", spec, s(&path)]);
    path
}

/// Exports the stream from `from` to `spec` into `file`; returns its path.
fn export_diff(env: &Env, spec: &str, from: &str, file: &str) -> std::path::PathBuf {
    let path = env.path(file);
    env.snapvol_ok(&["export", spec, s(&path), "--from", from]);
    path
}

/// Asserts that `spec` of `a` and `spec_b` of `b` export the same bytes.
fn assert_same_export(a: &Env, spec: &str, b: &Env, spec_b: &str) {
    let pa = export(a, spec, &format!("cmp-a-{}", spec.replace('@', "_")));
    let pb = export(b, spec_b, &format!("cmp-b-{}", spec_b.replace('@', "_")));
    assert_same_file(&pa, &pb);
    fs::remove_file(pa).expect("remove");
    fs::remove_file(pb).expect("remove");
}

/// `snapvol check VOLUME`, which must find nothing wrong.
fn check_clean(env: &Env, volume: &str) {
    env.snapvol_ok(&["check", volume]);
}

fn s(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// A record of a stream, as the test's own reading of the format gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rec {
    From(String),
    To(String),
    Size(u64),
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    End,
}

/// Reads a whole stream by the format's words, independently of the binary's codec: the
/// header, then tagged records up to `e`, which must be the last byte.
fn parse_stream(bytes: &[u8]) -> Vec<Rec> {
    assert_eq!(&bytes[..12], b"rbd diff v1\n", "the header");
    let mut at = 12;
    let mut take = |n: usize| {
        let piece = &bytes[at..at + n];
        at += n;
        piece
    };
    let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let mut recs = Vec::new();
    loop {
        let tag = take(1)[0];
        let rec = match tag {
            b'f' | b't' => {
                let len = u32::from_le_bytes(take(4).try_into().expect("4 bytes")) as usize;
                let name = String::from_utf8(take(len).to_vec()).expect("UTF-8 name");
                if tag == b'f' {
                    Rec::From(name)
                } else {
                    Rec::To(name)
                }
            }
            b's' => Rec::Size(le64(take(8))),
            b'w' => {
                let offset = le64(take(8));
                let len = le64(take(8)) as usize;
                Rec::Write(offset, take(len).to_vec())
            }
            b'z' => {
                let offset = le64(take(8));
                Rec::Zero(offset, le64(take(8)))
            }
            b'e' => Rec::End,
            other => panic!("unknown tag {other:#x} at {}", at - 1),
        };
        recs.push(rec);
        if tag == b'e' {
            break;
        }
    }
    assert_eq!(at, bytes.len(), "nothing follows the end record");
    recs
}
