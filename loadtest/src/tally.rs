//! What a run observed ([`Tally`]) and its summary ([`Report`]): latency percentiles in
//! HdrHistograms, overall, per request kind and per second; answers by status class and
//! by node; errors by kind; cold starts, and where the time went (the gateway's total, the
//! node's queue, the guest's run) read from `server-timing`.

use std::collections::BTreeMap;
use std::time::Duration;

use edge_shared::wire::ServerTiming;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cpu::CpuByThread;

/// Percentiles reported, as quantiles.
const SPECTRUM: [f64; 8] = [0.0, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 1.0];

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, latency: Duration) {
    h.saturating_record(
        u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1),
    );
}

/// Why a request counts as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The QUIC connection could not be made or broke.
    Connect,
    /// No answer within the timeout.
    Timeout,
    /// The HTTP/3 stream failed.
    Stream,
    /// A node refused it (`x-edge-refused`).
    Refused,
    /// A status other than the scenario expects.
    UnexpectedStatus,
    /// The open-loop generator could not send it at its time (too many in flight).
    NotSent,
}

impl ErrorKind {
    /// Its key in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Stream => "stream",
            ErrorKind::Refused => "refused",
            ErrorKind::UnexpectedStatus => "unexpected-status",
            ErrorKind::NotSent => "not-sent",
        }
    }
}

/// One answered request, as recorded.
#[derive(Debug, Clone)]
pub struct Answer<'a> {
    /// The scenario request it was (its name).
    pub request: &'a str,
    /// Time from its intended send time (open loop) or its send (closed loop) to the
    /// whole answer.
    pub latency: Duration,
    /// Seconds since the measured part of the run started, when it completed.
    pub at: Duration,
    /// Its status.
    pub status: http::StatusCode,
    /// `x-edge-node`.
    pub node: Option<&'a str>,
    /// `x-edge-refused`.
    pub refused: Option<&'a str>,
    /// `server-timing`.
    pub timing: Option<&'a str>,
    /// Whether the status is the expected one.
    pub expected: bool,
}

/// Everything one run observed.
#[derive(Debug, Clone)]
pub struct Tally {
    latency: Histogram<u64>,
    by_request: BTreeMap<String, Histogram<u64>>,
    per_second: Vec<Histogram<u64>>,
    in_cluster: Histogram<u64>,
    queue: Histogram<u64>,
    run: Histogram<u64>,
    by_status: BTreeMap<String, u64>,
    by_node: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    lost_examples: BTreeMap<String, String>,
    cold_starts: u64,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally::new()
    }
}

impl Tally {
    /// An empty tally.
    pub fn new() -> Tally {
        Tally {
            latency: histogram(),
            by_request: BTreeMap::new(),
            per_second: Vec::new(),
            in_cluster: histogram(),
            queue: histogram(),
            run: histogram(),
            by_status: BTreeMap::new(),
            by_node: BTreeMap::new(),
            errors: BTreeMap::new(),
            lost_examples: BTreeMap::new(),
            cold_starts: 0,
        }
    }

    /// Records an answer. A refused or unexpected answer also counts as an error; its
    /// latency still counts (a fast 503 is part of what users saw).
    pub fn answer(&mut self, answer: &Answer<'_>) {
        record(&mut self.latency, answer.latency);
        record(
            self.by_request
                .entry(answer.request.to_string())
                .or_insert_with(histogram),
            answer.latency,
        );
        let second = answer.at.as_secs() as usize;
        if self.per_second.len() <= second {
            self.per_second.resize_with(second + 1, histogram);
        }
        record(&mut self.per_second[second], answer.latency);
        *self
            .by_status
            .entry(format!("{}xx", answer.status.as_u16() / 100))
            .or_default() += 1;
        *self
            .by_node
            .entry(answer.node.unwrap_or("-").to_string())
            .or_default() += 1;
        if answer.refused.is_some() {
            self.error(ErrorKind::Refused);
        } else if !answer.expected {
            self.error(ErrorKind::UnexpectedStatus);
        }
        if let Some(timing) = answer.timing.map(ServerTiming::parse) {
            self.cold_starts += u64::from(timing.met_a_cold_start());
            for (metric, histogram) in [
                ("total", &mut self.in_cluster),
                ("queue", &mut self.queue),
                ("run", &mut self.run),
            ] {
                if let Some(ms) = timing.get_ms(metric) {
                    record(histogram, Duration::from_secs_f64(ms.max(0.0) / 1e3));
                }
            }
        }
    }

