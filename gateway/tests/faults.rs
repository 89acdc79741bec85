//! Faults survived under load: a steady open-loop load from `edge-loadtest` runs through
//! the gateway while a node is killed, paused or restarted, and what was lost is
//! reported. For each fault: the requests sent, answered 2xx, failed and retried, the
//! time until the gateway stopped routing to the node, and the time until it was back
//! in the rotation. Each test prints its row (`RELIABILITY | ...`) for RELIABILITY.md
//! (`scripts/reliability.sh` collects them). Idempotent requests (GETs): none may fail.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use edge_cli::cluster::LocalCluster;
use edge_cli::cluster::scrape_metrics;
use edge_shared::manifest::Limits;
use support::load::{Load, Row, Target, Watch, busiest_node};
use support::{function, start, url};

/// The node (0-based) that answered the most requests so far: the one whose loss the
/// load feels.
fn busiest(cluster: &LocalCluster) -> usize {
    busiest_node(
        &scrape_metrics(cluster.gateway_metrics_addrs().unwrap()[0]).unwrap(),
        3,
    )
}

/// The load on `cluster`'s gateway, for `seconds`.
fn load(cluster: &LocalCluster, seconds: u64) -> Load {
    let target = Target {
        url: url(cluster, "/hello"),
        connect: None,
        ca: cluster.certs().ca.clone(),
        netns: None,
        failover: Vec::new(),
    };
    Load::start(&target, seconds)
}

/// A cluster of three nodes serving `hello`, warm on all of them, and its watch.
fn cluster() -> (LocalCluster, tempfile::TempDir, Watch) {
    let (cluster, dir) = start(3, vec![function("hello", Limits::default())]);
    let at = cluster.gateway_metrics_addrs().unwrap()[0];
    let watch = Watch::start(move || scrape_metrics(at));
    watch.wait_usable(3, Duration::from_secs(20));
    (cluster, dir, watch)
}

/// `inject` a fault into the busiest node under a load of `seconds`, `recover` it
/// `outage` later, and report what it cost.
fn node_fault(
    fault: &str,
    seconds: u64,
    outage: Duration,
    inject: impl FnOnce(&mut LocalCluster, usize),
    recover: impl FnOnce(&mut LocalCluster, usize),
) {
    let (mut cluster, _dir, watch) = cluster();
    let load = load(&cluster, seconds);
    std::thread::sleep(Duration::from_secs(3));
    let retries = watch.retries();
    let node = busiest(&cluster);
    let injected = Instant::now();
    inject(&mut cluster, node);
    std::thread::sleep(outage);
    let recovered = Instant::now();
    recover(&mut cluster, node);
    let back = watch.wait_usable(3, Duration::from_secs(20));
    let load = load.finish();
    Row {
        fault,
        load,
        retried: watch.retries() - retries,
        detect: watch
            .first(injected, |s| s.usable < 3)
            .map(|s| s.at - injected),
        back: Some(back - recovered),
    }
    .report();
}

#[test]
fn a_node_killed_under_load_loses_no_request() {
    node_fault(
        "node SIGKILL, restarted 4 s later",
        12,
        Duration::from_secs(4),
        |cluster, node| cluster.kill_node(node),
        |cluster, node| cluster.restart_node(node).unwrap(),
    );
}

#[test]
fn a_node_paused_for_10_s_under_load_loses_no_request() {
    node_fault(
        "node SIGSTOP 10 s, then SIGCONT",
        18,
        Duration::from_secs(10),
        |cluster, node| assert!(cluster.signal_node(node, "STOP")),
        |cluster, node| assert!(cluster.signal_node(node, "CONT")),
    );
}

#[test]
fn a_rolling_restart_of_every_node_under_load_loses_no_request() {
    let (mut cluster, _dir, watch) = cluster();
    let load = load(&cluster, 30);
    std::thread::sleep(Duration::from_secs(3));
    let retries = watch.retries();
    let started = Instant::now();
    let mut detect = Duration::ZERO;
    for i in 0..3 {
        let stopping = Instant::now();
        cluster.terminate_node(i);
        assert!(
            cluster.wait_node(i, Duration::from_secs(30)).is_some(),
            "node {i} did not exit"
        );
        if let Some(s) = watch.first(stopping, |s| s.usable < 3) {
            detect = detect.max(s.at - stopping);
        }
        cluster.restart_node(i).unwrap();
        watch.wait_usable(3, Duration::from_secs(20));
    }
    let took = started.elapsed();
    let load = load.finish();
    Row {
        fault: "rolling restart of 3 nodes (SIGTERM, restart, next)",
        load,
        retried: watch.retries() - retries,
        detect: Some(detect),
        back: Some(took),
    }
    .report();
}

#[test]
fn a_gateway_killed_under_load_while_a_second_serves_loses_no_request() {
    let (mut cluster, _dir) =
        support::start_with(3, vec![function("hello", Limits::default())], |spec| {
            spec.registry = edge_shared::config::RegistryKind::Nats;
            spec.gateways = 2;
        });
    let [first, second] = cluster.gateway_addrs()[..] else {
        panic!("two gateways")
    };
    // The second gateway's view, which outlives the first.
    let at = cluster.gateway_metrics_addrs().unwrap()[1];
    let watch = Watch::start(move || scrape_metrics(at));
    watch.wait_usable(3, Duration::from_secs(30));
    let target = Target {
        url: url(&cluster, "/hello"),
        connect: Some(first),
        ca: cluster.certs().ca.clone(),
        netns: None,
        failover: vec![second],
    };
    let load = Load::start(&target, 12);
    std::thread::sleep(Duration::from_secs(3));
    cluster.kill_gateway();
    std::thread::sleep(Duration::from_secs(4));
    let restarted = Instant::now();
    cluster.restart_gateway().unwrap();
    // Back: the restarted gateway answers users again.
    let probe = Target {
        connect: Some(first),
        ..target
    };
    let back = (0..200).find_map(|_| {
        let out = Command::new(edge_cli::cluster::bin_dir().unwrap().join("edge"))
            .args(["call", &probe.url, "--connect", &first.to_string(), "--ca"])
            .arg(&probe.ca)
            .output()
            .unwrap();
        if out.status.success() {
            Some(restarted.elapsed())
        } else {
            std::thread::sleep(Duration::from_millis(100));
            None
        }
    });
    let (load, failovers) = load.finish_counting_failovers();
    Row {
        fault: "gateway SIGKILL (a second gateway serving; clients fail over), restarted 4 s later",
        load,
        retried: failovers,
        detect: None,
        back,
    }
    .report();
}
