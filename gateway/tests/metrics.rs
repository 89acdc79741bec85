//! The gateway's and the nodes' Prometheus metrics over real processes: `/metrics` on
//! each one's own listener parses as OpenMetrics text (checked by the Python client's
//! strict parser, not a grep), and its counters and histograms move with traffic.

mod support;

use std::collections::BTreeMap;

use edge_cli::cluster::LocalCluster;
use edge_shared::manifest::Limits;
use support::{client, function, start, url};

/// Every sample of the gateway's `/metrics`.
async fn scrape(cluster: &LocalCluster) -> BTreeMap<String, f64> {
    scrape_at(cluster.gateway_metrics_addrs().unwrap()[0]).await
}

/// Every sample of the `/metrics` at `at`, as the OpenMetrics parser reads them:
/// `name{label="value",...}` (labels sorted) → value.
async fn scrape_at(at: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let text = tokio::process::Command::new("curl")
        .args(["-sf", "--max-time", "10"])
        .arg(format!("http://{at}/metrics"))
        .output()
        .await
        .unwrap();
    assert!(text.status.success(), "scraping http://{at}/metrics failed");
    let parse = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
samples = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        samples[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(samples))
"#;
    let mut parser = tokio::process::Command::new("python3")
        .args(["-c", parse])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt as _;
    let mut stdin = parser.stdin.take().unwrap();
    stdin.write_all(&text.stdout).await.unwrap();
    drop(stdin);
    let parsed = parser.wait_with_output().await.unwrap();
    assert!(
        parsed.status.success(),
        "not OpenMetrics text: {}\n{}",
        String::from_utf8_lossy(&parsed.stderr),
        String::from_utf8_lossy(&text.stdout)
    );
    serde_json::from_slice(&parsed.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_traffic() {
    let (cluster, _dir) = start(1, vec![function("hello", Limits::default())]);
    let ok = r#"edge_gateway_requests_total{function="hello",node="node-1",status="200"}"#;
    let count = r#"edge_gateway_request_duration_seconds_count{function="hello"}"#;
    let in_flight = "edge_gateway_requests_in_flight{}";
    let before = scrape(&cluster).await;
    assert_eq!(before.get(ok), None, "{before:?}");
    assert_eq!(before.get(in_flight), Some(&0.0), "{before:?}");

    let c = client(&cluster).await;
    // A request is counted before its answer leaves the gateway.
    for (requests, round) in [(5, 5.0), (3, 8.0)] {
        for _ in 0..requests {
            let r = c.get(&url(&cluster, "/hello")).await.unwrap();
            assert_eq!(r.status, http::StatusCode::OK);
        }
        let after = scrape(&cluster).await;
        assert_eq!(after.get(ok), Some(&round), "{after:?}");
        assert_eq!(after.get(count), Some(&round), "{after:?}");
        // Every answer took some time, and less than the largest bucket.
        let sum = after[r#"edge_gateway_request_duration_seconds_sum{function="hello"}"#];
        assert!(sum > 0.0, "{after:?}");
        let inf = r#"edge_gateway_request_duration_seconds_bucket{function="hello",le="+Inf"}"#;
        assert_eq!(after.get(inf), Some(&round), "{after:?}");
        assert_eq!(after.get(in_flight), Some(&0.0), "{after:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_metrics_count_calls_and_time_their_phases() {
    let (cluster, _dir) = start(1, vec![function("hello", Limits::default())]);
    let at = cluster.node_metrics_addrs().unwrap()[0];
    let calls = r#"edge_node_calls_total{function="hello",status="200"}"#;
    let phase = |p: &str| {
        format!(r#"edge_node_phase_duration_seconds_count{{function="hello",phase="{p}"}}"#)
    };
    assert_eq!(scrape_at(at).await.get(calls), None);
    let c = client(&cluster).await;
    for _ in 0..4 {
        let r = c.get(&url(&cluster, "/hello")).await.unwrap();
        assert_eq!(r.status, http::StatusCode::OK);
    }
    let after = scrape_at(at).await;
    assert_eq!(after.get(calls), Some(&4.0), "{after:?}");
    for p in ["queue", "run"] {
        assert_eq!(after.get(&phase(p)), Some(&4.0), "{p}: {after:?}");
    }
    let run_sum = r#"edge_node_phase_duration_seconds_sum{function="hello",phase="run"}"#;
    assert!(after[run_sum] > 0.0, "{after:?}");
}
