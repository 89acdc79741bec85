//! What a node says about itself: its [`Load`] (what gossip publishes and gateways route
//! on) and its [`NodeStatus`] (for operators, at `GET /_edge/v1/status`).

use std::sync::atomic::Ordering;

use edge_net::gossip::GossipStats;
use edge_shared::manifest::DeploymentId;
use serde::Serialize;

use crate::node::Node;
use crate::pool::InstancePool;

/// The node's load, as gossip publishes it and gateways route on.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    /// Execution slots.
    pub slots: usize,
    /// Requests running.
    pub in_flight: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Moving average of the guest run time, in microseconds.
    pub ewma_run_us: u64,
    /// Memory reserved by running and pooled instances, in bytes.
    pub memory_reserved: u64,
    /// The instance memory budget, in bytes.
    pub memory_budget: u64,
    /// Deployments whose compiled module is in memory here.
    pub warm: Vec<DeploymentId>,
    /// Whether the node is shutting down.
    pub draining: bool,
    /// Requests running or queued, per gateway that sent them (those with none left out).
    pub from_gateways: Vec<(String, usize)>,
}

/// The pool of spare linear memories ([`crate::runtime::memories`]).
#[derive(Debug, Serialize)]
pub struct MemoryPoolStatus {
    /// Spare memories now, zeroed.
    pub spare: usize,
    /// Instances whose memory was a spare one.
    pub reused: u64,
    /// Memories mapped because none was spare.
    pub mapped: u64,
    /// Memories unmapped because the spare list was full.
    pub unmapped: u64,
}

/// One deployment in the status.
#[derive(Debug, Serialize)]
pub struct DeploymentStatus {
    /// Its id.
    pub id: DeploymentId,
    /// Whether its module is in memory.
    pub warm: bool,
    /// Requests running.
    pub running: usize,
    /// Requests waiting.
    pub queued: usize,
    /// Ready instances in its pool.
    pub pool_ready: usize,
    /// Requests that took a ready instance.
    pub pool_hits: u64,
    /// Requests that instantiated on their own path.
    pub pool_misses: u64,
    /// Requests that found it cold and loaded its module.
    pub cold_starts: u64,
    /// Total time of those cold starts reading the blob, in microseconds.
    pub cold_blob_us: u64,
    /// Total time of those cold starts compiling or deserializing, in microseconds.
    pub cold_load_us: u64,
    /// Total time of those cold starts instantiating, in microseconds.
    pub cold_instantiate_us: u64,
}

/// The node's counters and load, as one snapshot.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// The load snapshot.
    pub load: Load,
    /// Invocations completed, failed or refused since start.
    pub requests: u64,
    /// Invocations refused as overloaded since start.
    pub overloaded: u64,
    /// Invocations refused because the node is draining.
    pub refused_draining: u64,
    /// The most instance memory ever reserved at once, in bytes (never over the budget).
    pub peak_memory_reserved: u64,
    /// Modules compiled since start.
    pub compiles: u64,
    /// Artifacts deserialized from disk since start.
    pub deserializations: u64,
    /// Modules evicted from memory since start.
    pub evictions: u64,
    /// Artifacts on disk refused since start for a seal that is not this node's.
    pub refused_artifacts: u64,
    /// Artifacts taken from other nodes since start, instead of compiling.
    pub fetched_artifacts: u64,
    /// Artifacts other nodes offered since start that failed the signature check.
    pub refused_fetches: u64,
    /// Artifacts handed to other nodes since start.
    pub served_artifacts: u64,
    /// Deployments loading now (gossiped as `warming`).
    pub warming: usize,
    /// The most cold loads (compile or deserialize on the request path) ever running at
    /// once: never more than the slots, since a cold load holds one.
    pub peak_concurrent_loads: usize,
    /// Compiled modules in memory.
    pub modules_in_memory: usize,
    /// Their artifact bytes.
    pub module_bytes: u64,
    /// The pool of spare linear memories.
    pub memory_pool: MemoryPoolStatus,
    /// Loaded deployments.
    pub deployments: Vec<DeploymentStatus>,
    /// Gossip traffic and membership, once the node has joined.
    pub gossip: Option<GossipStats>,
}

