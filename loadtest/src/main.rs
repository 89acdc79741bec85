//! `edge-loadtest`: HTTP/3 load against an edge gateway (or node), a bare-transport
//! baseline server, and policy comparisons on local clusters.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use edge_loadtest::cpu::CpuByThread;
use edge_loadtest::scenario::{self, Overrides, Scenario};
use edge_loadtest::{Report, baseline, compare, parse_duration, svg};
use edge_net::tls;
use edge_shared::config::{ClusterConfig, RoutingPolicy, SchedulingPolicy};
use edge_shared::wire;

/// Loads URL(s) over HTTP/3 and reports latency percentiles, throughput, errors, cold
/// starts, and where the time went (cluster, node queue, guest run). Closed loop by
/// default (`--connections` × `--streams` in flight), open loop with `--rate`. Ctrl-C
/// stops early and reports what was measured.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the same load against a fresh local cluster per routing policy (or per
    /// cluster file) and prints the results side by side.
    Compare(Box<CompareArgs>),
    /// Serves the bare-transport baseline: quinn + h3 answering a constant body.
    Baseline {
        /// UDP address to serve on.
        #[arg(long, default_value = "127.0.0.1:4443")]
        listen: SocketAddr,
        /// Folder of its development certificates (clients trust DIR/ca.pem).
        #[arg(long, default_value = ".edge-baseline")]
        dir: PathBuf,
        /// Write the bound address to this file once serving.
        #[arg(long)]
        announce: Option<PathBuf>,
        /// Relay every request to this baseline server instead of answering it (the
        /// bare relay: two QUIC hops without edge); DIR holds that server's certificates.
        #[arg(long)]
        relay_to: Option<SocketAddr>,
    },
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// `https://HOST:PORT/PATH` to load (several: an equal mix); replaces the scenario's
    /// requests.
    urls: Vec<http::Uri>,
    /// Scenario file (TOML); flags override its values.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Open loop: requests per second.
    #[arg(long, conflicts_with = "streams")]
    rate: Option<f64>,
    /// Open loop: ramp linearly to this rate over the measured part.
    #[arg(long, requires = "rate")]
    ramp_to: Option<f64>,
    /// QUIC connections.
    #[arg(long)]
    connections: Option<usize>,
    /// Closed loop: requests in flight per connection.
    #[arg(long)]
    streams: Option<usize>,
    /// Measured length (`500ms`, `10s`, `1m`).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Unmeasured load first.
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Most requests to send (closed loop).
    #[arg(long)]
    requests: Option<u64>,
    /// CA certificate to trust (the cluster's development CA by default).
    #[arg(long, default_value = ".edge/certs/ca.pem")]
    ca: PathBuf,
    /// Connect to this address instead of resolving the URL's host.
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// Another gateway serving the same functions (repeatable): connections are spread
    /// over the target and these, pinged so that a lost gateway is noticed within
    /// seconds, and an idempotent request whose gateway is lost is sent again to the
    /// next, as a client with several addresses for one name does.
    #[arg(long)]
    failover: Vec<SocketAddr>,
    /// Extra request header `NAME: VALUE` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Client certificate (PEM) to present, e.g. a cluster member's to load a node
    /// directly.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of `--cert`.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Also run the same load against a bare quinn + h3 server (started here) and
    /// report the fraction of its throughput reached.
    #[arg(long)]
    baseline: bool,
    /// With `--baseline`, also run the same load against a bare relay in front of the
    /// bare server (two QUIC hops, no edge) and report the fractions of both.
    #[arg(long, requires = "baseline")]
    baseline_relay: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write latency plots (SVG) to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Report the CPU time of this local process during the run, by thread group.
    #[arg(long)]
    cpu_of: Option<u32>,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
}

