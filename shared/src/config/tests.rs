//! The configuration files: defaults, relative paths, errors naming file and key, and the
//! example files in `config/`.

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn node_config_loads_with_defaults_and_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "node.pem", "x");
    write(dir.path(), "node.key", "x");
    write(dir.path(), "ca.pem", "x");
    write(dir.path(), "gossip.key", "x");
    let file = write(
        dir.path(),
        "node.toml",
        "name = \"n1\"\ntls_cert = \"node.pem\"\ntls_key = \"node.key\"\ncluster_ca = \"ca.pem\"\n[defaults]\ntimeout_ms = 500\n[gossip]\nkey_file = \"gossip.key\"\nseeds = [\"gw.local:7946\"]\n",
    );
    let cfg: NodeConfig = load(&file).unwrap();
    assert_eq!(cfg.name, "n1");
    assert_eq!(cfg.tls_cert, dir.path().join("node.pem"));
    assert_eq!(cfg.defaults.timeout_ms, 500);
    assert_eq!(cfg.defaults.memory_limit_mib, 128);
    assert_eq!(cfg.gossip.key_file, dir.path().join("gossip.key"));
    assert_eq!(cfg.gossip.seeds, ["gw.local:7946"]);
    assert_eq!(cfg.gossip.interval_ms, 200);
    assert_eq!(cfg.gossip.budget_bytes_per_s, 10_000);
    assert_eq!(cfg.network_scheduling, SchedulingPolicy::Batch);
    let normal = write(
        dir.path(),
        "normal.toml",
        &(std::fs::read_to_string(&file)
            .unwrap()
            .replace("[defaults]", "network_scheduling = \"normal\"\n[defaults]")),
    );
    let cfg: NodeConfig = load(&normal).unwrap();
    assert_eq!(cfg.network_scheduling, SchedulingPolicy::Normal);
}

#[test]
fn errors_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "node.toml", "nmae = \"typo\"\n");
    let err = load::<NodeConfig>(&file).unwrap_err().to_string();
    assert!(err.contains("node.toml") && err.contains("nmae"), "{err}");

    let file = write(dir.path(), "bad.toml", "worker_threads = \"many\"\n");
    let err = load::<NodeConfig>(&file).unwrap_err().to_string();
    assert!(
        err.contains("bad.toml") && err.contains("worker_threads"),
        "{err}"
    );

    let file = write(
        dir.path(),
        "policy.toml",
        "network_scheduling = \"realtime\"\n",
    );
    let err = load::<NodeConfig>(&file).unwrap_err().to_string();
    assert!(
        err.contains("policy.toml") && err.contains("network_scheduling"),
        "{err}"
    );

    let file = write(dir.path(), "empty.toml", "fuel_per_ms = 0\n");
    let err = load::<NodeConfig>(&file).unwrap_err();
    assert_eq!(err.problems.len(), 5, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("tls_cert: required")
            && text.contains("fuel_per_ms")
            && text.contains("gossip.key_file: required"),
        "{text}"
    );

    let err = load::<NodeConfig>(&dir.path().join("missing.toml")).unwrap_err();
    assert!(err.to_string().contains("missing.toml: file not found"));
}

#[test]
fn the_memory_pool_keys_are_bounded_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "node.toml",
        "[instance_pool]\nspare_memories = 100000\nkeep_resident_kib = 99999999\n",
    );
    let text = load::<NodeConfig>(&file).unwrap_err().to_string();
    assert!(
        text.contains("instance_pool.spare_memories: at most 4096")
            && text.contains("instance_pool.keep_resident_kib: at most"),
        "{text}"
    );
    let defaults = NodeConfig::default().instance_pool;
    assert_eq!(
        (defaults.spare_memories, defaults.keep_resident_kib),
        (16, 2048)
    );
}

