//! The binaries as an operator meets them: `edge up` and `edge call`, and bad
//! configuration refused at start with the file and key named.

#[path = "../../../gateway/tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use edge_cli::cluster::bin_dir;
use support::{example, wait_for};

/// `edge up` of two nodes serving `hello` with its state in `dir/state`; its lines on
/// a channel as it prints them (a reader thread ends with the process).
fn edge_up(dir: &std::path::Path) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let cluster_file = dir.join("cluster.toml");
    std::fs::write(
        &cluster_file,
        format!(
            "nodes = 2\nnode_worker_threads = 1\nlisten = \"127.0.0.1:0\"\n[[functions]]\nname = \"hello\"\nmodule = {:?}\n",
            example("hello")
        ),
    )
    .unwrap();
    let mut up = Command::new(bin_dir().unwrap().join("edge"))
        .arg("up")
        .arg("--config")
        .arg(&cluster_file)
        .arg("--dir")
        .arg(dir.join("state"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let said = support::lines_of(up.stdout.take().unwrap());
    (up, said)
}

/// The first line of `said` containing `text`, waiting at most 60 s.
fn wait_line(said: &std::sync::mpsc::Receiver<String>, text: &str) -> String {
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        match said.recv_timeout(left) {
            Ok(line) if line.contains(text) => return line,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("edge up never said {text:?}");
}

/// Sends SIGTERM to `up` and waits (at most 20 s) for it to stop: its exit status.
fn sigterm(up: &mut std::process::Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(up.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        wait_for(Duration::from_secs(20), || matches!(
            up.try_wait(),
            Ok(Some(_))
        )),
        "edge up did not stop"
    );
    up.wait().unwrap()
}

/// The users' address `edge up` printed.
fn users_addr(said: &std::sync::mpsc::Receiver<String>) -> String {
    let line = wait_line(said, "edge: users connect to https://");
    let rest = line
        .strip_prefix("edge: users connect to https://")
        .unwrap();
    rest.split_whitespace().next().unwrap().to_string()
}

#[test]
fn edge_up_serves_and_edge_call_reaches_it_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let bins = bin_dir().unwrap();
    let (mut up, said) = edge_up(dir.path());
    let addr = users_addr(&said);
    let ca = dir.path().join("state/certs/ca.pem");
    let call = Command::new(bins.join("edge"))
        .arg("call")
        .arg("--ca")
        .arg(&ca)
        .arg(format!("https://{addr}/hello?name=cli"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&call.stdout);
    assert!(
        call.status.success(),
        "{}",
        String::from_utf8_lossy(&call.stderr)
    );
    assert!(out.starts_with("HTTP/3 200"), "{out}");
    assert!(out.contains("x-edge-node: node-"), "{out}");
    assert!(out.ends_with("hello, cli!\n"), "{out}");

    assert!(sigterm(&mut up).success());
    // Every process it started is gone.
    let state = dir.path().join("state");
    let left = Command::new("pgrep")
        .arg("-f")
        .arg(state.to_str().unwrap())
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "still running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

fn run(binary: &str, config: &std::path::Path) -> (i32, String) {
    let output = Command::new(bin_dir().unwrap().join(binary))
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[test]
fn bad_config_exits_at_start_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node.toml");
    std::fs::write(&node, "nmae = \"typo\"\n").unwrap();
    let (code, err) = run("edge-node", &node);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("node.toml") && err.contains("nmae"), "{err}");

    std::fs::write(&node, "worker_threads = 2000\n[defaults]\ntimeout_ms = 0\n").unwrap();
    let (code, err) = run("edge-node", &node);
    assert_eq!(code, 2, "{err}");
    for key in [
        "tls_cert",
        "cluster_ca",
        "worker_threads",
        "defaults.timeout_ms",
    ] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }

    // Seeds can come from the environment as a comma-separated list, checked the same.
    let output = Command::new(bin_dir().unwrap().join("edge-node"))
        .arg("--config")
        .arg(&node)
        .env("EDGE_NODE_GOSSIP__SEEDS", "10.0.0.1:7946,no-port")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("gossip.seeds[1]") && err.contains("no-port"),
        "{err}"
    );
    assert!(!err.contains("gossip.seeds[0]"), "{err}");

    let gateway = dir.path().join("gateway.toml");
    std::fs::write(&gateway, "listen = \"not an address\"\n").unwrap();
    let (code, err) = run("edge-gateway", &gateway);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("gateway.toml") && err.contains("listen"),
        "{err}"
    );

    // A name, a filter and a tail rate that cannot be, each named.
    std::fs::write(
        &gateway,
        "name = \"two words\"\nlog_filter = \"info,edge=loud\"\n[admin]\ntail_lines_per_second = 0\n",
    )
    .unwrap();
    let (code, err) = run("edge-gateway", &gateway);
    assert_eq!(code, 2, "{err}");
    for key in [
        "name: \"two words\"",
        "log_filter: \"edge=loud\"",
        "admin.tail_lines_per_second",
    ] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
}

