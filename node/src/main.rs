//! `edge-node`: runs functions for gateways. `edge-node --config node.toml`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use edge_net::gossip::{self, ClusterKey, Gossip, LoadReport, Role, WarmSet};
use edge_net::lifecycle::{InFlight, Shutdown};
use edge_net::metrics::{GossipCollector, QuicCollector};
use edge_net::{http3, logging, quic, tls};
use edge_node::Node;
use edge_node::peers::Peers;
use edge_shared::config::{self, NodeConfig};
use edge_shared::wire;

/// Runs WebAssembly functions for edge gateways over HTTP/3.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Validate the configuration file (every key, and the files it names) and exit:
    /// 0 when it is valid, 2 naming the file and key when not.
    #[arg(long)]
    check_config: bool,
    /// Once listening, write the bound address to this file.
    #[arg(long)]
    announce: Option<PathBuf>,
    /// Write the metrics listener's bound address to this file (before `--announce`).
    #[arg(long)]
    announce_metrics: Option<PathBuf>,
}

/// mimalloc: glibc's malloc and free were about a tenth of the node's CPU per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = Args::parse();
    let config: NodeConfig = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edge-node: {e}");
            std::process::exit(2);
        }
    };
    if args.check_config {
        println!("edge-node: {} is valid", args.config.display());
        return;
    }
    logging::init(config.log_format, &config.log_filter);
    let runtime = edge_net::runtime::multi_thread(config.network_scheduling)
        .expect("starting the async runtime");
    if let Err(e) = runtime.block_on(run(config, args.announce, args.announce_metrics)) {
        tracing::error!("edge-node: {e:#}");
        std::process::exit(1);
    }
}