#[test]
fn the_artifact_sharing_keys_are_bounded_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "node.toml",
        "[artifacts]\nmax_peers = 0\nask_next_after_ms = 0\nfetch_timeout_ms = 1\nmax_artifact_mib = 4096\n",
    );
    let text = load::<NodeConfig>(&file).unwrap_err().to_string();
    for key in [
        "artifacts.max_peers: from 1 to 16",
        "artifacts.ask_next_after_ms: from 10",
        "artifacts.fetch_timeout_ms: from 10",
        "artifacts.max_artifact_mib: from 1 to 1024",
    ] {
        assert!(text.contains(key), "{key} in {text}");
    }
    let file = write(dir.path(), "typo.toml", "[artifacts]\nshared = false\n");
    let text = load::<NodeConfig>(&file).unwrap_err().to_string();
    assert!(text.contains("shared"), "{text}");
    assert!(NodeConfig::default().artifacts.share);
    let file = write(dir.path(), "idle.toml", "module_idle_ttl_ms = 5\n");
    let text = load::<NodeConfig>(&file).unwrap_err().to_string();
    assert!(
        text.contains("module_idle_ttl_ms: 0 (never) or at least 1000"),
        "{text}"
    );
    assert_eq!(NodeConfig::default().module_idle_ttl_ms, 600_000);
}

#[test]
fn cluster_config_checks_per_node_settings_and_routing() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "cluster.toml",
        "nodes = 3\nworker_threads_per_node = [2, 1]\nnode_cpus = [\"\", \"1\", \"all\"]\ngossip_interval_ms = 5\n",
    );
    let text = load::<ClusterConfig>(&file).unwrap_err().to_string();
    for key in [
        "worker_threads_per_node: 2 entries for 3 nodes",
        "node_cpus[2]",
        "gossip_interval_ms: must be between 10 and 10000",
    ] {
        assert!(text.contains(key), "{key} missing from: {text}");
    }
    let file = write(dir.path(), "cluster.toml", "routing = \"fastest\"\n");
    let text = load::<ClusterConfig>(&file).unwrap_err().to_string();
    assert!(text.contains("fastest"), "{text}");
    let file = write(
        dir.path(),
        "cluster.toml",
        "routing = \"least-loaded-warm\"\nnode_cpus = [\"0-1\", \"\", \"1\"]\n",
    );
    let ok = load::<ClusterConfig>(&file).unwrap();
    assert_eq!(ok.routing, RoutingPolicy::LeastLoadedWarm);
    assert_eq!("random".parse::<RoutingPolicy>(), Ok(RoutingPolicy::Random));
    assert!(
        "fastest"
            .parse::<RoutingPolicy>()
            .unwrap_err()
            .contains("least-loaded-warm")
    );
}

#[test]
fn gateway_config_checks_functions() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["c.pem", "c.key", "ca.pem", "m.pem", "m.key"] {
        write(dir.path(), f, "x");
    }
    let file = write(
        dir.path(),
        "gateway.toml",
        r#"
tls_cert = "c.pem"
tls_key = "c.key"
cluster_ca = "ca.pem"
cluster_cert = "m.pem"
cluster_key = "m.key"
shutdown_grace_ms = 0
min_warm_nodes = 0
[retry_budget]
answers_per_retry = 0
[gossip]
key_file = "gossip.key"
seeds = ["127.0.0.1:7946", "7946", "gw:x"]
interval_ms = 0
budget_bytes_per_s = 500
[[functions]]
name = "hello"
module = "hello.wasm"
routes = [{ path = "/hi" }, { host = "hi.example.com" }]
[[functions]]
name = "hello"
module = "hello.wasm"
"#,
    );
    let err = load::<GatewayConfig>(&file).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("functions[0].module"), "{text}");
    assert!(text.contains("functions[1].name"), "{text}");
    assert!(
        text.contains("shutdown_grace_ms: must be between 1 and 600000"),
        "{text}"
    );
    for problem in [
        "gossip.key_file: file",
        "gossip.seeds[1]",
        "gossip.seeds[2]",
        "gossip.interval_ms",
        "gossip.budget_bytes_per_s: 0 (no limit) or at least 1000",
        "retry_budget.answers_per_retry: must be greater than zero",
        "min_warm_nodes: at least 1",
    ] {
        assert!(text.contains(problem), "{problem} missing from: {text}");
    }
    assert!(!text.contains("gossip.seeds[0]"), "{text}");
    write(dir.path(), "hello.wasm", "x");
    let text = load::<GatewayConfig>(&file).unwrap_err().to_string();
    assert!(!text.contains("module"), "{text}");
}

