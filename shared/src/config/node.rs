//! `edge-node`'s configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    ConfigFile, GossipConfig, LimitDefaults, LogFormat, SchedulingPolicy, check_grace,
    check_log_filter, require_file, resolve,
};

/// `edge-node`'s configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name of this node, shown to users in `x-edge-node` and in logs.
    pub name: String,
    /// UDP address serving HTTP/3 to gateways; port 0 picks a free one.
    pub listen: SocketAddr,
    /// TCP address of the node's Prometheus metrics (plain HTTP, `GET /metrics`,
    /// OpenMetrics text); port 0 picks a free one.
    pub metrics_listen: SocketAddr,
    /// PEM certificate chain of this node, issued by the cluster CA for `edge-node`.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: PathBuf,
    /// PEM cluster CA: only clients (gateways) with a certificate from it are served.
    pub cluster_ca: PathBuf,
    /// Folder of the on-disk caches (module blobs, compiled artifacts).
    pub cache_dir: PathBuf,
    /// Folder of the node's state: its usage meter (`usage.json`).
    pub state_dir: PathBuf,
    /// How often the usage meter is written to `state_dir`, in ms (and when the node
    /// stops): a crash loses at most this long of counts.
    pub usage_flush_ms: u64,
    /// Threads that run guest code, each one execution slot; 0 = one per CPU.
    pub worker_threads: usize,
    /// Linux scheduling policy of the threads that serve QUIC and HTTP/3 (not of the
    /// guests'): `batch` (default), so that a network thread woken by a packet or a
    /// finished guest does not preempt a running guest but takes a free core or the
    /// next turn, or `normal`, Linux's default. With `batch` a node served 15-20% more
    /// `hello` for 15-20% less CPU a request, and a lower p99 near saturation
    /// (BENCHMARKS.md).
    pub network_scheduling: SchedulingPolicy,
    /// Memory that running and pooled instances may reserve together, in MiB: a
    /// running request reserves its function's `memory_limit_mib`, an idle pooled
    /// instance its current linear memory. Requests over it wait like over the slots.
    pub memory_budget_mib: u64,
    /// Compiled modules kept in memory, in MiB of artifact; the least recently used
    /// go beyond it (their functions turn cold, their artifacts stay on disk).
    pub module_cache_mib: u64,
    /// A compiled module whose functions have all had no request for this long leaves
    /// memory (and the warm set gossiped), in milliseconds; its next request loads it
    /// from the artifact on disk, a few milliseconds. 0 keeps modules until the LRU
    /// needs their room.
    pub module_idle_ttl_ms: u64,
    /// Most elements one table of an instance may hold. Each table is counted at this
    /// cap (16 bytes an element) in the memory budget; a module whose table starts
    /// larger cannot be deployed.
    pub max_table_elements: u32,
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
    /// Compiled artifacts taken from and handed to other nodes.
    pub artifacts: ArtifactsConfig,
    /// On SIGTERM, after announcing `draining`, longest the node waits for the requests
    /// it runs and has queued to finish before it leaves, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Log format.
    pub log_format: LogFormat,
    /// Log levels, as comma-separated directives: a level, or MODULE=LEVEL
    /// (`info,edge_node=debug`). `access=debug` adds a line per request. `RUST_LOG`, when
    /// set, overrides it.
    pub log_filter: String,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            name: "node".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9481)),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            cluster_ca: PathBuf::new(),
            cache_dir: PathBuf::from("node-cache"),
            state_dir: PathBuf::from("node-state"),
            usage_flush_ms: 5_000,
            worker_threads: 0,
            network_scheduling: SchedulingPolicy::Batch,
            memory_budget_mib: 2048,
            module_cache_mib: 512,
            module_idle_ttl_ms: 600_000,
            max_table_elements: 10_000,
            instance_pool: InstancePoolConfig::default(),
            fuel_per_ms: 10_000_000,
            defaults: LimitDefaults::default(),
            gossip: GossipConfig::default(),
            artifacts: ArtifactsConfig::default(),
            shutdown_grace_ms: 10_000,
            log_format: LogFormat::Text,
            log_filter: "info".into(),
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
        resolve(base, &mut self.state_dir);
        resolve(base, &mut self.gossip.key_file);
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !crate::gossip::is_member_name(&self.name) {
            problems.push(format!(
                "name: {:?} must be a DNS label, [a-z0-9-] up to 63 characters (the node's certificate names it)",
                self.name
            ));
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
        if self.instance_pool.spare_memories > 4096 {
            problems.push("instance_pool.spare_memories: at most 4096".into());
        }
        if self.instance_pool.keep_resident_kib > 1 << 20 {
            problems.push("instance_pool.keep_resident_kib: at most 1048576 (1 GiB)".into());
        }
        if self.defaults.memory_limit_mib > self.memory_budget_mib {
            problems.push(format!(
                "defaults.memory_limit_mib: {} is over memory_budget_mib {}",
                self.defaults.memory_limit_mib, self.memory_budget_mib
            ));
        }
        check_grace(&mut problems, self.shutdown_grace_ms);
        check_log_filter(&mut problems, &self.log_filter);
        if !(100..=3_600_000).contains(&self.usage_flush_ms) {
            problems.push("usage_flush_ms: from 100 to 3600000".into());
        }
        if self.module_idle_ttl_ms != 0 && self.module_idle_ttl_ms < 1_000 {
            problems.push("module_idle_ttl_ms: 0 (never) or at least 1000".into());
        }
        if !(1..=10_000_000).contains(&self.max_table_elements) {
            problems.push("max_table_elements: from 1 to 10000000".into());
        }
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
        self.artifacts.problems(&mut problems);
        problems
    }
}

