//! `compare`: the same scenario against a fresh local cluster per routing policy, one
//! after the other on this machine, reported side by side.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edge_cli::cluster::{LocalCluster, bin_dir};
use edge_net::tls;
use edge_shared::config::{ClusterConfig, RoutingPolicy};
use edge_shared::wire;

use crate::run::run;
use crate::scenario::Scenario;
use crate::tally::Report;

/// Runs `scenario` once per policy, each on its own new cluster made from `spec`.
pub fn compare(
    spec: &ClusterConfig,
    policies: &[RoutingPolicy],
    scenario: &Scenario,
    stop: &Arc<AtomicBool>,
    progress: bool,
) -> anyhow::Result<Vec<(RoutingPolicy, Report)>> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mut results = Vec::new();
    for &policy in policies {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let dir = tempfile::tempdir()?;
        let mut spec = spec.clone();
        spec.routing = policy;
        spec.listen = "127.0.0.1:0".parse()?;
        eprintln!("compare: {} nodes, routing {}", spec.nodes, policy.as_str());
        let mut cluster = LocalCluster::start(&spec, dir.path(), &bin_dir()?)?;
        let aimed = scenario.aimed_at(cluster.gateway_addr())?;
        let client_tls = tls::client_config(&cluster.certs().ca, None, &[wire::ALPN_H3])?;
        let report = runtime.block_on(run(&aimed, client_tls, Arc::clone(stop), progress));
        cluster.stop(Duration::from_secs(5));
        results.push((policy, report?));
    }
    Ok(results)
}

/// Runs `scenario` once against each given gateway (`label`, address), for clusters
/// already running (say, one per routing policy); `tls` trusts their CA.
pub fn compare_given(
    given: &[(String, std::net::SocketAddr)],
    scenario: &Scenario,
    tls: &rustls::ClientConfig,
    stop: &Arc<AtomicBool>,
    progress: bool,
) -> anyhow::Result<Vec<(String, Report)>> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mut results = Vec::new();
    for (label, addr) in given {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        eprintln!("compare: {label} at {addr}");
        let mut aimed = scenario.clone();
        aimed.connect = Some(*addr);
        let report = runtime.block_on(run(&aimed, tls.clone(), Arc::clone(stop), progress))?;
        results.push((label.clone(), report));
    }
    Ok(results)
}

/// One row's value for one run.
type Cell = fn(&Report) -> String;

/// The results side by side, one column per policy.
pub fn table(results: &[(&str, &Report)]) -> String {
    let mut out = String::new();
    let _ = write!(out, "{:<16}", "");
    for (label, _) in results {
        let _ = write!(out, "{label:>14}");
    }
    out.push('\n');
    let rows: [(&str, Cell); 10] = [
        ("req/s", |r| format!("{:.0}", r.throughput)),
        ("answered", |r| r.answered.to_string()),
        ("p50 ms", |r| format!("{:.3}", r.latency.p50_ms)),
        ("p90 ms", |r| format!("{:.3}", r.latency.p90_ms)),
        ("p99 ms", |r| format!("{:.3}", r.latency.p99_ms)),
        ("p99.9 ms", |r| format!("{:.3}", r.latency.p999_ms)),
        ("max ms", |r| format!("{:.3}", r.latency.max_ms)),
        ("cold starts", |r| r.cold_starts.to_string()),
        ("queue p99 ms", |r| format!("{:.3}", r.queue.p99_ms)),
        ("errors", |r| r.errors.values().sum::<u64>().to_string()),
    ];
    for (name, cell) in rows {
        let _ = write!(out, "{name:<16}");
        for (_, report) in results {
            let _ = write!(out, "{:>14}", cell(report));
        }
        out.push('\n');
    }
    out
}