/// `compare`'s arguments.
#[derive(Args)]
struct CompareArgs {
    /// The cluster to start for each policy (an `edge up` cluster file).
    #[arg(long, default_value = "config/cluster.toml")]
    cluster: PathBuf,
    /// Policies to compare, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "least-loaded-warm,round-robin,random"
    )]
    policies: Vec<RoutingPolicy>,
    /// Nodes per cluster (the cluster file's by default).
    #[arg(long)]
    nodes: Option<usize>,
    /// Compare these cluster files instead of policies: `LABEL=FILE` (repeatable),
    /// each started fresh in turn, e.g. a feature off and on.
    #[arg(long, value_parser = parse_labelled::<PathBuf>, conflicts_with = "policies")]
    clusters: Vec<(String, PathBuf)>,
    /// Another scenario file run right after the first on the same cluster
    /// (repeatable), each reported on its own: a ramp, then a plateau. Labelled by
    /// file name.
    #[arg(long, conflicts_with = "given")]
    then: Vec<PathBuf>,
    /// Keep each started cluster's folder (configurations, logs) in DIR/LABEL.
    #[arg(long, conflicts_with = "given")]
    keep: Option<PathBuf>,
    /// Compare running gateways instead of starting clusters: `LABEL=ADDR`
    /// (repeatable), e.g. one cluster per policy started by hand.
    #[arg(long, value_parser = parse_labelled::<SocketAddr>)]
    given: Vec<(String, SocketAddr)>,
    #[command(flatten)]
    load: Box<LoadArgs>,
}

impl LoadArgs {
    fn scenario(&self) -> anyhow::Result<Scenario> {
        let file = self.scenario.as_deref().map(scenario::load).transpose()?;
        let mut headers = http::HeaderMap::new();
        for header in &self.headers {
            let (name, value) = header
                .split_once(':')
                .with_context(|| format!("--header {header:?}: expected `NAME: VALUE`"))?;
            headers.append(
                http::HeaderName::try_from(name.trim())
                    .with_context(|| format!("--header {header:?}: bad name"))?,
                http::HeaderValue::try_from(value.trim())
                    .with_context(|| format!("--header {header:?}: bad value"))?,
            );
        }
        let overrides = Overrides {
            urls: self.urls.clone(),
            connect: self.connect,
            failover: self.failover.clone(),
            duration: self.duration,
            warmup: self.warmup,
            rate: self.rate,
            ramp_to: self.ramp_to,
            connections: self.connections,
            streams: self.streams,
            max_requests: self.requests,
            headers,
        };
        scenario::build(file, &overrides)
    }

    fn tls(&self) -> anyhow::Result<rustls::ClientConfig> {
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(tls::Identity { cert, key }),
            _ => None,
        };
        Ok(tls::client_config(&self.ca, identity, &[wire::ALPN_H3])?)
    }
}

/// Set by Ctrl-C: the run stops and reports what it measured.
fn stop_on_ctrl_c(runtime: &tokio::runtime::Runtime) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping: reporting what was measured so far");
            flag.store(true, Ordering::Relaxed);
        }
    });
    stop
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => load(&cli.load),
        Some(Command::Baseline {
            listen,
            dir,
            announce,
            relay_to,
        }) => serve_baseline(listen, &dir, announce, relay_to),
        Some(Command::Compare(args)) => run_compare(&args),
    }
}

