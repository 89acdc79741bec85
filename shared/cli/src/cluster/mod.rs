//! A local cluster of real processes: `edge up`, and the integration tests.
//!
//! Writes development certificates, the gossip cluster key and a configuration file per
//! process into a state folder, starts the gateway, which binds gossip on a port of the
//! system's choosing and says which, then the nodes, each naming that address as its
//! only seed; the gateway announces itself once gossip has brought it every node. No
//! process is given a list of nodes, and no port is picked ahead (another process could
//! take it first). Each process logs to `NAME.log` in the folder. Dropping the cluster
//! kills every process it started.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use edge_shared::config::{
    AdminConfig, ArtifactsConfig, ClusterConfig, GatewayConfig, GossipConfig, NodeConfig,
    RegistryConfig, RegistryKind,
};

use crate::devcerts::DevCerts;

mod nats;
mod restart;
mod signal;

use nats::Nats;
pub use restart::Member;

/// Files in the state folder where the gateway writes the addresses it bound.
const STATUS_FILE: &str = "gateway.status";
const GOSSIP_FILE: &str = "gateway.gossip";
const ADMIN_FILE: &str = "gateway.admin";

/// The address a process wrote to `file`.
fn announced(file: &Path) -> anyhow::Result<SocketAddr> {
    std::fs::read_to_string(file)
        .with_context(|| format!("reading {}", file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("the address in {}", file.display()))
}

/// Longest a process may take to announce its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One started process.
struct Process {
    name: String,
    child: Child,
    config: PathBuf,
    addr: SocketAddr,
    /// CPUs it is pinned to (`taskset -c`), if any.
    cpus: Option<String>,
}

/// A process started, not yet known to serve; killed if dropped so.
struct Launched {
    name: String,
    /// Taken once it serves.
    child: Option<Child>,
    config: PathBuf,
    cpus: Option<String>,
    /// Where it writes its address once serving.
    announce: PathBuf,
    log_path: PathBuf,
    deadline: Instant,
}

impl Launched {
    /// The address it writes to `file`, once it has (checking every 20 ms that it is
    /// still running, until the start timeout).
    fn announced(&mut self, file: &Path) -> anyhow::Result<SocketAddr> {
        loop {
            if let Ok(text) = std::fs::read_to_string(file)
                && let Ok(addr) = text.trim().parse()
            {
                return Ok(addr);
            }
            let child = self.child.as_mut().expect("not yet serving");
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                bail!("{} exited at start ({status}); its log:\n{log}", self.name);
            }
            if Instant::now() > self.deadline {
                bail!(
                    "{} did not announce {} within {START_TIMEOUT:?}",
                    self.name,
                    file.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process, once it serves (has announced its address).
    fn serving(mut self) -> anyhow::Result<Process> {
        let announce = self.announce.clone();
        let addr = self.announced(&announce)?;
        Ok(Process {
            name: self.name.clone(),
            child: self.child.take().expect("not yet serving"),
            config: self.config.clone(),
            addr,
            cpus: self.cpus.clone(),
        })
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running local cluster.
pub struct LocalCluster {
    dir: PathBuf,
    bin_dir: PathBuf,
    certs: DevCerts,
    nodes: Vec<Process>,
    gateway: Option<Process>,
    /// The gateway's gossip address: every node's seed.
    seed: SocketAddr,
    /// The gateway's status address (for cluster members).
    status: SocketAddr,
    /// The gateway's admin API address.
    admin: SocketAddr,
    /// The gateways after the first (`gateways` > 1).
    others: Vec<OtherGateway>,
    /// The NATS server of a shared registry.
    nats: Option<Nats>,
    spec: ClusterConfig,
}

/// A gateway after the first: it joins through the first's gossip address.
struct OtherGateway {
    process: Process,
    admin: SocketAddr,
}

impl LocalCluster {
    /// Starts `spec`'s nodes and gateway, binaries taken from `bin_dir`, state in `dir`.
    pub fn start(spec: &ClusterConfig, dir: &Path, bin_dir: &Path) -> anyhow::Result<LocalCluster> {
        crate::devcerts::private_dir(dir)?;
        let dir = dir.canonicalize()?;
        let certs = DevCerts::ensure(&dir.join("certs"), &spec.domain)?;
        let mut cluster = LocalCluster {
            dir,
            bin_dir: bin_dir.to_path_buf(),
            certs,
            nodes: Vec::new(),
            gateway: None,
            seed: SocketAddr::from(([127, 0, 0, 1], 0)),
            status: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            others: Vec::new(),
            nats: None,
            spec: spec.clone(),
        };
        let registry = match spec.registry {
            RegistryKind::Embedded => RegistryConfig::default(),
            RegistryKind::Nats => {
                let nats = Nats::start(&cluster.dir, &cluster.certs)?;
                let config = RegistryConfig {
                    kind: RegistryKind::Nats,
                    nats_url: nats.url.clone(),
                    resync_ms: spec.registry_resync_ms,
                    ..RegistryConfig::default()
                };
                cluster.nats = Some(nats);
                config
            }
        };
        // On a host of its own, the gateway binds every listener to its address.
        let host = cluster.host(0);
        let on_host = |at: SocketAddr| match host {
            Some(ip) => SocketAddr::new(ip, at.port()),
            None => at,
        };
        let gateway = GatewayConfig {
            listen: on_host(spec.listen),
            domain: spec.domain.clone(),
            tls_cert: cluster.certs.gateway_cert.clone(),
            tls_key: cluster.certs.gateway_key.clone(),
            cluster_ca: cluster.certs.ca.clone(),
            cluster_cert: cluster.certs.member_cert.clone(),
            cluster_key: cluster.certs.member_key.clone(),
            gossip: GossipConfig {
                // Port 0 for gossip and status: the gateway says which it got.
                listen: on_host(SocketAddr::from(([127, 0, 0, 1], 0))),
                key_file: cluster.certs.gossip_key.clone(),
                interval_ms: spec.gossip_interval_ms,
                ..GossipConfig::default()
            },
            status_listen: on_host(SocketAddr::from(([127, 0, 0, 1], 0))),
            metrics_listen: on_host(spec.metrics_listen),
            admin: AdminConfig {
                listen: on_host(spec.admin_listen),
                token_file: cluster.certs.admin_token.clone(),
                ..AdminConfig::default()
            },
            state_dir: cluster.dir.join("gateway-state"),
            registry,
            unrouted_grace_ms: spec.unrouted_grace_ms,
            request_timeout_ms: spec.request_timeout_ms,
            retry_budget: spec.retry_budget,
            log_filter: spec.log_filter.clone(),
            log_format: spec.log_format,
            ingress: spec.ingress.clone(),
            routing: spec.routing,
            prewarm: spec.prewarm,
            min_warm_nodes: spec.min_warm_nodes,
            functions: spec.functions.clone(),
            ..GatewayConfig::default()
        };
        let config = cluster.dir.join("gateway.toml");
        std::fs::write(&config, toml::to_string(&gateway)?)?;
        let mut launched = cluster.launch_gateway("gateway", config)?;
        // Known once the gateway has bound its gossip port: every node's seed.
        cluster.seed = launched.announced(&cluster.dir.join(GOSSIP_FILE))?;
        for _ in 0..spec.nodes {
            cluster.add_node()?;
        }
        cluster.gateway = Some(launched.serving()?);
        cluster.status = announced(&cluster.dir.join(STATUS_FILE))?;
        cluster.admin = announced(&cluster.dir.join(ADMIN_FILE))?;
        for n in 2..=spec.gateways {
            let name = format!("gateway-{n}");
            let other = GatewayConfig {
                listen: SocketAddr::new(spec.listen.ip(), 0),
                gossip: GossipConfig {
                    seeds: vec![cluster.seed.to_string()],
                    ..gateway.gossip.clone()
                },
                admin: AdminConfig {
                    listen: SocketAddr::new(spec.admin_listen.ip(), 0),
                    ..gateway.admin.clone()
                },
                metrics_listen: SocketAddr::new(spec.metrics_listen.ip(), 0),
                state_dir: cluster.dir.join(format!("{name}-state")),
                ..gateway.clone()
            };
            let config = cluster.dir.join(format!("{name}.toml"));
            std::fs::write(&config, toml::to_string(&other)?)?;
            let process = cluster.launch_gateway(&name, config)?.serving()?;
            let admin = announced(&cluster.dir.join(format!("{name}.admin")))?;
            cluster.others.push(OtherGateway { process, admin });
        }
        Ok(cluster)
    }

    /// Starts gateway `name` with `config`, asking it to announce each address in its
    /// file (`NAME.status`, `NAME.gossip`, `NAME.admin`).
    fn launch_gateway(&self, name: &str, config: PathBuf) -> anyhow::Result<Launched> {
        let expect = self.spec.nodes.to_string();
        let [status, gossip, admin, metrics] =
            ["status", "gossip", "admin", "metrics"].map(|what| {
                let file = self.dir.join(format!("{name}.{what}"));
                let _ = std::fs::remove_file(&file);
                file.to_string_lossy().to_string()
            });
        self.launch(
            "edge-gateway",
            name,
            config,
            None,
            &[
                "--expect-nodes",
                &expect,
                "--announce-status",
                &status,
                "--announce-gossip",
                &gossip,
                "--announce-admin",
                &admin,
                "--announce-metrics",
                &metrics,
            ],
        )
    }

    /// Starts one more node, `node-N`, that joins through the gateway's gossip address
    /// like the others: nothing else is told of it. Returns its index.
    pub fn add_node(&mut self) -> anyhow::Result<usize> {
        let i = self.nodes.len();
        let name = format!("node-{}", i + 1);
        let own = self.certs.node(&name)?;
        let ip = self.host(i + 1).unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let config = NodeConfig {
            name: name.clone(),
            listen: SocketAddr::new(ip, 0),
            tls_cert: own.cert,
            tls_key: own.key,
            cluster_ca: self.certs.ca.clone(),
            cache_dir: self.dir.join(&name).join("cache"),
            state_dir: self.dir.join(&name).join("state"),
            metrics_listen: SocketAddr::new(ip, 0),
            worker_threads: self
                .spec
                .worker_threads_per_node
                .get(i)
                .copied()
                .unwrap_or(self.spec.node_worker_threads),
            gossip: GossipConfig {
                listen: SocketAddr::new(ip, 0),
                seeds: vec![self.seed.to_string()],
                key_file: self.certs.gossip_key.clone(),
                interval_ms: self.spec.gossip_interval_ms,
                ..GossipConfig::default()
            },
            log_filter: self.spec.log_filter.clone(),
            log_format: self.spec.log_format,
            artifacts: ArtifactsConfig {
                share: self.spec.share_artifacts,
                ..ArtifactsConfig::default()
            },
            ..NodeConfig::default()
        };
        let cpus = self
            .spec
            .node_cpus
            .get(i)
            .filter(|c| !c.is_empty())
            .cloned();
        let metrics = self.dir.join(format!("{name}.metrics"));
        let _ = std::fs::remove_file(&metrics);
        let config_file = self.dir.join(format!("{name}.toml"));
        std::fs::write(&config_file, toml::to_string(&config)?)?;
        let announce = metrics.to_string_lossy().to_string();
        let node = self
            .launch(
                "edge-node",
                &name,
                config_file,
                cpus,
                &["--announce-metrics", &announce],
            )?
            .serving()?;
        self.nodes.push(node);
        Ok(i)
    }

    /// Starts `binary` (pinned to `cpus` with `taskset` if given), asking it to
    /// announce its address.
    fn launch(
        &self,
        binary: &str,
        name: &str,
        config: PathBuf,
        cpus: Option<String>,
        args: &[&str],
    ) -> anyhow::Result<Launched> {
        let announce = self.dir.join(format!("{name}.addr"));
        let _ = std::fs::remove_file(&announce);
        let log_path = self.dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let exe = self.bin_dir.join(binary);
        // `ip netns exec` and taskset each execute the program in their own process: the
        // pid stays the member's.
        let mut program: Vec<std::ffi::OsString> = Vec::new();
        if let Some(host) = self.host_of(name) {
            program.extend(["ip", "netns", "exec", &host.netns].map(Into::into));
        }
        if let Some(list) = &cpus {
            program.extend(["taskset".into(), "-c".into(), list.into()]);
        }
        program.push(exe.clone().into());
        let mut command = Command::new(&program[0]);
        command.args(&program[1..]);
        let child = command
            .arg("--config")
            .arg(&config)
            .arg("--announce")
            .arg(&announce)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        Ok(Launched {
            name: name.to_string(),
            child: Some(child),
            config,
            cpus,
            announce,
            log_path,
            deadline: Instant::now() + START_TIMEOUT,
        })
    }

    /// The address of member `i`'s host (0 the gateway, then the nodes), if it has one.
    fn host(&self, i: usize) -> Option<IpAddr> {
        self.spec.hosts.get(i).map(|h| h.addr)
    }

    /// The host of the member named `name` (`gateway`, `node-N`), if it has one.
    fn host_of(&self, name: &str) -> Option<&edge_shared::config::Host> {
        let i = match name {
            "gateway" => 0,
            _ => name.strip_prefix("node-")?.parse().ok()?,
        };
        self.spec.hosts.get(i)
    }

    /// The gateway's user address.
    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway.as_ref().expect("the gateway is started").addr
    }

    /// Every gateway's user address, the first's first.
    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        let others = self.others.iter().map(|g| g.process.addr);
        std::iter::once(self.gateway_addr()).chain(others).collect()
    }

    /// Every gateway's metrics address (`http://ADDR/metrics`), the first's first.
    pub fn gateway_metrics_addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        let names = std::iter::once("gateway".to_string())
            .chain(self.others.iter().map(|g| g.process.name.clone()));
        names
            .map(|name| announced(&self.dir.join(format!("{name}.metrics"))))
            .collect()
    }

    /// Every node's metrics address (`http://ADDR/metrics`), in start order.
    pub fn node_metrics_addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        self.nodes
            .iter()
            .map(|n| announced(&self.dir.join(format!("{}.metrics", n.name))))
            .collect()
    }

    /// Every gateway's admin API address, the first's first.
    pub fn admin_addrs(&self) -> Vec<SocketAddr> {
        let others = self.others.iter().map(|g| g.admin);
        std::iter::once(self.admin).chain(others).collect()
    }

    /// The shared registry's NATS server, if the cluster has one.
    pub fn nats_url(&self) -> Option<&str> {
        self.nats.as_ref().map(|n| n.url.as_str())
    }

    /// The gateway's status address: HTTP/3 for cluster members (present the member
    /// certificate; the gateway's name is `edge-gateway`).
    pub fn gateway_status_addr(&self) -> SocketAddr {
        self.status
    }

    /// The gateway's admin API address (HTTPS; the bearer token is in
    /// `certs().admin_token`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The gateway's gossip address, every node's seed.
    pub fn gossip_seed(&self) -> SocketAddr {
        self.seed
    }

    /// The development certificates (trust `ca` to call the gateway).
    pub fn certs(&self) -> &DevCerts {
        &self.certs
    }

    /// The state folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Node addresses, in start order.
    pub fn node_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// A process's log so far (`gateway`, `node-1`, ...).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

/// The folder holding this program's sibling binaries: the current executable's folder,
/// or its parent for a test binary in `target/<profile>/deps`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable without a folder")?;
    if dir.join("edge-node").is_file() {
        return Ok(dir.to_path_buf());
    }
    let parent = dir.parent().context("no parent folder")?;
    if parent.join("edge-node").is_file() {
        return Ok(parent.to_path_buf());
    }
    bail!(
        "edge-node not found next to {}: build the workspace first (cargo build)",
        exe.display()
    )
}

/// `GET /metrics` at a member's metrics address `at`, over plain TCP (`metrics_listen`
/// speaks HTTP/1.1): the whole answer, head included; `None` if it cannot be had within
/// a second to connect and two to read.
pub fn scrape_metrics(at: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect_timeout(&at, Duration::from_secs(1)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).ok()?;
    Some(text)
}
