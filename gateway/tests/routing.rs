//! Routing over real processes that find each other by gossip: a function warm on one
//! node is served there while that node has room, and spreads once it is loaded; a node
//! killed under load leaves the rotation; a node started later joins it; a node shutting
//! down is skipped.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use edge_cli::cluster::{self, LocalCluster};
use edge_net::client::Reply;
use edge_net::gossip::ClusterKey;
use edge_shared::config::{ClusterConfig, RoutingPolicy};
use edge_shared::manifest::Limits;
use edge_shared::wire::ServerTiming;
use http::StatusCode;
use support::{client, function, url};

/// Three nodes with `worker_threads` each, routing by `policy`, serving fib.
fn fib_cluster(
    dir: &std::path::Path,
    worker_threads: usize,
    policy: RoutingPolicy,
) -> LocalCluster {
    let spec = ClusterConfig {
        nodes: 3,
        node_worker_threads: worker_threads,
        listen: "127.0.0.1:0".parse().unwrap(),
        routing: policy,
        // Warm on its home alone until load spreads it (no spare).
        min_warm_nodes: 1,
        functions: vec![function("fib", Limits::default())],
        ..ClusterConfig::default()
    };
    LocalCluster::start(&spec, dir, &cluster::bin_dir().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_function_stays_on_its_node_until_that_node_is_loaded_then_spreads() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = fib_cluster(dir.path(), 2, RoutingPolicy::LeastLoadedWarm);
    let c = Arc::new(client(&cluster).await);

    // One at a time, over many gossip rounds: every request goes to the one node where
    // fib is warm (its load never looks saturated because of this gateway's own requests).
    let mut nodes = BTreeMap::new();
    for _ in 0..300 {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_leaves_the_rotation_and_no_get_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = fib_cluster(dir.path(), 1, RoutingPolicy::LeastLoadedWarm);
    let c = Arc::new(client(&cluster).await);
    let fib = url(&cluster, "/fib?n=24");
    // Load enough to keep all three nodes busy: eight requests in flight, for 4 s.
    let stop_at = std::time::Instant::now() + std::time::Duration::from_secs(4);
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (c, fib) = (Arc::clone(&c), fib.clone());
            tokio::spawn(async move {
                let mut served = Vec::new();
                while std::time::Instant::now() < stop_at {
                    let sent = std::time::Instant::now();
                    let r = c.get(&fib).await.unwrap();
                    assert_eq!(
                        r.status,
                        StatusCode::OK,
                        "{:?}",
                        String::from_utf8_lossy(&r.body)
                    );
                    served.push((sent, r.header("x-edge-node").unwrap().to_string()));
                }
                served
            })
        })
        .collect();
    // Killed once the load has reached it.
    assert!(
        support::eventually(std::time::Duration::from_secs(4), || async {
            support::node_status(&cluster, 1).await["requests"]
                .as_u64()
                .unwrap()
                >= 10
        })
        .await,
        "the load never reached node-2"
    );
    cluster.kill_node(1);
    // Taken once the process is gone (kill_node waits for it).
    let killed_at = std::time::Instant::now();
    let mut after_kill = BTreeMap::new();
    let mut before_kill = BTreeMap::new();
    for w in workers {
        for (at, node) in w.await.unwrap() {
            let bucket = if at < killed_at {
                &mut before_kill
            } else {
                &mut after_kill
            };
            *bucket.entry(node).or_insert(0) += 1;
        }
    }
    assert!(
        before_kill.contains_key("node-2"),
        "node-2 served before: {before_kill:?}"
    );
    // Requests in flight on node-2 when it died were retried elsewhere (GET is
    // idempotent): none failed, and nothing sent after the kill was answered by it.
    assert!(!after_kill.contains_key("node-2"), "{after_kill:?}");
    assert!(
        after_kill.len() == 2,
        "the other two kept serving: {after_kill:?}"
    );
    // Gossip's failure detector takes it out of the gateway's view too, within 5 s of
    // the kill (the load above ran 3 s past it).
    let out = support::eventually(std::time::Duration::from_secs(2), || async {
        support::node_state(&cluster, "node-2").await.as_deref() == Some("down")
    })
    .await;
    assert!(out, "gateway log: {}", cluster.log("gateway"));
}

