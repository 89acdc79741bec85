//! What the gateway does when a node cannot or will not answer: a refusal moves the
//! request to another node, a request in flight on a node gossip holds down goes on to
//! another node, and a request that may have run is never sent twice unless its method
//! is idempotent. Real processes on loopback; round robin, so that which node
//! a request tries first follows from its place in the sequence.

mod support;

use std::time::Duration;

use bytes::Bytes;
use edge_shared::config::RoutingPolicy;
use edge_shared::manifest::Limits;
use http::{Request, StatusCode};
use support::{client, function, node_status, running, scrape_at, start_with, url};

/// `sleep` one at a time per node and never queued: a second request on a busy node is
/// refused at once (`503 x-edge-refused: overloaded`).
fn one_at_a_time() -> Limits {
    Limits {
        max_concurrency: Some(1),
        queue_depth: Some(0),
        ..Limits::default()
    }
}

/// Waits (at most 10 s) until one of the two nodes runs a `sleep` request; returns its
/// index.
async fn busy_node(cluster: &edge_cli::cluster::LocalCluster) -> usize {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < until {
        for i in 0..2 {
            if running(cluster, i, "sleep").await == 1 {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no node ran the request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_refusal_moves_the_request_to_another_node() {
    let (cluster, _dir) = start_with(2, vec![function("sleep", one_at_a_time())], |spec| {
        spec.routing = RoutingPolicy::RoundRobin;
    });
    let c = std::sync::Arc::new(client(&cluster).await);
    let long = {
        let (c, url) = (std::sync::Arc::clone(&c), url(&cluster, "/sleep?ms=2000"));
        tokio::spawn(async move { c.get(&url).await.unwrap() })
    };
    let busy = busy_node(&cluster).await;
    let idle_name = format!("node-{}", 2 - busy);
    // Round robin: the next request starts at the other node, the one after it at the
    // busy node, which refuses it; the gateway then sends it to the other node.
    for _ in 0..2 {
        let r = c.get(&url(&cluster, "/sleep?ms=0")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.header("x-edge-node"), Some(idle_name.as_str()));
    }
    assert_eq!(
        node_status(&cluster, busy).await["overloaded"],
        1,
        "the busy node refused exactly the request that started there"
    );
    let r = long.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.starts_with(b"slept 2"), "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried_when_its_node_dies_mid_request() {
    let (mut cluster, _dir) = start_with(
        2,
        vec![
            function("sleep", Limits::default()),
            function("hello", Limits::default()),
        ],
        |spec| spec.routing = RoutingPolicy::RoundRobin,
    );
    let c = std::sync::Arc::new(client(&cluster).await);
    let post = {
        let (c, url) = (std::sync::Arc::clone(&c), url(&cluster, "/sleep?ms=5000"));
        tokio::spawn(async move {
            let request = Request::post(url).body(()).unwrap();
            c.send(request, Bytes::from_static(b"an order"))
                .await
                .unwrap()
        })
    };
    let busy = busy_node(&cluster).await;
    let other = 1 - busy;
    let requests_before = node_status(&cluster, other).await["requests"].clone();
    cluster.kill_node(busy);
    let r = post.await.unwrap();
    assert_eq!(
        r.status,
        StatusCode::BAD_GATEWAY,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        node_status(&cluster, other).await["requests"],
        requests_before,
        "the POST that may have run was sent to another node"
    );
    // The rest of the cluster serves on.
    let r = c.get(&url(&cluster, "/hello")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_on_a_node_gossip_holds_down_goes_on_to_another_node() {
    let (cluster, _dir) = start_with(2, vec![function("sleep", Limits::default())], |spec| {
        spec.routing = RoutingPolicy::RoundRobin;
    });
    let c = std::sync::Arc::new(client(&cluster).await);
    let get = {
        let (c, url) = (std::sync::Arc::clone(&c), url(&cluster, "/sleep?ms=1000"));
        tokio::spawn(async move { c.get(&url).await.unwrap() })
    };
    let busy = busy_node(&cluster).await;
    // Stopped, it answers nothing, its connection stays open, and gossip soon holds it
    // down: the gateway gives its connection up, and the request runs on the other node.
    assert!(cluster.signal_node(busy, "STOP"));
    let r = get.await.unwrap();
    assert!(cluster.signal_node(busy, "CONT"));
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let other = format!("node-{}", 2 - busy);
    assert_eq!(r.header("x-edge-node"), Some(other.as_str()));
    let gateway = scrape_at(cluster.gateway_metrics_addrs().unwrap()[0]).await;
    let given_up = gateway.get("edge_gateway_node_connections_given_up_total{}");
    assert!(given_up.is_some_and(|&n| n >= 1.0), "{gateway:?}");
}
