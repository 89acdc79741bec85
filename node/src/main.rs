//! `edge-node`: runs functions for gateways. `edge-node --config node.toml`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use edge_node::{Node, server};
use edge_shared::config::{self, NodeConfig};
use edge_shared::gossip::{self, ClusterKey, Gossip, LoadReport, Role, WarmSet};
use edge_shared::{tls, wire};

/// Runs WebAssembly functions for edge gateways over HTTP/3.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Once listening, write the bound address to this file.
    #[arg(long)]
    announce: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let config: NodeConfig = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edge-node: {e}");
            std::process::exit(2);
        }
    };
    config.log_format.init();
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    if let Err(e) = runtime.block_on(run(config, args.announce)) {
        tracing::error!("edge-node: {e:#}");
        std::process::exit(1);
    }
}

async fn run(config: NodeConfig, announce: Option<PathBuf>) -> anyhow::Result<()> {
    let identity = tls::Identity {
        cert: &config.tls_cert,
        key: &config.tls_key,
    };
    let tls = tls::server_config(identity, Some(&config.cluster_ca), &[wire::ALPN_H3], true)?;
    let endpoint = server::endpoint(config.listen, tls)?;
    let addr = endpoint.local_addr()?;
    let key = ClusterKey::read(&config.gossip.key_file)?;
    let settings = gossip::Settings {
        name: config.name.clone(),
        role: Role::Node,
        quic: addr,
        seeds: config.gossip.seeds.clone(),
        interval: Duration::from_millis(config.gossip.interval_ms),
        phi_threshold: gossip::PHI_THRESHOLD,
    };
    let link = gossip::Link::udp(config.gossip.listen).await?;
    let node = Arc::new(Node::new(config)?);
    let gossip = Arc::new(Gossip::start(&settings, link, key).await?);
    node.attach_gossip(Arc::clone(&gossip));
    tracing::info!(name = node.name(), %addr, gossip = %gossip.addr(), seeds = ?settings.seeds, "edge-node serving HTTP/3");
    tokio::spawn(publish_load(
        Arc::clone(&node),
        Arc::clone(&gossip),
        settings.interval,
    ));
    if let Some(path) = announce {
        std::fs::write(&path, addr.to_string())?;
    }
    let drained = async {
        shutdown_signal().await;
        // Gateways learn of it from gossip and stop sending new requests; the ones
        // already on their way are still served.
        gossip.set_draining().await;
        tokio::time::sleep(settings.interval * 3).await;
    };
    server::serve(endpoint, node, drained, Duration::from_secs(10)).await;
    tracing::info!("edge-node stopped");
    Ok(())
}

/// Publishes the node's load and warm set every gossip round, until the process ends.
async fn publish_load(node: Arc<Node>, gossip: Arc<Gossip>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
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
    }
}

/// Resolves on SIGTERM or Ctrl-C; a second signal exits at once.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: draining (a second signal exits at once)");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        std::process::exit(130);
    });
}
