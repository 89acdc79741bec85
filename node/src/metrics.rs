//! The node's Prometheus metrics, served on `metrics_listen` by `edge_net::metrics`:
//! calls by function and status, and the time of each phase of a call (queue, the cold
//! start's blob read, compile or deserialize, instantiate, run) as histograms: a cold
//! start shows in its own phases.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use edge_net::metrics::{Labels, write_family, write_seconds};
use edge_shared::wire::{Refusal, ServerTiming};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::node::Node;
use crate::status::DeploymentStatus;
use crate::usage::Counters;
use edge_net::gossip::identity::unix_ms;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    function: String,
    /// The HTTP status answered.
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    function: String,
    /// `queue`, `cold`, `blob`, `compile`, `deserialize`, `instantiate` or `run`.
    phase: String,
}

/// Buckets of phase times: 10 µs doubling to about 20 s.
fn phase_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 22))
}

/// The node's metrics counted as calls happen; what is read at scrape time (pools,
/// module cache, admission, memory) is [`NodeCollector`]'s.
pub struct NodeMetrics {
    calls: Family<CallLabels, Counter>,
    phases: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    refusals: Family<ReasonLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// The `x-edge-refused` value: `overloaded`, `not-found`, `draining`, `module-missing`.
    reason: &'static str,
}

impl Default for NodeMetrics {
    fn default() -> NodeMetrics {
        NodeMetrics {
            calls: Family::default(),
            phases: Family::new_with_constructor(phase_buckets as fn() -> Histogram),
            refusals: Family::default(),
        }
    }
}

/// The registry of `node`'s metrics: those counted as calls happen, and those read
/// from the node at each scrape.
pub fn registry(node: &Arc<Node>) -> Registry {
    let mut registry = Registry::default();
    let metrics = &node.metrics;
    let edge = registry.sub_registry_with_prefix("edge_node");
    edge.register(
        "calls",
        "Calls of a function on this node, by function and the status answered",
        metrics.calls.clone(),
    );
    edge.register(
        "phase_duration_seconds",
        "Time of each phase of a call (queue, cold start and its parts, instantiate, run), by function",
        metrics.phases.clone(),
    );
    edge.register(
        "refusals",
        "Calls and deploys refused, by reason (x-edge-refused)",
        metrics.refusals.clone(),
    );
    registry.register_collector(Box::new(NodeCollector(Arc::downgrade(node))));
    registry
}

impl NodeMetrics {
    /// Counts a refusal.
    pub fn refused(&self, refusal: Refusal) {
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: refusal.as_str(),
            })
            .inc();
    }

    /// Counts a call of `function` answered `status`, with the phases in `timing`.
    pub fn called(&self, function: &str, status: u16, timing: Option<&ServerTiming>) {
        let labels = CallLabels {
            function: function.to_string(),
            status: status.to_string(),
        };
        self.calls.get_or_create(&labels).inc();
        for (phase, took) in timing.into_iter().flat_map(ServerTiming::entries) {
            self.observe(function, phase, took);
        }
    }

    fn observe(&self, function: &str, phase: &str, took: Duration) {
        let labels = PhaseLabels {
            function: function.to_string(),
            phase: phase.to_string(),
        };
        self.phases
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }
}

