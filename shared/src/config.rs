//! Configuration files of the node and the gateway.
//!
//! TOML, read with the `config` crate and overridable by environment variables
//! (`EDGE_NODE_...` and `EDGE_GATEWAY_...`, `__` between nested keys, for example
//! `EDGE_NODE_DEFAULTS__TIMEOUT_MS=500`). Unknown keys are errors; every field has a
//! default; relative paths are taken from the file's folder; every error names the file
//! and the key. `config/` in the repository holds a commented example of each file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::manifest::{Limits, Route};

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("config file {}: {}", file.display(), problems.join("; "))]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// Every problem found, each naming its key.
    pub problems: Vec<String>,
}

/// How a process writes its log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration file type.
pub trait ConfigFile: DeserializeOwned {
    /// Prefix of environment variables that override this file's keys.
    const ENV_PREFIX: &'static str;

    /// Makes relative paths relative to `base` (the file's folder).
    fn resolve_paths(&mut self, base: &Path);

    /// Every problem with the values, each as `key: message`.
    fn problems(&self) -> Vec<String>;
}

/// Loads and checks a configuration file, with environment overrides.
pub fn load<T: ConfigFile>(file: &Path) -> Result<T, ConfigError> {
    if !file.is_file() {
        return Err(ConfigError {
            file: file.to_path_buf(),
            problems: vec!["file not found".into()],
        });
    }
    let source = config::File::from(file).format(config::FileFormat::Toml);
    load_source(source, file, file.parent().unwrap_or(Path::new(".")))
}

/// Loads and checks configuration text named `origin` in errors, relative paths taken
/// from `base`, with environment overrides.
pub fn load_str<T: ConfigFile>(text: &str, origin: &Path, base: &Path) -> Result<T, ConfigError> {
    load_source(
        config::File::from_str(text, config::FileFormat::Toml),
        origin,
        base,
    )
}

fn load_source<T, S>(source: S, origin: &Path, base: &Path) -> Result<T, ConfigError>
where
    T: ConfigFile,
    S: config::Source + Send + Sync + 'static,
{
    let fail = |problems: Vec<String>| ConfigError {
        file: origin.to_path_buf(),
        problems,
    };
    let mut parsed: T = config::Config::builder()
        .add_source(source)
        .add_source(
            config::Environment::with_prefix(T::ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                // `EDGE_NODE_GOSSIP__SEEDS=host-a:7946,host-b:7946`
                .list_separator(",")
                .with_list_parse_key("gossip.seeds"),
        )
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| fail(vec![e.to_string()]))?;
    parsed.resolve_paths(base);
    let problems = parsed.problems();
    if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(fail(problems))
    }
}

fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() && !path.as_os_str().is_empty() {
        *path = base.join(&*path);
    }
}

fn require_file(problems: &mut Vec<String>, key: &str, path: &Path) {
    if path.as_os_str().is_empty() {
        problems.push(format!("{key}: required"));
    } else if !path.is_file() {
        problems.push(format!("{key}: file {} not found", path.display()));
    }
}

fn check_grace(problems: &mut Vec<String>, grace_ms: u64) {
    if !(1..=600_000).contains(&grace_ms) {
        problems.push("shutdown_grace_ms: must be between 1 and 600000".into());
    }
}

/// Node-wide defaults for the per-function limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitDefaults {
    /// Longest a request may run, in milliseconds.
    pub timeout_ms: u64,
    /// Largest linear memory of an instance, in MiB.
    pub memory_limit_mib: u64,
    /// Largest request body, in bytes.
    pub max_request_body_bytes: u64,
    /// Largest response body, in bytes.
    pub max_response_body_bytes: u64,
    /// Most requests of one function running at once; 0 = the node's slot count.
    pub max_concurrency: u32,
    /// Most requests of one function waiting for a slot; more get `503` at once.
    pub queue_depth: u32,
    /// Longest a request waits for a slot before `503 overloaded`, in milliseconds.
    pub queue_timeout_ms: u64,
}

