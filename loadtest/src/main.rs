//! `edge-loadtest URL`: closed-loop HTTP/3 load against an edge gateway.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use edge_loadtest::cpu::CpuByThread;
use edge_loadtest::{Plan, parse_duration};

/// Sends HTTP/3 requests to URL with a fixed number in flight and reports latency
/// percentiles and throughput.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// `https://HOST:PORT/PATH`.
    url: http::Uri,
    /// QUIC connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// How long to run (`500ms`, `10s`, `1m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Most requests to send.
    #[arg(long, default_value_t = 10_000_000)]
    requests: u64,
    /// CA certificate to trust (the cluster's development CA by default).
    #[arg(long, default_value = ".edge/certs/ca.pem")]
    ca: PathBuf,
    /// Connect to this address instead of resolving the URL's host.
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
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
    /// Report the CPU time of this local process during the run, by thread group.
    #[arg(long)]
    cpu_of: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.connections > 0 && args.streams > 0,
        "--connections and --streams must be at least 1"
    );
    let host = args.url.host().context("URL without a host")?.to_string();
    let addr = match args.connect {
        Some(a) => a,
        None => (host.as_str(), args.url.port_u16().unwrap_or(443))
            .to_socket_addrs()?
            .next()
            .with_context(|| format!("{host} has no address"))?,
    };
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "{addr} is not a loopback address: this tool only loads servers on this machine"
    );
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(edge_shared::tls::Identity { cert, key }),
        _ => None,
    };
    let tls = edge_shared::tls::client_config(&args.ca, identity, &[edge_shared::wire::ALPN_H3])?;
    let mut headers = http::HeaderMap::new();
    for header in &args.headers {
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
    let plan = Plan {
        addr,
        server_name: host,
        url: args.url,
        connections: args.connections,
        streams: args.streams,
        duration: args.duration,
        max_requests: args.requests,
        headers,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let cpu_before = args.cpu_of.map(CpuByThread::sample).transpose()?;
    let report = runtime.block_on(edge_loadtest::run(&plan, tls))?;
    println!("{report}");
    if let (Some(pid), Some(before)) = (args.cpu_of, cpu_before) {
        let used = CpuByThread::sample(pid)?.since(&before);
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
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
