//! A short real run against a local cluster of real processes.

use std::process::Command;

use edge_gateway::cluster::{LocalCluster, bin_dir};
use edge_shared::config::{ClusterConfig, FunctionConfig};

#[test]
fn a_short_run_reports_every_request() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = Command::new(root.join("scripts/build-functions.sh"))
        .status()
        .unwrap();
    assert!(built.success());
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterConfig {
        nodes: 2,
        node_worker_threads: 1,
        listen: "127.0.0.1:0".parse().unwrap(),
        functions: vec![FunctionConfig {
            name: "hello".into(),
            module: root.join("functions/target/wasm32-wasip1/release/hello.wasm"),
            routes: vec![],
            env: Default::default(),
            limits: Default::default(),
        }],
        ..ClusterConfig::default()
    };
    let cluster = LocalCluster::start(&spec, dir.path(), &bin_dir().unwrap()).unwrap();
    let json = dir.path().join("report.json");
    let port = cluster.gateway_addr().port();
    let output = Command::new(bin_dir().unwrap().join("edge-loadtest"))
        .arg(format!("https://localhost:{port}/hello"))
        .args(["--connect", &cluster.gateway_addr().to_string()])
        .args([
            "--connections",
            "2",
            "--streams",
            "4",
            "--duration",
            "20s",
            "--requests",
            "400",
        ])
        .arg("--ca")
        .arg(&cluster.certs().ca)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("p99"), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["requests"], 400, "{report}");
    assert_eq!(report["by_status"]["2xx"], 400, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert_eq!(
        report["by_node"].as_object().unwrap().len(),
        2,
        "both nodes served: {report}"
    );
    assert!(report["p50_ms"].as_f64().unwrap() > 0.0);
}