impl Default for LimitDefaults {
    fn default() -> LimitDefaults {
        LimitDefaults {
            timeout_ms: 10_000,
            memory_limit_mib: 128,
            max_request_body_bytes: 16 << 20,
            max_response_body_bytes: 16 << 20,
            max_concurrency: 0,
            queue_depth: 256,
            queue_timeout_ms: 1_000,
        }
    }
}

impl LimitDefaults {
    /// The limits of a function: its own where it sets them, these otherwise.
    pub fn apply(&self, limits: &Limits) -> LimitDefaults {
        LimitDefaults {
            timeout_ms: limits.timeout_ms.unwrap_or(self.timeout_ms),
            memory_limit_mib: limits.memory_limit_mib.unwrap_or(self.memory_limit_mib),
            max_request_body_bytes: limits
                .max_request_body_bytes
                .unwrap_or(self.max_request_body_bytes),
            max_response_body_bytes: limits
                .max_response_body_bytes
                .unwrap_or(self.max_response_body_bytes),
            max_concurrency: limits.max_concurrency.unwrap_or(self.max_concurrency),
            queue_depth: limits.queue_depth.unwrap_or(self.queue_depth),
            queue_timeout_ms: limits.queue_timeout_ms.unwrap_or(self.queue_timeout_ms),
        }
    }
}

/// `edge-node`'s configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name of this node, shown to users in `x-edge-node` and in logs.
    pub name: String,
    /// UDP address serving HTTP/3 to gateways; port 0 picks a free one.
    pub listen: SocketAddr,
    /// PEM certificate chain of this node, issued by the cluster CA for `edge-node`.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: PathBuf,
    /// PEM cluster CA: only clients (gateways) with a certificate from it are served.
    pub cluster_ca: PathBuf,
    /// Folder of the on-disk caches (module blobs, compiled artifacts).
    pub cache_dir: PathBuf,
    /// Threads that run guest code, each one execution slot; 0 = one per CPU.
    pub worker_threads: usize,
    /// Memory that running and pooled instances may reserve together, in MiB: a
    /// running request reserves its function's `memory_limit_mib`, an idle pooled
    /// instance its current linear memory. Requests over it wait like over the slots.
    pub memory_budget_mib: u64,
    /// Compiled modules kept in memory, in MiB of artifact; the least recently used
    /// go beyond it (their functions turn cold, their artifacts stay on disk).
    pub module_cache_mib: u64,
    /// Pre-instantiated instances kept ready per function.
    pub instance_pool: InstancePoolConfig,
    /// Metering fuel granted per millisecond of a function's timeout (one unit per wasm
    /// operator); bounds CPU time independently of the wall-clock deadline. Measured here:
    /// recursive `fib` burns about 5M a millisecond, a tight loop about 11M, so the
    /// default lets a function use roughly one to two times its timeout in CPU.
    pub fuel_per_ms: u64,
    /// Limits of functions that do not set their own.
    pub defaults: LimitDefaults,
    /// How this node joins the cluster and publishes its load.
    pub gossip: GossipConfig,
    /// On SIGTERM, after announcing `draining`, longest the node waits for the requests
    /// it runs and has queued to finish before it leaves, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Log format.
    pub log_format: LogFormat,
}

/// Gossip: membership, failure detection and load, shared by nodes and gateways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GossipConfig {
    /// UDP address for gossip; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Members (`host:port` gossip addresses) to join through; the rest of the cluster
    /// is learned from them. Empty for a member others join through.
    pub seeds: Vec<String>,
    /// File holding the cluster key in hex (at least 16 bytes), the same for every
    /// member: gossip without it is dropped.
    pub key_file: PathBuf,
    /// Time between gossip rounds, in ms; load is published every round.
    pub interval_ms: u64,
}

impl Default for GossipConfig {
    fn default() -> GossipConfig {
        GossipConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seeds: Vec::new(),
            key_file: PathBuf::new(),
            interval_ms: 200,
        }
    }
}

