#![no_main]
//! Scenario files of the load tester (TOML): they load or name their problems.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        edge_shared::fuzz::load_checked::<edge_loadtest::scenario::ScenarioFile>(text);
    }
});
