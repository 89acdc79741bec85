//! `edge up`'s cluster file.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{
    ConfigFile, FunctionConfig, GossipConfig, IngressConfig, LogFormat, Prewarm, RegistryKind,
    RetryBudgetConfig, RoutingPolicy, resolve,
};

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
    /// The gateway's admin API address (TCP); port 0, the default, picks a free one
    /// (`config/cluster.toml`, what `edge up` runs, sets 4480).
    pub admin_listen: SocketAddr,
    /// The first gateway's Prometheus metrics address (TCP, `GET /metrics`); port 0, the
    /// default, picks a free one (`config/cluster.toml` sets 9480, which
    /// `config/prometheus.yml` scrapes). Other gateways take free ports.
    pub metrics_listen: SocketAddr,
    /// Domain under which functions answer as `NAME.<domain>`.
    pub domain: String,
    /// The gateway's routing policy.
    pub routing: RoutingPolicy,
    /// Time between gossip rounds of every member, in ms.
    pub gossip_interval_ms: u64,
    /// The gateways' `prewarm`: when a function's next node is warmed before it is needed.
    pub prewarm: Prewarm,
    /// The gateways' `min_warm_nodes`: nodes a function that takes requests is kept warm
    /// on, however light its load.
    pub min_warm_nodes: usize,
    /// The nodes' `artifacts.share`: whether nodes hand compiled artifacts to each other
    /// (`false`: each compiles what it runs, as before artifacts travelled).
    pub share_artifacts: bool,
    /// The gateway's ingress limits.
    pub ingress: IngressConfig,
    /// Functions deployed at start.
    pub functions: Vec<FunctionConfig>,
    /// Gateways to start; more than one needs `registry = "nats"`. The first listens
    /// on `listen` and `admin_listen`, the others on ports the system picks.
    pub gateways: usize,
    /// The gateways' `unrouted_grace_ms`: how long after a version stops taking
    /// traffic it is dropped from the nodes.
    pub unrouted_grace_ms: u64,
    /// The gateways' `request_timeout_ms`.
    pub request_timeout_ms: u64,
    /// The gateways' `[retry_budget]`: how many refusals for overload go on to another
    /// node.
    pub retry_budget: RetryBudgetConfig,
    /// With `registry = "nats"`: how often each gateway reads every record again, in
    /// ms (its `registry.resync_ms`).
    pub registry_resync_ms: u64,
    /// The gateways' registry: `embedded` (each its own) or `nats` (a `nats-server`
    /// with JetStream, started in the state folder, shared by every gateway).
    pub registry: RegistryKind,
    /// Every process's `log_filter` (`info,access=debug` logs each request).
    pub log_filter: String,
    /// Every process's `log_format`: `text` or `json`.
    pub log_format: LogFormat,
    /// Where each member runs, when not all on loopback: the gateway's host first, then
    /// each node's. A member with a host is started in its network namespace and binds
    /// every listener to its address.
    pub hosts: Vec<Host>,
}

/// A host of a member: a network namespace (made beforehand, say with `ip netns add`
/// and a veth) and the member's address in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// The namespace's name (`ip netns exec NAME`).
    pub netns: String,
    /// The member's address there.
    pub addr: IpAddr,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            nodes: 3,
            node_worker_threads: 0,
            worker_threads_per_node: Vec::new(),
            node_cpus: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            domain: "edge.localhost".into(),
            routing: RoutingPolicy::LeastLoadedWarm,
            gossip_interval_ms: GossipConfig::default().interval_ms,
            prewarm: Prewarm::Projected,
            min_warm_nodes: 2,
            share_artifacts: true,
            ingress: IngressConfig::default(),
            functions: Vec::new(),
            gateways: 1,
            unrouted_grace_ms: 60_000,
            request_timeout_ms: 30_000,
            retry_budget: RetryBudgetConfig::default(),
            registry: RegistryKind::Embedded,
            registry_resync_ms: 30_000,
            log_filter: "info".into(),
            log_format: LogFormat::Text,
            hosts: Vec::new(),
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
        if self.gateways == 0 {
            problems.push("gateways: at least one".into());
        }
        if self.gateways > 1 && self.registry != RegistryKind::Nats {
            problems.push(format!(
                "gateways: {} gateways share functions only with registry = \"nats\"",
                self.gateways
            ));
        }
        if !(1..=64).contains(&self.nodes) {
            problems.push("nodes: from 1 to 64".into());
        }
        self.ingress.problems(&mut problems);
        self.retry_budget.problems(&mut problems);
        super::gateway::check_min_warm_nodes(&mut problems, self.min_warm_nodes);
        super::check_log_filter(&mut problems, &self.log_filter);
        if !self.hosts.is_empty() && self.hosts.len() != self.nodes + 1 {
            problems.push(format!(
                "hosts: {} listed; {} nodes need {} (the gateway's first) or none",
                self.hosts.len(),
                self.nodes,
                self.nodes + 1
            ));
        }
        if !self.hosts.is_empty() && self.gateways > 1 {
            problems.push("hosts: one gateway only".into());
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