impl GossipConfig {
    fn problems(&self, problems: &mut Vec<String>) {
        require_file(problems, "gossip.key_file", &self.key_file);
        if !(10..=10_000).contains(&self.interval_ms) {
            problems.push("gossip.interval_ms: must be between 10 and 10000".into());
        }
        for (i, seed) in self.seeds.iter().enumerate() {
            let well_formed = seed
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !well_formed {
                problems.push(format!("gossip.seeds[{i}]: {seed:?} is not host:port"));
            }
        }
    }
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            name: "node".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            cluster_ca: PathBuf::new(),
            cache_dir: PathBuf::from("node-cache"),
            worker_threads: 0,
            memory_budget_mib: 2048,
            module_cache_mib: 512,
            instance_pool: InstancePoolConfig::default(),
            fuel_per_ms: 10_000_000,
            defaults: LimitDefaults::default(),
            gossip: GossipConfig::default(),
            shutdown_grace_ms: 10_000,
            log_format: LogFormat::Text,
        }
    }
}

impl ConfigFile for NodeConfig {
    const ENV_PREFIX: &'static str = "EDGE_NODE";

    fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.tls_cert);
        resolve(base, &mut self.tls_key);
        resolve(base, &mut self.cluster_ca);
        resolve(base, &mut self.cache_dir);
        resolve(base, &mut self.gossip.key_file);
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.name.is_empty() || self.name.contains(char::is_whitespace) {
            problems.push("name: must be non-empty without spaces".into());
        }
        require_file(&mut problems, "tls_cert", &self.tls_cert);
        require_file(&mut problems, "tls_key", &self.tls_key);
        require_file(&mut problems, "cluster_ca", &self.cluster_ca);
        if self.worker_threads > 1024 {
            problems.push("worker_threads: at most 1024".into());
        }
        if self.memory_budget_mib == 0 {
            problems.push("memory_budget_mib: must be greater than zero".into());
        }
        if self.module_cache_mib == 0 {
            problems.push("module_cache_mib: must be greater than zero".into());
        }
        if self.instance_pool.max_per_function > 1024 {
            problems.push("instance_pool.max_per_function: at most 1024".into());
        }
        if self.defaults.memory_limit_mib > self.memory_budget_mib {
            problems.push(format!(
                "defaults.memory_limit_mib: {} is over memory_budget_mib {}",
                self.defaults.memory_limit_mib, self.memory_budget_mib
            ));
        }
        check_grace(&mut problems, self.shutdown_grace_ms);
        if self.fuel_per_ms == 0 {
            problems.push("fuel_per_ms: must be greater than zero".into());
        }
        let d = &self.defaults;
        for (key, value) in [
            ("defaults.timeout_ms", d.timeout_ms),
            ("defaults.queue_timeout_ms", d.queue_timeout_ms),
            ("defaults.memory_limit_mib", d.memory_limit_mib),
            ("defaults.max_request_body_bytes", d.max_request_body_bytes),
            (
                "defaults.max_response_body_bytes",
                d.max_response_body_bytes,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{key}: must be greater than zero"));
            }
        }
        if d.memory_limit_mib > 4096 {
            problems.push("defaults.memory_limit_mib: at most 4096 (wasm32)".into());
        }
        self.gossip.problems(&mut problems);
        problems
    }
}

/// The per-function pools of pre-instantiated instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstancePoolConfig {
    /// Most ready instances kept for one function; 0 turns pooling off (every request
    /// instantiates on its own path).
    pub max_per_function: usize,
    /// A function without requests for this long has its pool emptied (scale to
    /// zero), in milliseconds.
    pub idle_ttl_ms: u64,
}

impl Default for InstancePoolConfig {
    fn default() -> InstancePoolConfig {
        InstancePoolConfig {
            max_per_function: 16,
            idle_ttl_ms: 60_000,
        }
    }
}

