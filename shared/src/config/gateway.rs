//! `edge-gateway`'s configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    ConfigFile, FunctionConfig, GossipConfig, IngressConfig, LogFormat, Prewarm, RoutingPolicy,
    SchedulingPolicy, check_grace, check_log_filter, require_file, resolve,
};

/// `edge-gateway`'s configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// This gateway's member name in gossip and in the nodes' per-gateway counts; unset,
    /// `gateway@LISTEN`. Every gateway of a cluster needs its own: set it when `listen`
    /// is `0.0.0.0`, which any gateway could say.
    pub name: String,
    /// Address for users: HTTP/3 on UDP and HTTP/1.1 + HTTP/2 on TCP, same port; port 0
    /// picks one free on both.
    pub listen: SocketAddr,
    /// Domain under which functions answer as `NAME.<domain>`.
    pub domain: String,
    /// PEM certificate chain users see.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: PathBuf,
    /// PEM CA certificate that node certificates must chain to.
    pub cluster_ca: PathBuf,
    /// PEM certificate, issued by the cluster CA, the gateway presents to nodes.
    pub cluster_cert: PathBuf,
    /// PEM private key of `cluster_cert`.
    pub cluster_key: PathBuf,
    /// How the gateway joins the cluster: nodes are learned from gossip, never listed.
    pub gossip: GossipConfig,
    /// UDP address of the gateway's status for cluster members (HTTP/3 with mutual
    /// TLS: clients present a certificate of the cluster CA; `GET /_edge/v1/status`):
    /// the nodes as this gateway sees them, and its gossip. Never the users' port; port
    /// 0 picks a free one.
    pub status_listen: SocketAddr,
    /// TCP address of the gateway's Prometheus metrics (plain HTTP, `GET /metrics`,
    /// OpenMetrics text); never the users' port. Port 0 picks a free one.
    pub metrics_listen: SocketAddr,
    /// Longest the gateway waits for a node's answer, in ms.
    pub request_timeout_ms: u64,
    /// `[retry_budget]`: how many requests refused for overload go on to another node.
    pub retry_budget: RetryBudgetConfig,
    /// How the gateway picks a node for each request.
    pub routing: RoutingPolicy,
    /// When the gateway warms a function on one more node ahead of need:
    /// `projected` (default: on the warm nodes' load scaled by the function's projected
    /// arrival rate), `threshold` (on their load now), or `off`.
    pub prewarm: Prewarm,
    /// Nodes a function that takes requests is kept warm on, however light its load
    /// (default 2; least-loaded-warm with `prewarm` on): with fewer, the gateway warms it
    /// on the next node in its rendezvous order, so that losing a node leaves a warm one
    /// to take its requests at once instead of every survivor starting cold. 1: only on
    /// load. A function idle past the nodes' TTL scales to zero all the same.
    pub min_warm_nodes: usize,
    /// Largest request body the gateway accepts for any function, in bytes: a
    /// function's own limit may be lower, never higher.
    pub max_request_body_bytes: u64,
    /// The ingress's connection and time limits.
    pub ingress: IngressConfig,
    /// The admin API.
    pub admin: AdminConfig,
    /// The gateway's state folder: its registry of functions and versions
    /// (`registry.redb`).
    pub state_dir: PathBuf,
    /// Where functions, versions and modules are kept: this gateway's own database, or
    /// NATS JetStream shared by several gateways.
    pub registry: RegistryConfig,
    /// Functions deployed at start, through the registry as an admin deploy would be
    /// (a new version when a module or setting changed).
    pub functions: Vec<FunctionConfig>,
    /// How long after a version stops taking traffic it is dropped from the nodes, in
    /// ms (unless it takes traffic again by then): kept at least as long as the
    /// requests routed to it may run.
    pub unrouted_grace_ms: u64,
    /// On SIGTERM, longest the gateway lets the requests in flight finish after it stops
    /// accepting new ones, in milliseconds; then it leaves gossip and closes.
    pub shutdown_grace_ms: u64,
    /// Linux scheduling policy of the gateway's threads: `batch` (default), so that a
    /// thread woken by a packet does not preempt the one running on its core but takes
    /// a free core or the next turn, or `normal`, Linux's default (BENCHMARKS.md).
    pub network_scheduling: SchedulingPolicy,
    /// Log format.
    pub log_format: LogFormat,
    /// Log levels, as comma-separated directives: a level, or MODULE=LEVEL
    /// (`info,edge_node=debug`). `access=debug` adds a line per request. `RUST_LOG`, when
    /// set, overrides it.
    pub log_filter: String,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            name: String::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            domain: "edge.localhost".into(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            cluster_ca: PathBuf::new(),
            cluster_cert: PathBuf::new(),
            cluster_key: PathBuf::new(),
            gossip: GossipConfig::default(),
            status_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9480)),
            request_timeout_ms: 30_000,
            retry_budget: RetryBudgetConfig::default(),
            routing: RoutingPolicy::LeastLoadedWarm,
            prewarm: Prewarm::Projected,
            min_warm_nodes: 2,
            max_request_body_bytes: 16 << 20,
            ingress: IngressConfig::default(),
            admin: AdminConfig::default(),
            state_dir: PathBuf::from("state"),
            registry: RegistryConfig::default(),
            functions: Vec::new(),
            unrouted_grace_ms: 60_000,
            shutdown_grace_ms: 10_000,
            network_scheduling: SchedulingPolicy::Batch,
            log_format: LogFormat::Text,
            log_filter: "info".into(),
        }
    }
}

