//! The node's hot path, on the example `hello` guest:
//!
//! - `invoke/warm_hello`: take a pre-instantiated instance, run `_start`, collect stdout
//!   (what a warm request costs in wasm when the pool has an instance ready);
//! - `invoke/instantiate_hello`: make one such instance (what the pool does off the
//!   request path);
//! - `invoke/fresh_hello`: instantiate, run and drop on the request path (no pool);
//! - `node_invoke/hello`: a warm request through `Node::invoke`: admission, worker
//!   thread hop, pool, CGI environment and response parsing; `…_beside_1000_warm`, the
//!   same with 1,000 other warm deployments on the node (what refilling pools costs as
//!   they grow in number);
//! - `cold/disk_*`: a cold start from the on-disk artifact (read, deserialize, first
//!   instance), of `hello` and of a synthetic 1 MiB module;
//! - `load/compile_*`: a cold start from the module bytes (cranelift + metering).
//!
//! Run: `scripts/build-functions.sh && cargo bench -p edge-node --profile dev`.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use edge_node::runtime::cache::{ModuleCache, Source};
use edge_node::runtime::engine;
use edge_node::runtime::guest_log::LogContext;
use edge_node::runtime::invoke::{self, Invocation};
use edge_node::runtime::memories::MemoryPool;
use edge_node::{Call, Node};
use edge_shared::config::NodeConfig;
use edge_shared::manifest::{ContentId, FunctionManifest, Limits, Route};

fn hello_wasm() -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("functions/target/wasm32-wasip1/release/hello.wasm");
    if !path.exists() {
        let built = std::process::Command::new(root.join("scripts/build-functions.sh")).status();
        assert!(
            built.is_ok_and(|s| s.success()),
            "building the example functions failed"
        );
    }
    std::fs::read(path).expect("hello.wasm")
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

/// The node's default pool of spare linear memories.
fn memories() -> Arc<MemoryPool> {
    let pool = NodeConfig::default().instance_pool;
    MemoryPool::new(pool.spare_memories, (pool.keep_resident_kib as usize) << 10)
}

