//! `edge`: the operator CLI. `edge up` starts a local cluster; `edge call URL` makes one
//! HTTP/3 request; `edge deploy`, `edge functions`, `edge rollback`, `edge rm`, `edge
//! cluster` and `edge tail` use a gateway's admin API. Exit codes: 0 done, 2 refused by the API (the reason on stderr),
//! 1 anything else.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand};
use edge_cli::admin::{
    AdminClient, DeployOptions, Reply, deploy_body, functions_table, traffic_body, versions_table,
};
use edge_cli::cluster::{self, LocalCluster};
use edge_cli::supervise::Supervisor;
use edge_cli::tail;
use edge_shared::config::{self, ClusterConfig, RegistryKind};

/// The cluster file `edge up` uses unless given another.
const DEFAULT_CLUSTER: &str = include_str!("../../../config/cluster.toml");

/// Operate an edge cluster.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster (one gateway, N nodes) and deploy its functions; Ctrl-C stops it.
    Up {
        /// Cluster file; default: the embedded config/cluster.toml (module paths relative to
        /// `config/` under the current folder, the repository root).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Folder for certificates, configuration, caches and logs.
        #[arg(long, default_value = ".edge")]
        dir: PathBuf,
        /// The gateways' registry, over the cluster file's `registry`: `embedded`, or
        /// `nats` (a nats-server with JetStream started in the folder, shared by all).
        #[arg(long)]
        registry: Option<String>,
        /// Gateways to start, over the cluster file's `gateways` (more than one needs
        /// `--registry nats`).
        #[arg(long)]
        gateways: Option<usize>,
        /// Leave a member that exits down (the rest keep serving) instead of starting it
        /// again.
        #[arg(long)]
        no_restart: bool,
    },
    /// Make one HTTP/3 request and print status, headers and body.
    Call {
        /// `https://HOST[:PORT]/PATH`.
        url: String,
        /// Method.
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
        /// Request header `NAME: VALUE` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Request body; `@FILE` reads a file.
        #[arg(short = 'd', long)]
        data: Option<String>,
        /// CA certificate to trust; default: `.edge/certs/ca.pem` when it exists.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Accept any server certificate.
        #[arg(long, conflicts_with = "ca")]
        insecure: bool,
        /// Connect to this address instead of resolving the URL's host.
        #[arg(long)]
        connect: Option<SocketAddr>,
    },
    /// Deploy a module as a new version of function NAME, serving all its traffic at
    /// once (or 0% with --no-promote); prints its URL and how long until it answered.
    Deploy {
        /// The function's name: [a-z0-9-], up to 63.
        name: String,
        /// The module (a WASI preview1 command).
        module: PathBuf,
        #[command(flatten)]
        options: DeployOptions,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the functions: versions, routes, warm nodes.
    Functions {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List one function's versions: traffic, content, age, warm nodes.
    Versions {
        /// The function.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Split function NAME's traffic: one version at 100, or two whose percentages add
    /// to 100 (`edge traffic NAME v7=10 v6=90`).
    Traffic {
        /// The function.
        name: String,
        /// VERSION=PERCENT, once or twice.
        #[arg(required = true, num_args = 1..=2)]
        shares: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Roll function NAME back to VERSION, or to the previous version that served all
    /// its traffic: a new version with its module and settings, serving all at once.
    Rollback {
        /// The function.
        name: String,
        /// The version to roll back to.
        version: Option<u64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove function NAME and its versions.
    Rm {
        /// The function.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the cluster as the gateway sees it.
    Cluster {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make a cluster CA and the certificates and secrets of a cluster's roles in DIR
    /// (kept if there): the gateway's public and member certificates, the gossip key, the
    /// admin token, and one certificate per `--node` (and the NATS server's with
    /// `--registry`). Copy each host's files to it; keep `ca.key` off the hosts.
    Certs {
        /// Where to write them.
        #[arg(long, default_value = ".edge/certs")]
        dir: PathBuf,
        /// The functions' domain (the public certificate's names).
        #[arg(long, default_value = "edge.localhost")]
        domain: String,
        /// A node's name (repeatable): its certificate in DIR/nodes/.
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// Also the NATS server's certificate (a shared registry), naming these hosts
        /// (its addresses or DNS names; repeatable) besides localhost.
        #[arg(long = "registry")]
        registry: Vec<String>,
    },
    /// What each function and version used over the cluster: calls, errors, run time,
    /// fuel, peak memory, bytes in and out, as a bill is made.
    Usage {
        /// From when: a duration back (30m, 2h, 7d) or an RFC 3339 time; rounded down
        /// to the hour. Default: since each node began counting.
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stream function NAME's calls and log lines from every node as they happen, with
    /// the node, version, request id and status, until Ctrl-C. Notices (nodes tailed,
    /// lines dropped over the gateway's rate) go to stderr.
    Tail {
        /// The function.
        name: String,
        /// Stop after this many calls and log lines.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Where the admin API is, and how to call it.
#[derive(clap::Args)]
struct AdminArgs {
    /// The gateway's admin API.
    #[arg(long, default_value = "https://127.0.0.1:4480")]
    admin: String,
    /// CA certificate to trust.
    #[arg(long, default_value = ".edge/certs/ca.pem")]
    ca: PathBuf,
    /// File holding the admin token.
    #[arg(long, default_value = ".edge/certs/admin.token")]
    token_file: PathBuf,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// A call the API refused (4xx): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up {
            config,
            dir,
            registry,
            gateways,
            no_restart,
        } => up(
            config.as_deref(),
            &dir,
            registry.as_deref(),
            gateways,
            !no_restart,
        ),
        Command::Deploy {
            name,
            module,
            options,
            admin,
        } => deploy_body(&module, &options).and_then(|body| {
            let path = format!("/v1/functions/{name}");
            let promote = !options.no_promote;
            let mut answered = None;
            admin_call(&admin, http::Method::PUT, &path, Some(body), |d| {
                answered = Some(d.clone());
                let new = if d["created"] == true {
                    "new"
                } else {
                    "already serving"
                };
                format!(
                    "deployed {name}: version {} ({new}), content {}\n",
                    d["version"],
                    d["content_id"].as_str().unwrap_or_default(),
                )
            })?;
            match answered {
                Some(d) if !admin.json => edge_cli::call::report_answering(&d, promote, &admin.ca),
                _ => Ok(()),
            }
        }),
        Command::Functions { admin } => admin_call(
            &admin,
            http::Method::GET,
            "/v1/functions",
            None,
            functions_table,
        ),
        Command::Versions { name, admin } => {
            let path = format!("/v1/functions/{name}");
            admin_call(&admin, http::Method::GET, &path, None, versions_table)
        }
        Command::Traffic {
            name,
            shares,
            admin,
        } => traffic_body(&shares).and_then(|body| {
            let path = format!("/v1/functions/{name}/traffic");
            admin_call(&admin, http::Method::PUT, &path, Some(body), |t| {
                let split: Vec<String> = t["traffic"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| format!("v{} {}%", s["version"], s["percent"]))
                    .collect();
                format!("{name}: traffic {}\n", split.join(", "))
            })
        }),
        Command::Rollback {
            name,
            version,
            admin,
        } => {
            let path = format!("/v1/functions/{name}/rollback");
            let body = version.map(|v| serde_json::json!({ "version": v }));
            admin_call(&admin, http::Method::POST, &path, body, |r| {
                format!(
                    "rolled {name} back: version {} (restores version {}), serving\n",
                    r["version"], r["restores"]
                )
            })
        }
        Command::Rm { name, admin } => {
            let path = format!("/v1/functions/{name}");
            admin_call(&admin, http::Method::DELETE, &path, None, |_| {
                format!("removed {name}\n")
            })
        }
        Command::Cluster { admin } => {
            admin_call(&admin, http::Method::GET, "/v1/cluster", None, |c| {
                let mut out = format!("gateway {}\n", c["name"].as_str().unwrap_or_default());
                for n in c["nodes"].as_array().into_iter().flatten() {
                    out += &format!(
                        "  {:<12} {:<22} {:<9} slots {:>3}  load {:>4}  warm {:>4}\n",
                        n["name"].as_str().unwrap_or_default(),
                        n["addr"].as_str().unwrap_or_default(),
                        n["state"].as_str().unwrap_or_default(),
                        n["slots"],
                        n["reported_load"],
                        n["warm"]
                    );
                }
                out
            })
        }
        Command::Tail { name, count, admin } => tail(&admin, &name, count),
        Command::Usage { since, admin } => usage(&admin, since.as_deref()),
        Command::Certs {
            dir,
            domain,
            nodes,
            registry,
        } => certs(&dir, &domain, &nodes, &registry),
        Command::Call {
            url,
            method,
            headers,
            data,
            ca,
            insecure,
            connect,
        } => {
            let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
            runtime.block_on(edge_cli::call::call(
                &url,
                &method,
                &headers,
                data.as_deref(),
                ca,
                insecure,
                connect,
            ))
        }
    };
    if let Err(e) = result {
        eprintln!("edge: {e:#}");
        std::process::exit(if e.downcast_ref::<Refused>().is_some() {
            2
        } else {
            1
        });
    }
}

/// Runs an admin command: `method path` with `body`, then prints the answer with `show`
/// (or as JSON with `--json`).
fn admin_call(
    args: &AdminArgs,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
    show: impl FnOnce(&serde_json::Value) -> String,
) -> anyhow::Result<()> {
    let client = AdminClient::new(&args.admin, &args.ca, &args.token_file)?;
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    let reply = runtime.block_on(client.call(method, path, body.as_ref()))?;
    checked(&reply)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply.body)?);
    } else {
        print!("{}", show(&reply.body));
    }
    Ok(())
}

/// An error for an answer the API refused (exit code 2) or failed.
fn checked(reply: &Reply) -> anyhow::Result<()> {
    if reply.status.is_client_error() {
        let why = reply.body["error"]
            .as_str()
            .unwrap_or("refused")
            .to_string();
        return Err(Refused(format!("{} {why}", reply.status.as_u16())).into());
    }
    if !reply.status.is_success() {
        bail!("the admin API answered {}: {}", reply.status, reply.body);
    }
    Ok(())
}

/// `edge certs`: the cluster CA and every role's files, listed.
fn certs(dir: &Path, domain: &str, nodes: &[String], registry: &[String]) -> anyhow::Result<()> {
    edge_cli::devcerts::private_dir(dir)?;
    let certs = edge_cli::devcerts::DevCerts::ensure(dir, domain)?;
    let show = |what: &str, file: &Path| println!("{what:<28} {}", file.display());
    show("CA (every host)", &certs.ca);
    show("CA key (keep it off hosts)", &certs.ca_key);
    show("gateway: public cert", &certs.gateway_cert);
    show("gateway: public key", &certs.gateway_key);
    show("gateway: member cert", &certs.member_cert);
    show("gateway: member key", &certs.member_key);
    show("gateway: admin token", &certs.admin_token);
    show("gossip key (every host)", &certs.gossip_key);
    for node in nodes {
        let own = certs.node(node)?;
        show(&format!("{node}: cert"), &own.cert);
        show(&format!("{node}: key"), &own.key);
    }
    if !registry.is_empty() {
        let own = certs.registry_for(registry)?;
        show("NATS server: cert", &own.cert);
        show("NATS server: key", &own.key);
    }
    Ok(())
}

/// `edge usage`: the report as a table (or its JSON), notes on stderr.
fn usage(args: &AdminArgs, since: Option<&str>) -> anyhow::Result<()> {
    let path = match since {
        Some(since) => format!(
            "/v1/usage?since={}",
            edge_cli::usage::since_query(since, chrono::Utc::now())?
        ),
        None => "/v1/usage".into(),
    };
    admin_call(args, http::Method::GET, &path, None, |report| {
        let (table, notes) = edge_cli::usage::usage_table(report);
        for note in notes {
            eprintln!("edge usage: {note}");
        }
        table
    })
}

/// `edge tail`: prints the stream until it ends, Ctrl-C, or `count` events.
fn tail(args: &AdminArgs, name: &str, count: Option<u64>) -> anyhow::Result<()> {
    let client = AdminClient::new(&args.admin, &args.ca, &args.token_file)?;
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    let path = format!("/v1/functions/{name}/tail");
    let mut seen = 0;
    let shown = runtime.block_on(client.lines(&path, |event| {
        let out = std::io::stdout();
        let mut out = out.lock();
        match tail::show(event) {
            _ if args.json => {
                let _ = writeln!(out, "{event}");
            }
            Some(tail::Shown::Event(line)) => {
                let _ = writeln!(out, "{line}");
            }
            Some(tail::Shown::Notice(line)) => eprintln!("edge tail: {line}"),
            None => {}
        }
        let _ = out.flush();
        if matches!(event["kind"].as_str(), Some("call" | "log")) {
            seen += 1;
        }
        if count.is_some_and(|n| seen >= n) {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    }))?;
    match shown {
        Some(reply) => checked(&reply),
        None => Ok(()),
    }
}

fn up(
    config_file: Option<&Path>,
    dir: &Path,
    registry: Option<&str>,
    gateways: Option<usize>,
    restart: bool,
) -> anyhow::Result<()> {
    let mut spec: ClusterConfig = match config_file {
        Some(file) => config::load(file)?,
        None => config::load_str(
            DEFAULT_CLUSTER,
            Path::new("config/cluster.toml (embedded)"),
            &std::env::current_dir()?.join("config"),
        )?,
    };
    if let Some(registry) = registry {
        spec.registry = match registry {
            "embedded" => RegistryKind::Embedded,
            "nats" => RegistryKind::Nats,
            other => bail!("--registry {other:?}: embedded or nats"),
        };
    }
    if let Some(gateways) = gateways {
        spec.gateways = gateways;
    }
    if spec.gateways == 0 || (spec.gateways > 1 && spec.registry != RegistryKind::Nats) {
        bail!(
            "--gateways {}: more than one gateway shares functions only with --registry nats",
            spec.gateways
        );
    }
    let mut cluster = LocalCluster::start(&spec, dir, &cluster::bin_dir()?)?;
    let addr = cluster.gateway_addr();
    let ca = cluster.certs().ca.display().to_string();
    println!(
        "edge: local cluster up: {} gateway{}, {} nodes, state and logs in {}",
        spec.gateways,
        if spec.gateways == 1 { "" } else { "s" },
        spec.nodes,
        cluster.dir().display()
    );
    println!("edge: users connect to https://{addr} (HTTP/3 on UDP; HTTP/1.1 and HTTP/2 on TCP)");
    println!("edge: development CA certificate: {ca}");
    for f in &spec.functions {
        println!("edge:   deployed {:<8} https://{addr}/{}", f.name, f.name);
    }
    println!("edge: try  curl --cacert {ca} https://{addr}/hello");
    println!("edge:  or  edge call --ca {ca} https://{addr}/hello");
    let (admin, token) = (cluster.admin_addr(), cluster.certs().admin_token.display());
    println!("edge: admin API at https://{admin}/v1/ (bearer token in {token}):");
    println!(
        "edge:       curl --cacert {ca} -H \"Authorization: Bearer $(cat {token})\" https://{admin}/v1/cluster"
    );
    let (users, admins) = (cluster.gateway_addrs(), cluster.admin_addrs());
    for (i, (user, admin)) in users.iter().zip(&admins).enumerate().skip(1) {
        println!(
            "edge: gateway {}: users at https://{user}, admin API at https://{admin}/v1/",
            i + 1
        );
    }
    for (i, at) in cluster.gateway_metrics_addrs()?.iter().enumerate() {
        println!("edge: gateway {} metrics: http://{at}/metrics", i + 1);
    }
    for (i, at) in cluster.node_metrics_addrs()?.iter().enumerate() {
        println!("edge: node-{} metrics: http://{at}/metrics", i + 1);
    }
    if let Some(url) = cluster.nats_url() {
        println!("edge: registry: NATS JetStream at {url}, shared by every gateway");
    }
    println!("edge: Ctrl-C stops the cluster");
    std::io::stdout().flush()?;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [libc_signal::SIGINT, libc_signal::SIGTERM] {
        signal_hook_flag(signal, &stop)?;
    }
    let mut supervisor = Supervisor::default();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        supervisor.round(&mut cluster, restart);
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("edge: stopping the cluster");
    cluster.stop(Duration::from_secs(10));
    Ok(())
}

/// Signal numbers `edge up` stops on.
mod libc_signal {
    pub(super) const SIGINT: i32 = 2;
    pub(super) const SIGTERM: i32 = 15;
}

/// Sets `flag` when `signal` arrives, on a small runtime thread.
fn signal_hook_flag(
    signal: i32,
    flag: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    let flag = std::sync::Arc::clone(flag);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let kind = tokio::signal::unix::SignalKind::from_raw(signal);
            if let Ok(mut s) = tokio::signal::unix::signal(kind) {
                s.recv().await;
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
    });
    Ok(())
}
