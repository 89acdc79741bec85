#![no_main]
//! See the harness, `edge_shared::fuzz::gossip_values`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| edge_shared::fuzz::gossip_values(data));
