//! `edge-gateway`: the users' entry point. `edge-gateway --config gateway.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use edge_gateway::ingress;
use edge_gateway::proxy::Gateway;
use edge_shared::config::{self, GatewayConfig};
use edge_shared::gossip::{self, ClusterKey, Gossip, Role};
use edge_shared::{tls, wire};
use tokio::net::TcpListener;

/// Serves edge functions to users over HTTP/3, HTTP/2 and HTTP/1.1.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Once listening, write the bound address to this file.
    #[arg(long)]
    announce: Option<PathBuf>,
    /// Before announcing, wait (up to 30 s) until gossip has brought this many nodes,
    /// and place every function on its home node among them.
    #[arg(long, default_value_t = 0)]
    expect_nodes: usize,
}

/// Longest `--expect-nodes` waits.
const EXPECT_NODES_WITHIN: Duration = Duration::from_secs(30);

fn main() {
    let args = Args::parse();
    let config: GatewayConfig = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edge-gateway: {e}");
            std::process::exit(2);
        }
    };
    config.log_format.init();
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    if let Err(e) = runtime.block_on(run(config, args.announce, args.expect_nodes)) {
        eprintln!("edge-gateway: {e:#}");
        std::process::exit(2);
    }
}

/// Binds UDP and TCP on the same port; with port 0, a port free for both.
async fn bind(
    addr: SocketAddr,
    quic_tls: rustls::ServerConfig,
) -> anyhow::Result<(quinn::Endpoint, TcpListener)> {
    if addr.port() != 0 {
        let endpoint =
            ingress::h3::endpoint(addr, quic_tls).with_context(|| format!("binding UDP {addr}"))?;
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding TCP {addr}"))?;
        return Ok((endpoint, tcp));
    }
    for _ in 0..20 {
        let endpoint = ingress::h3::endpoint(addr, quic_tls.clone())?;
        let chosen = endpoint.local_addr()?;
        if let Ok(tcp) = TcpListener::bind(chosen).await {
            return Ok((endpoint, tcp));
        }
    }
    anyhow::bail!("found no port free on both UDP and TCP at {}", addr.ip())
}

async fn run(
    config: GatewayConfig,
    announce: Option<PathBuf>,
    expect_nodes: usize,
) -> anyhow::Result<()> {
    let identity = tls::Identity {
        cert: &config.tls_cert,
        key: &config.tls_key,
    };
    let quic_tls = tls::server_config(identity, None, &[wire::ALPN_H3], true)?;
    let tcp_tls = tls::server_config(identity, None, &[b"h2", b"http/1.1"], false)?;
    let (endpoint, tcp) = bind(config.listen, quic_tls).await?;
    let addr = endpoint.local_addr()?;
    let key = ClusterKey::read(&config.gossip.key_file)?;
    let settings = gossip::Settings {
        name: format!("gateway@{addr}"),
        role: Role::Gateway,
        quic: addr,
        seeds: config.gossip.seeds.clone(),
        interval: Duration::from_millis(config.gossip.interval_ms),
        phi_threshold: gossip::PHI_THRESHOLD,
    };
    let link = gossip::Link::udp(config.gossip.listen).await?;
    let gateway = Arc::new(Gateway::new(config, addr.port(), settings.name.clone())?);
    let gossip = Gossip::start(&settings, link, key).await?;
    tracing::info!(%addr, gossip = %gossip.addr(), seeds = ?settings.seeds, functions = gateway.functions().len(), "edge-gateway serving HTTP/3 on UDP, HTTP/1.1 and HTTP/2 on TCP");
    tokio::spawn(Arc::clone(&gateway).watch_cluster(gossip, settings.interval));
    if expect_nodes > 0 {
        let deadline = tokio::time::Instant::now() + EXPECT_NODES_WITHIN;
        while gateway.usable_nodes() < expect_nodes && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let found = gateway.usable_nodes();
        if found < expect_nodes {
            tracing::warn!(
                found,
                expected = expect_nodes,
                "fewer nodes than expected joined"
            );
        }
    }
    gateway.place(None).await;
    if let Some(path) = announce {
        std::fs::write(&path, addr.to_string())?;
    }

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let h3 = tokio::spawn(ingress::h3::serve(
        endpoint,
        Arc::clone(&gateway),
        until_stopped(stopped.clone()),
    ));
    let tcp = tokio::spawn(ingress::tcp::serve(
        tcp,
        tcp_tls,
        Arc::clone(&gateway),
        until_stopped(stopped),
    ));
    shutdown_signal().await;
    let _ = stop.send(true);
    let _ = tokio::join!(h3, tcp);
    gateway.close();
    tracing::info!("edge-gateway stopped");
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
    tracing::info!("shutting down (a second signal exits at once)");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        std::process::exit(130);
    });
}
