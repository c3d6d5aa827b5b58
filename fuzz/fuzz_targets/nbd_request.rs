//! Arbitrary bytes as a client's requests in the NBD transmission phase, and as replies
//! to the client-side parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    snapvol_nbd::fuzz_transmission(data);
});
