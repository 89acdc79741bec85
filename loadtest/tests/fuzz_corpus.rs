//! Replays the kept fuzz corpus of scenario files on stable; see `edge_shared::fuzz`.

use std::path::Path;

use edge_loadtest::scenario::ScenarioFile;
use edge_shared::fuzz::{load_checked, replay};

#[test]
fn the_kept_corpus_of_scenario_files_loads_or_names_its_problems() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let harness = |data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            load_checked::<ScenarioFile>(text);
        }
    };
    assert!(replay(&root, "scenario_files", harness) > 0);
}