    /// Records a request that got no usable answer.
    pub fn error(&mut self, kind: ErrorKind) {
        *self.errors.entry(kind.as_str().to_string()).or_default() += 1;
    }

    /// Records a request that got no answer at all, and why (what each gateway tried
    /// said): the first reason of each kind is kept for the report.
    pub fn lost(&mut self, kind: ErrorKind, why: &str) {
        self.error(kind);
        self.lost_examples
            .entry(kind.as_str().to_string())
            .or_insert_with(|| why.to_string());
    }

    /// Answers recorded.
    pub fn answered(&self) -> u64 {
        self.latency.len()
    }

    /// Errors recorded.
    pub fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The latency at quantile `q` so far.
    pub fn latency_at(&self, q: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(q))
    }

    /// The summary of this tally over `elapsed`.
    pub fn report(&self, elapsed: Duration) -> Report {
        let not_answered: u64 = self
            .errors
            .iter()
            .filter(|(k, _)| {
                ![ErrorKind::Refused, ErrorKind::UnexpectedStatus]
                    .iter()
                    .any(|e| e.as_str() == k.as_str())
            })
            .map(|(_, v)| v)
            .sum();
        let answered = self.latency.len();
        Report {
            requests: answered + not_answered,
            answered,
            seconds: elapsed.as_secs_f64(),
            throughput: answered as f64 / elapsed.as_secs_f64().max(1e-9),
            latency: Percentiles::of(&self.latency),
            by_request: self
                .by_request
                .iter()
                .map(|(k, h)| (k.clone(), Percentiles::of(h)))
                .collect(),
            per_second: self.per_second.iter().map(Percentiles::of).collect(),
            spectrum: SPECTRUM
                .iter()
                .map(|&q| (q * 100.0, ms(self.latency.value_at_quantile(q))))
                .collect(),
            in_cluster: Percentiles::of(&self.in_cluster),
            queue: Percentiles::of(&self.queue),
            run: Percentiles::of(&self.run),
            cold_starts: self.cold_starts,
            failovers: 0,
            by_status: self.by_status.clone(),
            by_node: self.by_node.clone(),
            errors: self.errors.clone(),
            lost_examples: self.lost_examples.clone(),
            generator_cpu_seconds: 0.0,
            target_cpu: None,
            module_loads: None,
        }
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Latency percentiles of a set of requests, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// How many.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// A run's summary, as printed and as written to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Requests sent (or due, in open loop).
    pub requests: u64,
    /// Requests answered (any status).
    pub answered: u64,
    /// Wall-clock length of the measured part of the run.
    pub seconds: f64,
    /// Answers per second.
    pub throughput: f64,
    /// Latency of every answer.
    pub latency: Percentiles,
    /// Latency per scenario request.
    pub by_request: BTreeMap<String, Percentiles>,
    /// Latency per second of the run, by completion time.
    pub per_second: Vec<Percentiles>,
    /// (percentile, latency ms) pairs of the whole run, for plots.
    pub spectrum: Vec<(f64, f64)>,
    /// Time answers spent in the cluster, as the gateway measured it (`server-timing:
    /// total`): what is left of the latency is the client's and the network's.
    pub in_cluster: Percentiles,
    /// Time answers waited in a node's queue (`server-timing: queue`).
    pub queue: Percentiles,
    /// Time the guest ran (`server-timing: run`).
    pub run: Percentiles,
    /// Answers that included a cold start (`server-timing`: `cold` or `deploy` above 0).
    pub cold_starts: u64,
    /// Answers by status class (`2xx`, ...).
    pub by_status: BTreeMap<String, u64>,
    /// Answers by serving node.
    pub by_node: BTreeMap<String, u64>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// The first request lost of each error kind that had no answer (connect, stream,
    /// timeout): what each gateway it was sent to said.
    pub lost_examples: BTreeMap<String, String>,
    /// CPU time the load generator itself used over the measured window, in seconds.
    pub generator_cpu_seconds: f64,
    /// CPU time the process of [`crate::Scenario::cpu_of`] used over the same window,
    /// by thread group.
    pub target_cpu: Option<CpuByThread>,
    /// Requests sent again to another gateway after theirs was lost (`--failover`).
    pub failovers: u64,
    /// Module loads on the cluster's nodes during the run (`compare`, on a cluster it
    /// started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_loads: Option<ModuleLoads>,
}

