#![no_main]
//! See the harness, `edge_node::fuzz::cgi_response`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| edge_node::fuzz::cgi_response(data));
