//! `edge-node`: runs functions for gateways. `edge-node --config node.toml`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use edge_node::{Node, server};
use edge_shared::config::{self, NodeConfig};
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
    let node = Arc::new(Node::new(config)?);
    tracing::info!(name = node.name(), %addr, "edge-node serving HTTP/3");
    if let Some(path) = announce {
        std::fs::write(&path, addr.to_string())?;
    }
    server::serve(endpoint, node, shutdown_signal(), Duration::from_secs(10)).await;
    tracing::info!("edge-node stopped");
    Ok(())
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
