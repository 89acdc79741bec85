//! `edge-gateway`: the users' entry point. `edge-gateway --config gateway.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use edge_gateway::admin::{self, Admin, Token};
use edge_gateway::functions::Functions;
use edge_gateway::ingress;
use edge_gateway::nats::Shared;
use edge_gateway::proxy::Gateway;
use edge_gateway::registry::{Embedded, FunctionSpec, Registry};
use edge_gateway::status::StatusServer;
use edge_net::gossip::{self, ClusterKey, Gossip, Role};
use edge_net::lifecycle::{InFlight, Shutdown};
use edge_net::metrics::{GossipCollector, QuicCollector};
use edge_net::{http3, logging, quic, tls};
use edge_shared::config::{self, GatewayConfig, IngressConfig, RegistryKind};
use edge_shared::wire;
use tokio::net::TcpListener;

/// Serves edge functions to users over HTTP/3, HTTP/2 and HTTP/1.1.
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
    /// Write the status endpoint's bound address to this file (before `--announce`).
    #[arg(long)]
    announce_status: Option<PathBuf>,
    /// Write the gossip address bound to this file as soon as gossip runs, before
    /// `--expect-nodes` waits: nodes started then can seed with it.
    #[arg(long)]
    announce_gossip: Option<PathBuf>,
    /// Write the admin API's bound address to this file (before `--announce`).
    #[arg(long)]
    announce_admin: Option<PathBuf>,
    /// Write the metrics listener's bound address to this file (before `--announce`).
    #[arg(long)]
    announce_metrics: Option<PathBuf>,
    /// Before announcing, wait (up to 30 s) until gossip has brought this many nodes,
    /// and place every function on its home node among them.
    #[arg(long, default_value_t = 0)]
    expect_nodes: usize,
}

/// Where to write the bound addresses once serving.
struct Announce {
    users: Option<PathBuf>,
    status: Option<PathBuf>,
    gossip: Option<PathBuf>,
    admin: Option<PathBuf>,
    metrics: Option<PathBuf>,
}

/// Longest `--expect-nodes` waits.
const EXPECT_NODES_WITHIN: Duration = Duration::from_secs(30);
/// Longest closing a QUIC endpoint waits for its peers to be told.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// mimalloc: glibc's malloc and free are a tenth of the request path's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = Args::parse();
    let config: GatewayConfig = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edge-gateway: {e}");
            std::process::exit(2);
        }
    };
    if args.check_config {
        println!("edge-gateway: {} is valid", args.config.display());
        return;
    }
    logging::init(config.log_format, &config.log_filter);
    let runtime = edge_net::runtime::multi_thread(config.network_scheduling)
        .expect("starting the async runtime");
    let announced = Announce {
        users: args.announce,
        status: args.announce_status,
        gossip: args.announce_gossip,
        admin: args.announce_admin,
        metrics: args.announce_metrics,
    };
    if let Err(e) = runtime.block_on(run(config, announced, args.expect_nodes)) {
        eprintln!("edge-gateway: {e:#}");
        std::process::exit(2);
    }
}

