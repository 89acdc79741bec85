//! Warm invocation of the same `hello` guest (WASI preview1, WAGI-style) in edge's node
//! runtime (wasmer 7.4, cranelift, fuel metering) and in wasmtime (cranelift, pooling
//! allocator, fuel), in one run on one machine.
//!
//! - `edge/pooled`: what a warm request costs on edge's request path: take an instance
//!   the pool made ahead, set the request, run `_start`, collect stdout (the spent
//!   instance is dropped off the timing, as the node's worker does after answering);
//! - `edge/fresh`: instantiate + run + drop on the request path (no pool);
//! - `wasmtime/pooling`: wasmtime's recommended serving path: a fresh store with a WASI
//!   context, `InstancePre::instantiate` from the pooling allocator, run `_start`,
//!   collect stdout, drop the store.
//!
//! Run: `node/compare/run.sh` (builds the example guests first).
#![allow(missing_docs)]

use std::path::PathBuf;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use edge_node::runtime::cache::ModuleCache;
use edge_node::runtime::guest_log::LogContext;
use edge_node::runtime::invoke::{self, Invocation};
use edge_node::runtime::memories::MemoryPool;
use edge_shared::manifest::ContentId;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig, Store,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

const FUEL: u64 = 1_000_000_000;

fn hello_wasm() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../functions/target/wasm32-wasip1/release/hello.wasm");
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-functions.sh)", path.display()))
}

fn cgi_env() -> Vec<(String, String)> {
    [
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", "/"),
        ("QUERY_STRING", "name=bench"),
        ("SCRIPT_NAME", "/hello"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn edge(c: &mut Criterion, wasm: &[u8]) {
    let id = ContentId::of(wasm);
    let dir = tempfile::tempdir().unwrap();
    let pool = edge_shared::config::NodeConfig::default().instance_pool;
    let memories = MemoryPool::new(pool.spare_memories, (pool.keep_resident_kib as usize) << 10);
    let cache = ModuleCache::open(dir.path(), 1 << 30, 10_000, memories).unwrap();
    cache.store_blob(&id, wasm).unwrap();
    let runnable = cache.load("hello", &id, 128).unwrap().runnable;
    let invocation = || Invocation {
        log: LogContext::of_request("bench"),
        env: cgi_env(),
        stdin: Bytes::new(),
        stdout_limit: 1 << 20,
        fuel: FUEL,
        deadline: std::time::Instant::now() + std::time::Duration::from_secs(60),
        stream: None,
    };
    c.bench_function("edge/pooled", |b| {
        b.iter_batched(
            || invoke::prepare(&runnable).unwrap(),
            |mut prepared| {
                let done = invoke::run(&runnable, &mut prepared, invocation()).unwrap();
                assert!(done.stdout.ends_with(b"hello, bench!\n"));
                prepared
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("edge/fresh", |b| {
        b.iter(|| {
            let mut prepared = invoke::prepare(&runnable).unwrap();
            let done = invoke::run(&runnable, &mut prepared, invocation()).unwrap();
            assert!(done.stdout.ends_with(b"hello, bench!\n"));
        })
    });
}

fn wasmtime(c: &mut Criterion, wasm: &[u8]) {
    let mut pooling = PoolingAllocationConfig::default();
    pooling.total_core_instances(100);
    pooling.total_memories(100);
    pooling.total_tables(100);
    pooling.max_memory_size(128 << 20);
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    config.consume_fuel(true);
    let engine = Engine::new(&config).unwrap();
    let module = Module::new(&engine, wasm).unwrap();
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    p1::add_to_linker_sync(&mut linker, |cx| cx).unwrap();
    let pre = linker.instantiate_pre(&module).unwrap();
    c.bench_function("wasmtime/pooling", |b| {
        b.iter(|| {
            let stdout = MemoryOutputPipe::new(1 << 20);
            let wasi = WasiCtxBuilder::new()
                .args(&["hello"])
                .envs(&cgi_env())
                .stdin(MemoryInputPipe::new(Bytes::new()))
                .stdout(stdout.clone())
                .build_p1();
            let mut store = Store::new(&engine, wasi);
            store.set_fuel(FUEL).unwrap();
            let instance = pre.instantiate(&mut store).unwrap();
            let start = instance
                .get_typed_func::<(), ()>(&mut store, "_start")
                .unwrap();
            start.call(&mut store, ()).unwrap();
            drop(store);
            assert!(stdout.contents().ends_with(b"hello, bench!\n"));
        })
    });
}

fn benches(c: &mut Criterion) {
    let wasm = hello_wasm();
    edge(c, &wasm);
    wasmtime(c, &wasm);
}

criterion_group!(warm_hello, benches);
criterion_main!(warm_hello);
