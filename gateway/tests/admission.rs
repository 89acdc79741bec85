//! Admission control seen by a client of the gateway, over HTTP/3 against real
//! processes: a burst over a node's capacity is refused with `503`, `Retry-After` and
//! `x-edge-refused: overloaded` while every admitted request succeeds; a flood of one
//! function leaves room for another; refusals go on to other nodes only within the
//! function's retry budget.

mod support;

use std::sync::Arc;

use edge_net::client::H3Client;
use edge_shared::manifest::Limits;
use http::StatusCode;
use support::{client, function, scrape_at, start, start_with, url};

/// Sends `n` requests for `fib` (`/fib?n=30`) at once: how many were answered (with
/// fib(30)) and how many refused for overload (with `Retry-After`).
async fn fib_burst(c: &Arc<H3Client>, fib: &str, n: usize) -> (u32, u32) {
    let burst: Vec<_> = (0..n)
        .map(|_| {
            let (c, fib) = (Arc::clone(c), fib.to_string());
            tokio::spawn(async move { c.get(&fib).await.unwrap() })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for task in burst {
        let r = task.await.unwrap();
        match r.status {
            StatusCode::OK => {
                assert_eq!(&r.body[..], b"832040\n");
                ok += 1;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(r.header("x-edge-refused"), Some("overloaded"));
                let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                assert!(retry >= 1);
                refused += 1;
            }
            other => panic!("unexpected {other}: {:?}", String::from_utf8_lossy(&r.body)),
        }
    }
    (ok, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_capacity_gets_503_overloaded_and_the_admitted_succeed() {
    // One node, two slots; fib may queue two requests and waits up to the gateway's 30 s timeout.
    let limits = Limits {
        queue_depth: Some(2),
        queue_timeout_ms: Some(30_000),
        ..Limits::default()
    };
    let (cluster, _dir) = start(1, vec![function("fib", limits)]);
    let c = Arc::new(client(&cluster).await);
    let fib = url(&cluster, "/fib?n=30");
    assert_eq!(c.get(&fib).await.unwrap().status, StatusCode::OK);

    let (ok, refused) = fib_burst(&c, &fib, 20).await;
    assert!(ok >= 4, "{ok} served");
    assert!(refused >= 10, "{refused} refused");
    // Each refusal is counted by its reason in the node's metrics.
    let metrics = scrape_at(cluster.node_metrics_addrs().unwrap()[0]).await;
    let overloaded = r#"edge_node_refusals_total{reason="overloaded"}"#;
    assert_eq!(
        metrics.get(overloaded),
        Some(&f64::from(refused)),
        "{metrics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_one_function_leaves_headroom_for_another() {
    // fib may take both of the node's slots and queue a long line behind them: hello
    // still gets the next slot that frees up, because waiting functions take turns.
    let flood_limits = Limits {
        queue_depth: Some(100),
        queue_timeout_ms: Some(30_000),
        ..Limits::default()
    };
    let (cluster, _dir) = start(
        1,
        vec![
            function("fib", flood_limits),
            function("hello", Limits::default()),
        ],
    );
    let c = Arc::new(client(&cluster).await);
    let fib = url(&cluster, "/fib?n=30");
    let hello = url(&cluster, "/hello");
    assert_eq!(c.get(&hello).await.unwrap().status, StatusCode::OK);

    let flood: Vec<_> = (0..30)
        .map(|_| {
            let (c, fib) = (Arc::clone(&c), fib.clone());
            tokio::spawn(async move { c.get(&fib).await.unwrap().status })
        })
        .collect();
    // Wait until the flood is running, then ask for hello while it queues.
    let mut served_during_flood = 0;
    for _ in 0..10 {
        let r = c.get(&hello).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        served_during_flood += usize::from(flood.iter().any(|t| !t.is_finished()));
    }
    for task in flood {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    // The flood (30 requests, two at a time) was still going while all ten hellos were
    // answered: they never waited behind its queue.
    assert_eq!(served_during_flood, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_for_overload_go_to_another_node_only_within_the_retry_budget() {
    // Three nodes, each with room for one fib running and one waiting: a burst of 40
    // is mostly refused, on every node. The gateways' budget allows 3 retries and earns
    // nothing back within the test, so the other refusals are answered as they are.
    let limits = Limits {
        max_concurrency: Some(1),
        queue_depth: Some(1),
        queue_timeout_ms: Some(30_000),
        ..Limits::default()
    };
    let (cluster, _dir) = start_with(3, vec![function("fib", limits)], |spec| {
        spec.retry_budget = edge_shared::config::RetryBudgetConfig {
            burst: 3,
            answers_per_retry: 1_000_000,
        };
    });
    let c = Arc::new(client(&cluster).await);
    let fib = url(&cluster, "/fib?n=30");
    assert_eq!(c.get(&fib).await.unwrap().status, StatusCode::OK);

    let (ok, refused) = fib_burst(&c, &fib, 40).await;
    assert!(ok >= 2 && refused >= 20, "{ok} served, {refused} refused");
    let gateway = scrape_at(cluster.gateway_metrics_addrs().unwrap()[0]).await;
    let retries = gateway["edge_gateway_retries_total{}"];
    let over_budget = gateway["edge_gateway_retries_over_budget_total{}"];
    assert!(retries <= 3.0, "{retries} retries: the budget is 3");
    // Every refusal that reached the user was either retried as far as the nodes
    // allowed, or answered at once when the budget was spent.
    assert!(over_budget >= f64::from(refused) - 3.0, "{gateway:?}");
    // What the nodes saw: one attempt a request, and at most the budget's retries.
    let mut attempts_refused = 0.0;
    for at in cluster.node_metrics_addrs().unwrap() {
        let node = scrape_at(at).await;
        attempts_refused += node
            .get(r#"edge_node_refusals_total{reason="overloaded"}"#)
            .copied()
            .unwrap_or(0.0);
    }
    assert!(
        attempts_refused <= f64::from(refused) + 3.0,
        "{attempts_refused} refusals at the nodes for {refused} refused requests"
    );
}