/// `[admin]`: the admin API, HTTPS (HTTP/1.1 and HTTP/2) on a listener of its own,
/// never the users' port, for callers presenting the bearer token in `token_file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// TCP address of the admin API; port 0 picks a free one.
    pub listen: SocketAddr,
    /// File holding the bearer token (owner-only, at least 32 characters). Unset, the
    /// admin API does not run.
    pub token_file: PathBuf,
    /// `edge tail` streams open at once on this gateway; more are answered `429`.
    pub max_tails: usize,
    /// Lines a second one tail stream carries; more are dropped and counted in a
    /// `dropped` line.
    pub tail_lines_per_second: u32,
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 4480)),
            token_file: PathBuf::new(),
            max_tails: 4,
            tail_lines_per_second: 100,
        }
    }
}

/// Adds a problem if `min_warm_nodes` is 0 (a function that takes requests is warm on
/// one node at least).
pub(crate) fn check_min_warm_nodes(problems: &mut Vec<String>, min_warm_nodes: usize) {
    if min_warm_nodes == 0 {
        problems.push("min_warm_nodes: at least 1".into());
    }
}

/// `[retry_budget]`: a request a node refused as `overloaded` goes on to another node
/// only while its function's budget holds a token (per function, at each gateway).
/// Tokens start full; a retry spends one, and every answer earns back
/// `1 / answers_per_retry` of one. Past the budget the refusal is the answer: `503` with
/// `Retry-After`, at once, rather than one more queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    /// Most tokens a function holds: refusals retried in a row before answers must earn
    /// more. 0 = never retry a refusal for overload.
    pub burst: u32,
    /// Answers that earn one retry: under lasting overload, retries stay near one for
    /// this many answers.
    pub answers_per_retry: u32,
}

impl RetryBudgetConfig {
    /// What is wrong with it, each naming its key, added to `problems`.
    pub fn problems(&self, problems: &mut Vec<String>) {
        if self.answers_per_retry == 0 {
            problems.push("retry_budget.answers_per_retry: must be greater than zero".into());
        }
    }
}

impl Default for RetryBudgetConfig {
    fn default() -> RetryBudgetConfig {
        RetryBudgetConfig {
            burst: 20,
            answers_per_retry: 10,
        }
    }
}

/// Which registry backend keeps the functions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKind {
    /// A redb database in `state_dir` (`registry.redb`), this gateway's alone.
    #[default]
    Embedded,
    /// NATS JetStream at `nats_url`: a key-value bucket and an object store that every
    /// gateway of the cluster shares and watches.
    Nats,
}

