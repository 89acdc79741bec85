#![no_main]
//! See the harness, `edge_shared::fuzz::config_files`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| edge_shared::fuzz::config_files(data));
