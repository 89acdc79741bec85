//! The gateway's and the nodes' Prometheus metrics over real processes: `/metrics` on
//! each one's own listener parses as OpenMetrics text (checked by the Python client's
//! strict parser, not a grep), and its counters and histograms move with traffic.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use edge_cli::cluster::LocalCluster;
use edge_shared::manifest::Limits;
use support::{client, function, scrape_at, start, url};

/// Every sample of the gateway's `/metrics`.
async fn scrape(cluster: &LocalCluster) -> BTreeMap<String, f64> {
    scrape_at(cluster.gateway_metrics_addrs().unwrap()[0]).await
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

    // What is read at scrape time: every call took a pooled instance or made one, the
    // module is in memory (loaded once, by compiling or from disk, and hit since), no
    // call is left running, and the node talks to the gateway over gossip and QUIC.
    let deployment = after
        .keys()
        .find_map(|k| k.strip_prefix(r#"edge_node_pool_hits_total{deployment=""#))
        .and_then(|k| k.strip_suffix(r#""}"#))
        .unwrap_or_else(|| panic!("no pool of hello: {after:?}"));
    assert!(deployment.starts_with("hello@"), "{deployment}");
    let per = |name: &str| {
        after
            .get(&format!(r#"{name}{{deployment="{deployment}"}}"#))
            .copied()
            .unwrap_or_else(|| panic!("{name} for {deployment}: {after:?}"))
    };
    assert_eq!(
        per("edge_node_pool_hits_total") + per("edge_node_pool_misses_total"),
        4.0 + per("edge_node_cold_starts_total"),
        "{after:?}"
    );
    assert!(per("edge_node_pool_ready_instances") >= 1.0, "{after:?}");
    assert_eq!(after["edge_node_module_cache_modules{}"], 1.0, "{after:?}");
    assert!(after["edge_node_module_cache_bytes{}"] > 0.0, "{after:?}");
    let loads = after[r#"edge_node_module_cache_misses_total{source="compile"}"#]
        + after[r#"edge_node_module_cache_misses_total{source="disk"}"#];
    assert!(loads >= 1.0, "{after:?}");
    // Every instance's memory comes from the memory pool, spare or newly mapped: the
    // spent instances' memories are reused as the workers refill.
    assert!(
        after["edge_node_memory_pool_mapped_total{}"] >= 1.0,
        "{after:?}"
    );
    let reused = support::eventually(Duration::from_secs(10), || async {
        scrape_at(at).await["edge_node_memory_pool_reused_total{}"] >= 1.0
    })
    .await;
    assert!(reused, "no spare memory was ever reused");
    assert!(
        after.contains_key("edge_node_memory_pool_spare{}"),
        "{after:?}"
    );
    assert!(
        after.contains_key("edge_node_memory_pool_unmapped_total{}"),
        "{after:?}"
    );
    assert_eq!(after["edge_node_in_flight{}"], 0.0, "{after:?}");
    assert_eq!(after["edge_node_queued{}"], 0.0, "{after:?}");
    assert!(after["edge_node_slots{}"] >= 1.0, "{after:?}");
    assert!(
        after[r#"edge_gossip_members{state="live"}"#] >= 1.0,
        "{after:?}"
    );
    for direction in ["sent", "received"] {
        let bytes = format!(r#"edge_gossip_bytes_total{{direction="{direction}"}}"#);
        assert!(after[&bytes] > 0.0, "{after:?}");
    }
    assert_eq!(
        after[r#"edge_gossip_rejected_total{reason="signature"}"#], 0.0,
        "{after:?}"
    );
    assert!(
        after[r#"edge_quic_connections{endpoint="members"}"#] >= 1.0,
        "{after:?}"
    );

    // The gateway's own: nodes it can route to, and its connection to the node.
    let gateway = scrape(&cluster).await;
    assert_eq!(gateway["edge_gateway_usable_nodes{}"], 1.0, "{gateway:?}");
    assert!(
        gateway[r#"edge_quic_connections{endpoint="nodes"}"#] >= 1.0,
        "{gateway:?}"
    );
    assert!(
        gateway[r#"edge_quic_connections{endpoint="users"}"#] >= 1.0,
        "{gateway:?}"
    );
    assert!(
        gateway[r#"edge_gossip_members{state="live"}"#] >= 1.0,
        "{gateway:?}"
    );
}