/// Compiled artifacts shared between nodes: a node that lacks a module's compiled
/// artifact takes it from a node that has it warm (same compiler, target and CPU
/// features), signed by the node that compiled it, instead of compiling it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactsConfig {
    /// Whether to fetch artifacts from other nodes and serve them to nodes that ask.
    /// `false`: every node compiles what it runs.
    pub share: bool,
    /// Most nodes asked for one artifact before compiling it after all.
    pub max_peers: usize,
    /// How long one node may take to start answering, in milliseconds, before the next
    /// is asked as well; the first answer is taken. A node that completes no connection
    /// in this time (paused, partitioned) is given up; one that answers late on an open
    /// connection (slow under load) is not, before `fetch_timeout_ms`.
    pub ask_next_after_ms: u64,
    /// Longest fetching an artifact may take in all, every node asked included, in
    /// milliseconds; then the node compiles.
    pub fetch_timeout_ms: u64,
    /// Largest artifact taken from another node, in MiB (a 1 MiB module compiles to
    /// about 5 MiB).
    pub max_artifact_mib: u64,
}

impl Default for ArtifactsConfig {
    fn default() -> ArtifactsConfig {
        ArtifactsConfig {
            share: true,
            max_peers: 3,
            ask_next_after_ms: 250,
            fetch_timeout_ms: 2_000,
            max_artifact_mib: 64,
        }
    }
}

impl ArtifactsConfig {
    fn problems(&self, problems: &mut Vec<String>) {
        if !(1..=16).contains(&self.max_peers) {
            problems.push("artifacts.max_peers: from 1 to 16".into());
        }
        if !(10..=10_000).contains(&self.ask_next_after_ms) {
            problems.push("artifacts.ask_next_after_ms: from 10 to 10000".into());
        }
        if !(10..=60_000).contains(&self.fetch_timeout_ms) {
            problems.push("artifacts.fetch_timeout_ms: from 10 to 60000".into());
        }
        if !(1..=1024).contains(&self.max_artifact_mib) {
            problems.push("artifacts.max_artifact_mib: from 1 to 1024".into());
        }
    }

    /// [`ArtifactsConfig::fetch_timeout_ms`].
    pub fn fetch_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.fetch_timeout_ms)
    }

    /// [`ArtifactsConfig::ask_next_after_ms`].
    pub fn ask_next_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ask_next_after_ms)
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
    /// Linear memories of spent instances kept for the next instances, zeroed in place,
    /// so that no request maps or unmaps memory; beyond it they are unmapped. 0 maps a
    /// new memory for every instance.
    pub spare_memories: usize,
    /// Of a spare memory, how many KiB from its start are zeroed in place and stay
    /// resident (only pages a guest touched). The rest goes back to the kernel. Each
    /// spare memory holds at most this much, and an instance never holds resident pages
    /// beyond its own length.
    pub keep_resident_kib: u64,
}

impl Default for InstancePoolConfig {
    fn default() -> InstancePoolConfig {
        InstancePoolConfig {
            max_per_function: 16,
            idle_ttl_ms: 60_000,
            spare_memories: 16,
            keep_resident_kib: 2048,
        }
    }
}
