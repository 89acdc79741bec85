//! The headers at the wall between users, functions and the cluster, attacked over real
//! processes: a guest cannot speak for its node (no forged refusal, timing, node name or
//! `alt-svc`, no 1xx), and a user cannot smuggle the cluster's own headers to a guest.

mod support;

use std::process::Command;

use bytes::Bytes;
use edge_shared::manifest::Limits;
use http::{Request, StatusCode};
use support::{FunctionConfig, client, function, node_status, start, url};

/// A guest module answering `head` and `forged` as its body, written to `dir`.
fn guest(dir: &std::path::Path, name: &str, head: &str) -> FunctionConfig {
    let answer = format!("{head}\n\nforged\n");
    let escaped: String = answer.bytes().map(|b| format!("\\{b:02x}")).collect();
    let wat = format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 64) "{escaped}")
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 64))
            (i32.store (i32.const 4) (i32.const {len}))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#,
        len = answer.len()
    );
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wat::parse_str(&wat).unwrap()).unwrap();
    FunctionConfig {
        name: name.into(),
        module: path,
        ..FunctionConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_cannot_forge_the_nodes_signals_and_a_user_cannot_forge_the_clusters() {
    let guests = tempfile::tempdir().unwrap();
    let forger = guest(
        guests.path(),
        "forger",
        "Status: 200\nx-edge-refused: not-found\nX_Edge_Node: impostor\n\
         server-timing: run;dur=0.001\nalt-svc: h3=\":1\"\nconnection: close",
    );
    let switcher = guest(guests.path(), "switcher", "Status: 101 Switching Protocols");
    let (cluster, _dir) = start(
        2,
        vec![
            forger,
            switcher,
            function("echo", Limits::default()),
            function("hello", Limits::default()),
        ],
    );
    let c = client(&cluster).await;
    let requests = || async {
        let mut n = 0;
        for i in 0..2 {
            n += node_status(&cluster, i).await["requests"].as_u64().unwrap();
        }
        n
    };
    let before = requests().await;
    // A POST whose guest claims `not-found`: the gateway must not redeploy and run it
    // again; the user gets the guest's answer without the forged headers.
    let post = Request::post(url(&cluster, "/forger")).body(()).unwrap();
    let r = c.send(post, Bytes::from_static(b"pay")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"forged\n");
    assert_eq!(r.header("x-edge-refused"), None);
    assert!(r.header("x-edge-node").unwrap().starts_with("node-"));
    assert_eq!(r.header("x_edge_node"), None);
    assert!(
        r.header("server-timing").unwrap().contains("total"),
        "the cluster's own timings: {:?}",
        r.header("server-timing")
    );
    assert_ne!(r.header("alt-svc"), Some("h3=\":1\""));
    assert_eq!(requests().await - before, 1, "the POST ran more than once");

    // A 1xx answer from a guest is its failure, not a protocol switch.
    let r = c.get(&url(&cluster, "/switcher")).await.unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);

    // Over HTTP/1.1 a user may send what HTTP/3 forbids: aliases of the cluster's
    // headers, and headers its Connection header nominates. None reaches the guest
    // (`echo` answers with the headers it saw).
    let out = Command::new("curl")
        .args(["-s", "--http1.1", "--cacert"])
        .arg(&cluster.certs().ca)
        .args([
            "-H",
            "X_Edge_Function: other@0000000000000000",
            "-H",
            "x-edge-request-id: forged",
            "-H",
            "Connection: keep-alive, x-secret",
            "-H",
            "x-secret: hop",
            "-H",
            "x-custom: kept",
        ])
        .arg(url(&cluster, "/echo").replace("localhost", "127.0.0.1"))
        .output()
        .expect("curl (scripts/install-test-deps.sh installs it)");
    let echoed: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let headers = echoed["headers"].as_object().unwrap();
    assert_eq!(
        headers.get("x-custom").and_then(|v| v.as_str()),
        Some("kept")
    );
    for smuggled in [
        "x-edge-function",
        "x-edge-request-id",
        "x-secret",
        "connection",
    ] {
        assert!(
            !headers.contains_key(smuggled),
            "{smuggled} reached the guest: {echoed}"
        );
    }
    assert!(!echoed.to_string().contains("forged"), "{echoed}");

    let r = c.get(&url(&cluster, "/hello")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
}