/// `[registry]`: where functions, versions and modules are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `embedded` (the default) or `nats`.
    pub kind: RegistryKind,
    /// The NATS server (`nats` only), with JetStream enabled.
    pub nats_url: String,
    /// Prefix of the JetStream bucket names (`PREFIX-functions`, `PREFIX-modules`):
    /// letters, digits, `-` and `_`.
    pub bucket: String,
    /// Longest a call to NATS may take, in milliseconds. A listing of the bucket's keys
    /// gets a third of it per try, up to three tries (a listing stalls when a key is
    /// written meanwhile).
    pub timeout_ms: u64,
    /// How often every record is read again (`nats` only), in milliseconds: a change the
    /// watch missed, or could not serve when it came, is served by then.
    pub resync_ms: u64,
    /// Whether the connection to NATS is mutual TLS (`nats` only): the server's
    /// certificate must chain to `cluster_ca`, and the gateway presents `cluster_cert`,
    /// so only the cluster's gateways reach the registry. On by default; off only for a
    /// NATS server reachable by nothing else.
    pub tls: bool,
}

impl Default for RegistryConfig {
    fn default() -> RegistryConfig {
        RegistryConfig {
            kind: RegistryKind::Embedded,
            nats_url: "nats://127.0.0.1:4222".into(),
            bucket: "edge".into(),
            timeout_ms: 5_000,
            resync_ms: 30_000,
            tls: true,
        }
    }
}

impl ConfigFile for GatewayConfig {
    const ENV_PREFIX: &'static str = "EDGE_GATEWAY";

    fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.tls_cert);
        resolve(base, &mut self.tls_key);
        resolve(base, &mut self.cluster_ca);
        resolve(base, &mut self.cluster_cert);
        resolve(base, &mut self.cluster_key);
        resolve(base, &mut self.gossip.key_file);
        resolve(base, &mut self.state_dir);
        if !self.admin.token_file.as_os_str().is_empty() {
            resolve(base, &mut self.admin.token_file);
        }
        for f in &mut self.functions {
            resolve(base, &mut f.module);
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        require_file(&mut problems, "tls_cert", &self.tls_cert);
        require_file(&mut problems, "tls_key", &self.tls_key);
        require_file(&mut problems, "cluster_ca", &self.cluster_ca);
        require_file(&mut problems, "cluster_cert", &self.cluster_cert);
        require_file(&mut problems, "cluster_key", &self.cluster_key);
        self.gossip.problems(&mut problems);
        if self.domain.is_empty() || self.domain.contains(['/', ':', ' ']) {
            problems.push("domain: must be a bare domain name".into());
        }
        if self.registry.kind == RegistryKind::Nats {
            let url = &self.registry.nats_url;
            if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                problems
                    .push("registry.nats_url: must be nats://HOST:PORT or tls://HOST:PORT".into());
            }
            let bucket = &self.registry.bucket;
            if bucket.is_empty()
                || !bucket
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                problems.push("registry.bucket: letters, digits, '-' and '_' only".into());
            }
            if self.registry.timeout_ms == 0 {
                problems.push("registry.timeout_ms: must be greater than zero".into());
            }
            if self.registry.resync_ms == 0 {
                problems.push("registry.resync_ms: must be greater than zero".into());
            }
        }
        if self.unrouted_grace_ms < self.request_timeout_ms {
            problems.push(format!(
                "unrouted_grace_ms: {} is under request_timeout_ms ({}): a version could be dropped under a request still running on it",
                self.unrouted_grace_ms, self.request_timeout_ms
            ));
        }
        if self.request_timeout_ms == 0 {
            problems.push("request_timeout_ms: must be greater than zero".into());
        }
        self.retry_budget.problems(&mut problems);
        check_min_warm_nodes(&mut problems, self.min_warm_nodes);
        check_grace(&mut problems, self.shutdown_grace_ms);
        if !self.name.is_empty()
            && !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@:[]".contains(&b))
        {
            problems.push(format!(
                "name: {:?} may hold letters, digits and - _ . @ : [ ] only",
                self.name
            ));
        }
        check_log_filter(&mut problems, &self.log_filter);
        self.ingress.problems(&mut problems);
        if !self.admin.token_file.as_os_str().is_empty() {
            require_file(&mut problems, "admin.token_file", &self.admin.token_file);
        }
        if self.admin.tail_lines_per_second == 0 {
            problems.push("admin.tail_lines_per_second: must be greater than zero".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, f) in self.functions.iter().enumerate() {
            if !names.insert(&f.name) {
                problems.push(format!("functions[{i}].name: {:?} is listed twice", f.name));
            }
            if !f.module.is_file() {
                problems.push(format!(
                    "functions[{i}].module: file {} not found",
                    f.module.display()
                ));
            }
        }
        problems
    }
}
