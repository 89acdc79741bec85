//! Two gateways on one NATS JetStream registry, over real processes: a deploy at one is
//! served by both (the time until each serves it is measured and printed), as are a
//! rollback and a removal made at the other; two deploys at once at the two gateways get
//! distinct versions; a scheduled function fires once per tick across both gateways.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edge_cli::admin::AdminClient;
use edge_cli::cluster::LocalCluster;
use edge_net::client::{self, H3Client};
use edge_shared::config::RegistryKind;
use edge_shared::manifest::Limits;
use http::Method;
use support::{admin_call, answered_by, deploy_request, function, start_with};

/// An admin client and an HTTP/3 client per gateway.
struct Gateways {
    admins: Vec<AdminClient>,
    users: Vec<(H3Client, u16)>,
}

async fn gateways(cluster: &LocalCluster) -> Gateways {
    let certs = cluster.certs();
    let admins = cluster
        .admin_addrs()
        .iter()
        .map(|a| {
            let url = format!("https://127.0.0.1:{}", a.port());
            AdminClient::new(&url, &certs.ca, &certs.admin_token).unwrap()
        })
        .collect();
    let mut users = Vec::new();
    for addr in cluster.gateway_addrs() {
        let tls = client::trusting(&certs.ca).unwrap();
        users.push((
            H3Client::connect(addr, "localhost", tls).await.unwrap(),
            addr.port(),
        ));
    }
    Gateways { admins, users }
}

