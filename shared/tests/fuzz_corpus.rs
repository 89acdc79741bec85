//! Replays the kept fuzz corpus (`fuzz/corpus/`) through the harnesses the fuzz targets
//! run, on stable: every input the fuzzer kept, crashes it found among them, stays
//! checked in CI.

use std::path::Path;

use edge_shared::fuzz;

#[test]
fn the_kept_corpus_passes_every_harness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (target, harness) in [
        ("deploy_body", fuzz::deploy_body as fn(&[u8])),
        ("manifest", fuzz::manifest),
        ("gossip_values", fuzz::gossip_values),
        ("config_files", fuzz::config_files),
    ] {
        assert!(
            fuzz::replay(&root, target, harness) > 0,
            "{target}: no corpus"
        );
    }
}