fn load(args: &LoadArgs) -> anyhow::Result<()> {
    let scenario = args.scenario()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let stop = stop_on_ctrl_c(&runtime);
    let against = |server: &baseline::Child| -> anyhow::Result<Report> {
        let aimed = scenario.aimed_at(server.addr)?;
        let client = tls::client_config(&server.ca, None, &[wire::ALPN_H3])?;
        runtime.block_on(edge_loadtest::run(
            &aimed,
            client,
            Arc::clone(&stop),
            !args.quiet,
        ))
    };
    let (bare, relay) = if args.baseline {
        let server = baseline::Child::start()?;
        eprintln!("baseline: the same load against a bare quinn + h3 server");
        let bare = against(&server)?;
        println!("baseline (bare quinn + h3 on this machine):\n{bare}\n");
        let relay = if args.baseline_relay {
            let relay = baseline::Child::start_relay(&server)?;
            eprintln!("bare relay: the same load through a bare relay to that server");
            let report = against(&relay)?;
            println!(
                "bare relay (two QUIC hops, no edge):\n{report}\nbare relay: {:.1}% of the bare transport\n",
                percent_of(&report, &bare)
            );
            Some(report)
        } else {
            None
        };
        (Some(bare), relay)
    } else {
        (None, None)
    };
    let scenario = Scenario {
        cpu_of: args.cpu_of,
        ..scenario
    };
    let report = runtime.block_on(edge_loadtest::run(
        &scenario,
        args.tls()?,
        stop,
        !args.quiet,
    ))?;
    println!("{report}");
    for (against, label, of) in [
        (&bare, "vs baseline", "of the bare transport"),
        (&relay, "vs the bare relay", "of it"),
    ] {
        if let Some(against) = against {
            println!(
                "{label}: {:.0} of {:.0} req/s, {:.1}% {of}",
                report.throughput,
                against.throughput,
                percent_of(&report, against)
            );
        }
    }
    if let (Some(pid), Some(used)) = (args.cpu_of, &report.target_cpu) {
        print_cpu(pid, used, &report);
    }
    let mut runs: Vec<(&str, &Report)> = vec![("target", &report)];
    if let Some(bare) = &bare {
        runs.push(("baseline", bare));
    }
    if let Some(relay) = &relay {
        runs.push(("relay", relay));
    }
    write_outputs(args, &runs)
}

/// `report`'s throughput as a percentage of `against`'s.
fn percent_of(report: &Report, against: &Report) -> f64 {
    100.0 * report.throughput / against.throughput.max(1e-9)
}

fn write_outputs(args: &LoadArgs, runs: &[(&str, &Report)]) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        let json: serde_json::Map<String, serde_json::Value> = runs
            .iter()
            .map(|(name, r)| Ok((name.to_string(), serde_json::to_value(r)?)))
            .collect::<anyhow::Result<_>>()?;
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        let title = format!(
            "edge-loadtest: {}",
            args.urls.first().map_or(String::new(), |u| u.to_string())
        );
        std::fs::write(path, svg::render(&title, runs))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The CPU time `pid` used over the measured window, in all and per answered request.
fn print_cpu(pid: u32, used: &CpuByThread, report: &Report) {
    let per_request_us = |s: f64| s * 1e6 / report.answered.max(1) as f64;
    println!(
        "cpu of {pid}: {:.2} s in all, {:.1} µs per answered request",
        used.total(),
        per_request_us(used.total())
    );
    for (group, seconds) in &used.0 {
        println!(
            "  {group:<20} {seconds:>7.2} s  {:>7.1} µs/request",
            per_request_us(*seconds)
        );
    }
}

fn serve_baseline(
    listen: SocketAddr,
    dir: &std::path::Path,
    announce: Option<PathBuf>,
    relay_to: Option<SocketAddr>,
) -> anyhow::Result<()> {
    // Its threads under the policy edge's servers run under by default, so that the
    // floor and edge are measured alike (the bare server's figures do not move with it;
    // the bare relay's do, BENCHMARKS.md).
    let runtime = edge_net::runtime::multi_thread(SchedulingPolicy::default())?;
    runtime.block_on(async {
        let (endpoint, certs) = baseline::bind(listen, dir)?;
        let addr = endpoint.local_addr()?;
        if let Some(file) = announce {
            std::fs::write(&file, addr.to_string())?;
        }
        match relay_to {
            None => println!(
                "baseline: HTTP/3 on {addr}, constant {}-byte answers; CA {}",
                baseline::BODY.len(),
                certs.ca.display()
            ),
            Some(upstream) => println!(
                "bare relay: HTTP/3 on {addr} to {upstream}; CA {}",
                certs.ca.display()
            ),
        }
        tokio::select! {
            served = baseline::serve(endpoint.clone(), relay_to, dir) => served?,
            _ = tokio::signal::ctrl_c() => endpoint.close(0u32.into(), b"done"),
        }
        Ok(())
    })
}

