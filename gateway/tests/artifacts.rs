//! Compiled artifacts travel between nodes, over real processes: a node that joins late
//! takes a warm function's artifact from the node that compiled it instead of compiling
//! it; a holder that stalls for a moment (as a node short of CPU does) is waited for
//! rather than compiled around; requests that meet a cold node together deploy there
//! once; an artifact changed after it was signed is refused and
//! compiled instead; and a node's certificate reaches another node's artifacts and
//! nothing else there.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use edge_cli::cluster::LocalCluster;
use edge_net::client::H3Client;
use edge_shared::artifact::SignedArtifact;
use edge_shared::config::RoutingPolicy;
use edge_shared::manifest::Limits;
use edge_shared::wire;
use http::{Method, Request, StatusCode};
use support::{client, function, node_status, url};

/// One node serving `hello` (round robin, so a node that joins gets requests at once),
/// warm after a first request.
async fn hello_on_one_node() -> (LocalCluster, tempfile::TempDir, H3Client) {
    let (cluster, dir) =
        support::start_with(1, vec![function("hello", Limits::default())], |spec| {
            spec.routing = RoutingPolicy::RoundRobin;
        });
    let c = client(&cluster).await;
    let r = c.get(&url(&cluster, "/hello")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    (cluster, dir, c)
}

/// Adds a node and waits until the gateway routes to it.
async fn add_node(cluster: &mut LocalCluster) -> usize {
    let i = cluster.add_node().unwrap();
    let name = format!("node-{}", i + 1);
    let joined = support::eventually(Duration::from_secs(10), || async {
        support::node_state(cluster, &name).await.as_deref() == Some("usable")
    })
    .await;
    assert!(joined, "{}", support::gateway_status(cluster).await);
    i
}

/// Calls `hello` until node `i` has answered, at most 20 times.
async fn until_answered_by(cluster: &LocalCluster, c: &H3Client, i: usize) {
    let name = format!("node-{}", i + 1);
    for _ in 0..20 {
        let r = c.get(&url(cluster, "/hello")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        if r.header(wire::NODE_HEADER) == Some(name.as_str()) {
            return;
        }
    }
    panic!("{name} never answered: {}", cluster.log(&name));
}

fn counter(status: &serde_json::Value, key: &str) -> u64 {
    status[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {status}"))
}

/// The compiled artifacts in node `name`'s cache.
fn artifacts_of(cluster: &LocalCluster, name: &str) -> Vec<PathBuf> {
    let root = cluster.dir().join(name).join("cache").join("artifacts");
    let mut found = Vec::new();
    for engine in std::fs::read_dir(&root).unwrap() {
        for file in std::fs::read_dir(engine.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "bin") {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_late_takes_the_artifact_from_a_peer_and_compiles_nothing() {
    let (mut cluster, _dir, c) = hello_on_one_node().await;
    let first = node_status(&cluster, 0).await;
    assert_eq!(counter(&first, "compiles"), 1, "{first}");

    let i = add_node(&mut cluster).await;
    until_answered_by(&cluster, &c, i).await;

    let late = node_status(&cluster, i).await;
    assert_eq!(counter(&late, "compiles"), 0, "{late}");
    assert_eq!(counter(&late, "fetched_artifacts"), 1, "{late}");
    assert_eq!(counter(&late, "refused_fetches"), 0, "{late}");
    let first = node_status(&cluster, 0).await;
    assert_eq!(counter(&first, "served_artifacts"), 1, "{first}");
    assert_eq!(counter(&first, "compiles"), 1, "{first}");
    let log = cluster.log("node-2");
    assert!(log.contains("artifact taken from a peer"), "{log}");

    // It hands the artifact on with the compiling node's signature: a third node takes
    // it from either, still without compiling.
    let third = add_node(&mut cluster).await;
    until_answered_by(&cluster, &c, third).await;
    let status = node_status(&cluster, third).await;
    assert_eq!(
        (
            counter(&status, "compiles"),
            counter(&status, "fetched_artifacts")
        ),
        (0, 1),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_asked_right_after_a_deploy_takes_the_artifact_from_where_the_gateway_loaded_it() {
    // Gossip rounds of 2 s: the home node's warm set reaches the other node seconds
    // after the deploy, so only the gateway's word says where the artifact is.
    let (cluster, _dir) = support::start_with(2, Vec::new(), |spec| {
        spec.routing = RoutingPolicy::RoundRobin;
        spec.gossip_interval_ms = 2000;
    });
    let admin = support::admin(&cluster);
    let body = support::deploy_request("hello", serde_json::json!({}));
    support::admin_call(&admin, Method::PUT, "/v1/functions/hello", Some(body), 201).await;
    let c = client(&cluster).await;
    for i in 0..2 {
        until_answered_by(&cluster, &c, i).await;
    }
    let statuses = [
        node_status(&cluster, 0).await,
        node_status(&cluster, 1).await,
    ];
    let loads = |s: &serde_json::Value| (counter(s, "compiles"), counter(s, "fetched_artifacts"));
    let mut seen = [loads(&statuses[0]), loads(&statuses[1])];
    seen.sort();
    // One compile on the home node at the deploy; the other node fetched it.
    assert_eq!(seen, [(0, 1), (1, 0)], "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_changed_after_it_was_signed_is_refused_and_compiled_instead() {
    let (mut cluster, _dir, c) = hello_on_one_node().await;
    // Someone with access to node-1's disk (not to its key) changes the compiled code.
    let artifacts = artifacts_of(&cluster, "node-1");
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let mut bytes = std::fs::read(&artifacts[0]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a;
    std::fs::write(&artifacts[0], &bytes).unwrap();

    let i = add_node(&mut cluster).await;
    until_answered_by(&cluster, &c, i).await;
    let late = node_status(&cluster, i).await;
    // At least once: a deploy and a request may each have asked before either compiled.
    assert!(counter(&late, "refused_fetches") >= 1, "{late}");
    assert_eq!(counter(&late, "fetched_artifacts"), 0, "{late}");
    assert_eq!(counter(&late, "compiles"), 1, "{late}");
    let log = cluster.log("node-2");
    assert!(
        log.contains("artifact from a peer refused")
            && log.contains("bytes that are not the ones signed"),
        "{log}"
    );
    // node-1 still serves from the module in its memory.
    for _ in 0..4 {
        let r = c.get(&url(&cluster, "/hello")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
}

/// An HTTP/3 client to node `i` presenting node `as_node`'s certificate.
async fn as_node(cluster: &LocalCluster, i: usize, as_node: &str) -> H3Client {
    let own = cluster.certs().node(as_node).unwrap();
    presenting(cluster, i, &own.cert, &own.key).await
}

/// Two nodes under `routing`, `hello` placed (compiled) on its home node only; which
/// node that is.
async fn hello_placed_on_one_of_two(
    routing: RoutingPolicy,
) -> (LocalCluster, tempfile::TempDir, usize) {
    let (cluster, dir) =
        support::start_with(2, vec![function("hello", Limits::default())], |spec| {
            spec.routing = routing;
        });
    let compiles = [
        counter(&node_status(&cluster, 0).await, "compiles"),
        counter(&node_status(&cluster, 1).await, "compiles"),
    ];
    let home = match compiles {
        [1, 0] => 0,
        [0, 1] => 1,
        _ => panic!("hello not placed on one node alone: compiles {compiles:?}"),
    };
    (cluster, dir, home)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_meet_a_cold_node_together_deploy_there_once() {
    let (cluster, _dir, home) = hello_placed_on_one_of_two(RoutingPolicy::RoundRobin).await;
    let cold = 1 - home;
    let deployed_there = || {
        let line = format!("deployed on node node={}", cluster.node_addrs()[cold]);
        cluster.log("gateway").matches(&line).count()
    };
    assert_eq!(deployed_there(), 0);

    // 32 requests at once, half of them to the cold node (round robin): the first to
    // find hello missing there deploys it, the others wait for that deploy.
    let c = std::sync::Arc::new(client(&cluster).await);
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (c, at) = (std::sync::Arc::clone(&c), url(&cluster, "/hello"));
        requests.spawn(async move { c.get(&at).await.unwrap().status });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(deployed_there(), 1, "{}", cluster.log("gateway"));
}

/// An HTTP/3 client to node `i` presenting the certificate `cert` (key `key`).
async fn presenting(cluster: &LocalCluster, i: usize, cert: &Path, key: &Path) -> H3Client {
    let identity = edge_net::tls::Identity { cert, key };
    let ca = &cluster.certs().ca;
    let tls = edge_net::tls::client_config(ca, Some(identity), &[wire::ALPN_H3]).unwrap();
    H3Client::connect(cluster.node_addrs()[i], wire::NODE_SERVER_NAME, tls)
        .await
        .unwrap()
}

/// An HTTP/3 client to node `i` presenting the gateway's member certificate.
async fn as_gateway(cluster: &LocalCluster, i: usize) -> H3Client {
    let certs = cluster.certs();
    presenting(cluster, i, &certs.member_cert, &certs.member_key).await
}

/// The deploy of example `name` a gateway sends a node, naming node `holder` as where it
/// was loaded before.
fn deploy_naming(cluster: &LocalCluster, name: &str, holder: usize) -> (Request<()>, Bytes) {
    let wasm = std::fs::read(support::example(name)).unwrap();
    let manifest = edge_shared::manifest::FunctionManifest {
        name: name.into(),
        content_id: edge_shared::manifest::ContentId::of(&wasm),
        routes: Vec::new(),
        env: Default::default(),
        secrets: Default::default(),
        limits: Limits::default(),
    };
    let request = Request::put(format!(
        "https://{}{}{}",
        wire::NODE_SERVER_NAME,
        wire::DEPLOY_PATH,
        manifest.deployment_id()
    ))
    .header(
        wire::HOLDERS_HEADER,
        cluster.node_addrs()[holder].to_string(),
    )
    .body(())
    .unwrap();
    (
        request,
        Bytes::from(wire::encode_deploy_body(&manifest, &wasm)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_that_wait_on_a_fetch_from_a_paused_holder_compile_without_asking_it_again() {
    let (cluster, _dir, home) = hello_placed_on_one_of_two(RoutingPolicy::LeastLoadedWarm).await;
    let other = 1 - home;
    let failed_asks = || {
        let log = cluster.log(&format!("node-{}", other + 1));
        log.matches("fetching an artifact failed").count()
    };

    // Two loads of hello on the other node at once (as when a deploy and a request meet
    // there) while its only holder is paused, as a node that died is before gossip
    // says so: the first asks the holder, the second waits for that answer.
    assert!(cluster.signal_node(home, "STOP"));
    let gateway = as_gateway(&cluster, other).await;
    let ((first, body), (second, _)) = (
        deploy_naming(&cluster, "hello", home),
        deploy_naming(&cluster, "hello", home),
    );
    let (a, b) = tokio::join!(
        gateway.send(first, body.clone()),
        gateway.send(second, body)
    );
    assert!(cluster.signal_node(home, "CONT"));
    for reply in [a.unwrap(), b.unwrap()] {
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    }
    let status = node_status(&cluster, other).await;
    assert_eq!(counter(&status, "compiles"), 1, "{status}");
    assert_eq!(counter(&status, "fetched_artifacts"), 0, "{status}");
    // The holder was asked once: the second load compiled rather than wait out the
    // paused holder a second time.
    assert_eq!(
        failed_asks(),
        1,
        "{}",
        cluster.log(&format!("node-{}", other + 1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_stalls_as_under_load_still_hands_over_the_artifact() {
    let (cluster, _dir, home) = hello_placed_on_one_of_two(RoutingPolicy::LeastLoadedWarm).await;
    let other = 1 - home;

    // The gateway deploys on the other node, naming the home node as holder: first echo,
    // which the home node lacks (the other compiles it, its connection to the home node
    // open from then on), then hello while the home node stalls for 700 ms, as a node
    // short of CPU does: longer than artifacts.ask_next_after_ms (250), well within
    // fetch_timeout_ms (2000).
    let deploy = |name: &str| deploy_naming(&cluster, name, home);
    let gateway = as_gateway(&cluster, other).await;
    let (request, body) = deploy("echo");
    let reply = gateway.send(request, body).await.unwrap();
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let (deploy, body) = deploy("hello");
    assert!(cluster.signal_node(home, "STOP"));
    let resume = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(cluster.signal_node(home, "CONT"));
    };
    let (reply, ()) = tokio::join!(gateway.send(deploy, body), resume);
    let reply = reply.unwrap();
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let answer: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(answer["source"], "peer", "{answer}");
    let status = node_status(&cluster, other).await;
    let loads = (
        counter(&status, "compiles"),
        counter(&status, "fetched_artifacts"),
    );
    // echo compiled, hello fetched.
    assert_eq!(
        loads,
        (1, 1),
        "{status}\n{}",
        cluster.log(&format!("node-{}", other + 1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_reaches_a_peers_artifacts_and_nothing_else() {
    let (cluster, _dir, _c) = hello_on_one_node().await;
    let status = node_status(&cluster, 0).await;
    let deployment = status["deployments"][0]["id"].as_str().unwrap().to_string();
    let artifact = artifacts_of(&cluster, "node-1").remove(0);
    let content_id = artifact.file_stem().unwrap().to_str().unwrap().to_string();
    let engine = artifact
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let peer = as_node(&cluster, 0, "node-9").await;
    let base = format!("https://{}", wire::NODE_SERVER_NAME);

    // The artifact, with a seal that names node-1 and the module.
    let r = peer
        .get(&format!(
            "{base}{}{content_id}?engine={engine}",
            wire::ARTIFACT_PATH
        ))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let (seal, bytes) = SignedArtifact::split(&r.body).unwrap();
    let seal = SignedArtifact::decode(seal).unwrap();
    assert_eq!(seal.claims.node, "node-1");
    assert_eq!(seal.claims.content_id.as_str(), content_id);
    assert_eq!(seal.claims.digest, edge_shared::artifact::digest(bytes));
    // Another engine key's, or a module it does not hold: not found.
    for path in [
        format!(
            "{}{content_id}?engine=0000000000000000",
            wire::ARTIFACT_PATH
        ),
        format!("{}{content_id}", wire::ARTIFACT_PATH),
        format!("{}{}?engine={engine}", wire::ARTIFACT_PATH, "0".repeat(64)),
    ] {
        let r = peer.get(&format!("{base}{path}")).await.unwrap();
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{path}: {:?} {:?}",
            r.headers,
            r.body
        );
    }
    // Nothing else: no invocation, deploy, status, usage or tail.
    let invoke = Request::get(format!("{base}/hello"))
        .header(wire::FUNCTION_HEADER, &deployment)
        .body(())
        .unwrap();
    let r = peer.send(invoke, Bytes::new()).await.unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    let undeploy = Request::builder()
        .method(Method::DELETE)
        .uri(format!("{base}{}{deployment}", wire::DEPLOY_PATH))
        .body(())
        .unwrap();
    let r = peer.send(undeploy, Bytes::new()).await.unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    for path in [wire::STATUS_PATH, wire::USAGE_PATH, "/_edge/v1/tail/hello"] {
        let r = peer.get(&format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
    // The deployment is still there and warm.
    let status = node_status(&cluster, 0).await;
    assert_eq!(status["deployments"][0]["id"], deployment.as_str());

    // The public certificate, though of the same CA, is no member's: refused at the
    // handshake (it is for TLS servers only).
    let certs = cluster.certs();
    let public = edge_net::tls::Identity {
        cert: &certs.gateway_cert,
        key: &certs.gateway_key,
    };
    let tls = edge_net::tls::client_config(&certs.ca, Some(public), &[wire::ALPN_H3]).unwrap();
    let refused =
        match H3Client::connect(cluster.node_addrs()[0], wire::NODE_SERVER_NAME, tls).await {
            Err(_) => true,
            Ok(c) => c
                .get(&format!(
                    "{base}{}{content_id}?engine={engine}",
                    wire::ARTIFACT_PATH
                ))
                .await
                .is_err(),
        };
    assert!(refused, "the public certificate fetched an artifact");
}

/// The `ms=` figure of the first line of `log` that contains `what`.
fn logged_ms(log: &str, what: &str) -> f64 {
    let line = log
        .lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} in {log}"));
    let at = line.find("ms=").unwrap() + 3;
    line[at..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The spill to a new node both ways, for BENCHMARKS.md: what node-1 paid to compile
/// each module, and what node-2, joining late, paid to fetch the artifact (connection,
/// transfer, signature check, kept on disk) and deserialize it. A measurement, not a
/// test of speed (nothing here is timed against a threshold):
/// `cargo test -p edge-gateway --test artifacts -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn spill_timings() {
    use base64::Engine as _;
    let (mut cluster, _dir, c) = hello_on_one_node().await;
    let wasm = wat::parse_str(edge_shared::synthetic::module_wat(1 << 20, Some("big"))).unwrap();
    let body = serde_json::json!({
        "module": base64::engine::general_purpose::STANDARD.encode(&wasm),
    });
    let admin = support::admin(&cluster);
    support::admin_call(&admin, Method::PUT, "/v1/functions/big", Some(body), 201).await;
    let r = c.get(&url(&cluster, "/big")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    let i = add_node(&mut cluster).await;
    for path in ["/hello", "/big"] {
        let name = format!("node-{}", i + 1);
        let mut answered = false;
        for _ in 0..20 {
            let r = c.get(&url(&cluster, path)).await.unwrap();
            assert_eq!(r.status, StatusCode::OK);
            answered |= r.header(wire::NODE_HEADER) == Some(name.as_str());
            if answered {
                break;
            }
        }
        assert!(answered, "{path}");
    }
    let late = node_status(&cluster, i).await;
    assert_eq!(counter(&late, "compiles"), 0, "{late}");
    let (first, second) = (cluster.log("node-1"), cluster.log("node-2"));
    println!(
        "wasm bytes: hello {}, big {}",
        std::fs::read(support::example("hello")).unwrap().len(),
        wasm.len()
    );
    for function in ["hello", "big"] {
        let compiled = format!("function=\"{function}\"");
        let compiled = compiled.as_str();
        let compile = first
            .lines()
            .find(|l| l.contains("module compiled") && l.contains(compiled))
            .map(|l| logged_ms(l, "module compiled"))
            .unwrap();
        let fetches: Vec<&str> = second
            .lines()
            .filter(|l| {
                l.contains("artifact taken from a peer")
                    && l.contains(&format!("deployment={function}@"))
            })
            .collect();
        let loads: Vec<&str> = second
            .lines()
            .filter(|l| l.contains("module loaded from the disk cache") && l.contains(compiled))
            .collect();
        println!(
            "{function}: compile {compile:.1} ms; fetch {:.1} ms + deserialize {:.1} ms",
            logged_ms(fetches[0], "artifact taken"),
            logged_ms(loads[0], "module loaded")
        );
    }
}
