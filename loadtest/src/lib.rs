//! `edge-loadtest`: an HTTP/3 load generator for edge clusters.
//!
//! [`run`] opens `connections` QUIC connections and keeps `streams` requests in flight on
//! each (closed loop) until the duration or the request budget is spent, recording every
//! latency in an HdrHistogram; [`Report`] summarizes what came back: throughput,
//! percentiles, answers by status class and by node (`x-edge-node`), errors by kind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use hdrhistogram::Histogram;
use serde::Serialize;

pub mod cpu;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where to connect.
    pub addr: SocketAddr,
    /// TLS server name (and `:authority` host).
    pub server_name: String,
    /// Request URL.
    pub url: http::Uri,
    /// QUIC connections.
    pub connections: usize,
    /// Requests in flight per connection.
    pub streams: usize,
    /// How long to run at most.
    pub duration: Duration,
    /// Most requests to send in all.
    pub max_requests: u64,
    /// Extra request headers.
    pub headers: http::HeaderMap,
}

/// Everything one run observed.
#[derive(Debug)]
pub struct Tally {
    latency_us: Histogram<u64>,
    by_status: BTreeMap<String, u64>,
    by_node: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    /// An empty tally.
    pub fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds"),
            by_status: BTreeMap::new(),
            by_node: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    /// Records an answer.
    pub fn answer(&mut self, latency: Duration, status: http::StatusCode, node: Option<&str>) {
        self.latency_us
            .saturating_record(latency.as_micros().max(1) as u64);
        *self
            .by_status
            .entry(format!("{}xx", status.as_u16() / 100))
            .or_default() += 1;
        *self
            .by_node
            .entry(node.unwrap_or("-").to_string())
            .or_default() += 1;
    }

    /// Records a request that got no answer.
    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    /// Adds another tally's counts.
    pub fn merge(&mut self, other: &Tally) {
        self.latency_us
            .add(&other.latency_us)
            .expect("same histogram bounds");
        for (map, from) in [
            (&mut self.by_status, &other.by_status),
            (&mut self.by_node, &other.by_node),
            (&mut self.errors, &other.errors),
        ] {
            for (k, v) in from {
                *map.entry(k.clone()).or_default() += v;
            }
        }
    }

    /// The summary of this tally over `elapsed`.
    pub fn report(&self, elapsed: Duration) -> Report {
        let answered = self.latency_us.len();
        let ms = |q: f64| self.latency_us.value_at_quantile(q) as f64 / 1000.0;
        Report {
            requests: answered + self.errors.values().sum::<u64>(),
            answered,
            seconds: elapsed.as_secs_f64(),
            throughput: answered as f64 / elapsed.as_secs_f64().max(1e-9),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: self.latency_us.max() as f64 / 1000.0,
            by_status: self.by_status.clone(),
            by_node: self.by_node.clone(),
            errors: self.errors.clone(),
        }
    }
}

impl Default for Tally {
    fn default() -> Tally {
        Tally::new()
    }
}

/// A run's summary, as printed and as written to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Requests sent.
    pub requests: u64,
    /// Requests answered (any status).
    pub answered: u64,
    /// Wall-clock length of the run.
    pub seconds: f64,
    /// Answers per second.
    pub throughput: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Answers by status class (`2xx`, ...).
    pub by_status: BTreeMap<String, u64>,
    /// Answers by serving node.
    pub by_node: BTreeMap<String, u64>,
    /// Requests without an answer, by kind.
    pub errors: BTreeMap<String, u64>,
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
            "latency    p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms
        )?;
        writeln!(f, "status     {:?}", self.by_status)?;
        writeln!(f, "nodes      {:?}", self.by_node)?;
        write!(f, "errors     {:?}", self.errors)
    }
}

/// Runs `plan` with `tls` and returns the summary.
pub async fn run(plan: &Plan, tls: rustls::ClientConfig) -> anyhow::Result<Report> {
    let crypto = Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?);
    let local: SocketAddr = if plan.addr.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let budget = Arc::new(AtomicU64::new(plan.max_requests));
    let started = Instant::now();
    let deadline = started + plan.duration;
    let mut loops = Vec::new();
    let mut endpoints = Vec::new();
    for _ in 0..plan.connections {
        let mut endpoint = quinn::Endpoint::client(local)?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(crypto.clone()));
        let conn = endpoint.connect(plan.addr, &plan.server_name)?.await?;
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        for _ in 0..plan.streams {
            let request = http::Request::get(plan.url.clone()).body(()).map(|mut r| {
                *r.headers_mut() = plan.headers.clone();
                r
            })?;
            let (sender, budget) = (sender.clone(), Arc::clone(&budget));
            loops.push(tokio::spawn(request_loop(
                sender, request, budget, deadline,
            )));
        }
        endpoints.push(endpoint);
    }
    let mut tally = Tally::new();
    for task in loops {
        tally.merge(&task.await?);
    }
    let elapsed = started.elapsed();
    for endpoint in endpoints {
        endpoint.close(0u32.into(), b"done");
    }
    Ok(tally.report(elapsed))
}

async fn request_loop(
    mut sender: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    template: http::Request<()>,
    budget: Arc<AtomicU64>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::new();
    while Instant::now() < deadline
        && budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    {
        let sent = Instant::now();
        let mut request = http::Request::new(());
        *request.method_mut() = template.method().clone();
        *request.uri_mut() = template.uri().clone();
        *request.headers_mut() = template.headers().clone();
        let outcome = tokio::time::timeout_at((deadline + Duration::from_secs(10)).into(), async {
            let mut stream = sender.send_request(request).await?;
            stream.finish().await?;
            let head = stream.recv_response().await?;
            while let Some(mut chunk) = stream.recv_data().await? {
                chunk.advance(chunk.remaining());
            }
            Ok::<_, h3::error::StreamError>(head)
        })
        .await;
        match outcome {
            Ok(Ok(head)) => {
                let node = head
                    .headers()
                    .get(edge_shared::wire::NODE_HEADER)
                    .and_then(|v| v.to_str().ok());
                tally.answer(sent.elapsed(), head.status(), node);
            }
            Ok(Err(_)) => tally.error("stream"),
            Err(_) => tally.error("timeout"),
        }
    }
    tally
}

/// Parses `250ms`, `10s`, `2m` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration {text:?}: expected a number then ms, s or m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("duration {text:?}: unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_counts_match_hand_computed_values() {
        let mut a = Tally::new();
        for ms in 1..=100u64 {
            a.answer(
                Duration::from_millis(ms),
                http::StatusCode::OK,
                Some("node-1"),
            );
        }
        let mut b = Tally::new();
        b.answer(
            Duration::from_millis(1000),
            http::StatusCode::SERVICE_UNAVAILABLE,
            Some("node-2"),
        );
        b.error("timeout");
        a.merge(&b);
        let r = a.report(Duration::from_secs(2));
        assert_eq!((r.requests, r.answered), (102, 101));
        assert!((r.throughput - 50.5).abs() < 1e-9);
        // 101 samples: the median is the 51st (51 ms), p99 the 100th (100 ms).
        assert!((r.p50_ms - 51.0).abs() < 0.1, "{}", r.p50_ms);
        assert!((r.p99_ms - 100.0).abs() < 0.1, "{}", r.p99_ms);
        assert!((r.max_ms - 1000.0).abs() < 1.0, "{}", r.max_ms);
        assert_eq!(r.by_status["2xx"], 100);
        assert_eq!(r.by_status["5xx"], 1);
        assert_eq!(r.by_node["node-2"], 1);
        assert_eq!(r.errors["timeout"], 1);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