fn benches(c: &mut Criterion) {
    let wasm = hello_wasm();
    let id = ContentId::of(&wasm);
    let dir = tempfile::tempdir().unwrap();
    let cache = ModuleCache::open(dir.path(), 1 << 30, 10_000, memories()).unwrap();
    cache.store_blob(&id, &wasm).unwrap();
    let runnable = cache.load("hello", &id, 128).unwrap().runnable;
    let invocation = || Invocation {
        log: LogContext::of_request("bench"),
        env: cgi_env(),
        stdin: Bytes::new(),
        stdout_limit: 1 << 20,
        fuel: 1_000_000_000,
        deadline: std::time::Instant::now() + Duration::from_secs(60),
        stream: None,
    };

    c.bench_function("invoke/warm_hello", |b| {
        b.iter_batched(
            || invoke::prepare(&runnable).unwrap(),
            |mut prepared| {
                let done = invoke::run(&runnable, &mut prepared, invocation()).unwrap();
                assert!(done.stdout.ends_with(b"hello, bench!\n"));
                // Returned, so criterion drops the spent instance outside the timing,
                // as the node's worker does after answering.
                prepared
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("invoke/instantiate_hello", |b| {
        b.iter_batched(
            || (),
            |()| invoke::prepare(&runnable).unwrap(),
            BatchSize::SmallInput,
        )
    });
    c.bench_function("invoke/fresh_hello", |b| {
        b.iter(|| {
            let mut prepared = invoke::prepare(&runnable).unwrap();
            invoke::run(&runnable, &mut prepared, invocation()).unwrap()
        })
    });

    // The same, with every instance's memory mapped and unmapped (no spare memories),
    // as before the memory pool.
    let unpooled_dir = tempfile::tempdir().unwrap();
    let unpooled =
        ModuleCache::open(unpooled_dir.path(), 1 << 30, 10_000, MemoryPool::new(0, 0)).unwrap();
    unpooled.store_blob(&id, &wasm).unwrap();
    let unpooled = unpooled.load("hello", &id, 128).unwrap().runnable;
    c.bench_function("invoke/fresh_hello_unpooled_memory", |b| {
        b.iter(|| {
            let mut prepared = invoke::prepare(&unpooled).unwrap();
            invoke::run(&unpooled, &mut prepared, invocation()).unwrap()
        })
    });

    // What the worker does after answering: drop the spent instance, its memory reset
    // in place and kept (spare memories) or unmapped (none).
    for (name, runnable) in [
        ("invoke/drop_spent_hello", &runnable),
        ("invoke/drop_spent_hello_unpooled_memory", &unpooled),
    ] {
        c.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut prepared = invoke::prepare(runnable).unwrap();
                    invoke::run(runnable, &mut prepared, invocation()).unwrap();
                    prepared
                },
                drop,
                BatchSize::PerIteration,
            )
        });
    }

    let node_dir = tempfile::tempdir().unwrap();
    let node = Node::new(NodeConfig {
        cache_dir: node_dir.path().into(),
        worker_threads: 1,
        ..NodeConfig::default()
    })
    .unwrap();
    let manifest = FunctionManifest {
        name: "hello".into(),
        content_id: id.clone(),
        routes: vec![Route::Path("/hello".into())],
        env: Default::default(),
        secrets: Default::default(),
        limits: Limits::default(),
    };
    let deployment_id = manifest.deployment_id();
    node.deploy(manifest.clone(), Some(&wasm)).unwrap();
    let deployment = node.deployment(&deployment_id).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let call = || Call {
        request: http::Request::get("https://edge-node/hello?name=bench")
            .body(())
            .unwrap(),
        script_name: "/hello".into(),
        request_id: "bench".into(),
        body: Bytes::new(),
        deadline: None,
        gateway: None,
    };
    c.bench_function("node_invoke/hello", |b| {
        b.iter(|| {
            let answer = runtime.block_on(node.invoke(&deployment, call())).unwrap();
            assert_eq!(answer.head.status, http::StatusCode::OK);
        })
    });
    // The same beside 1,000 other warm deployments, each with its pool on the worker.
    for i in 0..1_000 {
        let mut other = manifest.clone();
        other.name = format!("other{i}");
        other.routes = vec![Route::Path(format!("/other{i}"))];
        node.deploy(other, None).unwrap();
    }
    // The worker fills the new pools before the first measured request.
    std::thread::sleep(Duration::from_secs(2));
    c.bench_function("node_invoke/hello_beside_1000_warm", |b| {
        b.iter(|| {
            let answer = runtime.block_on(node.invoke(&deployment, call())).unwrap();
            assert_eq!(answer.head.status, http::StatusCode::OK);
        })
    });

    // A cold start from disk, as after a restart or an eviction: an empty in-memory
    // cache, the artifact on disk, read + deserialize + the first instance.
    let big = wasmer::wat2wasm(edge_shared::synthetic::module_wat(1 << 20, None).as_bytes())
        .unwrap()
        .into_owned();
    for (name, module) in [("hello", &wasm), ("1mib", &big)] {
        let id = ContentId::of(module);
        let dir = tempfile::tempdir().unwrap();
        let warmed = ModuleCache::open(dir.path(), 1 << 30, 10_000, memories()).unwrap();
        warmed.store_blob(&id, module).unwrap();
        assert_eq!(
            warmed.load(name, &id, 128).unwrap().source,
            Source::Compiled
        );
        c.bench_function(&format!("cold/disk_{name}"), |b| {
            b.iter(|| {
                let cache = ModuleCache::open(dir.path(), 1 << 30, 10_000, memories()).unwrap();
                let loaded = cache.load(name, &id, 128).unwrap();
                assert_eq!(loaded.source, Source::Disk);
                invoke::prepare(&loaded.runnable).unwrap()
            })
        });
    }
    eprintln!(
        "synthetic module: {} bytes of wasm, {} bytes of artifact",
        big.len(),
        engine::compile(&big).unwrap().len()
    );

    let mut group = c.benchmark_group("load");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("compile_hello", |b| {
        b.iter(|| engine::compile(&wasm).unwrap())
    });
    group.bench_function("compile_1mib", |b| {
        b.iter(|| engine::compile(&big).unwrap())
    });
    group.finish();
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
