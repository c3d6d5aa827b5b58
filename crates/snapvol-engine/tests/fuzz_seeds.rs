//! The engine_format fuzz seeds (and any corpus or crash files copied next to them) replayed
//! through the fuzz entry points on every test run, so a fixed fuzz finding stays fixed.
//!
//! An arithmetic overflow panics only where overflow checks are on (a debug build, the fuzz
//! build); a release build of this test still catches every other panic.

use std::path::Path;

#[test]
fn engine_format_fuzz_seeds_replay_without_panicking() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/engine_format");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        snapvol_engine::format::fuzz_decode(&data);
        snapvol_engine::journal::fuzz_decode(&data);
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}