/// How long after `since` each gateway first answered `path` from `version`, every
/// gateway polled at once, each every 2 ms for at most 10 s (`None`: it never did).
async fn served_after(
    gateways: &Gateways,
    path: &str,
    version: u64,
    since: Instant,
) -> Vec<Option<Duration>> {
    let polls = gateways.users.iter().map(|(client, port)| async move {
        let url = format!("https://localhost:{port}{path}");
        for _ in 0..5000 {
            if let Ok(reply) = client.get(&url).await
                && reply.status == http::StatusCode::OK
                && answered_by(&reply) == version
            {
                return Some(since.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    });
    futures::future::join_all(polls).await
}

/// A NATS client of the cluster's registry over TLS trusting the cluster CA, presenting
/// `identity` (certificate, key) if given; checked by reading the functions' bucket.
async fn nats_client(
    cluster: &LocalCluster,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> anyhow::Result<async_nats::Client> {
    let identity = identity.map(|(cert, key)| edge_net::tls::Identity { cert, key });
    let tls = edge_net::tls::client_config(&cluster.certs().ca, identity, &[])?;
    let client = async_nats::ConnectOptions::new()
        .tls_client_config(tls)
        .require_tls(true)
        .connection_timeout(Duration::from_secs(5))
        .connect(cluster.nats_url().unwrap())
        .await?;
    let js = async_nats::jetstream::new(client.clone());
    js.get_key_value("edge-functions").await?;
    Ok(client)
}

fn shared(gateways: usize) -> impl FnOnce(&mut edge_shared::config::ClusterConfig) {
    move |spec| {
        spec.gateways = gateways;
        spec.registry = RegistryKind::Nats;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_at_one_gateway_is_served_by_the_other() {
    let (cluster, _dir) = start_with(1, vec![function("echo", Limits::default())], shared(2));
    let g = gateways(&cluster).await;
    let route = serde_json::json!({ "routes": [{ "path": "/greet" }] });
    let greet = "/v1/functions/greet";

    // Deploy at gateway 1, then a new body at gateway 2: each change is served by both,
    // and how long that took is measured from the deploy's answer.
    let mut figures = Vec::new();
    for (at, module, version) in [(0, "hello", 1), (1, "echo", 2)] {
        let body = deploy_request(module, route.clone());
        let deployed = admin_call(&g.admins[at], Method::PUT, greet, Some(body), 201).await;
        let acknowledged = Instant::now();
        assert_eq!(deployed["version"], version, "{deployed}");
        let after = served_after(&g, "/greet", version, acknowledged).await;
        assert!(
            after.iter().all(Option::is_some),
            "version {version}: {after:?}"
        );
        figures.push((format!("deploy v{version} at gateway {}", at + 1), after));
    }
    // A rollback at gateway 1: version 3, the first body, at both.
    let back = admin_call(
        &g.admins[0],
        Method::POST,
        &format!("{greet}/rollback"),
        None,
        201,
    )
    .await;
    let acknowledged = Instant::now();
    assert_eq!(
        (back["version"].as_u64(), back["restores"].as_u64()),
        (Some(3), Some(1))
    );
    let after = served_after(&g, "/greet", 3, acknowledged).await;
    assert!(after.iter().all(Option::is_some), "rollback: {after:?}");
    figures.push(("rollback to v1 at gateway 1".into(), after));
    for (client, port) in &g.users {
        let reply = client
            .get(&format!("https://localhost:{port}/greet"))
            .await
            .unwrap();
        assert_eq!(reply.body.as_ref(), b"hello, world!\n");
    }
    for (step, after) in &figures {
        let ms: Vec<String> = after
            .iter()
            .map(|d| format!("{:.1} ms", d.unwrap().as_secs_f64() * 1e3))
            .collect();
        eprintln!(
            "propagation: {step}: served at gateway 1 after {}, gateway 2 after {}",
            ms[0], ms[1]
        );
    }
    // Both gateways list the same versions.
    let one = admin_call(&g.admins[0], Method::GET, greet, None, 200).await;
    let two = admin_call(&g.admins[1], Method::GET, greet, None, 200).await;
    // (Which nodes hold a version warm is each gateway's gossip view, not the registry.)
    let versions = |view: &serde_json::Value| -> Vec<(u64, String)> {
        let list = view["versions"].as_array().unwrap().iter();
        list.map(|v| (v["number"].as_u64().unwrap(), v["content_id"].to_string()))
            .collect()
    };
    assert_eq!(versions(&one), versions(&two));
    assert_eq!(one["traffic"], two["traffic"]);

    // Two deploys at once, one at each gateway: distinct versions, 4 and 5.
    let bodies = ["one", "two"].map(|g| {
        deploy_request(
            "hello",
            serde_json::json!({ "routes": [{ "path": "/greet" }], "env": { "GREETING": g } }),
        )
    });
    let [a, b] = bodies;
    let (first, second) = tokio::join!(
        g.admins[0].call(Method::PUT, greet, Some(&a)),
        g.admins[1].call(Method::PUT, greet, Some(&b)),
    );
    let mut versions = [first.unwrap(), second.unwrap()].map(|r| {
        assert_eq!(r.status.as_u16(), 201, "{}", r.body);
        r.body["version"].as_u64().unwrap()
    });
    versions.sort_unstable();
    assert_eq!(versions, [4, 5]);
    let view = admin_call(&g.admins[0], Method::GET, greet, None, 200).await;
    assert_eq!(view["versions"].as_array().unwrap().len(), 5, "{view}");

    // A removal at gateway 2 stops gateway 1 serving it.
    admin_call(&g.admins[1], Method::DELETE, greet, None, 204).await;
    let (client, port) = &g.users[0];
    let url = format!("https://localhost:{port}/greet");
    let gone = support::eventually(Duration::from_secs(10), || async {
        client
            .get(&url)
            .await
            .is_ok_and(|r| r.status == http::StatusCode::NOT_FOUND)
    })
    .await;
    assert!(
        gone,
        "gateway 1 still serves greet after its removal at gateway 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_function_fires_once_per_tick_across_two_gateways() {
    let (cluster, _dir) = start_with(1, vec![function("echo", Limits::default())], shared(2));
    let g = gateways(&cluster).await;
    // Every 2 s (a leading seconds field), for a 12 s window.
    let body = deploy_request("echo", serde_json::json!({ "schedule": "*/2 * * * * *" }));
    let deployed = admin_call(
        &g.admins[1],
        Method::PUT,
        "/v1/functions/tick",
        Some(body),
        201,
    )
    .await;
    assert_eq!(deployed["version"], 1);
    let started = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let ended = std::time::SystemTime::now();

    // Each run is a log line at the gateway that fired it, naming its tick.
    let mut fired: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    let logs = [
        ("gateway", cluster.log("gateway")),
        ("gateway-2", cluster.log("gateway-2")),
    ];
    for (name, log) in &logs {
        for line in log.lines().filter(|l| l.contains("scheduled run")) {
            assert!(!line.contains("failed"), "{line}");
            let tick = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("tick="))
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("no tick in {line}"));
            fired.entry(tick).or_default().push(name);
        }
    }
    let twice: Vec<_> = fired.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(twice.is_empty(), "ticks fired more than once: {twice:?}");
    // Every tick of the window, in order, two seconds apart: none missed in between.
    let ticks: Vec<u64> = fired.keys().copied().collect();
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    };
    let expected = (ms(started).div_ceil(2000)..=ms(ended) / 2000)
        .map(|t| t * 2000)
        .collect::<Vec<_>>();
    assert!(ticks.len() >= 4, "only {ticks:?} fired in 12 s");
    assert!(ticks.windows(2).all(|w| w[1] - w[0] == 2000), "{ticks:?}");
    // The window's ticks were all fired (the first after the deploy may fall before the
    // schedule was served, the last may still be running).
    let inside: Vec<u64> = expected
        .iter()
        .copied()
        .filter(|t| *t > ticks[0] && *t < *ticks.last().unwrap())
        .collect();
    assert!(
        inside.iter().all(|t| fired.contains_key(t)),
        "{ticks:?} vs {expected:?}"
    );
    eprintln!(
        "schedule */2 s over 12 s: {} runs, by {:?}",
        ticks.len(),
        fired.values().map(|by| by[0]).collect::<Vec<_>>()
    );
    // The API shows the runs and the next tick, at either gateway.
    let view = admin_call(&g.admins[0], Method::GET, "/v1/functions/tick", None, 200).await;
    let schedule = &view["schedule"];
    assert!(
        schedule["runs"].as_u64().unwrap() >= ticks.len() as u64 - 1,
        "{view}"
    );
    assert_eq!(schedule["failed"], 0, "{view}");
    assert_eq!(schedule["last"]["status"], 200, "{view}");
    assert!(
        schedule["next_ms"].as_u64().unwrap() > ms(ended) - 2000,
        "{view}"
    );
    // A name no function can have is not found, whatever the call: it never becomes a
    // registry key (NATS refuses `*`, `>` and `%` in keys).
    for hostile in ["a*b", "%3E", "..", "TICK", "a%20b"] {
        let path = format!("/v1/functions/{hostile}");
        admin_call(&g.admins[0], Method::GET, &path, None, 404).await;
        admin_call(&g.admins[0], Method::DELETE, &path, None, 404).await;
        let traffic = serde_json::json!({ "traffic": [{ "version": 1, "percent": 100 }] });
        let path = format!("/v1/functions/{hostile}/traffic");
        admin_call(&g.admins[1], Method::PUT, &path, Some(traffic), 404).await;
    }
    // The list of every function, which lists the registry's keys while the schedule
    // keeps writing its runs (a listing that stalls is started again), at either gateway.
    for admin in &g.admins {
        let all = admin_call(admin, Method::GET, "/v1/functions", None, 200).await;
        let tick = all
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "tick")
            .unwrap_or_else(|| panic!("{all}"));
        assert!(tick["schedule"]["runs"].as_u64().unwrap() >= ticks.len() as u64 - 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_watch_could_not_serve_is_served_at_the_next_resync() {
    use async_nats::jetstream;
    use edge_gateway::registry::{FunctionRecord, FunctionSpec, Share, Version};
    use edge_shared::manifest::{ContentId, Route};

    let (cluster, _dir) = start_with(1, vec![function("echo", Limits::default())], |spec| {
        shared(2)(spec);
        spec.registry_resync_ms = 500;
    });
    let g = gateways(&cluster).await;
    // Straight into the bucket, as a gateway that died between its two writes would
    // leave it: a record whose module is not stored yet. Both gateways' watches see it
    // and cannot serve it.
    let certs = cluster.certs();
    let nats = nats_client(&cluster, Some((&certs.member_cert, &certs.member_key)))
        .await
        .unwrap();
    let js = jetstream::new(nats);
    let bucket = js.get_key_value("edge-functions").await.unwrap();
    let modules = js.get_object_store("edge-modules").await.unwrap();
    let wasm = std::fs::read(support::example("hello")).unwrap();
    let content_id = ContentId::of(&wasm);
    let spec = FunctionSpec {
        routes: vec![Route::Path("/late".into())],
        ..FunctionSpec::default()
    };
    let record = FunctionRecord {
        versions: vec![Version {
            number: 1,
            content_id: content_id.clone(),
            spec,
            created_ms: 0,
            restores: None,
        }],
        traffic: vec![Share {
            version: 1,
            percent: 100,
        }],
        history: vec![1],
        generation: 1,
        ..FunctionRecord::new("late")
    };
    let json = serde_json::to_vec(&record).unwrap();
    bucket.put("fn.late", json.into()).await.unwrap();
    let refused = support::eventually(Duration::from_secs(10), || async {
        ["gateway", "gateway-2"]
            .iter()
            .all(|g| cluster.log(g).contains("registry change not served"))
    })
    .await;
    assert!(
        refused,
        "a gateway served a version whose module is missing"
    );
    // The module arrives; no record changes, so no watch event: the resync serves it.
    modules
        .put(content_id.as_str(), &mut wasm.as_slice())
        .await
        .unwrap();
    for (client, port) in &g.users {
        let url = format!("https://localhost:{port}/late");
        let served = support::eventually(Duration::from_secs(10), || async {
            client
                .get(&url)
                .await
                .is_ok_and(|r| r.status == http::StatusCode::OK)
        })
        .await;
        assert!(
            served,
            "gateway at port {port} never served the resynced record"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_gateways_member_certificate_reaches_the_registry() {
    let (cluster, dir) = start_with(1, vec![function("echo", Limits::default())], shared(1));
    let certs = cluster.certs();
    // A plain TCP client: refused (the server requires TLS).
    let plain = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(cluster.nats_url().unwrap())
        .await;
    let plain_reads = match plain {
        Ok(client) => async_nats::jetstream::new(client)
            .get_key_value("edge-functions")
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(!plain_reads, "a client without TLS read the registry");
    // TLS without a certificate, with a node's (a client certificate of the CA, but not
    // naming the gateway role, the one user the server maps), with the public
    // one, and with one of another CA: each refused.
    let node = certs.node("node-1").unwrap();
    let other = edge_net::pki::ClusterCa::generate().unwrap();
    let stranger = other
        .issue_member(edge_net::gossip::Role::Gateway, "gateway")
        .unwrap();
    let (stranger_cert, stranger_key) = (dir.path().join("s.pem"), dir.path().join("s.key"));
    std::fs::write(&stranger_cert, &stranger.cert_pem).unwrap();
    std::fs::write(&stranger_key, &stranger.key_pem).unwrap();
    for (who, identity) in [
        ("no certificate", None),
        (
            "a node's certificate",
            Some((node.cert.as_path(), node.key.as_path())),
        ),
        (
            "the public certificate",
            Some((certs.gateway_cert.as_path(), certs.gateway_key.as_path())),
        ),
        (
            "another CA's gateway certificate",
            Some((stranger_cert.as_path(), stranger_key.as_path())),
        ),
    ] {
        let attempt = nats_client(&cluster, identity).await;
        assert!(attempt.is_err(), "{who} reached the registry");
    }
    // The gateways' member certificate does.
    nats_client(&cluster, Some((&certs.member_cert, &certs.member_key)))
        .await
        .unwrap();
}
