//! Arbitrary bytes as the engine's on-disk metadata blocks and cache-journal records.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    snapvol_engine::format::fuzz_decode(data);
    snapvol_engine::journal::fuzz_decode(data);
});
