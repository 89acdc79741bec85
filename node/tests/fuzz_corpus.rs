//! Replays the kept fuzz corpus of the node's targets (the CGI parser, the WASI host
//! against a real instance) on stable; see `edge_shared::fuzz`.

use std::path::Path;

use edge_shared::fuzz::replay;

#[test]
fn the_kept_corpus_passes_the_cgi_and_host_harnesses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    assert!(replay(&root, "cgi_response", edge_node::fuzz::cgi_response) > 0);
    assert!(replay(&root, "host_calls", edge_node::fuzz::host_calls) > 0);
}
