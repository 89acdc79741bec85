//! The gateway's Prometheus metrics, served on `metrics_listen` by
//! `edge_net::metrics`: requests by function, status and node, the time from a
//! request's arrival to its answer's head, and requests in flight.

use std::sync::{Arc, Weak};
use std::time::Duration;

use edge_net::metrics::write_family;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::proxy::Gateway;

/// A request's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    function: String,
    /// The HTTP status answered.
    status: String,
    /// The node that answered; `none` when the gateway answered itself.
    node: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
}

/// Histogram buckets of request times: 0.5 ms doubling to about 16 s.
fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The gateway's metrics counted as requests happen.
pub struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    retries: Counter,
    retries_over_budget: Counter,
    connections_given_up: Counter,
}

impl Default for GatewayMetrics {
    fn default() -> GatewayMetrics {
        GatewayMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(request_buckets as fn() -> Histogram),
            in_flight: Gauge::default(),
            retries: Counter::default(),
            retries_over_budget: Counter::default(),
            connections_given_up: Counter::default(),
        }
    }
}

/// The registry of `gateway`'s metrics: those counted as requests happen, and those
/// read at each scrape (usable nodes).
pub fn registry(gateway: &Arc<Gateway>) -> Registry {
    let mut registry = Registry::default();
    let metrics = &gateway.metrics;
    let edge = registry.sub_registry_with_prefix("edge_gateway");
    edge.register(
        "requests",
        "Requests routed to a function, by function, status and node",
        metrics.requests.clone(),
    );
    edge.register(
        "request_duration_seconds",
        "Time from a request's arrival (its body read) to its answer's head, by function",
        metrics.duration.clone(),
    );
    edge.register(
        "requests_in_flight",
        "Requests routed and not yet answered",
        metrics.in_flight.clone(),
    );
    edge.register(
        "retries",
        "Requests sent again to another node after one failed, refused or timed out",
        metrics.retries.clone(),
    );
    edge.register(
        "retries_over_budget",
        "Requests refused as overloaded and answered so, not sent to another node: their function's retry budget was spent",
        metrics.retries_over_budget.clone(),
    );
    edge.register(
        "node_connections_given_up",
        "Connections to nodes given up when gossip held the node down: requests in flight there went on to another node",
        metrics.connections_given_up.clone(),
    );
    registry.register_collector(Box::new(GatewayCollector(Arc::downgrade(gateway))));
    registry
}

/// What is read from the gateway at each scrape. Holds it weakly.
#[derive(Debug)]
struct GatewayCollector(Weak<Gateway>);

impl Collector for GatewayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(gateway) = self.0.upgrade() else {
            return Ok(());
        };
        let snapshot = gateway.membership.snapshot();
        let (_, failing) = gateway.membership.health(&snapshot);
        write_family(
            &mut encoder,
            (
                "edge_gateway_usable_nodes",
                "Nodes gossip holds live and not draining, that requests can be routed to",
                MetricType::Gauge,
            ),
            &[(&[], snapshot.view.usable() as u64)],
        )?;
        write_family(
            &mut encoder,
            (
                "edge_gateway_failing_nodes",
                "Nodes this gateway failed to reach in the last 2 s: routed to last",
                MetricType::Gauge,
            ),
            &[(&[], failing.iter().filter(|&&f| f).count() as u64)],
        )
    }
}

impl GatewayMetrics {
    /// Counts a request sent again to another node.
    pub fn retried(&self) {
        self.retries.inc();
    }

    /// Counts a refusal for overload answered as it is: the retry budget was spent.
    pub fn retry_over_budget(&self) {
        self.retries_over_budget.inc();
    }

    /// Counts a connection to a node given up because gossip held the node down.
    pub fn connection_given_up(&self) {
        self.connections_given_up.inc();
    }

    /// Counts a request as in flight until the guard drops.
    pub fn in_flight(&self) -> InFlightRequest<'_> {
        self.in_flight.inc();
        InFlightRequest(&self.in_flight)
    }

    /// Counts an answer to a request for `function`.
    pub fn answered(&self, function: &str, status: u16, node: Option<&str>, took: Duration) {
        let labels = RequestLabels {
            function: function.to_string(),
            status: status.to_string(),
            node: node.unwrap_or("none").to_string(),
        };
        self.requests.get_or_create(&labels).inc();
        let function = FunctionLabels {
            function: function.to_string(),
        };
        self.duration
            .get_or_create(&function)
            .observe(took.as_secs_f64());
    }
}

/// A request counted in flight.
pub struct InFlightRequest<'a>(&'a Gauge);

impl Drop for InFlightRequest<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
