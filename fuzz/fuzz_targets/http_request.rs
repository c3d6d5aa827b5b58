//! Arbitrary bytes as the head of a request to `snapvol serve --metrics` (what any client that
//! reaches the metrics port can send). The parser lives in the binary crate and uses only
//! `std`, so it is included here as it is.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/snapvol/src/serve/metrics/http_head.rs"]
#[allow(dead_code)]
mod http_head;

fuzz_target!(|data: &[u8]| {
    http_head::fuzz_parse(data);
});
