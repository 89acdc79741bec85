//! The wall between users and the cluster's control plane, attacked over real processes:
//! whatever the path, host or method a user sends, it reaches a function (or a 404) and
//! never a node's deploy or status handler.

mod support;

use bytes::Bytes;
use edge_shared::manifest::Limits;
use http::{Method, Request, StatusCode};
use support::{client, client_for, function, node_status, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_form_reaches_a_nodes_control_handlers() {
    let (cluster, _dir) = start(1, vec![function("hello", Limits::default())]);
    let port = cluster.gateway_addr().port();
    let deployed = || async {
        let status = node_status(&cluster, 0).await;
        let ids: Vec<String> = status["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect();
        ids
    };
    let deploys_before = deployed().await;
    let by_path = client(&cluster).await;
    let by_host = client_for(&cluster, "hello.edge.localhost").await;
    let control = [
        "/_edge/v1/status",
        "/_edge/v1/deployments/hello@0123456789abcdef",
    ];
    let mut tried = 0;
    for (c, host) in [(&by_path, "localhost"), (&by_host, "hello.edge.localhost")] {
        let mut paths: Vec<String> = control.iter().map(|p| p.to_string()).collect();
        for prefix in [
            "/hello",
            "/hello/..",
            "/hello/%2e%2e",
            "/hello/..%2f",
            "/hello/./..",
        ] {
            for p in control {
                paths.push(format!("{prefix}{p}"));
            }
        }
        for path in paths {
            for method in [Method::GET, Method::PUT] {
                let request = Request::builder()
                    .method(method.clone())
                    .uri(format!("https://{host}:{port}{path}"))
                    .body(())
                    .unwrap();
                let r = c
                    .send(request, Bytes::from_static(b"{}\n\0asm"))
                    .await
                    .unwrap();
                let text = String::from_utf8_lossy(&r.body).to_string();
                tried += 1;
                assert!(
                    (r.status == StatusCode::OK && text == "hello, world!\n")
                        || r.status == StatusCode::NOT_FOUND,
                    "{method} {host}{path}: {} {text}",
                    r.status
                );
                assert!(
                    !text.contains("\"load\"") && !text.contains("deploy"),
                    "{method} {host}{path} reached the control plane: {text}"
                );
            }
        }
    }
    assert_eq!(tried, 2 * 12 * 2);
    // Nothing was deployed on the way, and the function still answers.
    assert_eq!(deployed().await, deploys_before);
    let r = by_host
        .get(&format!("https://hello.edge.localhost:{port}/"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}
