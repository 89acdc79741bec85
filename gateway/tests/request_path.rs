//! End to end over HTTP/3: real gateway and node processes on loopback, each example
//! function, and every bad-input case of the request path.

mod support;

use bytes::Bytes;
use edge_shared::manifest::Limits;
use http::{Request, StatusCode};
use support::{client, client_for, function, node_status, start, url};

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_and_failures_over_http3() {
    let (cluster, _dir) = start(
        2,
        vec![
            function("hello", Limits::default()),
            function("echo", limits(|l| l.max_request_body_bytes = Some(4 << 20))),
            function("fib", Limits::default()),
            function("trap", Limits::default()),
            function("forever", limits(|l| l.timeout_ms = Some(300))),
            function("hog", limits(|l| l.memory_limit_mib = Some(16))),
            support::FunctionConfig {
                name: "echo-small".into(),
                ..function("echo", limits(|l| l.max_response_body_bytes = Some(1024)))
            },
        ],
    );
    let c = client(&cluster).await;
    let port = cluster.gateway_addr().port();

    // hello, with the headers every answer carries; under the default policy
    // (least-loaded-warm) one request at a time stays on the node where hello is warm.
    let mut nodes_seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let r = c.get(&url(&cluster, "/hello")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.starts_with(b"hello"), "{:?}", r.body);
        assert_eq!(
            r.header("alt-svc"),
            Some(format!("h3=\":{port}\"; ma=86400").as_str())
        );
        assert!(r.header("x-edge-request-id").is_some());
        let timing = r.header("server-timing").unwrap();
        for metric in [
            "deploy;",
            "cold;",
            "queue;",
            "instantiate;",
            "run;",
            "total;",
        ] {
            assert!(timing.contains(metric), "{timing}");
        }
        nodes_seen.insert(r.header("x-edge-node").unwrap().to_string());
    }
    assert_eq!(
        nodes_seen.len(),
        1,
        "sequential requests left the warm node: {nodes_seen:?}"
    );

    // Host routing: NAME.<domain> reaches the function at its root.
    let hosted = client_for(&cluster, "hello.edge.localhost").await;
    let r = hosted
        .get(&format!("https://hello.edge.localhost:{port}/?name=host"))
        .await
        .unwrap();
    assert_eq!(
        (r.status, &r.body[..]),
        (StatusCode::OK, &b"hello, host!\n"[..])
    );

    // echo: 1 MiB and more both ways, intact, with method, path, query and headers.
    let body: String = (0..(1 << 20) + 4321)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let request = Request::post(url(&cluster, "/echo/some/path?x=1&y=2"))
        .header("x-custom", "custom value")
        .body(())
        .unwrap();
    let r = c.send(request, Bytes::from(body.clone())).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let echoed: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path"], "/some/path");
    assert_eq!(echoed["query"], "x=1&y=2");
    assert_eq!(echoed["headers"]["x-custom"], "custom value");
    assert!(
        echoed["headers"].get("x-edge-function").is_none(),
        "cluster headers stay internal"
    );
    assert_eq!(echoed["body"].as_str().unwrap().len(), body.len());
    assert!(echoed["body"] == body.as_str(), "the echoed body differs");

    // fib: CPU-bound, and its own 400 for bad input.
    let r = c.get(&url(&cluster, "/fib?n=25")).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"75025\n"[..]));
    let r = c.get(&url(&cluster, "/fib?n=x")).await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Unknown route: 404 with a plain reason.
    let r = c.get(&url(&cluster, "/nothing-here")).await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&r.body).contains("no function"));

    // A body over the function's limit: 413, before any node sees it.
    let r = c
        .send(
            Request::post(url(&cluster, "/echo")).body(()).unwrap(),
            Bytes::from(vec![b'x'; 5 << 20]),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    // A trap: 500, the trap kind in the node's log and not in the body.
    let r = c.get(&url(&cluster, "/trap")).await.unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        !text.to_lowercase().contains("unreachable") && !text.contains("panicked"),
        "{text}"
    );
    let node = r.header("x-edge-node").unwrap().to_string();
    assert!(
        support::eventually(std::time::Duration::from_secs(5), || async {
            cluster
                .log(&node)
                .contains("function trapped: UnreachableCodeReached")
        })
        .await
    );
    assert!(
        cluster.log(&node).contains("trap asked to fail"),
        "the function's stderr is logged"
    );

    // A runaway loop: stopped at its timeout, 504.
    let r = c.get(&url(&cluster, "/forever")).await.unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);

    // Memory past the limit: 500, and the node says why.
    let r = c.get(&url(&cluster, "/hog")).await.unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let node = r.header("x-edge-node").unwrap().to_string();
    assert!(
        support::eventually(std::time::Duration::from_secs(5), || async {
            cluster
                .log(&node)
                .contains("ran out of memory at its 16 MiB limit")
        })
        .await
    );

    // A response over the function's limit: a failed response, never a truncated 200.
    let r = c
        .send(
            Request::post(url(&cluster, "/echo-small"))
                .body(())
                .unwrap(),
            Bytes::from(vec![b'x'; 4096]),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let node = r.header("x-edge-node").unwrap().to_string();
    assert!(
        support::eventually(std::time::Duration::from_secs(5), || async {
            cluster.log(&node).contains("byte response limit")
        })
        .await
    );
    let r = c
        .send(
            Request::post(url(&cluster, "/echo-small"))
                .body(())
                .unwrap(),
            Bytes::from_static(b"small"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);

    // After all of that, every node still serves.
    for _ in 0..4 {
        let r = c.get(&url(&cluster, "/hello")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_skipped_and_all_dead_is_502() {
    let (mut cluster, _dir) = start(2, vec![function("hello", Limits::default())]);
    let c = client(&cluster).await;
    for _ in 0..2 {
        assert_eq!(
            c.get(&url(&cluster, "/hello")).await.unwrap().status,
            StatusCode::OK
        );
    }
    cluster.kill_node(0);
    for _ in 0..6 {
        let r = c.get(&url(&cluster, "/hello")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.header("x-edge-node"), Some("node-2"));
    }
    cluster.kill_node(1);
    let r = c.get(&url(&cluster, "/hello")).await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        !String::from_utf8_lossy(&r.body).contains("127.0.0.1"),
        "node addresses stay internal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_deserializes_instead_of_compiling() {
    let (mut cluster, _dir) = start(1, vec![function("hello", Limits::default())]);
    let c = client(&cluster).await;
    assert_eq!(
        c.get(&url(&cluster, "/hello")).await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(node_status(&cluster, 0).await["compiles"], 1);

    cluster.restart_node(0).unwrap();
    let r = c.get(&url(&cluster, "/hello")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    // The restarted node's counters: no compile since it started, one artifact loaded
    // from disk.
    let status = node_status(&cluster, 0).await;
    assert_eq!(status["compiles"], 0, "{status}");
    assert_eq!(status["deserializations"], 1, "{status}");
}

/// Asks node 1 for its status over a client configured by `tls`.
async fn status_with(
    cluster: &edge_cli::cluster::LocalCluster,
    tls: rustls::ClientConfig,
) -> anyhow::Result<edge_net::client::Reply> {
    let c = edge_net::client::H3Client::connect(
        cluster.node_addrs()[0],
        edge_shared::wire::NODE_SERVER_NAME,
        tls,
    )
    .await?;
    c.get(&format!(
        "https://edge-node{}",
        edge_shared::wire::STATUS_PATH
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_only_cluster_members() {
    let (cluster, _dir) = start(1, vec![function("hello", Limits::default())]);
    // Trusting the node is not enough: without a member certificate, no request gets through.
    let tls = edge_net::client::trusting(&cluster.certs().ca).unwrap();
    let refused = status_with(&cluster, tls).await;
    assert!(
        refused.is_err(),
        "a client without a cluster certificate was served: {refused:?}"
    );
    // Nor is any certificate of the cluster CA a credential: the public one users see
    // (whose key sits on every gateway's internet-facing side) has no member role.
    let certs = cluster.certs();
    let public = edge_net::tls::Identity {
        cert: &certs.gateway_cert,
        key: &certs.gateway_key,
    };
    let tls = edge_net::tls::client_config(&certs.ca, Some(public), &[edge_shared::wire::ALPN_H3])
        .unwrap();
    let refused = status_with(&cluster, tls).await;
    assert!(
        refused.is_err(),
        "the public certificate was taken for a gateway's: {refused:?}"
    );
    // The gateway, a member, is served.
    let r = client(&cluster)
        .await
        .get(&url(&cluster, "/hello"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);

    // Its gossip is the same: the node's status shows one live member (the gateway),
    // and a datagram without the cluster key is counted as rejected.
    let mut before = serde_json::Value::Null;
    for _ in 0..100 {
        before = node_status(&cluster, 0).await["gossip"].clone();
        if before["live_members"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(before["live_members"], 1, "{before}");
    assert!(before["received"].as_u64().unwrap() > 0, "{before}");
    let gossip_addr: std::net::SocketAddr = before["addr"].as_str().unwrap().parse().unwrap();
    let intruder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    intruder.send_to(b"let me in", gossip_addr).unwrap();
    let counted = {
        let mut counted = false;
        for _ in 0..50 {
            let after = node_status(&cluster, 0).await["gossip"].clone();
            if after["rejected"].as_u64() > before["rejected"].as_u64() {
                counted = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        counted
    };
    assert!(counted, "the forged datagram was not counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_status_serves_only_cluster_members_and_never_on_the_users_port() {
    let (cluster, _dir) = start(1, vec![function("hello", Limits::default())]);
    let tls = edge_net::client::trusting(&cluster.certs().ca).unwrap();
    let status_url = format!("https://edge-gateway{}", edge_shared::wire::STATUS_PATH);
    let refused = async {
        let c =
            edge_net::client::H3Client::connect(cluster.gateway_status_addr(), "edge-gateway", tls)
                .await?;
        c.get(&status_url).await
    }
    .await;
    assert!(
        refused.is_err(),
        "a client without a cluster certificate was served: {refused:?}"
    );
    // A member sees the nodes.
    let status = support::gateway_status(&cluster).await;
    assert_eq!(status["nodes"][0]["name"], "node-1", "{status}");
    assert_eq!(status["nodes"][0]["state"], "usable", "{status}");
    // The users' port has no such path.
    let r = client(&cluster)
        .await
        .get(&url(&cluster, edge_shared::wire::STATUS_PATH))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