/// `LABEL=VALUE`.
fn parse_labelled<T>(text: &str) -> Result<(String, T), String>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let (label, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected LABEL=VALUE"))?;
    let value = value.parse().map_err(|e| format!("{text:?}: {e}"))?;
    Ok((label.to_string(), value))
}

fn run_compare(compare_args: &CompareArgs) -> anyhow::Result<()> {
    let args = &compare_args.load;
    let runtime = tokio::runtime::Runtime::new()?;
    let stop = stop_on_ctrl_c(&runtime);
    let results = if compare_args.given.is_empty() {
        let variants = compare_args.variants()?;
        let phases = compare_args.phases()?;
        let keep = compare_args.keep.as_deref();
        compare::compare(&variants, &phases, keep, &stop, !args.quiet)?
    } else {
        let scenario = args.scenario()?;
        let tls = args.tls()?;
        compare::compare_given(&compare_args.given, &scenario, &tls, &stop, !args.quiet)?
    };
    drop(runtime);
    let labelled: Vec<(&str, &Report)> = results.iter().map(|(l, r)| (l.as_str(), r)).collect();
    println!("{}", compare::table(&labelled));
    write_outputs(args, &labelled)
}

impl CompareArgs {
    /// The clusters to start: one per `--clusters` file, else one per policy of
    /// `--cluster`.
    fn variants(&self) -> anyhow::Result<Vec<compare::Variant>> {
        let spec = |file: &std::path::Path| -> anyhow::Result<ClusterConfig> {
            // Absolute, so that module paths resolve the same from the cluster's folder.
            let file = file
                .canonicalize()
                .with_context(|| format!("cluster file {}", file.display()))?;
            let mut spec: ClusterConfig = edge_shared::config::load(&file)?;
            if let Some(n) = self.nodes {
                spec.nodes = n;
            }
            Ok(spec)
        };
        if !self.clusters.is_empty() {
            // Each label names a column, a JSON key and a kept folder: one each.
            let mut seen = std::collections::HashSet::new();
            for (label, _) in &self.clusters {
                let usable = !label.is_empty() && !label.contains(['/', '\\']) && label != "..";
                anyhow::ensure!(usable, "--clusters {label:?}: a label must be a plain name");
                anyhow::ensure!(seen.insert(label), "--clusters {label:?}: named twice");
            }
            return self
                .clusters
                .iter()
                .map(|(label, file)| {
                    let spec = spec(file)?;
                    Ok(compare::Variant {
                        label: label.clone(),
                        spec,
                    })
                })
                .collect();
        }
        let base = spec(&self.cluster)?;
        Ok(self
            .policies
            .iter()
            .map(|&policy| compare::Variant {
                label: policy.as_str().to_string(),
                spec: ClusterConfig {
                    routing: policy,
                    ..base.clone()
                },
            })
            .collect())
    }

    /// The load run on each cluster: the scenario, then each `--then` file, with the
    /// same flags.
    fn phases(&self) -> anyhow::Result<Vec<compare::Phase>> {
        let label = |file: Option<&std::path::Path>| {
            file.and_then(|f| f.file_stem())
                .map_or("load".into(), |s| s.to_string_lossy().to_string())
        };
        let first = compare::Phase {
            label: label(self.load.scenario.as_deref()),
            scenario: self.load.scenario()?,
        };
        let then = self.then.iter().map(|file| {
            let args = LoadArgs {
                scenario: Some(file.clone()),
                ..(*self.load).clone()
            };
            Ok(compare::Phase {
                label: label(Some(file)),
                scenario: args.scenario()?,
            })
        });
        std::iter::once(Ok(first)).chain(then).collect()
    }
}