/// How a gateway orders the nodes to try for a request. Nodes that just failed go last
/// under every policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingPolicy {
    /// Each request starts one node further along the list.
    RoundRobin,
    /// Each request starts at a node drawn uniformly at random.
    Random,
    /// Power of two choices among the nodes where the function is warm and below
    /// saturation, on load reported by the nodes and corrected by the gateway's own
    /// in-flight counts; cold requests by rendezvous hashing of the function.
    LeastLoadedWarm,
}

impl RoutingPolicy {
    /// Every policy, in the order `compare` runs them.
    pub const ALL: [RoutingPolicy; 3] = [
        RoutingPolicy::LeastLoadedWarm,
        RoutingPolicy::RoundRobin,
        RoutingPolicy::Random,
    ];

    /// Its name in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingPolicy::RoundRobin => "round-robin",
            RoutingPolicy::Random => "random",
            RoutingPolicy::LeastLoadedWarm => "least-loaded-warm",
        }
    }
}

impl std::str::FromStr for RoutingPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<RoutingPolicy, String> {
        RoutingPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<_> = RoutingPolicy::ALL.iter().map(|p| p.as_str()).collect();
                format!(
                    "unknown routing policy {text:?}: one of {}",
                    names.join(", ")
                )
            })
    }
}

/// A function the gateway deploys at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// The function's name.
    pub name: String,
    /// Path of its `.wasm` module.
    pub module: PathBuf,
    /// How users reach it; default: path `/NAME` and host `NAME.<domain>`.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Environment variables for the function.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its limits; unset ones take the node's defaults.
    #[serde(default)]
    pub limits: Limits,
}

/// `edge-gateway`'s configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
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
    /// Longest the gateway waits for a node's answer, in ms.
    pub request_timeout_ms: u64,
    /// How the gateway picks a node for each request.
    pub routing: RoutingPolicy,
    /// Largest request body the gateway accepts for any function, in bytes.
    pub max_request_body_bytes: u64,
    /// Functions deployed at start.
    pub functions: Vec<FunctionConfig>,
    /// On SIGTERM, longest the gateway lets the requests in flight finish after it stops
    /// accepting new ones, in milliseconds; then it leaves gossip and closes.
    pub shutdown_grace_ms: u64,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            domain: "edge.localhost".into(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            cluster_ca: PathBuf::new(),
            cluster_cert: PathBuf::new(),
            cluster_key: PathBuf::new(),
            gossip: GossipConfig::default(),
            status_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            request_timeout_ms: 30_000,
            routing: RoutingPolicy::LeastLoadedWarm,
            max_request_body_bytes: 16 << 20,
            functions: Vec::new(),
            shutdown_grace_ms: 10_000,
            log_format: LogFormat::Text,
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
        if self.request_timeout_ms == 0 {
            problems.push("request_timeout_ms: must be greater than zero".into());
        }
        check_grace(&mut problems, self.shutdown_grace_ms);
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

/// `edge up`'s cluster file: how many nodes, where users connect, which functions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Nodes to start.
    pub nodes: usize,
    /// Worker threads per node (0 = one per CPU).
    pub node_worker_threads: usize,
    /// Worker threads of each node in turn, overriding `node_worker_threads` (to make
    /// nodes of unequal capacity, as in the routing experiment); empty = all equal.
    pub worker_threads_per_node: Vec<usize>,
    /// CPUs each node in turn is pinned to, as `taskset -c` lists (`"1"`, `"0-1"`); an
    /// empty string leaves that node free. For experiments: a node pinned beside a CPU
    /// hog is a slow node.
    pub node_cpus: Vec<String>,
    /// The gateway's user address (UDP and TCP).
    pub listen: SocketAddr,
    /// Domain under which functions answer as `NAME.<domain>`.
    pub domain: String,
    /// The gateway's routing policy.
    pub routing: RoutingPolicy,
    /// Time between gossip rounds of every member, in ms.
    pub gossip_interval_ms: u64,
    /// Functions deployed at start.
    pub functions: Vec<FunctionConfig>,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            nodes: 3,
            node_worker_threads: 0,
            worker_threads_per_node: Vec::new(),
            node_cpus: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            domain: "edge.localhost".into(),
            routing: RoutingPolicy::LeastLoadedWarm,
            gossip_interval_ms: GossipConfig::default().interval_ms,
            functions: Vec::new(),
        }
    }
}

