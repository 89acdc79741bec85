//! The node's Prometheus metrics, served on `metrics_listen` by `edge_net::metrics`:
//! calls by function and status, and the time of each phase of a call (queue, the cold
//! start's blob read, compile or deserialize, instantiate, run) as histograms: a cold
//! start shows in its own phases.

use std::time::Duration;

use edge_shared::wire::ServerTiming;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

/// The node's metrics.
pub struct NodeMetrics {
    calls: Family<CallLabels, Counter>,
    phases: Family<PhaseLabels, Histogram, fn() -> Histogram>,
}

impl NodeMetrics {
    /// The metrics, registered in `registry`.
    pub fn new(registry: &mut Registry) -> NodeMetrics {
        let metrics = NodeMetrics {
            calls: Family::default(),
            phases: Family::new_with_constructor(phase_buckets as fn() -> Histogram),
        };
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
        metrics
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