/// What is read from the node at each scrape: admission and memory, the module cache,
/// and per deployment its pool and cold starts. Holds the node weakly.
#[derive(Debug)]
struct NodeCollector(Weak<Node>);

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(node) = self.0.upgrade() else {
            return Ok(());
        };
        let status = node.status();
        let e = &mut encoder;
        let (gauge, counter) = (MetricType::Gauge, MetricType::Counter);
        let load = &status.load;
        let one = |value: u64| [(&[][..], value)];
        for (name, help, kind, value) in [
            (
                "edge_node_slots",
                "Execution slots (worker threads)",
                gauge,
                load.slots as u64,
            ),
            (
                "edge_node_in_flight",
                "Calls running",
                gauge,
                load.in_flight as u64,
            ),
            (
                "edge_node_queued",
                "Calls waiting for a slot",
                gauge,
                load.queued as u64,
            ),
            (
                "edge_node_memory_reserved_bytes",
                "Instance memory reserved by running and pooled instances",
                gauge,
                load.memory_reserved,
            ),
            (
                "edge_node_memory_budget_bytes",
                "The instance memory budget",
                gauge,
                load.memory_budget,
            ),
            (
                "edge_node_memory_reserved_peak_bytes",
                "The most instance memory ever reserved at once",
                gauge,
                status.peak_memory_reserved,
            ),
            (
                "edge_node_module_cache_modules",
                "Compiled modules in memory",
                gauge,
                status.modules_in_memory as u64,
            ),
            (
                "edge_node_module_cache_bytes",
                "Artifact bytes of the compiled modules in memory",
                gauge,
                status.module_bytes,
            ),
            (
                "edge_node_module_cache_hits",
                "Module loads served from memory",
                counter,
                node.cache.stats().memory_hits.load(Ordering::Relaxed),
            ),
            (
                "edge_node_module_cache_evictions",
                "Modules evicted from memory",
                counter,
                status.evictions,
            ),
            (
                "edge_node_memory_pool_spare",
                "Linear memories of spent instances kept, zeroed, for the next ones",
                gauge,
                status.memory_pool.spare as u64,
            ),
            (
                "edge_node_memory_pool_reused",
                "Instances whose linear memory was a spare one (no mapping made)",
                counter,
                status.memory_pool.reused,
            ),
            (
                "edge_node_memory_pool_mapped",
                "Linear memories mapped because no spare one was left",
                counter,
                status.memory_pool.mapped,
            ),
            (
                "edge_node_memory_pool_unmapped",
                "Linear memories unmapped because the spare list was full",
                counter,
                status.memory_pool.unmapped,
            ),
            (
                "edge_node_artifacts_refused",
                "Artifacts on disk refused for a seal not this node's",
                counter,
                status.refused_artifacts,
            ),
            (
                "edge_node_artifacts_fetch_refused",
                "Artifacts from other nodes refused: their signature or bytes did not check out",
                counter,
                status.refused_fetches,
            ),
            (
                "edge_node_artifacts_served",
                "Artifacts handed to other nodes",
                counter,
                status.served_artifacts,
            ),
            (
                "edge_node_warming",
                "Deployments loading now, gossiped as warming",
                gauge,
                status.warming as u64,
            ),
        ] {
            write_family(e, (name, help, kind), &one(value))?;
        }
        write_family(
            e,
            (
                "edge_node_module_cache_misses",
                "Module loads not served from memory, by how they were loaded: compiled, deserialized from the artifact on disk, or fetched from another node (then deserialized)",
                counter,
            ),
            &[
                (&[("source", "compile")], status.compiles),
                (&[("source", "disk")], status.deserializations),
                (&[("source", "peer")], status.fetched_artifacts),
            ],
        )?;
        let per = |f: fn(&DeploymentStatus) -> u64| -> Vec<([(&'static str, &str); 1], u64)> {
            status
                .deployments
                .iter()
                .map(|d| ([("deployment", d.id.as_str())], f(d)))
                .collect()
        };
        for (name, help, kind, f) in [
            (
                "edge_node_pool_ready_instances",
                "Ready instances in a deployment's pool",
                gauge,
                (|d| d.pool_ready as u64) as fn(&DeploymentStatus) -> u64,
            ),
            (
                "edge_node_pool_hits",
                "Calls that took a ready instance from the pool, by deployment",
                counter,
                |d| d.pool_hits,
            ),
            (
                "edge_node_pool_misses",
                "Calls that instantiated on their own path, by deployment",
                counter,
                |d| d.pool_misses,
            ),
            (
                "edge_node_cold_starts",
                "Calls that found their deployment cold and loaded its module, by deployment",
                counter,
                |d| d.cold_starts,
            ),
        ] {
            let rows = per(f);
            let samples: Vec<(Labels, u64)> = rows.iter().map(|(l, v)| (&l[..], *v)).collect();
            write_family(e, (name, help, kind), &samples)?;
        }
        write_usage(e, &node)
    }
}

/// The usage meter's counts since counting began, by function and deployment: the
/// figures `GET /v1/usage` bills, as metrics.
fn write_usage(e: &mut DescriptorEncoder, node: &Node) -> std::fmt::Result {
    let report = node.usage.report(node.name(), None, unix_ms());
    let labels: Vec<[(&str, &str); 2]> = report
        .deployments
        .iter()
        .map(|d| {
            [
                ("function", d.function.as_str()),
                ("deployment", d.deployment.as_str()),
            ]
        })
        .collect();
    let (gauge, counter) = (MetricType::Gauge, MetricType::Counter);
    for (name, help, kind, f) in [
        (
            "edge_node_usage_invocations",
            "Calls run, by function and deployment (usage meter)",
            counter,
            (|c| c.invocations) as fn(&Counters) -> u64,
        ),
        (
            "edge_node_usage_errors",
            "Calls run that failed, by function and deployment (usage meter)",
            counter,
            |c| c.errors,
        ),
        (
            "edge_node_usage_fuel",
            "Fuel consumed, by function and deployment (usage meter)",
            counter,
            |c| c.fuel,
        ),
        (
            "edge_node_usage_received_bytes",
            "Request body bytes, by function and deployment (usage meter)",
            counter,
            |c| c.bytes_in,
        ),
        (
            "edge_node_usage_sent_bytes",
            "Response bytes written by the function, by function and deployment (usage meter)",
            counter,
            |c| c.bytes_out,
        ),
        (
            "edge_node_usage_peak_memory_bytes",
            "The largest linear memory a call ended with, by function and deployment (usage meter)",
            gauge,
            |c| c.peak_memory_bytes,
        ),
    ] {
        let samples: Vec<(Labels, u64)> = labels
            .iter()
            .zip(&report.deployments)
            .map(|(l, d)| (&l[..], f(&d.counters)))
            .collect();
        write_family(e, (name, help, kind), &samples)?;
    }
    let run: Vec<(Labels, f64)> = labels
        .iter()
        .zip(&report.deployments)
        .map(|(l, d)| (&l[..], d.counters.run_us as f64 / 1e6))
        .collect();
    write_seconds(
        e,
        (
            "edge_node_usage_run_seconds",
            "Time in the guest, by function and deployment (usage meter)",
        ),
        &run,
    )
}