/// The functions in the registry, with the configuration file's deployed through it the
/// way the admin API deploys (a new version only where something changed).
async fn deploy_configured(
    registry: &dyn Registry,
    config: &GatewayConfig,
) -> anyhow::Result<Functions> {
    let mut functions = Functions::from_registry(registry, config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, f) in config.functions.iter().enumerate() {
        let at = || format!("functions[{i}] {:?} ({})", f.name, f.module.display());
        let module =
            std::fs::read(&f.module).map_err(|e| anyhow::anyhow!("{}: reading it: {e}", at()))?;
        let spec = FunctionSpec {
            routes: f.routes.clone(),
            env: f.env.clone(),
            secrets: f.secrets.clone(),
            limits: f.limits.clone(),
            schedule: f.schedule.clone(),
            precompile: true,
        };
        let (deployed, next) = edge_gateway::functions::deploy(
            registry,
            &functions,
            config,
            &f.name,
            spec,
            module.into(),
            true,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
        if deployed.created {
            tracing::info!(function = %f.name, version = deployed.version, "deployed from the configuration file");
        }
        functions = next;
    }
    Ok(functions)
}

/// Binds UDP and TCP on the same port; with port 0, a port free for both.
async fn bind(
    addr: SocketAddr,
    quic_tls: rustls::ServerConfig,
    ingress: &IngressConfig,
) -> anyhow::Result<(quinn::Endpoint, TcpListener)> {
    let users = quic::Transport {
        idle_timeout: ingress.idle_timeout(),
        ..quic::USERS
    };
    if addr.port() != 0 {
        let endpoint =
            quic::server(addr, quic_tls, &users).with_context(|| format!("binding UDP {addr}"))?;
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding TCP {addr}"))?;
        return Ok((endpoint, tcp));
    }
    for _ in 0..20 {
        let endpoint = quic::server(addr, quic_tls.clone(), &users)?;
        let chosen = endpoint.local_addr()?;
        if let Ok(tcp) = TcpListener::bind(chosen).await {
            return Ok((endpoint, tcp));
        }
    }
    anyhow::bail!("found no port free on both UDP and TCP at {}", addr.ip())
}

async fn run(config: GatewayConfig, announce: Announce, expect_nodes: usize) -> anyhow::Result<()> {
    let stop = Shutdown::on_signals()?;
    let identity = tls::Identity {
        cert: &config.tls_cert,
        key: &config.tls_key,
    };
    let quic_tls = tls::server_config(identity, None, &[wire::ALPN_H3], true)?;
    let tcp_tls = tls::server_config(identity, None, &[b"h2", b"http/1.1"], false)?;
    let (endpoint, tcp) = bind(config.listen, quic_tls, &config.ingress).await?;
    let addr = endpoint.local_addr()?;
    let key = ClusterKey::read(&config.gossip.key_file)?;
    // The member certificate: it signs the gateway's gossip identity, and the status
    // endpoint (for cluster members only) presents it.
    let member = tls::Identity {
        cert: &config.cluster_cert,
        key: &config.cluster_key,
    };
    let settings = gossip::Settings {
        name: if config.name.is_empty() {
            format!("gateway@{addr}")
        } else {
            config.name.clone()
        },
        role: Role::Gateway,
        quic: addr,
        seeds: config.gossip.seeds.clone(),
        interval: Duration::from_millis(config.gossip.interval_ms),
        phi_threshold: gossip::PHI_THRESHOLD,
        budget_bytes_per_s: config.gossip.budget_bytes_per_s,
        credentials: gossip::Credentials::from_files(&config.cluster_ca, member)?,
    };
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let user_limits = http3::Limits::for_users(&config.ingress);
    let ingress = config.ingress.clone();
    let status_tls = tls::server_config(member, Some(&config.cluster_ca), &[wire::ALPN_H3], true)?;
    let status_endpoint = quic::server(config.status_listen, status_tls, &quic::MEMBERS)
        .with_context(|| {
            format!(
                "binding the status endpoint on UDP {}",
                config.status_listen
            )
        })?;
    // The admin API runs only with a token file; both are checked before serving.
    let admin = if config.admin.token_file.as_os_str().is_empty() {
        None
    } else {
        let token = Token::read(&config.admin.token_file)?;
        let listen = config.admin.listen;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the admin API on TCP {listen}"))?;
        Some((token, listener))
    };
    let metrics_listen = config.metrics_listen;
    let metrics = TcpListener::bind(metrics_listen)
        .await
        .with_context(|| format!("binding the metrics listener on TCP {metrics_listen}"))?;
    let link = gossip::Link::udp(config.gossip.listen).await?;
    // With a shared registry, changes are watched from before the functions are read,
    // so none made meanwhile is missed.
    let (registry, shared): (Arc<dyn Registry>, _) = match config.registry.kind {
        RegistryKind::Embedded => (
            Arc::new(Embedded::open(&config.state_dir.join("registry.redb"))?),
            None,
        ),
        RegistryKind::Nats => {
            let shared = Arc::new(Shared::connect(&config).await?);
            let changes = shared.changes().await?;
            (
                Arc::clone(&shared) as Arc<dyn Registry>,
                Some((shared, changes)),
            )
        }
    };
    let functions = deploy_configured(&*registry, &config).await?;
    let watched = shared.as_ref().map(|_| config.clone());
    let gateway = Arc::new(Gateway::new(
        config,
        functions,
        addr.port(),
        settings.name.clone(),
    )?);
    let gossip = Arc::new(Gossip::start(&settings, link, key).await?);
    if let Some(path) = &announce.gossip {
        std::fs::write(path, gossip.addr().to_string())?;
    }
    let status_addr = status_endpoint.local_addr()?;
    tracing::info!(%addr, gossip = %gossip.addr(), status = %status_addr, seeds = ?settings.seeds, functions = gateway.functions().list.len(), "edge-gateway serving HTTP/3 on UDP, HTTP/1.1 and HTTP/2 on TCP");
    let watch = tokio::spawn(Arc::clone(&gateway).watch_cluster(
        Arc::clone(&gossip),
        settings.interval,
        stop.clone(),
    ));
    let metrics_at = metrics.local_addr()?;
    tracing::info!(at = %metrics_at, "metrics serving at /metrics");
    if let Some(path) = &announce.metrics {
        std::fs::write(path, metrics_at.to_string())?;
    }
    let mut scraped = gateway.metrics();
    scraped.register_collector(Box::new(GossipCollector::new(&gossip)));
    scraped.register_collector(Box::new(QuicCollector::new(vec![
        ("users", endpoint.clone()),
        ("members", status_endpoint.clone()),
        ("nodes", gateway.node_endpoint().clone()),
    ])));
    tokio::spawn(edge_net::metrics::serve(
        metrics,
        Arc::new(scraped),
        stop.clone(),
    ));
    if let (Some((shared, changes)), Some(config)) = (shared, watched) {
        tokio::spawn(edge_gateway::nats::watch(
            changes,
            Arc::clone(&gateway),
            shared,
            config,
            stop.clone(),
        ));
    }
    tokio::spawn(edge_gateway::schedule::run(
        Arc::clone(&gateway),
        Arc::clone(&registry),
        settings.name.clone(),
        stop.clone(),
    ));
    let server = Arc::new(StatusServer {
        gateway: Arc::clone(&gateway),
        gossip: Arc::clone(&gossip),
    });
    let admin = match admin {
        None => None,
        Some((token, listener)) => {
            let at = listener.local_addr()?;
            tracing::info!(%at, "admin API serving HTTPS");
            if let Some(path) = &announce.admin {
                std::fs::write(path, at.to_string())?;
            }
            let admin = Arc::new(Admin {
                token,
                status: Arc::clone(&server),
                gateway: Arc::clone(&gateway),
                registry: Arc::clone(&registry),
                tails: Arc::new(tokio::sync::Semaphore::new(
                    gateway.config().admin.max_tails,
                )),
            });
            Some(tokio::spawn(admin::serve(
                listener,
                tcp_tls.clone(),
                admin,
                stop.clone(),
            )))
        }
    };
    let status = {
        let stop = stop.clone();
        tokio::spawn(async move {
            http3::serve(
                &status_endpoint,
                server,
                http3::Limits::MEMBERS,
                stop,
                InFlight::default(),
                CLOSE_WITHIN,
            )
            .await;
            quic::close(&status_endpoint, "gateway shutting down", CLOSE_WITHIN).await;
        })
    };
    if expect_nodes > 0 {
        let deadline = tokio::time::Instant::now() + EXPECT_NODES_WITHIN;
        while gateway.usable_nodes() < expect_nodes
            && tokio::time::Instant::now() < deadline
            && !stop.is_fired()
        {
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
    if let Some(path) = announce.status {
        std::fs::write(&path, status_addr.to_string())?;
    }
    if let Some(path) = announce.users {
        std::fs::write(&path, addr.to_string())?;
    }

    // Both ingresses count their requests in one place, so the drain waits for all.
    let in_flight = InFlight::default();
    let h3 = {
        let (gateway, stop, in_flight) = (Arc::clone(&gateway), stop.clone(), in_flight.clone());
        tokio::spawn(async move {
            http3::serve(&endpoint, gateway, user_limits, stop, in_flight, grace).await;
            endpoint
        })
    };
    let tcp = tokio::spawn(ingress::tcp::serve(
        tcp,
        tcp_tls,
        Arc::clone(&gateway),
        ingress,
        stop.clone(),
        in_flight.clone(),
    ));
    stop.fired().await;
    let stopped_at = tokio::time::Instant::now();
    // Accepting nothing more: HTTP/3 connections got GOAWAY and close once their
    // requests have answered, TCP ones shut down gracefully; all within the grace.
    let endpoint = h3.await?;
    tcp.await?;
    let left = in_flight
        .drained(grace.saturating_sub(stopped_at.elapsed()))
        .await;
    if left > 0 {
        tracing::warn!(
            left,
            ?grace,
            "grace period over: closing with requests in flight"
        );
    }
    watch.await?;
    status.await?;
    if let Some(admin) = admin {
        admin.await?;
    }
    gossip.leave().await;
    tokio::join!(
        quic::close(&endpoint, "gateway shutting down", CLOSE_WITHIN),
        gateway.close(CLOSE_WITHIN)
    );
    tracing::info!("edge-gateway stopped");
    Ok(())
}
