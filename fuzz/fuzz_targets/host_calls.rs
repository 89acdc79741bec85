#![no_main]
//! See the harness, `edge_node::fuzz::host_calls`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| edge_node::fuzz::host_calls(data));