/// How nodes loaded modules they lacked in memory, over a run: summed over the nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ModuleLoads {
    /// Compiled from the module.
    pub compiles: u64,
    /// Artifacts fetched from another node.
    pub fetched: u64,
    /// Artifacts deserialized from the node's own disk.
    pub from_disk: u64,
}

impl ModuleLoads {
    /// The loads that `/metrics` text of one node counts
    /// (`edge_node_module_cache_misses_total{source=…}`).
    pub fn of_metrics(text: &str) -> ModuleLoads {
        let count = |source: &str| {
            let line = format!("edge_node_module_cache_misses_total{{source=\"{source}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&line)?.trim().parse::<f64>().ok())
                .map_or(0, |v| v as u64)
        };
        ModuleLoads {
            compiles: count("compile"),
            fetched: count("peer"),
            from_disk: count("disk"),
        }
    }

    /// `self` and `other` together.
    pub fn plus(self, other: ModuleLoads) -> ModuleLoads {
        ModuleLoads {
            compiles: self.compiles + other.compiles,
            fetched: self.fetched + other.fetched,
            from_disk: self.from_disk + other.from_disk,
        }
    }

    /// What was counted after `before` (counters only grow, unless a node restarted).
    pub fn since(self, before: ModuleLoads) -> ModuleLoads {
        ModuleLoads {
            compiles: self.compiles.saturating_sub(before.compiles),
            fetched: self.fetched.saturating_sub(before.fetched),
            from_disk: self.from_disk.saturating_sub(before.from_disk),
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "requests   {} in {:.2} s, {} answered: {:.0} req/s",
            self.requests, self.seconds, self.answered, self.throughput
        )?;
        writeln!(
            f,
            "{:<18} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        )?;
        let row = |f: &mut std::fmt::Formatter<'_>, name: &str, p: &Percentiles| {
            writeln!(
                f,
                "{name:<18} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
            )
        };
        row(f, "all", &self.latency)?;
        if self.by_request.len() > 1 {
            for (name, p) in &self.by_request {
                row(f, &format!("  {name}"), p)?;
            }
        }
        row(f, "in the cluster", &self.in_cluster)?;
        row(f, "node queue", &self.queue)?;
        row(f, "guest run", &self.run)?;
        writeln!(f, "cold starts {}", self.cold_starts)?;
        writeln!(f, "status     {:?}", self.by_status)?;
        writeln!(f, "nodes      {:?}", self.by_node)?;
        writeln!(f, "errors     {:?}", self.errors)?;
        for (kind, why) in &self.lost_examples {
            writeln!(f, "  first {kind}: {why}")?;
        }
        write!(
            f,
            "generator  {:.2} s of CPU ({:.2} cores)",
            self.generator_cpu_seconds,
            self.generator_cpu_seconds / self.seconds.max(1e-9)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(request: &str, ms: u64, status: u16) -> Answer<'_> {
        Answer {
            request,
            latency: Duration::from_millis(ms),
            at: Duration::from_millis(ms),
            status: http::StatusCode::from_u16(status).unwrap(),
            node: Some("node-1"),
            refused: None,
            timing: None,
            expected: status == 200,
        }
    }

    #[test]
    fn percentiles_and_counts_match_hand_computed_values() {
        let mut t = Tally::new();
        for ms in 1..=100u64 {
            t.answer(&answer("hello", ms, 200));
        }
        let mut refused = answer("fib", 1000, 503);
        refused.node = Some("node-2");
        refused.refused = Some("overloaded");
        refused.timing = Some("cold;dur=0, queue;dur=250.0, run;dur=0.5, total;dur=900");
        t.answer(&refused);
        t.lost(ErrorKind::Timeout, "no answer within 1s");
        let r = t.report(Duration::from_secs(2));
        assert_eq!((r.requests, r.answered), (102, 101));
        assert!((r.throughput - 50.5).abs() < 1e-9);
        // 101 samples: the median is the 51st (51 ms), p99 the 100th (100 ms).
        assert!(
            (r.latency.p50_ms - 51.0).abs() < 0.1,
            "{}",
            r.latency.p50_ms
        );
        assert!(
            (r.latency.p99_ms - 100.0).abs() < 0.1,
            "{}",
            r.latency.p99_ms
        );
        assert!(
            (r.latency.max_ms - 1000.0).abs() < 1.0,
            "{}",
            r.latency.max_ms
        );
        assert_eq!(r.by_request["hello"].count, 100);
        assert!((r.by_request["fib"].p50_ms - 1000.0).abs() < 1.0);
        assert_eq!(r.by_status["2xx"], 100);
        assert_eq!(r.by_status["5xx"], 1);
        assert_eq!(r.by_node["node-2"], 1);
        assert_eq!(r.errors["timeout"], 1);
        assert_eq!(r.lost_examples["timeout"], "no answer within 1s");
        assert!(!r.lost_examples.contains_key("refused"));
        assert_eq!(r.errors["refused"], 1);
        assert_eq!(r.cold_starts, 0);
        assert!((r.queue.p50_ms - 250.0).abs() < 0.5);
        assert!((r.run.p50_ms - 0.5).abs() < 0.01);
        assert!((r.in_cluster.p50_ms - 900.0).abs() < 1.0);
        assert_eq!((r.queue.count, r.run.count, r.in_cluster.count), (1, 1, 1));
        // Completion times spread over the first two seconds.
        assert_eq!(r.per_second.len(), 2);
        assert_eq!(r.per_second[0].count, 100);
        assert_eq!(r.spectrum.first().map(|p| p.0), Some(0.0));
        assert_eq!(r.spectrum.last().map(|p| p.0), Some(100.0));
    }

    #[test]
    fn cold_starts_come_from_server_timing() {
        let mut t = Tally::new();
        let mut a = answer("hello", 5, 200);
        a.timing = Some("deploy;dur=12.5, cold;dur=3.1, queue;dur=0");
        t.answer(&a);
        a.timing = Some("deploy;dur=0, cold;dur=0, queue;dur=0");
        t.answer(&a);
        assert_eq!(t.report(Duration::from_secs(1)).cold_starts, 1);
    }

    #[test]
    fn module_loads_are_read_from_a_nodes_metrics_and_counted_over_a_run() {
        let metrics = |compile, peer| {
            format!(
                "# TYPE edge_node_module_cache_misses counter\n\
                 edge_node_module_cache_misses_total{{source=\"compile\"}} {compile}\n\
                 edge_node_module_cache_misses_total{{source=\"disk\"}} 2\n\
                 edge_node_module_cache_misses_total{{source=\"peer\"}} {peer}\n\
                 edge_node_warming 0\n"
            )
        };
        let before = ModuleLoads::of_metrics(&metrics(3, 0));
        assert_eq!(
            before,
            ModuleLoads {
                compiles: 3,
                fetched: 0,
                from_disk: 2
            }
        );
        let after = ModuleLoads::of_metrics(&metrics(4, 7)).plus(ModuleLoads::of_metrics(""));
        let run = after.since(before);
        assert_eq!((run.compiles, run.fetched, run.from_disk), (1, 7, 0));
    }
}