impl ConfigFile for ClusterConfig {
    const ENV_PREFIX: &'static str = "EDGE_CLUSTER";

    fn resolve_paths(&mut self, base: &Path) {
        for f in &mut self.functions {
            resolve(base, &mut f.module);
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=64).contains(&self.nodes) {
            problems.push("nodes: from 1 to 64".into());
        }
        if !(10..=10_000).contains(&self.gossip_interval_ms) {
            problems.push("gossip_interval_ms: must be between 10 and 10000".into());
        }
        if !self.worker_threads_per_node.is_empty()
            && self.worker_threads_per_node.len() != self.nodes
        {
            problems.push(format!(
                "worker_threads_per_node: {} entries for {} nodes",
                self.worker_threads_per_node.len(),
                self.nodes
            ));
        }
        if !self.node_cpus.is_empty() && self.node_cpus.len() != self.nodes {
            problems.push(format!(
                "node_cpus: {} entries for {} nodes",
                self.node_cpus.len(),
                self.nodes
            ));
        }
        for (i, list) in self.node_cpus.iter().enumerate() {
            if !list
                .chars()
                .all(|c| c.is_ascii_digit() || c == ',' || c == '-')
            {
                problems.push(format!(
                    "node_cpus[{i}]: {list:?} is not a CPU list like \"1\" or \"0-1\""
                ));
            }
        }
        for (i, f) in self.functions.iter().enumerate() {
            if !f.module.is_file() {
                problems.push(format!(
                    "functions[{i}].module: file {} not found (build the examples with scripts/build-functions.sh)",
                    f.module.display()
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn node_config_loads_with_defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "node.pem", "x");
        write(dir.path(), "node.key", "x");
        write(dir.path(), "ca.pem", "x");
        write(dir.path(), "gossip.key", "x");
        let file = write(
            dir.path(),
            "node.toml",
            "name = \"n1\"\ntls_cert = \"node.pem\"\ntls_key = \"node.key\"\ncluster_ca = \"ca.pem\"\n[defaults]\ntimeout_ms = 500\n[gossip]\nkey_file = \"gossip.key\"\nseeds = [\"gw.local:7946\"]\n",
        );
        let cfg: NodeConfig = load(&file).unwrap();
        assert_eq!(cfg.name, "n1");
        assert_eq!(cfg.tls_cert, dir.path().join("node.pem"));
        assert_eq!(cfg.defaults.timeout_ms, 500);
        assert_eq!(cfg.defaults.memory_limit_mib, 128);
        assert_eq!(cfg.gossip.key_file, dir.path().join("gossip.key"));
        assert_eq!(cfg.gossip.seeds, ["gw.local:7946"]);
        assert_eq!(cfg.gossip.interval_ms, 200);
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "node.toml", "nmae = \"typo\"\n");
        let err = load::<NodeConfig>(&file).unwrap_err().to_string();
        assert!(err.contains("node.toml") && err.contains("nmae"), "{err}");

        let file = write(dir.path(), "bad.toml", "worker_threads = \"many\"\n");
        let err = load::<NodeConfig>(&file).unwrap_err().to_string();
        assert!(
            err.contains("bad.toml") && err.contains("worker_threads"),
            "{err}"
        );

        let file = write(dir.path(), "empty.toml", "fuel_per_ms = 0\n");
        let err = load::<NodeConfig>(&file).unwrap_err();
        assert_eq!(err.problems.len(), 5, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("tls_cert: required")
                && text.contains("fuel_per_ms")
                && text.contains("gossip.key_file: required"),
            "{text}"
        );

        let err = load::<NodeConfig>(&dir.path().join("missing.toml")).unwrap_err();
        assert!(err.to_string().contains("missing.toml: file not found"));
    }

    #[test]
    fn cluster_config_checks_per_node_settings_and_routing() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "cluster.toml",
            "nodes = 3\nworker_threads_per_node = [2, 1]\nnode_cpus = [\"\", \"1\", \"all\"]\n",
        );
        let text = load::<ClusterConfig>(&file).unwrap_err().to_string();
        for key in [
            "worker_threads_per_node: 2 entries for 3 nodes",
            "node_cpus[2]",
        ] {
            assert!(text.contains(key), "{key} missing from: {text}");
        }
        let file = write(dir.path(), "cluster.toml", "routing = \"fastest\"\n");
        let text = load::<ClusterConfig>(&file).unwrap_err().to_string();
        assert!(text.contains("fastest"), "{text}");
        let file = write(
            dir.path(),
            "cluster.toml",
            "routing = \"least-loaded-warm\"\nnode_cpus = [\"0-1\", \"\", \"1\"]\n",
        );
        let ok = load::<ClusterConfig>(&file).unwrap();
        assert_eq!(ok.routing, RoutingPolicy::LeastLoadedWarm);
        assert_eq!("random".parse::<RoutingPolicy>(), Ok(RoutingPolicy::Random));
        assert!(
            "fastest"
                .parse::<RoutingPolicy>()
                .unwrap_err()
                .contains("least-loaded-warm")
        );
    }