#[test]
fn an_invalid_module_is_refused_at_gateway_start() {
    let dir = tempfile::tempdir().unwrap();
    let certs =
        edge_cli::devcerts::DevCerts::ensure(&dir.path().join("certs"), "edge.localhost").unwrap();
    let not_wasm = dir.path().join("notwasm.wasm");
    std::fs::write(&not_wasm, "this is text").unwrap();
    let gateway = dir.path().join("gateway.toml");
    let write = |module: &std::path::Path| {
        std::fs::write(
            &gateway,
            format!(
                "listen = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\ncluster_ca = {:?}\ncluster_cert = {:?}\ncluster_key = {:?}\n[gossip]\nkey_file = {:?}\n[[functions]]\nname = \"bad\"\nmodule = {module:?}\n",
                certs.gateway_cert,
                certs.gateway_key,
                certs.ca,
                certs.member_cert,
                certs.member_key,
                certs.gossip_key
            ),
        )
        .unwrap();
    };
    write(&not_wasm);
    let (code, err) = run("edge-gateway", &gateway);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("\"bad\"")
            && err.contains("notwasm.wasm")
            && err.contains("not a WebAssembly module"),
        "{err}"
    );

    // A module without `_start` (a library, not a command) is refused with that reason.
    let reactor = dir.path().join("reactor.wasm");
    std::fs::write(&reactor, b"\0asm\x01\0\0\0").unwrap();
    write(&reactor);
    let (code, err) = run("edge-gateway", &gateway);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("exports no function `_start`"), "{err}");
}

#[test]
fn keys_are_written_for_their_owner_alone_and_a_loose_key_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("certs");
    let certs = edge_cli::devcerts::DevCerts::ensure(&state, "edge.localhost").unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    let node_certs = certs.node("node").unwrap();
    assert_eq!(mode(&state.join("nodes")), 0o700);
    for secret in [
        &certs.ca_key,
        &certs.gateway_key,
        &node_certs.key,
        &certs.member_key,
        &certs.gossip_key,
    ] {
        assert_eq!(mode(secret), 0o600, "{}", secret.display());
    }

    // A node whose cluster key others may read does not start, and says how to mend it.
    std::fs::set_permissions(&certs.gossip_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let node = dir.path().join("node.toml");
    std::fs::write(
        &node,
        format!(
            "tls_cert = {:?}\ntls_key = {:?}\ncluster_ca = {:?}\ncache_dir = {:?}\n[gossip]\nkey_file = {:?}\n",
            node_certs.cert,
            node_certs.key,
            certs.ca,
            dir.path().join("cache"),
            certs.gossip_key
        ),
    )
    .unwrap();
    let (code, err) = run("edge-node", &node);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("gossip.key") && err.contains("chmod 600"),
        "{err}"
    );
    // edge up's certificates folder tightens what an older edge up left loose.
    edge_cli::devcerts::DevCerts::ensure(&state, "edge.localhost").unwrap();
    assert_eq!(mode(&certs.gossip_key), 0o600);
}