async fn run(
    config: NodeConfig,
    announce: Option<PathBuf>,
    announce_metrics: Option<PathBuf>,
) -> anyhow::Result<()> {
    let signal = Shutdown::on_signals()?;
    let identity = tls::Identity {
        cert: &config.tls_cert,
        key: &config.tls_key,
    };
    let tls = tls::server_config(identity, Some(&config.cluster_ca), &[wire::ALPN_H3], true)?;
    // This node's certificate as a client, towards other nodes for their artifacts
    // (they serve those to nodes only).
    let peer_tls = config
        .artifacts
        .share
        .then(|| tls::client_config(&config.cluster_ca, Some(identity), &[wire::ALPN_H3]))
        .transpose()?;
    let endpoint = quic::server(config.listen, tls, &quic::MEMBERS)?;
    let addr = endpoint.local_addr()?;
    let key = ClusterKey::read(&config.gossip.key_file)?;
    let settings = gossip::Settings {
        name: config.name.clone(),
        role: Role::Node,
        quic: addr,
        seeds: config.gossip.seeds.clone(),
        interval: Duration::from_millis(config.gossip.interval_ms),
        phi_threshold: gossip::PHI_THRESHOLD,
        budget_bytes_per_s: config.gossip.budget_bytes_per_s,
        credentials: gossip::Credentials::from_files(&config.cluster_ca, identity)?,
    };
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let link = gossip::Link::udp(config.gossip.listen).await?;
    let metrics_listen = config.metrics_listen;
    let metrics = tokio::net::TcpListener::bind(metrics_listen)
        .await
        .with_context(|| format!("binding the metrics listener on TCP {metrics_listen}"))?;
    let usage_flush = Duration::from_millis(config.usage_flush_ms);
    let artifacts = config.artifacts.clone();
    let node = Arc::new(Node::new(config)?);
    let gossip = Arc::new(Gossip::start(&settings, link, key).await?);
    node.attach_gossip(Arc::clone(&gossip));
    gossip.publish_engine(node.engine()).await;
    if let Some(tls) = peer_tls {
        let endpoint = quic::client(quic::any_local(addr), tls, &quic::CLIENT)?;
        let peers = Peers::new(
            node.name(),
            node.cache(),
            Arc::clone(&gossip),
            settings.credentials.clone(),
            endpoint,
            artifacts,
        );
        node.share_artifacts(settings.credentials.clone(), peers);
    }
    tracing::info!(name = node.name(), %addr, gossip = %gossip.addr(), seeds = ?settings.seeds, "edge-node serving HTTP/3");
    // Fired once the node has drained and gateways have turned away: the server then
    // accepts no more.
    let (stop_serving, serving) = Shutdown::manual();
    let meter = tokio::spawn(flush_usage(Arc::clone(&node), usage_flush, serving.clone()));
    let publisher = tokio::spawn(publish_load(
        Arc::clone(&node),
        Arc::clone(&gossip),
        settings.interval,
        serving.clone(),
    ));
    let metrics_at = metrics.local_addr()?;
    tracing::info!(at = %metrics_at, "metrics serving at /metrics");
    if let Some(path) = announce_metrics {
        std::fs::write(&path, metrics_at.to_string())?;
    }
    let mut registry = node.metrics();
    registry.register_collector(Box::new(GossipCollector::new(&gossip)));
    registry.register_collector(Box::new(QuicCollector::new(vec![(
        "members",
        endpoint.clone(),
    )])));
    tokio::spawn(edge_net::metrics::serve(
        metrics,
        Arc::new(registry),
        serving.clone(),
    ));
    if let Some(path) = announce {
        std::fs::write(&path, addr.to_string())?;
    }
    // Every request the server takes is counted until it has answered: running, queued
    // for a slot, or waiting on a cold load.
    let in_flight = InFlight::default();
    let server = {
        let (node, in_flight) = (Arc::clone(&node), in_flight.clone());
        tokio::spawn(async move {
            let limits = http3::Limits::MEMBERS;
            http3::serve(&endpoint, node, limits, serving, in_flight, grace).await;
            endpoint
        })
    };

    signal.fired().await;
    // New calls are refused with `draining` from now on (a refusal the gateway retries
    // on another node), and gossip tells the gateways to stop sending; what runs and
    // what waits in the queues is finished.
    node.drain();
    gossip.set_draining().await;
    let announced = tokio::time::Instant::now();
    let left = in_flight.drained(grace).await;
    if left > 0 {
        tracing::warn!(
            left,
            ?grace,
            "grace period over: leaving with requests in flight"
        );
    }
    // Reachable until every gateway has had three rounds to see `draining`, so that a
    // request already on its way meets a refusal it can retry, not a closed connection.
    tokio::time::sleep_until(announced + settings.interval * 3).await;
    stop_serving.fire();
    let endpoint = server.await?;
    publisher.await?;
    meter.await?;
    node.flush_usage();
    gossip.leave().await;
    quic::close(&endpoint, "node shutting down", Duration::from_secs(2)).await;
    tracing::info!("edge-node stopped");
    Ok(())
}

/// Writes the usage meter every `every`, until `stop` fires.
async fn flush_usage(node: Arc<Node>, every: Duration, stop: Shutdown) {
    let stopped = stop.fired();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = &mut stopped => return,
        }
        let node = Arc::clone(&node);
        let _ = tokio::task::spawn_blocking(move || node.flush_usage()).await;
    }
}

/// Publishes the node's load and warm set every gossip round, until `stop` fires; first
/// drops the modules idle past their TTL, so the warm set published is without them.
async fn publish_load(node: Arc<Node>, gossip: Arc<Gossip>, every: Duration, stop: Shutdown) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopped = stop.fired();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut stopped => return,
        }
        let idle = Arc::clone(&node);
        let _ = tokio::task::spawn_blocking(move || idle.scale_down_idle()).await;
        let load = node.load();
        let report = LoadReport {
            in_flight: load.in_flight,
            queued: load.queued,
            slots: load.slots,
            ewma_run_us: load.ewma_run_us,
            cpu_permille: 0,
            from_gateways: load.from_gateways,
        };
        let warm = WarmSet::of(load.warm.iter().map(|d| d.as_str()));
        gossip.publish(report, &warm).await;
        let warming = node.warming();
        gossip
            .publish_warming(&WarmSet::of(warming.iter().map(|d| d.as_str())))
            .await;
    }
}
