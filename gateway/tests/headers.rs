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

/// The `traceparent` and `tracestate` the function `echo` received for a request with
/// `headers`.
async fn traced(
    c: &edge_net::client::H3Client,
    at: &str,
    headers: &[(&str, &str)],
) -> (String, Option<String>) {
    let mut request = Request::get(at);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = c
        .send(request.body(()).unwrap(), Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let echoed: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let got = |name: &str| echoed["headers"][name].as_str().map(str::to_string);
    (
        got("traceparent").expect("a traceparent reaches the function"),
        got("tracestate"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_is_honoured_when_well_formed_and_started_afresh_when_not() {
    use edge_shared::trace::TraceContext;
    let (cluster, _dir) = start(1, vec![function("echo", Limits::default())]);
    let c = client(&cluster).await;
    let at = url(&cluster, "/echo");
    let user = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    // Well-formed: the same trace and flags, sent on by the gateway's own span; its
    // tracestate goes along.
    let (parent, state) = traced(
        &c,
        &at,
        &[("traceparent", user), ("tracestate", "vendor=1")],
    )
    .await;
    let (sent, got) = (
        TraceContext::parse(user).unwrap(),
        TraceContext::parse(&parent).unwrap(),
    );
    assert_eq!(
        (got.trace_id, got.flags),
        (sent.trace_id, sent.flags),
        "{parent}"
    );
    assert_ne!(got.parent_id, sent.parent_id, "{parent}");
    assert_eq!(state.as_deref(), Some("vendor=1"));

    // Malformed, twice given, or absent: a new trace, valid, and no tracestate.
    let upper = user.to_uppercase();
    let cases: [&[(&str, &str)]; 4] = [
        &[("traceparent", upper.as_str()), ("tracestate", "vendor=1")],
        &[(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )],
        &[("traceparent", user), ("traceparent", user)],
        &[],
    ];
    let mut traces = std::collections::HashSet::new();
    for headers in cases {
        let (parent, state) = traced(&c, &at, headers).await;
        let got = TraceContext::parse(&parent).unwrap_or_else(|| panic!("{headers:?}: {parent}"));
        assert_ne!(got.trace_id, sent.trace_id, "{headers:?}: {parent}");
        assert_eq!(state, None, "{headers:?}");
        traces.insert(got.trace_id);
    }
    assert_eq!(traces.len(), 4, "each new trace is its own");
}