/// `edge ARGS` against `cluster`'s admin API; exit code, stdout, stderr.
fn edge_admin(cluster: &edge_cli::cluster::LocalCluster, args: &[&str]) -> (i32, String, String) {
    let admin = format!("https://127.0.0.1:{}", cluster.admin_addr().port());
    let out = Command::new(bin_dir().unwrap().join("edge"))
        .args(args)
        .arg("--admin")
        .arg(&admin)
        .arg("--ca")
        .arg(&cluster.certs().ca)
        .arg("--token-file")
        .arg(&cluster.certs().admin_token)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_deploy_functions_and_rm_drive_the_admin_api_with_exit_codes_scripts_can_trust() {
    let (cluster, dir) = support::start_with(
        1,
        vec![support::function("hello", Default::default())],
        |_| {},
    );
    let module = example("echo");
    let module = module.to_str().unwrap();
    let deploy = [
        "deploy",
        "greet",
        module,
        "--route",
        "/hi",
        "--env",
        "GREETING=hey",
        "--timeout",
        "2s",
        "--memory",
        "32MiB",
    ];
    let (code, out, err) = edge_admin(&cluster, &deploy);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deployed greet: version 1 (new)"), "{out}");
    // It says where the version answers, and how soon it did.
    let at = format!("https://127.0.0.1:{}/hi", cluster.gateway_addr().port());
    assert!(
        out.contains(&format!("{at}: version 1 answered 200 after")),
        "{out}"
    );
    let (code, out, _) = edge_admin(&cluster, &deploy);
    assert_eq!(code, 0);
    assert!(out.contains("version 1 (already serving)"), "{out}");

    // Users reach it at its route, with its environment.
    let c = support::client(&cluster).await;
    let r = c.get(&support::url(&cluster, "/hi/x")).await.unwrap();
    assert_eq!(r.status, http::StatusCode::OK);
    assert!(String::from_utf8_lossy(&r.body).contains("\"path\":\"/x\""));

    let (code, out, _) = edge_admin(&cluster, &["functions"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("greet") && out.contains("/hi") && out.contains("hello"),
        "{out}"
    );
    let (code, out, _) = edge_admin(&cluster, &["functions", "--json"]);
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let (code, out, _) = edge_admin(&cluster, &["cluster"]);
    assert_eq!(code, 0);
    assert!(out.contains("node-1") && out.contains("usable"), "{out}");

    // Refusals exit 2 with the API's reason; a bad flag exits 1 before any call.
    let not_wasm = dir.path().join("not.wasm");
    std::fs::write(&not_wasm, "text").unwrap();
    let (code, _, err) = edge_admin(&cluster, &["deploy", "bad", not_wasm.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("400") && err.contains("module"), "{err}");
    let (code, _, err) = edge_admin(&cluster, &["deploy", "x", module, "--timeout", "soon"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--timeout"), "{err}");

    // A second version, then back to the first.
    let hello = example("hello");
    let (code, _, err) = edge_admin(
        &cluster,
        &["deploy", "greet", hello.to_str().unwrap(), "--route", "/hi"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = edge_admin(&cluster, &["rollback", "greet"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("version 3 (restores version 1)"), "{out}");
    let (code, _, err) = edge_admin(&cluster, &["rollback", "greet", "9"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("404"), "{err}");

    // Versions and their traffic: a split, then a refused one (exit 2, the reason).
    let (code, out, err) = edge_admin(&cluster, &["traffic", "greet", "v3=10", "v2=90"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "greet: traffic v3 10%, v2 90%\n");
    let (code, out, _) = edge_admin(&cluster, &["versions", "greet"]);
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 4, "{out}");
    let row = |i: usize| rows[i].split_whitespace().take(2).collect::<Vec<_>>();
    assert_eq!(row(1), ["3", "10%"], "{out}");
    assert_eq!(row(2), ["2", "90%"], "{out}");
    assert_eq!(row(3), ["1", "-"], "{out}");
    let (code, out, _) = edge_admin(&cluster, &["functions"]);
    assert_eq!(code, 0);
    assert!(out.contains("v3 10%, v2 90%"), "{out}");
    let (code, _, err) = edge_admin(&cluster, &["traffic", "greet", "v3=50", "v2=40"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("400") && err.contains("add to 90"), "{err}");
    let (code, _, err) = edge_admin(&cluster, &["traffic", "greet", "three=50"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("like v7=10"), "{err}");

    let (code, out, _) = edge_admin(&cluster, &["rm", "greet"]);
    assert_eq!((code, out.as_str()), (0, "removed greet\n"));
    let (code, _, err) = edge_admin(&cluster, &["rm", "greet"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("404"), "{err}");
}

#[test]
fn edge_up_keeps_serving_when_a_node_dies_and_starts_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let bins = bin_dir().unwrap();
    let state = dir.path().join("state");
    let (mut up, said) = edge_up(dir.path());
    let addr = users_addr(&said);
    let ca = state.join("certs/ca.pem");
    let call = || {
        Command::new(bins.join("edge"))
            .arg("call")
            .arg("--ca")
            .arg(&ca)
            .arg(format!("https://{addr}/hello"))
            .output()
            .unwrap()
    };
    let node_pid = || {
        let found = Command::new("pgrep")
            .arg("-f")
            .arg(state.join("node-1.toml").to_str().unwrap())
            .output()
            .unwrap();
        String::from_utf8_lossy(&found.stdout).trim().to_string()
    };
    let before = node_pid();
    assert!(!before.is_empty(), "node-1 is not running");

    // SIGKILL node-1: edge up says so with the cause, and keeps the rest serving.
    let killed = Command::new("kill")
        .args(["-KILL", &before])
        .status()
        .unwrap();
    assert!(killed.success());
    let exited = wait_line(&said, "node-1 exited");
    assert!(
        exited.contains("SIGKILL") && exited.contains("node-1.log"),
        "{exited}"
    );
    assert!(call().status.success(), "the cluster stopped serving");
    // It starts node-1 again, a new process, and everything serves.
    wait_line(&said, "edge: node-1 started again");
    let after = node_pid();
    assert!(!after.is_empty() && after != before, "{before} -> {after}");
    for _ in 0..5 {
        let answer = call();
        assert!(
            answer.status.success(),
            "{}",
            String::from_utf8_lossy(&answer.stderr)
        );
    }
    assert!(matches!(up.try_wait(), Ok(None)), "edge up exited");

    assert!(sigterm(&mut up).success());
}

#[test]
fn check_config_validates_and_exits_without_serving() {
    // The files a running local cluster uses are valid; a broken one is not.
    let (cluster, dir) = support::start(1, vec![support::function("hello", Default::default())]);
    for (binary, file) in [
        ("edge-node", "node-1.toml"),
        ("edge-gateway", "gateway.toml"),
    ] {
        let config = cluster.dir().join(file);
        let out = Command::new(bin_dir().unwrap().join(binary))
            .arg("--check-config")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{binary}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains(file) && said.contains("is valid"), "{said}");
        // The same file with a key no version knows.
        let broken = dir.path().join(format!("broken-{file}"));
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&broken, format!("no_such_key = 1\n{text}")).unwrap();
        let out = Command::new(bin_dir().unwrap().join(binary))
            .arg("--check-config")
            .arg("--config")
            .arg(&broken)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{binary}: {err}");
        assert!(
            err.contains("no_such_key") && err.contains("broken-"),
            "{err}"
        );
    }
}

#[test]
fn edge_certs_issues_a_ca_and_every_roles_files_keys_for_their_owner_alone() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("fleet");
    let out = Command::new(bin_dir().unwrap().join("edge"))
        .args([
            "certs",
            "--domain",
            "edge.example.com",
            "--node",
            "node-1",
            "--node",
            "node-2",
        ])
        .args(["--registry", "10.0.0.5", "--dir"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for file in [
        "ca.pem",
        "ca.key",
        "gateway.pem",
        "gateway.key",
        "member.pem",
        "member.key",
        "gossip.key",
        "admin.token",
        "nodes/node-1.pem",
        "nodes/node-1.key",
        "nodes/node-2.key",
        "registry.pem",
        "registry.key",
    ] {
        let path = certs.join(file);
        assert!(
            listed.contains(&path.display().to_string()),
            "{file} not listed:\n{listed}"
        );
        if file.ends_with(".key") || file.ends_with(".token") {
            assert_eq!(mode(&path), 0o600, "{file}");
        }
    }
    // Run again for a node added later: the CA and the others stay as they were.
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let node_1 = std::fs::read(certs.join("nodes/node-1.pem")).unwrap();
    let again = Command::new(bin_dir().unwrap().join("edge"))
        .args([
            "certs",
            "--domain",
            "edge.example.com",
            "--node",
            "node-3",
            "--dir",
        ])
        .arg(&certs)
        .status()
        .unwrap();
    assert!(again.success());
    assert_eq!(std::fs::read(certs.join("ca.pem")).unwrap(), ca);
    assert_eq!(
        std::fs::read(certs.join("nodes/node-1.pem")).unwrap(),
        node_1
    );
    assert!(certs.join("nodes/node-3.pem").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateways_configured_name_is_its_member_name() {
    let (mut cluster, _dir) =
        support::start(1, vec![support::function("hello", Default::default())]);
    let config = cluster.dir().join("gateway.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.starts_with("name = \"\"\n"), "{text}");
    let named = text.replacen("name = \"\"", "name = \"gateway-east\"", 1);
    std::fs::write(&config, named).unwrap();
    cluster.restart_gateway().unwrap();
    let admin = support::admin(&cluster);
    let reply = admin
        .call(http::Method::GET, "/v1/cluster", None)
        .await
        .unwrap();
    assert_eq!(reply.body["name"], "gateway-east", "{}", reply.body);
    let c = support::client(&cluster).await;
    let r = c.get(&support::url(&cluster, "/hello")).await.unwrap();
    assert_eq!(r.status, http::StatusCode::OK);
}
