//! Short real runs of the `edge-loadtest` binary against a local cluster of real
//! processes: closed loop with a request budget, and an open-loop scenario file with a
//! weighted mix, each producing the table, JSON and SVG.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edge_cli::cluster::{LocalCluster, bin_dir};
use edge_shared::config::{ClusterConfig, FunctionConfig};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the example functions (the script skips what is up to date).
fn build_functions() {
    let built = Command::new(root().join("scripts/build-functions.sh"))
        .status()
        .unwrap();
    assert!(built.success());
}

fn cluster(dir: &Path) -> LocalCluster {
    build_functions();
    let function = |name: &str| FunctionConfig {
        name: name.into(),
        module: root().join(format!(
            "functions/target/wasm32-wasip1/release/{name}.wasm"
        )),
        ..FunctionConfig::default()
    };
    let spec = ClusterConfig {
        nodes: 2,
        node_worker_threads: 1,
        listen: "127.0.0.1:0".parse().unwrap(),
        functions: vec![function("hello"), function("echo")],
        ..ClusterConfig::default()
    };
    LocalCluster::start(&spec, dir, &bin_dir().unwrap()).unwrap()
}

/// Runs `command`, which must succeed.
fn succeeds(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn edge_loadtest() -> Command {
    Command::new(bin_dir().unwrap().join("edge-loadtest"))
}

/// `edge-loadtest args...` against `cluster`'s gateway, which must succeed.
fn loadtest(args: &[&str], cluster: &LocalCluster) -> Output {
    succeeds(
        edge_loadtest()
            .args(args)
            .args(["--connect", &cluster.gateway_addr().to_string(), "--ca"])
            .arg(&cluster.certs().ca),
    )
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_closed_loop_run_reports_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let out = dir.path().join("report.json");
    let port = cluster.gateway_addr().port();
    let output = loadtest(
        &[
            &format!("https://localhost:{port}/hello"),
            "--connections",
            "2",
            "--streams",
            "4",
            "--duration",
            "20s",
            "--requests",
            "400",
            "--json",
            out.to_str().unwrap(),
        ],
        &cluster,
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("p99") && text.contains("generator"), "{text}");
    let report = &json(&out)["target"];
    assert_eq!(report["requests"], 400, "{report}");
    assert_eq!(report["by_status"]["2xx"], 400, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert_eq!(
        report["by_node"].as_object().unwrap().len(),
        2,
        "both nodes served: {report}"
    );
    assert!(report["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn an_open_loop_scenario_sends_its_mix_at_its_rate_with_table_json_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let port = cluster.gateway_addr().port();
    let scenario = dir.path().join("scenario.toml");
    std::fs::write(
        &scenario,
        format!(
            r#"
target = "https://localhost:{port}"
duration = "2s"
warmup = "500ms"
rate = 200
connections = 2

[[requests]]
name = "hello"
path = "/hello?name=load"
weight = 3
expect_status = 200

[[requests]]
name = "echo"
method = "POST"
path = "/echo"
body = "ping"
expect_status = 200

[[requests]]
name = "missing"
path = "/no-such-function"
expect_status = 200
"#
        ),
    )
    .unwrap();
    let (out, svg) = (dir.path().join("r.json"), dir.path().join("r.svg"));
    let output = loadtest(
        &[
            "--scenario",
            scenario.to_str().unwrap(),
            "--json",
            out.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
        ],
        &cluster,
    );
    let table = String::from_utf8_lossy(&output.stdout);
    for row in [
        "hello",
        "echo",
        "missing",
        "cold starts",
        "in the cluster",
        "node queue",
        "guest run",
    ] {
        assert!(table.contains(row), "{row} missing from:\n{table}");
    }
    let report = &json(&out)["target"];
    // 200 per second for 2 s after the warm-up: 400 requests due, in a 3:1:1 mix.
    assert_eq!(report["requests"], 400, "{report}");
    assert_eq!(report["by_request"]["hello"]["count"], 240, "{report}");
    assert_eq!(report["by_request"]["echo"]["count"], 80, "{report}");
    assert_eq!(report["by_request"]["missing"]["count"], 80, "{report}");
    // The 404s are answers, counted as unexpected.
    assert_eq!(report["by_status"]["4xx"], 80, "{report}");
    assert_eq!(report["errors"]["unexpected-status"], 80, "{report}");
    // Where the time went, from `server-timing`: the 320 answers a guest made ran on a
    // node; the gateway timed those at least.
    assert_eq!(report["run"]["count"], 320, "{report}");
    assert_eq!(report["queue"]["count"], 320, "{report}");
    let in_cluster = report["in_cluster"]["count"].as_u64().unwrap();
    assert!((320..=400).contains(&in_cluster), "{report}");
    assert!(report["run"]["p50_ms"].as_f64().unwrap() > 0.0, "{report}");
    // By completion time: the last answers may land just after the second second.
    let seconds = report["per_second"].as_array().unwrap().len();
    assert!((2..=3).contains(&seconds), "{report}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
}

#[test]
fn a_bad_scenario_file_is_refused_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("bad.toml");
    std::fs::write(&scenario, "rate = \"fast\"\n").unwrap();
    let output = edge_loadtest()
        .arg("--scenario")
        .arg(&scenario)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("rate"),
        "{stderr}"
    );
}

#[test]
fn baseline_runs_the_same_load_against_a_bare_server_and_a_bare_relay_and_reports_the_fractions() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let out = dir.path().join("r.json");
    let port = cluster.gateway_addr().port();
    let output = loadtest(
        &[
            &format!("https://localhost:{port}/hello"),
            "--baseline",
            "--baseline-relay",
            "--connections",
            "1",
            "--streams",
            "4",
            "--duration",
            "1s",
            "--quiet",
            "--json",
            out.to_str().unwrap(),
        ],
        &cluster,
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("% of the bare transport"), "{text}");
    assert!(
        text.contains("bare relay: ") && text.contains("% of it"),
        "{text}"
    );
    let report = json(&out);
    assert_eq!(
        report["baseline"]["by_node"]["baseline"],
        report["baseline"]["answered"]
    );
    // Every answer through the relay came from the bare server behind it.
    assert!(report["relay"]["answered"].as_u64().unwrap() > 0);
    assert_eq!(
        report["relay"]["by_node"]["relay"],
        report["relay"]["answered"]
    );
    assert!(report["target"]["answered"].as_u64().unwrap() > 0);
}

#[test]
fn compare_runs_one_scenario_per_routing_policy_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    build_functions();
    let cluster_file = dir.path().join("cluster.toml");
    std::fs::write(
        &cluster_file,
        format!(
            "nodes = 2\nnode_worker_threads = 1\n[[functions]]\nname = \"hello\"\nmodule = {:?}\n",
            root().join("functions/target/wasm32-wasip1/release/hello.wasm")
        ),
    )
    .unwrap();
    let (out, svg) = (dir.path().join("c.json"), dir.path().join("c.svg"));
    let output = succeeds(
        edge_loadtest()
            .arg("compare")
            .arg("--cluster")
            .arg(&cluster_file)
            .args([
                "https://localhost/hello",
                "--duration",
                "1s",
                "--streams",
                "2",
            ])
            .args(["--connections", "1", "--quiet", "--json"])
            .arg(&out)
            .arg("--svg")
            .arg(&svg),
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("round-robin") && table.contains("random") && table.contains("p99 ms"),
        "{table}"
    );
    let report = json(&out);
    for policy in ["round-robin", "random"] {
        assert!(report[policy]["answered"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report[policy]["errors"], serde_json::json!({}), "{report}");
    }
    assert!(std::fs::read_to_string(&svg).unwrap().contains("random"));
}

#[test]
fn compare_also_runs_against_gateways_given_by_address() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let addr = cluster.gateway_addr().to_string();
    let output = succeeds(
        edge_loadtest()
            .arg("compare")
            .args([
                "--given",
                &format!("first={addr}"),
                "--given",
                &format!("second={addr}"),
            ])
            .args([
                "https://localhost/hello",
                "--duration",
                "1s",
                "--quiet",
                "--ca",
            ])
            .arg(&cluster.certs().ca),
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("first") && table.contains("second"),
        "{table}"
    );
}

#[test]
fn compare_runs_phases_on_each_cluster_file_and_counts_its_nodes_module_loads() {
    let dir = tempfile::tempdir().unwrap();
    build_functions();
    let hello = root().join("functions/target/wasm32-wasip1/release/hello.wasm");
    let mut files = Vec::new();
    for (label, share) in [("shared", true), ("alone", false)] {
        let file = dir.path().join(format!("{label}.toml"));
        std::fs::write(
            &file,
            format!(
                "nodes = 2\nnode_worker_threads = 1\nshare_artifacts = {share}\n\
                 prewarm = \"threshold\"\n[[functions]]\nname = \"hello\"\nmodule = {hello:?}\n"
            ),
        )
        .unwrap();
        files.push(format!("{label}={}", file.display()));
    }
    let phase = |name: &str, rate: u32| {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "target = \"https://localhost\"\nduration = \"1s\"\nwarmup = \"0s\"\n\
                 rate = {rate}\n[[requests]]\nname = \"hello\"\npath = \"/hello\"\n"
            ),
        )
        .unwrap();
        file
    };
    let (first, plateau) = (phase("first", 20), phase("plateau", 40));
    let out = dir.path().join("c.json");
    let output = succeeds(
        edge_loadtest()
            .args(["compare", "--clusters", &files[0], "--clusters", &files[1]])
            .arg("--scenario")
            .arg(&first)
            .arg("--then")
            .arg(&plateau)
            .arg("--keep")
            .arg(dir.path().join("kept"))
            .args(["--quiet", "--json"])
            .arg(&out),
    );
    // Each cluster's folder is kept, its logs in it.
    for label in ["shared", "alone"] {
        let log = dir.path().join("kept").join(label).join("node-1.log");
        assert!(log.is_file(), "{}", log.display());
    }
    let table = String::from_utf8_lossy(&output.stdout);
    // Labels longer than a column widen every column: two spaces before each at least.
    for row in [
        "warm %",
        "compiles",
        "fetched",
        "  shared plateau",
        "  alone first",
    ] {
        assert!(table.contains(row), "{row}: {table}");
    }
    let report = json(&out);
    for run in [
        "shared first",
        "shared plateau",
        "alone first",
        "alone plateau",
    ] {
        let r = &report[run];
        assert!(r["answered"].as_u64().unwrap() > 0, "{run}: {report}");
        assert_eq!(r["errors"], serde_json::json!({}), "{run}: {report}");
        // Deployed (compiled on its home node) before the load: no request meets a
        // cold start.
        assert_eq!(r["cold_starts"], 0, "{run}: {report}");
    }
    // The one load during the runs is hello's spare on the other node (min_warm_nodes
    // 2), off the request path, in whichever phase it ends: taken from the home node
    // where artifacts are shared, compiled where they are not.
    let loads = |cluster: &str, kind: &str| {
        ["first", "plateau"]
            .iter()
            .map(|phase| {
                report[format!("{cluster} {phase}")]["module_loads"][kind]
                    .as_u64()
                    .unwrap()
            })
            .sum::<u64>()
    };
    assert_eq!(
        (loads("shared", "compiles"), loads("shared", "fetched")),
        (0, 1),
        "{report}"
    );
    assert_eq!(
        (loads("alone", "compiles"), loads("alone", "fetched")),
        (1, 0),
        "{report}"
    );
}

#[test]
fn compare_refuses_a_cluster_label_named_twice_or_not_a_plain_name() {
    for (labels, why) in [
        (["a", "a"], "named twice"),
        (["a", "../b"], "a label must be a plain name"),
    ] {
        let mut command = edge_loadtest();
        command.arg("compare");
        for label in labels {
            command.args(["--clusters", &format!("{label}=config/cluster.toml")]);
        }
        let output = command
            .current_dir(root())
            .arg("https://localhost/hello")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(err.contains(why), "{err}");
    }
}
