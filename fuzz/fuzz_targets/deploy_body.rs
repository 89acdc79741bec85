#![no_main]
//! See the harness, `edge_shared::fuzz::deploy_body`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| edge_shared::fuzz::deploy_body(data));
