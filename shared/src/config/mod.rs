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

mod cluster;
mod gateway;
mod ingress;
mod node;
#[cfg(test)]
mod tests;

pub use cluster::{ClusterConfig, Host};
pub use gateway::{AdminConfig, GatewayConfig, RegistryConfig, RegistryKind, RetryBudgetConfig};
pub use ingress::IngressConfig;
pub use node::{ArtifactsConfig, InstancePoolConfig, NodeConfig};

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

/// A Linux scheduling policy for a group of a process's threads: `network_scheduling`
/// sets its network threads' (its async runtime); a node's guest workers always run
/// under `Normal`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulingPolicy {
    /// `SCHED_BATCH`: a thread woken by a packet or a finished guest does not preempt
    /// the thread running on its core (a guest, above all); it runs on a free core, or
    /// when the running thread's time slice ends. Fewer context switches a request, and
    /// fair shares of the CPU as before.
    #[default]
    Batch,
    /// `SCHED_OTHER`, Linux's default: a woken thread preempts the running one.
    Normal,
}

/// Levels a `log_filter` directive may set.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks `log_filter`: comma-separated directives, each a level (`info`) or a module
/// path and a level (`edge_node=debug`, `access=debug`).
pub fn check_log_filter(problems: &mut Vec<String>, filter: &str) {
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, level) = directive.split_once('=').unwrap_or(("", directive));
        let target_ok = target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
        if !target_ok || !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            problems.push(format!(
                "log_filter: {directive:?} is not LEVEL or MODULE=LEVEL (levels: {})",
                LOG_LEVELS.join(", ")
            ));
        }
    }
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
    // A bare file name's parent is the empty path, which `std::path::absolute` refuses.
    let folder = file.parent().filter(|p| !p.as_os_str().is_empty());
    load_source(source, file, folder.unwrap_or(Path::new(".")))
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
    // Absolute, so that paths stay right when written into another file elsewhere (as
    // `edge up` writes each member's file from a cluster file named relatively).
    parsed.resolve_paths(&std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf()));
    let problems = parsed.problems();
    if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(fail(problems))
    }
}

pub(crate) fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() && !path.as_os_str().is_empty() {
        *path = base.join(&*path);
    }
}

pub(crate) fn require_file(problems: &mut Vec<String>, key: &str, path: &Path) {
    if path.as_os_str().is_empty() {
        problems.push(format!("{key}: required"));
    } else if !path.is_file() {
        problems.push(format!("{key}: file {} not found", path.display()));
    }
}

pub(crate) fn check_grace(problems: &mut Vec<String>, grace_ms: u64) {
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
    /// Bytes per second a member sends on gossip, on average, before it opens fewer
    /// exchanges of its own (it still answers every one): rounds lengthen in a large
    /// cluster, and a small one gossips every round. 0: no limit.
    pub budget_bytes_per_s: u64,
}

impl Default for GossipConfig {
    fn default() -> GossipConfig {
        GossipConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seeds: Vec::new(),
            key_file: PathBuf::new(),
            interval_ms: 200,
            budget_bytes_per_s: 10_000,
        }
    }
}

impl GossipConfig {
    pub(crate) fn problems(&self, problems: &mut Vec<String>) {
        require_file(problems, "gossip.key_file", &self.key_file);
        if !(10..=10_000).contains(&self.interval_ms) {
            problems.push("gossip.interval_ms: must be between 10 and 10000".into());
        }
        if self.budget_bytes_per_s != 0 && self.budget_bytes_per_s < 1_000 {
            problems.push(
                "gossip.budget_bytes_per_s: 0 (no limit) or at least 1000: a member must be able to send a digest now and then".into(),
            );
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

/// When a gateway warms a function on one more node ahead of need (under
/// `least-loaded-warm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Prewarm {
    /// When the warm nodes' load, scaled by where the function's arrival rate is heading
    /// one warm-up ahead, passes half their slots.
    #[default]
    Projected,
    /// When the warm nodes' load now passes half their slots.
    Threshold,
    /// Never: a function spreads by cold starts on the request path.
    Off,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Environment variables whose values the admin API never shows and logs never
    /// hold.
    #[serde(default)]
    pub secrets: crate::manifest::Secrets,
    /// Its limits; unset ones take the node's defaults.
    #[serde(default)]
    pub limits: Limits,
    /// A 5-field cron schedule (UTC) to invoke it on: `POST` to its first route.
    #[serde(default)]
    pub schedule: Option<String>,
}
