//! The node's hot path, on the example `hello` guest:
//!
//! - `invoke/hello`: fresh store + instance of a cached module, run `_start`, collect
//!   stdout (what a warm request costs in wasm);
//! - `node_invoke/hello`: the same through `Node::invoke`: slot, worker-thread hop, CGI
//!   environment and response parsing;
//! - `load/deserialize`: a cold start from the on-disk artifact;
//! - `load/compile`: a cold start from the module bytes (cranelift + metering).
//!
//! Run: `scripts/build-functions.sh && cargo bench -p edge-node --profile dev`.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use edge_node::runtime::cache::ModuleCache;
use edge_node::runtime::engine::{self, Engines};
use edge_node::runtime::invoke::{self, Invocation};
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

fn benches(c: &mut Criterion) {
    let wasm = hello_wasm();
    let id = ContentId::of(&wasm);
    let dir = tempfile::tempdir().unwrap();
    let cache = ModuleCache::open(dir.path()).unwrap();
    let (runnable, _, _) = cache.load("hello", &id, &wasm, 128).unwrap();

    c.bench_function("invoke/hello", |b| {
        b.iter(|| {
            let done = invoke::run(
                &runnable,
                Invocation {
                    request_id: "bench".into(),
                    env: cgi_env(),
                    stdin: Bytes::new(),
                    stdout_limit: 1 << 20,
                    fuel: 1_000_000_000,
                },
            )
            .unwrap();
            assert!(done.stdout.ends_with(b"hello, bench!\n"));
        })
    });

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
        limits: Limits::default(),
    };
    let deployment_id = manifest.deployment_id();
    node.deploy(manifest, &wasm).unwrap();
    let deployment = node.deployment(&deployment_id).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    c.bench_function("node_invoke/hello", |b| {
        b.iter(|| {
            let call = Call {
                request_id: "bench".into(),
                cgi_env: cgi_env(),
                body: Bytes::new(),
                deadline: None,
            };
            let answer = runtime.block_on(node.invoke(&deployment, call)).unwrap();
            assert_eq!(answer.head.status, http::StatusCode::OK);
        })
    });

    let artifact = engine::compile(&wasm).unwrap();
    let engines = Engines::default();
    let headless = engines.for_memory_limit(128);
    c.bench_function("load/deserialize", |b| {
        b.iter(|| engine::deserialize(&headless, &artifact).unwrap())
    });

    let mut group = c.benchmark_group("load");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("compile", |b| b.iter(|| engine::compile(&wasm).unwrap()));
    group.finish();
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
