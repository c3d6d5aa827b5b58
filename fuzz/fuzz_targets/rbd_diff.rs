//! Arbitrary bytes as an `rbd diff v1` stream (what `snapvol import-diff` reads from a file,
//! a pipe or the control socket). The codec lives in the binary crate and uses only `std` and
//! the engine's name rules, so it is included here as it is.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/snapvol/src/rbd_diff.rs"]
#[allow(dead_code)]
mod rbd_diff;

fuzz_target!(|data: &[u8]| {
    rbd_diff::fuzz_parse(data);
});
