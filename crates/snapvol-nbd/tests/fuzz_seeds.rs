//! The fuzz seeds (and any corpus or crash files copied next to them) replayed through the
//! fuzz entry points on every test run, so a fixed fuzz finding stays fixed.

use std::path::Path;

fn replay(dir: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(dir);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        n += 1;
    }
    n
}

#[test]
fn handshake_fuzz_seeds_replay_without_panicking() {
    assert!(replay("nbd_handshake", snapvol_nbd::fuzz_handshake) > 0);
}

#[test]
fn request_fuzz_seeds_replay_without_panicking() {
    assert!(replay("nbd_request", snapvol_nbd::fuzz_transmission) > 0);
}