/// Whether an answer met a cold start on its path (its `server-timing`).
fn met_a_cold_start(reply: &Reply) -> bool {
    ServerTiming::parse(reply.header("server-timing").unwrap_or_default()).met_a_cold_start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_in_use_is_kept_warm_on_a_spare_and_losing_its_node_starts_nothing_cold() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterConfig {
        nodes: 3,
        listen: "127.0.0.1:0".parse().unwrap(),
        functions: vec![function("hello", Limits::default())],
        ..ClusterConfig::default()
    };
    assert_eq!(spec.min_warm_nodes, 2, "the default");
    let mut cluster = LocalCluster::start(&spec, dir.path(), &cluster::bin_dir().unwrap()).unwrap();
    let c = client(&cluster).await;
    let hello = url(&cluster, "/hello");

    // A light load, one request at a time: far from loading its node, yet hello is
    // warmed on a second one, and least-loaded-warm spreads over both. Nothing after the
    // first request waits on a cold start: the spare is warmed off the request path.
    let mut by_node = BTreeMap::new();
    let mut first = None;
    for i in 0..500 {
        let r = c.get(&hello).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let node = r.header("x-edge-node").unwrap().to_string();
        assert!(i == 0 || !met_a_cold_start(&r), "request {i} on {node}");
        first.get_or_insert_with(|| node.clone());
        *by_node.entry(node).or_insert(0) += 1;
        if by_node.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(by_node.len(), 2, "no spare took requests: {by_node:?}");

    // Its first node dies. What follows is answered by the warm spare: no request meets
    // a cold start, as each would on a survivor with no spare.
    let home = first.unwrap();
    let i: usize = home.trim_start_matches("node-").parse().unwrap();
    cluster.kill_node(i - 1);
    for n in 0..20 {
        let r = c.get(&hello).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let node = r.header("x-edge-node").unwrap();
        assert_ne!(node, home);
        assert!(
            !met_a_cold_start(&r),
            "request {n} after the kill met a cold start on {node}: {:?}",
            r.header("server-timing")
        );
    }
}

/// Which node answered each of `n` sequential GETs of `path`.
async fn answered_by(
    c: &edge_net::client::H3Client,
    path: &str,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut nodes = BTreeMap::new();
    for _ in 0..n {
        let r = c.get(path).await.unwrap();
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{:?}",
            String::from_utf8_lossy(&r.body)
        );
        *nodes
            .entry(r.header("x-edge-node").unwrap().to_string())
            .or_insert(0) += 1;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_later_joins_by_gossip_and_a_draining_node_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    // Round robin, so that every usable node gets its share at once.
    let mut cluster = fib_cluster(dir.path(), 1, RoutingPolicy::RoundRobin);
    let c = client(&cluster).await;
    let fib = url(&cluster, "/fib?n=10");
    let three = answered_by(&c, &fib, 12).await;
    assert_eq!(three.len(), 3, "{three:?}");

    // A fourth node, told only the gateway's gossip address (the seed every node has).
    cluster.add_node().unwrap();
    let joined = support::eventually(std::time::Duration::from_secs(10), || async {
        support::node_state(&cluster, "node-4").await.as_deref() == Some("usable")
    })
    .await;
    assert!(
        joined,
        "gateway status: {}",
        support::gateway_status(&cluster).await
    );
    let four = answered_by(&c, &fib, 16).await;
    assert_eq!(four.get("node-4"), Some(&4), "{four:?}");

    // Gossip from outside the cluster (no tag, or signed with another key) is dropped,
    // counted and logged; the cluster is none the worse.
    let intruder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let forged = ClusterKey::new(&[9; 32])
        .unwrap()
        .seal(b"not a member".to_vec());
    let rejected = || async {
        support::gateway_status(&cluster).await["gossip"]["rejected"]
            .as_u64()
            .unwrap()
    };
    let before = rejected().await;
    for datagram in [&b"junk"[..], &forged] {
        intruder.send_to(datagram, cluster.gossip_seed()).unwrap();
    }
    let dropped = support::eventually(std::time::Duration::from_secs(5), || async {
        rejected().await == before + 2
    })
    .await;
    assert!(
        dropped,
        "gateway status: {}",
        support::gateway_status(&cluster).await
    );
    assert_eq!(answered_by(&c, &fib, 8).await.len(), 4);

    // node-1 shuts down: it says `draining` by gossip, the gateway skips it from then
    // on, and no request fails on the way.
    cluster.terminate_node(0);
    let skipped = support::eventually(std::time::Duration::from_secs(5), || async {
        support::node_state(&cluster, "node-1").await.as_deref() == Some("draining")
    })
    .await;
    assert!(
        skipped,
        "gateway status: {}",
        support::gateway_status(&cluster).await
    );
    let after = answered_by(&c, &fib, 12).await;
    assert!(!after.contains_key("node-1"), "{after:?}");
    assert_eq!(after.len(), 3, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_never_serves_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = fib_cluster(dir.path(), 1, RoutingPolicy::RoundRobin);
    // It has the gossip key, so its datagrams pass; its certificate comes from a CA of
    // its own, so its signed identity does not verify and it never joins the view.
    let rogue_certs =
        edge_cli::devcerts::DevCerts::ensure(&dir.path().join("rogue-certs"), "edge.localhost")
            .unwrap();
    let own = rogue_certs.node("rogue").unwrap();
    let config = edge_shared::config::NodeConfig {
        name: "rogue".into(),
        tls_cert: own.cert,
        tls_key: own.key,
        cluster_ca: rogue_certs.ca.clone(),
        cache_dir: dir.path().join("rogue-cache"),
        worker_threads: 1,
        gossip: edge_shared::config::GossipConfig {
            seeds: vec![cluster.gossip_seed().to_string()],
            key_file: cluster.certs().gossip_key.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let config_path = dir.path().join("rogue.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let log = std::fs::File::create(dir.path().join("rogue.log")).unwrap();
    let mut rogue = std::process::Command::new(cluster::bin_dir().unwrap().join("edge-node"))
        .arg("--config")
        .arg(&config_path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // The gateway received its identity and refused it.
    let refused = support::eventually(std::time::Duration::from_secs(10), || async {
        support::gateway_status(&cluster).await["gossip"]["forged"].as_u64() >= Some(1)
    })
    .await;
    let in_view = support::node_state(&cluster, "rogue").await;
    let c = client(&cluster).await;
    let answers = answered_by(&c, &url(&cluster, "/fib?n=10"), 24).await;
    let _ = rogue.kill();
    let _ = rogue.wait();
    assert!(
        refused,
        "the rogue node's identity was never refused: {}",
        cluster.log("gateway")
    );
    assert_eq!(in_view, None, "the rogue node reached the view");
    assert!(!answers.contains_key("rogue"), "{answers:?}");
    assert_eq!(answers.values().sum::<usize>(), 24);
    assert!(
        cluster.log("gateway").contains("gossip identity refused"),
        "{}",
        cluster.log("gateway")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_seeded_by_the_first_finds_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = fib_cluster(dir.path(), 1, RoutingPolicy::RoundRobin);
    let certs = cluster.certs();
    let config = edge_shared::config::GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: certs.gateway_cert.clone(),
        tls_key: certs.gateway_key.clone(),
        cluster_ca: certs.ca.clone(),
        cluster_cert: certs.member_cert.clone(),
        cluster_key: certs.member_key.clone(),
        gossip: edge_shared::config::GossipConfig {
            seeds: vec![cluster.gossip_seed().to_string()],
            key_file: certs.gossip_key.clone(),
            ..Default::default()
        },
        routing: RoutingPolicy::RoundRobin,
        functions: vec![function("fib", Limits::default())],
        ..Default::default()
    };
    let config_path = dir.path().join("gateway-2.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let announce = dir.path().join("gateway-2.addr");
    let log = std::fs::File::create(dir.path().join("gateway-2.log")).unwrap();
    let mut second = std::process::Command::new(cluster::bin_dir().unwrap().join("edge-gateway"))
        .arg("--config")
        .arg(&config_path)
        .arg("--announce")
        .arg(&announce)
        .args(["--expect-nodes", "3"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // It knows of no node but through the first gateway's gossip.
    let announced = support::eventually(std::time::Duration::from_secs(30), || async {
        std::fs::read_to_string(&announce).is_ok_and(|a| !a.is_empty())
    })
    .await;
    let addr: std::net::SocketAddr = std::fs::read_to_string(&announce)
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not announced ({announced})"));
    let tls = edge_net::client::trusting(&certs.ca).unwrap();
    let c = edge_net::client::H3Client::connect(addr, "localhost", tls)
        .await
        .unwrap();
    let answers = answered_by(
        &c,
        &format!("https://localhost:{}/fib?n=10", addr.port()),
        12,
    )
    .await;
    let first = answered_by(&client(&cluster).await, &url(&cluster, "/fib?n=10"), 6).await;
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(
        answers.len(),
        3,
        "the second gateway reached every node: {answers:?}"
    );
    assert_eq!(first.len(), 3, "the first gateway still serves: {first:?}");
}
