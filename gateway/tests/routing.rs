//! `least-loaded-warm` over real processes: a function warm on one node is served there
//! while that node has room, and spreads to other nodes (cold starts, by rendezvous
//! order) once it is loaded.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use edge_gateway::cluster::{self, LocalCluster};
use edge_shared::config::{ClusterConfig, RoutingPolicy};
use edge_shared::manifest::Limits;
use http::StatusCode;
use support::{client, function, url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_function_stays_on_its_node_until_that_node_is_loaded_then_spreads() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterConfig {
        nodes: 3,
        node_worker_threads: 2,
        listen: "127.0.0.1:0".parse().unwrap(),
        routing: RoutingPolicy::LeastLoadedWarm,
        functions: vec![function("fib", Limits::default())],
        ..ClusterConfig::default()
    };
    let cluster = LocalCluster::start(&spec, dir.path(), &cluster::bin_dir().unwrap()).unwrap();
    let c = Arc::new(client(&cluster).await);

    // One at a time: every request goes to the one node where fib is warm.
    let mut nodes = BTreeMap::new();
    for _ in 0..20 {
        let r = c.get(&url(&cluster, "/fib?n=10")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        *nodes
            .entry(r.header("x-edge-node").unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(nodes.len(), 1, "sequential requests spread: {nodes:?}");
    let home = nodes.keys().next().unwrap().clone();

    // Eight at a time on a node with two slots: it is saturated, the rest spills over.
    let mut spread = BTreeMap::new();
    for _ in 0..3 {
        let burst: Vec<_> = (0..8)
            .map(|_| {
                let (c, fib) = (Arc::clone(&c), url(&cluster, "/fib?n=27"));
                tokio::spawn(async move { c.get(&fib).await.unwrap() })
            })
            .collect();
        for task in burst {
            let r = task.await.unwrap();
            assert_eq!(r.status, StatusCode::OK);
            *spread
                .entry(r.header("x-edge-node").unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    assert!(
        spread.len() >= 2,
        "a loaded node kept everything: {spread:?}"
    );
    assert!(spread.contains_key(&home), "{spread:?}");
}