#[test]
fn paths_in_a_file_named_relatively_resolve_to_absolute_ones() {
    let dir = tempfile::tempdir_in(".").unwrap();
    let name = dir.path().file_name().unwrap().to_owned();
    write(dir.path(), "m.wasm", "x");
    write(
        dir.path(),
        "c.toml",
        "[[functions]]\nname = \"m\"\nmodule = \"m.wasm\"\n",
    );
    let relative = PathBuf::from(".").join(name).join("c.toml");
    let cluster = load::<ClusterConfig>(&relative).unwrap();
    let module = &cluster.functions[0].module;
    assert!(module.is_absolute(), "{}", module.display());
    assert!(module.is_file(), "{}", module.display());

    // A bare file name in the current folder (`edge up --config after.toml`).
    let module = tempfile::Builder::new()
        .suffix(".wasm")
        .tempfile_in(".")
        .unwrap();
    let module_name = module.path().file_name().unwrap().to_str().unwrap();
    let file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile_in(".")
        .unwrap();
    let text = format!("[[functions]]\nname = \"m\"\nmodule = \"{module_name}\"\n");
    std::fs::write(file.path(), text).unwrap();
    let bare = PathBuf::from(file.path().file_name().unwrap());
    let cluster = load::<ClusterConfig>(&bare).unwrap();
    let module = &cluster.functions[0].module;
    assert!(module.is_absolute(), "{}", module.display());
    assert!(module.is_file(), "{}", module.display());
}

#[test]
fn the_prewarm_key_takes_three_values_and_names_itself_when_wrong() {
    assert_eq!(GatewayConfig::default().prewarm, Prewarm::Projected);
    let dir = tempfile::tempdir().unwrap();
    for (value, parsed) in [("off", Prewarm::Off), ("threshold", Prewarm::Threshold)] {
        let file = write(dir.path(), "g.toml", &format!("prewarm = \"{value}\"\n"));
        // The file lacks its certificates: the error names those, not `prewarm`.
        let text = load::<GatewayConfig>(&file).unwrap_err().to_string();
        assert!(!text.contains("prewarm"), "{text}");
        let config: GatewayConfig =
            serde_json::from_str(&format!("{{\"prewarm\": \"{value}\"}}")).unwrap();
        assert_eq!(config.prewarm, parsed);
    }
    let file = write(dir.path(), "g.toml", "prewarm = \"sometimes\"\n");
    let text = load::<GatewayConfig>(&file).unwrap_err().to_string();
    assert!(
        text.contains("prewarm") && text.contains("sometimes"),
        "{text}"
    );
}

#[test]
fn the_example_files_use_only_known_keys() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    // The examples name certificate files that only `edge up` creates: those are the
    // only problems allowed.
    let only_missing_files = |problems: &[String]| {
        problems.iter().all(|p| {
            p.contains("not found")
                && (p.starts_with("tls_")
                    || p.starts_with("cluster_")
                    || p.starts_with("gossip.key_file")
                    || p.contains(".module"))
        })
    };
    match load::<NodeConfig>(&dir.join("node.toml")) {
        Ok(_) => {}
        Err(e) => assert!(only_missing_files(&e.problems), "{e}"),
    }
    match load::<GatewayConfig>(&dir.join("gateway.toml")) {
        Ok(_) => {}
        Err(e) => assert!(only_missing_files(&e.problems), "{e}"),
    }
    let cluster: Result<ClusterConfig, _> = load(&dir.join("cluster.toml"));
    if let Err(e) = cluster {
        assert!(only_missing_files(&e.problems), "{e}");
    }
}
