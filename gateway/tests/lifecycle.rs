//! Shutdown as an operator meets it: SIGTERM to a gateway or a node while requests are in
//! flight fails none of them, and the process exits within its grace period. Real
//! processes on loopback.

mod support;

use std::sync::Arc;
use std::time::Duration;

use edge_cli::cluster::LocalCluster;
use edge_shared::config::{GatewayConfig, RoutingPolicy};
use edge_shared::manifest::Limits;
use http::StatusCode;
use support::{client, eventually, function, node_status, running, start_with, url};

/// Longest a request waits for a slot here: longer than the test's sleeps, so that every
/// request in flight is admitted in turn.
fn patient() -> Limits {
    Limits {
        queue_timeout_ms: Some(20_000),
        ..Limits::default()
    }
}

/// Runs `wait` (a blocking wait on a process of the cluster) off the runtime; gives the
/// cluster back with its result.
async fn off_runtime<T: Send + 'static>(
    mut cluster: LocalCluster,
    wait: impl FnOnce(&mut LocalCluster) -> T + Send + 'static,
) -> (T, LocalCluster) {
    tokio::task::spawn_blocking(move || (wait(&mut cluster), cluster))
        .await
        .unwrap()
}

/// The grace period both daemons have by default.
fn grace() -> Duration {
    Duration::from_millis(GatewayConfig::default().shutdown_grace_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_gateway_fails_no_request_in_flight_and_it_exits_within_its_grace() {
    let (cluster, _dir) = start_with(1, vec![function("sleep", patient())], |_| {});
    let c = Arc::new(client(&cluster).await);
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let (c, url) = (Arc::clone(&c), url(&cluster, "/sleep?ms=1500"));
            tokio::spawn(async move { c.get(&url).await })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || async {
            running(&cluster, 0, "sleep").await > 0
        })
        .await
    );
    cluster.terminate_gateway();
    for request in in_flight {
        let r = request.await.unwrap();
        let r = r.unwrap_or_else(|e| {
            panic!(
                "a request in flight failed: {e}\n{}",
                cluster.log("gateway")
            )
        });
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert!(r.body.starts_with(b"slept 1"), "{:?}", r.body);
    }
    let (status, cluster) = off_runtime(cluster, |c| {
        c.wait_gateway(grace() + Duration::from_secs(5))
    })
    .await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the gateway did not exit cleanly within its grace period: {status:?}\\n{}",
        cluster.log("gateway")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_a_node_finishes_its_requests_refuses_late_ones_for_retry_and_exits_in_time() {
    // Slow gossip (1 s rounds): the gateway learns of the drain a round or more after
    // the node starts refusing, so requests it sends meanwhile meet the refusal.
    let (cluster, _dir) = start_with(
        2,
        vec![function("sleep", patient()), function("hello", patient())],
        |spec| {
            spec.routing = RoutingPolicy::RoundRobin;
            spec.gossip_interval_ms = 1000;
            // Room beside the sleeping requests: the late ones never wait for a slot.
            spec.node_worker_threads = 4;
        },
    );
    let c = Arc::new(client(&cluster).await);
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let (c, url) = (Arc::clone(&c), url(&cluster, "/sleep?ms=2000"));
            tokio::spawn(async move { c.get(&url).await })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || async {
            running(&cluster, 0, "sleep").await > 0
        })
        .await,
        "node-1 runs none of the requests"
    );
    cluster.terminate_node(0);
    // Round robin sends every other request to node-1 first. Until gossip says it is
    // draining (a round or more), node-1 refuses them and the gateway retries them on
    // node-2; none fails either way.
    for _ in 0..100 {
        let r = c.get(&url(&cluster, "/hello?name=late")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let refused = node_status(&cluster, 0).await["refused_draining"]
        .as_u64()
        .unwrap();
    assert!(refused >= 1, "node-1 refused no late request");
    for request in in_flight {
        let r = request.await.unwrap().expect("a request in flight failed");
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    // Its grace, plus the three rounds it stays reachable after draining.
    let (status, cluster) = off_runtime(cluster, |c| {
        c.wait_node(0, grace() + Duration::from_secs(8))
    })
    .await;
    assert!(
        status.is_some_and(|s| s.success()),
        "node-1 did not exit cleanly within its grace period: {status:?}\\n{}",
        cluster.log("node-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_the_gateway_at_once() {
    let (cluster, _dir) = start_with(1, vec![function("sleep", patient())], |_| {});
    let c = Arc::new(client(&cluster).await);
    let long = {
        let (c, url) = (Arc::clone(&c), url(&cluster, "/sleep?ms=8000"));
        tokio::spawn(async move { c.get(&url).await })
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            running(&cluster, 0, "sleep").await > 0
        })
        .await
    );
    cluster.terminate_gateway();
    // The first signal waits for the request in flight; the second does not.
    let (status, cluster) =
        off_runtime(cluster, |c| c.wait_gateway(Duration::from_millis(500))).await;
    assert!(status.is_none(), "the gateway left a request in flight");
    cluster.terminate_gateway();
    let (status, _cluster) = off_runtime(cluster, |c| c.wait_gateway(Duration::from_secs(5))).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(edge_net::lifecycle::FORCED_EXIT),
        "{status:?}"
    );
    assert!(!long.is_finished() || long.await.unwrap().is_err());
}
