//! Arbitrary bytes as a client's side of the NBD handshake (and beyond, if they negotiate
//! an export), and as server replies to the client-side parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    snapvol_nbd::fuzz_handshake(data);
});
