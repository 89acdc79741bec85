//! Shared set-up of the node's integration tests: nodes in process, the example functions
//! (built once) and deploys of them, calls, and waiting on the node's status.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use edge_node::{Call, Node, NodeStatus};
use edge_shared::config::NodeConfig;
use edge_shared::manifest::{ContentId, DeploymentId, FunctionManifest, Limits, Route};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The module of example function `name` (`functions/NAME`), built once per test run.
pub fn example(name: &str) -> Vec<u8> {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = std::process::Command::new(repo_root().join("scripts/build-functions.sh"))
            .status()
            .expect("running scripts/build-functions.sh");
        assert!(status.success(), "building the example functions failed");
    });
    std::fs::read(repo_root().join(format!(
        "functions/target/wasm32-wasip1/release/{name}.wasm"
    )))
    .unwrap()
}

/// Polls the node's status every 5 ms, at most 10 s, until `check` holds on it.
pub async fn until_status(node: &Node, check: impl Fn(&NodeStatus) -> bool) -> bool {
    for _ in 0..2_000 {
        if check(&node.status()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// A node caching under `dir`, with two worker threads unless `config` says otherwise.
pub fn node(dir: &Path, config: impl FnOnce(&mut NodeConfig)) -> Arc<Node> {
    let mut c = NodeConfig {
        cache_dir: dir.into(),
        worker_threads: 2,
        ..NodeConfig::default()
    };
    config(&mut c);
    Arc::new(Node::new(c).unwrap())
}

/// The manifest of function `name` running `wasm` at `/NAME`.
pub fn manifest(name: &str, wasm: &[u8], limits: Limits) -> FunctionManifest {
    FunctionManifest {
        name: name.into(),
        content_id: ContentId::of(wasm),
        routes: vec![Route::Path(format!("/{name}"))],
        env: Default::default(),
        secrets: Default::default(),
        limits,
    }
}

/// Deploys example function `name`.
pub fn deploy(node: &Node, name: &str, limits: Limits) -> DeploymentId {
    deploy_wasm(node, name, &example(name), limits)
}

/// Deploys `wasm` as function `name`; panics naming the function if it is refused.
pub fn deploy_wasm(node: &Node, name: &str, wasm: &[u8], limits: Limits) -> DeploymentId {
    let m = manifest(name, wasm, limits);
    let id = m.deployment_id();
    node.deploy(m, Some(wasm))
        .unwrap_or_else(|e| panic!("deploying {name}: {e}"));
    id
}

/// A `GET /?query` call.
pub fn call(query: &str) -> Call {
    Call {
        request: http::Request::get(format!("https://edge-node/?{query}"))
            .body(())
            .unwrap(),
        script_name: String::new(),
        request_id: "test".into(),
        body: Bytes::new(),
        deadline: None,
        gateway: None,
    }
}
