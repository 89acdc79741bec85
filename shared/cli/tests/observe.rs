//! Following requests as an operator does: one request's ids in the gateway's, the
//! node's and the function's log lines, `edge tail` showing its call and log line as
//! they happen, and the tail's limits (unknown function, streams open, lines a second);
//! JSON logs; and the usage meter against a known load.

#[path = "../../../gateway/tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use bytes::Bytes;
use edge_cli::cluster::{LocalCluster, bin_dir};
use http::StatusCode;

/// How long a line of a tail may take to come.
const WITHIN: Duration = Duration::from_secs(20);

/// `edge ARGS` against `cluster`'s admin API, not started yet.
fn edge_command(cluster: &LocalCluster, args: &[&str]) -> Command {
    let mut command = Command::new(bin_dir().unwrap().join("edge"));
    command
        .args(args)
        .arg("--admin")
        .arg(format!("https://127.0.0.1:{}", cluster.admin_addr().port()))
        .arg("--ca")
        .arg(&cluster.certs().ca)
        .arg("--token-file")
        .arg(&cluster.certs().admin_token);
    command
}

/// `edge tail ARGS` against `cluster`, its stdout lines on a channel.
fn edge_tail(cluster: &LocalCluster, args: &[&str]) -> (Child, Receiver<String>) {
    let mut child = edge_command(cluster, &[&["tail"], args].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = support::lines_of(child.stdout.take().unwrap());
    (child, lines)
}

/// The next JSON line of a `--json` tail.
fn next_event(lines: &Receiver<String>) -> serde_json::Value {
    let line = lines.recv_timeout(WITHIN).expect("a line of edge tail");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// Waits until the tail says it tails `nodes` nodes.
fn wait_tailing(lines: &Receiver<String>, nodes: usize) {
    for _ in 0..nodes {
        let event = next_event(lines);
        assert_eq!(event["kind"], "tailing", "{event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_requests_ids_are_in_every_log_line_and_edge_tail_shows_its_call() {
    let (cluster, _dir) = support::start_with(
        2,
        vec![support::function("echo", Default::default())],
        |spec| spec.log_filter = "info,access=debug".into(),
    );
    let (mut tail, lines) = edge_tail(&cluster, &["echo", "--json", "--count", "2"]);
    wait_tailing(&lines, 2);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let said = format!("hello from the function {}", std::process::id());
    let c = support::client(&cluster).await;
    let request = http::Request::get(support::url(&cluster, "/echo"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("x-echo-log", &said)
        .body(())
        .unwrap();
    let r = c.send(request, Bytes::new()).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let request_id = r.header("x-edge-request-id").unwrap().to_string();
    let node = r.header("x-edge-node").unwrap().to_string();

    // The tail shows the function's line, then the call, each naming the request.
    let log = next_event(&lines);
    let call = next_event(&lines);
    for (event, kind) in [(&log, "log"), (&call, "call")] {
        assert_eq!(event["kind"], kind, "{event}");
        assert_eq!(event["request_id"], request_id.as_str(), "{event}");
        assert_eq!(event["trace_id"], trace_id, "{event}");
        assert_eq!(event["node"], node.as_str(), "{event}");
        assert_eq!(event["version"], 1, "{event}");
        assert_eq!(event["function"], "echo", "{event}");
    }
    assert_eq!(log["line"], said.as_str(), "{log}");
    assert_eq!(call["status"], 200, "{call}");
    assert!(call["ms"].as_f64().unwrap() > 0.0, "{call}");
    let exited = tail.wait().unwrap();
    assert!(exited.success(), "edge tail --count 2 exited {exited}");

    // Every process's lines carry the request id and the trace id.
    let carries = |process: &str, also: &str| {
        let log = cluster.log(process);
        log.lines()
            .any(|l| l.contains(&request_id) && l.contains(trace_id) && l.contains(also))
    };
    assert!(
        support::wait_for(WITHIN, || carries("gateway", "access")),
        "gateway:\n{}",
        cluster.log("gateway")
    );
    assert!(
        support::wait_for(WITHIN, || carries(&node, "access")),
        "{node}:\n{}",
        cluster.log(&node)
    );
    assert!(
        support::wait_for(WITHIN, || carries(&node, &said)),
        "the function's line on {node}:\n{}",
        cluster.log(&node)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_log_format_json_every_line_is_json_and_the_functions_line_names_its_request() {
    let (cluster, _dir) = support::start_with(
        1,
        vec![support::function("echo", Default::default())],
        |spec| spec.log_format = edge_shared::config::LogFormat::Json,
    );
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let said = "a line for the JSON log";
    let c = support::client(&cluster).await;
    let request = http::Request::get(support::url(&cluster, "/echo"))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .header("x-echo-log", said)
        .body(())
        .unwrap();
    let r = c.send(request, Bytes::new()).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let request_id = r.header("x-edge-request-id").unwrap().to_string();
    let lines = |process: &str| -> Vec<serde_json::Value> {
        cluster
            .log(process)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{process}: {l:?}: {e}")))
            .collect()
    };
    let found = support::wait_for(WITHIN, || {
        lines("node-1").iter().any(|l| {
            l["target"] == "function"
                && l["fields"]["message"] == said
                && l["fields"]["request_id"] == request_id.as_str()
                && l["fields"]["trace_id"] == trace_id
        })
    });
    assert!(found, "{}", cluster.log("node-1"));
    assert!(!lines("gateway").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_is_refused_for_no_function_or_past_the_open_limit_and_held_to_its_rate() {
    let (cluster, _dir) = support::start(1, vec![support::function("hello", Default::default())]);
    // No such function: refused, exit code 2, saying so.
    let (none, _) = edge_tail(&cluster, &["nope"]);
    let out = none.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404") && err.contains("nope"), "{err}");

    // admin.max_tails (4) streams at once; a fifth is refused while they run.
    let mut open: Vec<_> = (0..4)
        .map(|_| edge_tail(&cluster, &["hello", "--json"]))
        .collect();
    for (_, lines) in &open {
        wait_tailing(lines, 1);
    }
    let (fifth, _) = edge_tail(&cluster, &["hello"]);
    let out = fifth.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("429") && err.contains("admin.max_tails"),
        "{err}"
    );

    // A burst of calls over the rate (100 lines a second): the tail carries at most a
    // second's worth plus what refills while it lasts, and counts the rest as dropped.
    let c = std::sync::Arc::new(support::client(&cluster).await);
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..400)
        .map(|_| {
            let (c, url) = (std::sync::Arc::clone(&c), support::url(&cluster, "/hello"));
            tokio::spawn(async move { c.get(&url).await.unwrap().status })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
    let burst = started.elapsed();
    let (_, lines) = &open[0];
    let (mut shown, mut dropped) = (0u64, 0u64);
    while shown + dropped < 400 {
        let event = next_event(lines);
        match event["kind"].as_str() {
            Some("call") => shown += 1,
            Some("dropped") => dropped += event["lines"].as_u64().unwrap(),
            _ => panic!("{event}"),
        }
    }
    assert_eq!(shown + dropped, 400);
    let allowed = 100 + (burst.as_secs_f64() * 100.0).ceil() as u64 + 100;
    assert!(
        dropped > 0 && shown <= allowed,
        "{shown} shown, {dropped} dropped in {burst:?}"
    );
    for (child, _) in &mut open {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `edge ARGS` against `cluster`'s admin API: exit code, stdout, stderr.
fn edge(cluster: &LocalCluster, args: &[&str]) -> (i32, String, String) {
    let out = edge_command(cluster, args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `edge usage --json ARGS`, once every node answers.
fn usage_report(cluster: &LocalCluster, nodes: usize, args: &[&str]) -> serde_json::Value {
    let mut report = serde_json::Value::Null;
    let answered = support::wait_for(WITHIN, || {
        let (code, out, err) = edge(cluster, &[&["usage", "--json"], args].concat());
        assert_eq!(code, 0, "{err}");
        report = serde_json::from_str(&out).unwrap();
        report["nodes"].as_array().unwrap().len() == nodes
            && report["unanswered"].as_array().unwrap().is_empty()
    });
    assert!(answered, "not every node answered: {report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_usage_matches_a_known_load_and_survives_node_restarts() {
    let (mut cluster, _dir) = support::start(2, vec![support::function("fib", Default::default())]);
    let c = support::client(&cluster).await;
    let calls = 20;
    let mut run_us = 0.0;
    for _ in 0..calls {
        let r = c.get(&support::url(&cluster, "/fib?n=25")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let timing = edge_shared::wire::ServerTiming::parse(r.header("server-timing").unwrap());
        run_us += timing.get_ms("run").unwrap() * 1e3;
    }
    // The meter bills what the answers said they ran: N calls, their run times summed
    // (each rounded to the microsecond on both sides).
    let check = |report: &serde_json::Value| {
        let functions = report["functions"].as_array().unwrap();
        assert_eq!(functions.len(), 1, "{report}");
        let fib = &functions[0];
        assert_eq!(fib["function"], "fib");
        assert_eq!(fib["invocations"], calls, "{report}");
        assert_eq!(fib["errors"], 0, "{report}");
        let billed = fib["run_us"].as_f64().unwrap();
        assert!(
            (billed - run_us).abs() <= 2.0 * calls as f64,
            "billed {billed} µs, answers said {run_us} µs"
        );
        for key in ["fuel", "peak_memory_bytes", "bytes_out"] {
            assert!(fib[key].as_u64().unwrap() > 0, "{key}: {report}");
        }
        assert_eq!(fib["versions"][0]["version"], 1, "{report}");
        assert_eq!(fib["versions"][0]["invocations"], calls, "{report}");
    };
    check(&usage_report(&cluster, 2, &[]));
    let (code, table, _) = edge(&cluster, &["usage"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("fib") && table.contains(" v1 ") && table.contains("2 nodes"),
        "{table}"
    );

    // Both nodes restarted (SIGTERM, then started on their state): nothing is lost. The
    // second comes back on its old metrics port; the first's was taken while it was down
    // (by anything: an outgoing connection can be handed any free port), so it takes a
    // new one and announces it.
    let before = cluster.node_metrics_addrs().unwrap();
    let mut squatter = None;
    for i in 0..2 {
        cluster.terminate_node(i);
        assert!(
            cluster.wait_node(i, Duration::from_secs(30)).is_some(),
            "node {i} did not exit"
        );
        if i == 0 {
            squatter = Some(std::net::TcpListener::bind(before[0]).unwrap());
        }
        cluster.restart_node(i).unwrap();
    }
    let after = cluster.node_metrics_addrs().unwrap();
    assert_ne!(after[0], before[0]);
    assert_eq!(after[1], before[1]);
    drop(squatter);
    check(&usage_report(&cluster, 2, &[]));
    // The metrics carry the same counts.
    let mut counted = 0.0;
    for at in cluster.node_metrics_addrs().unwrap() {
        let metrics = support::scrape_at(at).await;
        counted += metrics
            .iter()
            .filter(|(k, _)| k.starts_with("edge_node_usage_invocations_total{"))
            .map(|(_, v)| v)
            .sum::<f64>();
    }
    assert_eq!(counted, f64::from(calls));
    // A window after the calls holds none of them.
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let report = usage_report(&cluster, 2, &["--since", &later]);
    assert_eq!(report["functions"], serde_json::json!([]), "{report}");
    // The API names a window it cannot read, and changes nothing.
    let refused = support::admin(&cluster)
        .call(http::Method::GET, "/v1/usage?since=yesterday", None)
        .await
        .unwrap();
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let why = refused.body["error"].as_str().unwrap();
    assert!(why.contains("since") && why.contains("yesterday"), "{why}");
    let (code, _, err) = edge(&cluster, &["usage", "--since", "soon"]);
    assert_eq!(code, 1);
    assert!(err.contains("--since \"soon\""), "{err}");
}
