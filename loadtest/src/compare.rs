//! `compare`: the same load against a fresh local cluster per variant (a routing policy,
//! or a cluster file of its own), one after the other on this machine, reported side by
//! side, with the module loads (compiles, artifacts fetched) its nodes counted.

use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use edge_cli::cluster::{LocalCluster, bin_dir};
use edge_net::tls;
use edge_shared::config::ClusterConfig;
use edge_shared::wire;

use crate::run::run;
use crate::scenario::Scenario;
use crate::tally::{ModuleLoads, Report};

/// One cluster to start and load: its label in the table and its cluster file.
pub struct Variant {
    /// Column label (`least-loaded-warm`, `before`).
    pub label: String,
    /// The cluster to start.
    pub spec: ClusterConfig,
}

/// One part of the load run on each cluster, in turn: a ramp, then a plateau, say.
pub struct Phase {
    /// Added to the variant's label when there are several phases.
    pub label: String,
    /// The load.
    pub scenario: Scenario,
}

/// Runs every phase, in order, on a new cluster per variant. A run's label is its
/// variant's, with the phase's after it when there are several. Each cluster's folder
/// (configurations, logs, state) is `keep/LABEL` if given (emptied first), else a
/// temporary one removed after.
pub fn compare(
    variants: &[Variant],
    phases: &[Phase],
    keep: Option<&Path>,
    stop: &Arc<AtomicBool>,
    progress: bool,
) -> anyhow::Result<Vec<(String, Report)>> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mut results = Vec::new();
    for variant in variants {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let temporary = tempfile::tempdir()?;
        let dir = match keep {
            Some(keep) => {
                let dir = keep.join(&variant.label);
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                dir
            }
            None => temporary.path().to_path_buf(),
        };
        let mut spec = variant.spec.clone();
        spec.listen = "127.0.0.1:0".parse()?;
        eprintln!(
            "compare: {}, {} nodes, in {}",
            variant.label,
            spec.nodes,
            dir.display()
        );
        let mut cluster = LocalCluster::start(&spec, &dir, &bin_dir()?)?;
        let client_tls = tls::client_config(&cluster.certs().ca, None, &[wire::ALPN_H3])?;
        for phase in phases {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let label = match phases {
                [_] => variant.label.clone(),
                _ => format!("{} {}", variant.label, phase.label),
            };
            let aimed = phase.scenario.aimed_at(cluster.gateway_addr())?;
            let before = module_loads(&cluster);
            let report =
                runtime.block_on(run(&aimed, client_tls.clone(), Arc::clone(stop), progress));
            let mut report = report?;
            report.module_loads = Some(module_loads(&cluster).since(before));
            results.push((label, report));
        }
        cluster.stop(Duration::from_secs(5));
    }
    Ok(results)
}

/// The module loads every node of `cluster` has counted since it started (a node whose
/// metrics cannot be read counts none).
fn module_loads(cluster: &LocalCluster) -> ModuleLoads {
    let addrs = cluster.node_metrics_addrs().unwrap_or_default();
    addrs
        .into_iter()
        .filter_map(edge_cli::cluster::scrape_metrics)
        .map(|text| ModuleLoads::of_metrics(&text))
        .fold(ModuleLoads::default(), ModuleLoads::plus)
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

/// One count of a run's module loads, `-` where none were read (`--given`).
fn loads(report: &Report, count: fn(&ModuleLoads) -> u64) -> String {
    report
        .module_loads
        .as_ref()
        .map_or("-".into(), |l| count(l).to_string())
}

/// The results side by side, one column per policy.
pub fn table(results: &[(&str, &Report)]) -> String {
    let mut out = String::new();
    // Every column as wide as the widest label, and a two-space gap at least.
    let width = results
        .iter()
        .map(|(l, _)| l.len() + 2)
        .max()
        .unwrap_or(0)
        .max(14);
    let _ = write!(out, "{:<16}", "");
    for (label, _) in results {
        let _ = write!(out, "{label:>width$}");
    }
    out.push('\n');
    let rows: [(&str, Cell); 15] = [
        ("req/s", |r| format!("{:.0}", r.throughput)),
        ("answered", |r| r.answered.to_string()),
        ("p50 ms", |r| format!("{:.3}", r.latency.p50_ms)),
        ("p90 ms", |r| format!("{:.3}", r.latency.p90_ms)),
        ("p99 ms", |r| format!("{:.3}", r.latency.p99_ms)),
        ("p99.9 ms", |r| format!("{:.3}", r.latency.p999_ms)),
        ("max ms", |r| format!("{:.3}", r.latency.max_ms)),
        ("cold starts", |r| r.cold_starts.to_string()),
        ("warm %", |r| {
            let warm = r.answered.saturating_sub(r.cold_starts) as f64;
            format!("{:.3}", 100.0 * warm / r.answered.max(1) as f64)
        }),
        ("compiles", |r| loads(r, |l| l.compiles)),
        ("fetched", |r| loads(r, |l| l.fetched)),
        ("cluster p99 ms", |r| format!("{:.3}", r.in_cluster.p99_ms)),
        ("queue p99 ms", |r| format!("{:.3}", r.queue.p99_ms)),
        ("run p99 ms", |r| format!("{:.3}", r.run.p99_ms)),
        ("errors", |r| r.errors.values().sum::<u64>().to_string()),
    ];
    for (name, cell) in rows {
        let _ = write!(out, "{name:<16}");
        for (_, report) in results {
            let _ = write!(out, "{:>width$}", cell(report));
        }
        out.push('\n');
    }
    out
}