impl Node {
    /// The load snapshot: what gossip publishes.
    pub fn load(&self) -> Load {
        let usage = self.admitter.usage();
        let mut warm: Vec<DeploymentId> = self.cache.warm().into_iter().map(|(id, _)| id).collect();
        warm.sort();
        Load {
            slots: self.workers.size(),
            in_flight: usage.running,
            queued: usage.queued,
            ewma_run_us: self.ewma_run_ns.load(Ordering::Relaxed) / 1_000,
            memory_reserved: usage.memory_reserved,
            memory_budget: self.config.memory_budget_mib << 20,
            warm,
            draining: self.draining.load(Ordering::Relaxed),
            from_gateways: {
                let from = self.from_gateways.lock().unwrap_or_else(|p| p.into_inner());
                from.iter().map(|(g, &n)| (g.clone(), n)).collect()
            },
        }
    }

    /// The status snapshot.
    pub fn status(&self) -> NodeStatus {
        let stats = self.cache.stats();
        let (modules_in_memory, module_bytes) = self.cache.memory_usage();
        let pools = self.cache.warm();
        let mut deployments: Vec<DeploymentStatus> = self
            .deployments
            .iter()
            .map(|d| {
                let pool = pools.iter().find(|(id, _)| *id == d.id).map(|(_, p)| p);
                let (running, queued) = self.admitter.function_usage(&d.id);
                let pooled = |f: fn(&InstancePool) -> u64| pool.map_or(0, |p| f(p));
                DeploymentStatus {
                    id: d.id.clone(),
                    warm: pool.is_some(),
                    running,
                    queued,
                    pool_ready: pool.map_or(0, |p| p.ready()),
                    pool_hits: pooled(|p| p.stats.hits.load(Ordering::Relaxed)),
                    pool_misses: pooled(|p| p.stats.misses.load(Ordering::Relaxed)),
                    cold_starts: d.cold.count.load(Ordering::Relaxed),
                    cold_blob_us: d.cold.blob_us.load(Ordering::Relaxed),
                    cold_load_us: d.cold.load_us.load(Ordering::Relaxed),
                    cold_instantiate_us: d.cold.instantiate_us.load(Ordering::Relaxed),
                }
            })
            .collect();
        deployments.sort_by(|a, b| a.id.cmp(&b.id));
        NodeStatus {
            name: self.config.name.clone(),
            load: self.load(),
            requests: self.requests.load(Ordering::Relaxed),
            overloaded: self.overloaded.load(Ordering::Relaxed),
            refused_draining: self.refused_draining.load(Ordering::Relaxed),
            peak_memory_reserved: self.admitter.usage().peak_memory_reserved,
            compiles: stats.compiles.load(Ordering::Relaxed),
            deserializations: stats.deserializations.load(Ordering::Relaxed),
            evictions: stats.evictions.load(Ordering::Relaxed),
            refused_artifacts: stats.refused_artifacts.load(Ordering::Relaxed),
            fetched_artifacts: stats.fetches.load(Ordering::Relaxed),
            refused_fetches: stats.refused_fetches.load(Ordering::Relaxed),
            served_artifacts: stats.served.load(Ordering::Relaxed),
            warming: self.warming.len(),
            peak_concurrent_loads: self.loads.1.load(Ordering::Relaxed),
            modules_in_memory,
            module_bytes,
            memory_pool: {
                let memories = self.cache.memories();
                MemoryPoolStatus {
                    spare: memories.spare(),
                    reused: memories.stats.reused.load(Ordering::Relaxed),
                    mapped: memories.stats.mapped.load(Ordering::Relaxed),
                    unmapped: memories.stats.unmapped.load(Ordering::Relaxed),
                }
            },
            deployments,
            gossip: self.gossip.get().map(|g| g.stats()),
        }
    }
}
