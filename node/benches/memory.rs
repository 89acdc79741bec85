//! Memory held per idle pooled instance and per cached module, measured as the growth of
//! this process's resident set (`/proc/self/statm`) while holding many of them.
//!
//! Run: `cargo bench -p edge-node --profile dev --bench memory`.
#![allow(missing_docs)]

use std::path::PathBuf;

use edge_node::runtime::engine;
use edge_node::runtime::invoke;
use edge_node::runtime::wasi;

const PAGE: u64 = 4096;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("reading /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's resident field");
    pages * PAGE
}

fn example(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../functions/target/wasm32-wasip1/release/{name}.wasm"
    ));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-functions.sh)", path.display()))
}

fn main() {
    // `cargo bench` passes `--bench`; a filter naming another bench skips this one.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && a != "memory")
    {
        return;
    }
    {
        let name = "hello";
        let wasm = example(name);
        let artifact = engine::compile(&wasm).expect("compiles");
        let memories = edge_node::runtime::memories::MemoryPool::new(16, 2 << 20);

        const MODULES: usize = 50;
        let before = resident_bytes();
        let modules: Vec<_> = (0..MODULES)
            .map(|_| {
                let engine = engine::headless(128, 10_000, &memories);
                engine::deserialize(&engine, &artifact).expect("deserializes")
            })
            .collect();
        let per_module = resident_bytes().saturating_sub(before) / MODULES as u64;

        let runnable = invoke::Runnable {
            name: name.into(),
            module: modules[0].clone(),
            linker: wasi::Linker::of(&modules[0]).expect("links"),
            engine: engine::headless(128, 10_000, &memories),
            memory_limit_mib: 128,
            table_bytes: 10_000 * engine::TABLE_ELEMENT_BYTES,
        };
        // Let the allocator settle with a first batch, then measure a second one.
        let warmup: Vec<_> = (0..50)
            .map(|_| invoke::prepare(&runnable).unwrap())
            .collect();
        drop(warmup);
        const INSTANCES: usize = 500;
        let before = resident_bytes();
        let instances: Vec<_> = (0..INSTANCES)
            .map(|_| invoke::prepare(&runnable).unwrap())
            .collect();
        let per_instance = resident_bytes().saturating_sub(before) / INSTANCES as u64;
        let linear = instances[0].memory_bytes();
        println!(
            "{name}: wasm {} B, artifact {} B; per cached module {} KiB resident; \
             per idle pooled instance {} KiB resident (linear memory reserved {} KiB, \
             mostly untouched)",
            wasm.len(),
            artifact.len(),
            per_module / 1024,
            per_instance / 1024,
            linear / 1024
        );
        drop(instances);
    }
}