    #[test]
    fn gateway_config_checks_functions() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["c.pem", "c.key", "ca.pem", "m.pem", "m.key"] {
            write(dir.path(), f, "x");
        }
        let file = write(
            dir.path(),
            "gateway.toml",
            r#"
tls_cert = "c.pem"
tls_key = "c.key"
cluster_ca = "ca.pem"
cluster_cert = "m.pem"
cluster_key = "m.key"
[gossip]
key_file = "gossip.key"
seeds = ["127.0.0.1:7946", "7946", "gw:x"]
interval_ms = 0
[[functions]]
name = "hello"
module = "hello.wasm"
routes = [{ path = "/hi" }, { host = "hi.example.com" }]
[[functions]]
name = "hello"
module = "hello.wasm"
"#,
        );
        let err = load::<GatewayConfig>(&file).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("functions[0].module"), "{text}");
        assert!(text.contains("functions[1].name"), "{text}");
        for problem in [
            "gossip.key_file: file",
            "gossip.seeds[1]",
            "gossip.seeds[2]",
            "gossip.interval_ms",
        ] {
            assert!(text.contains(problem), "{problem} missing from: {text}");
        }
        assert!(!text.contains("gossip.seeds[0]"), "{text}");
        write(dir.path(), "hello.wasm", "x");
        let text = load::<GatewayConfig>(&file).unwrap_err().to_string();
        assert!(!text.contains("module"), "{text}");
    }

    #[test]
    fn the_example_files_use_only_known_keys() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        // The examples name certificate files that only `edge up` creates: those are the
        // only problems allowed.
        let only_missing_files = |problems: &[String]| {
            problems.iter().all(|p| {
                p.contains("not found")
                    && (p.starts_with("tls_")
                        || p.starts_with("cluster_")
                        || p.starts_with("gossip.key_file")
                        || p.contains(".module"))
            })
        };
        match load::<NodeConfig>(&dir.join("node.toml")) {
            Ok(_) => {}
            Err(e) => assert!(only_missing_files(&e.problems), "{e}"),
        }
        match load::<GatewayConfig>(&dir.join("gateway.toml")) {
            Ok(_) => {}
            Err(e) => assert!(only_missing_files(&e.problems), "{e}"),
        }
        let cluster: Result<ClusterConfig, _> = load(&dir.join("cluster.toml"));
        if let Err(e) = cluster {
            assert!(only_missing_files(&e.problems), "{e}");
        }
    }
}
