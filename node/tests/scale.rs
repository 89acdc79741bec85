//! One node holding 10,000 deployments (1,000 modules, each deployed with ten different
//! environments, as versions and tenants of one function would be) stays within the
//! budgets it is configured with: compiled modules within `module_cache_mib` (the least
//! recently used leave memory, their deployments turning cold, their artifacts staying on
//! disk), pooled and running instances within `memory_budget_mib`. It prints what each
//! deployment and each warm one cost in resident memory, for BENCHMARKS.md.

mod support;

use std::collections::BTreeMap;

use edge_shared::manifest::Limits;

const MODULES: usize = 1_000;
const VERSIONS: usize = 10;
const MODULE_CACHE_MIB: u64 = 1;
const MEMORY_BUDGET_MIB: u64 = 512;

/// A small WASI command of its own content (`n` makes it unique), answering `ok`.
fn module(n: usize) -> Vec<u8> {
    let wat = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "Content-Type: text/plain\n\nok\n")
  (global $n i32 (i32.const {n}))
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 29))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#
    );
    wasmer::wat2wasm(wat.as_bytes()).unwrap().into_owned()
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn ten_thousand_deployments_stay_within_the_nodes_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let node = support::node(dir.path(), |c| {
        c.module_cache_mib = MODULE_CACHE_MIB;
        c.memory_budget_mib = MEMORY_BUDGET_MIB;
    });
    let before = resident_bytes();
    let started = std::time::Instant::now();
    for m in 0..MODULES {
        let wasm = module(m);
        for v in 0..VERSIONS {
            let mut manifest = support::manifest(&format!("f{m}"), &wasm, Limits::default());
            manifest.env = BTreeMap::from([("VERSION".to_string(), v.to_string())]);
            node.deploy(manifest, Some(&wasm))
                .unwrap_or_else(|e| panic!("f{m} v{v}: {e}"));
        }
    }
    let took = started.elapsed();
    let status = node.status();
    let grown = resident_bytes().saturating_sub(before);
    let warm = status.deployments.iter().filter(|d| d.warm).count();
    println!(
        "{} deployments of {MODULES} modules in {took:?}: {} modules in memory ({} bytes of \
         artifact), {warm} deployments warm; resident memory grew {} MiB, {} KiB a deployment; \
         peak instance memory reserved {} MiB",
        status.deployments.len(),
        status.modules_in_memory,
        status.module_bytes,
        grown >> 20,
        (grown / (MODULES * VERSIONS) as u64) >> 10,
        status.peak_memory_reserved >> 20,
    );
    assert_eq!(status.deployments.len(), MODULES * VERSIONS);
    assert!(
        status.module_bytes <= MODULE_CACHE_MIB << 20,
        "{}",
        status.module_bytes
    );
    assert!(status.evictions > 0, "the module cache never filled");
    assert!(
        status.peak_memory_reserved <= MEMORY_BUDGET_MIB << 20,
        "{}",
        status.peak_memory_reserved
    );
    // Warm deployments are those of the modules in memory, ten each.
    assert_eq!(warm, status.modules_in_memory * VERSIONS, "{warm}");
    assert!((10..MODULES * VERSIONS).contains(&warm), "{warm}");
}
