//! Drives a [`Scenario`] over HTTP/3: closed loop (a fixed number in flight) or open loop
//! (requests sent at scheduled times, latency counted from each scheduled time so that a
//! stalled server shows up as latency instead of hiding it: the coordinated-omission
//! correction wrk2 made well known).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Buf;
use edge_net::client::{self, Sender};
use edge_net::quic;
use tokio::time::Instant;

use crate::cpu::CpuByThread;
use crate::scenario::{Load, Mix, RequestSpec, Scenario};
use crate::tally::{Answer, ErrorKind, Report, Tally};

/// Most requests an open loop keeps in flight; a request due beyond it is counted as
/// `not-sent` (the generator, or the server, cannot keep up).
pub const MAX_IN_FLIGHT: usize = 20_000;

/// When each request of an open loop is due: `rate` per second through the warm-up,
/// then ramping linearly to `ramp_to` over the measured part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Starting rate.
    pub rate: f64,
    /// Final rate.
    pub ramp_to: f64,
    /// Warm-up length.
    pub warmup: Duration,
    /// Measured length.
    pub duration: Duration,
}

impl Schedule {
    /// The send time of request `i` (from 0) after the start, `None` past the end.
    pub fn due(&self, i: u64) -> Option<Duration> {
        let i = i as f64;
        let in_warmup = self.rate * self.warmup.as_secs_f64();
        let t = if i < in_warmup {
            i / self.rate
        } else {
            let n = i - in_warmup;
            let length = self.duration.as_secs_f64();
            // n = rate·t + (ramp_to − rate)·t² / (2·length), solved for t.
            let a = (self.ramp_to - self.rate) / (2.0 * length);
            let t = if a.abs() < 1e-12 {
                n / self.rate
            } else {
                (-self.rate + (self.rate * self.rate + 4.0 * a * n).sqrt()) / (2.0 * a)
            };
            // Also catches NaN (a rate that cannot reach n within the run).
            if t.is_nan() || t >= length {
                return None;
            }
            self.warmup.as_secs_f64() + t
        };
        Some(Duration::from_secs_f64(t))
    }
}

/// The latency of an answer completed at `completed` for a request due at `due`
/// (open loop) or sent at `due` (closed loop).
pub fn latency(due: Instant, completed: Instant) -> Duration {
    completed.saturating_duration_since(due)
}

/// Shared state of one run.
struct Run {
    requests: Vec<RequestSpec>,
    mix: Mutex<Mix>,
    tally: Mutex<Tally>,
    measure_from: Instant,
    end: Instant,
    timeout: Duration,
    budget: AtomicU64,
    in_flight: AtomicUsize,
    stop: Arc<AtomicBool>,
    /// Requests sent again to another gateway.
    failovers: AtomicU64,
}

/// One client's way to the cluster: a connection to each gateway (and its address),
/// its own first.
#[derive(Clone)]
struct Route(Vec<(std::net::SocketAddr, Sender)>);

impl Run {
    fn tally(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pick(&self) -> usize {
        self.mix
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_index()
    }

    fn over(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.end
    }

    /// Sends request `which`, due at `due`, and records what came of it (only if due
    /// in the measured part).
    async fn exchange(&self, route: &mut Route, which: usize, due: Instant) {
        let spec = &self.requests[which];
        // Lost with its gateway: no connection, or the stream broke.
        let lost = |o: &Result<Result<_, Failure>, _>| match o {
            Ok(Err(failure)) => matches!(failure.kind, ErrorKind::Connect | ErrorKind::Stream),
            _ => false,
        };
        let ((gateway, first), others) = route.0.split_first_mut().expect("a connection");
        let mut outcome = tokio::time::timeout(self.timeout, send(first, spec)).await;
        // What each gateway tried said, for the report's example of a lost request.
        let mut tried = Vec::new();
        // Its gateway lost: an idempotent request goes to the next one, within the
        // same timeout.
        if spec.method.is_idempotent() {
            let mut gateway = *gateway;
            for (next, sender) in others {
                if !lost(&outcome) {
                    break;
                }
                if let Ok(Err(failure)) = &outcome {
                    tried.push(format!("{gateway}: {failure}"));
                }
                gateway = *next;
                if due >= self.measure_from {
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                }
                let left = self.timeout.saturating_sub(due.elapsed());
                outcome = tokio::time::timeout(left, send(sender, spec)).await;
            }
        }
        if due < self.measure_from {
            return;
        }
        let completed = Instant::now();
        let mut tally = self.tally();
        match outcome {
            Ok(Ok(head)) => {
                let header = |name: &str| head.headers().get(name).and_then(|v| v.to_str().ok());
                tally.answer(&Answer {
                    request: &spec.name,
                    latency: latency(due, completed),
                    at: completed.saturating_duration_since(self.measure_from),
                    status: head.status(),
                    node: header(edge_shared::wire::NODE_HEADER),
                    refused: header(edge_shared::wire::REFUSED_HEADER),
                    timing: header("server-timing"),
                    expected: spec.expect.is_none_or(|s| s == head.status()),
                });
            }
            Ok(Err(failure)) => {
                tried.push(failure.to_string());
                tally.lost(failure.kind, &tried.join("; then "));
            }
            Err(_) => {
                tried.push(format!("no answer within {:?}", self.timeout));
                tally.lost(ErrorKind::Timeout, &tried.join("; then "));
            }
        }
    }
}

/// Why one exchange got no answer: its kind, and what the client library said.
#[derive(Debug)]
struct Failure {
    kind: ErrorKind,
    reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.reason)
    }
}

/// Sends one request and reads its whole answer.
async fn send(sender: &mut Sender, spec: &RequestSpec) -> Result<http::Response<()>, Failure> {
    let mut request = http::Request::new(());
    *request.method_mut() = spec.method.clone();
    *request.uri_mut() = spec.uri.clone();
    *request.headers_mut() = spec.headers.clone();
    let (head, mut stream) = client::exchange(sender, request, spec.body.clone())
        .await
        .map_err(|e| Failure {
            kind: if e.sent {
                ErrorKind::Stream
            } else {
                ErrorKind::Connect
            },
            reason: e.reason,
        })?;
    loop {
        match stream.recv_data().await {
            Ok(Some(mut chunk)) => chunk.advance(chunk.remaining()),
            Ok(None) => return Ok(head),
            Err(e) => {
                return Err(Failure {
                    kind: ErrorKind::Stream,
                    reason: format!("reading the body: {e}"),
                });
            }
        }
    }
}

/// Whether `addr` may be loaded: a loopback address, or a private IPv4 address on a
/// subnet this host is directly on while it has no default route: a test host in a
/// network namespace (made with `ip netns`) that reaches nothing beyond its own subnets.
fn may_load(addr: std::net::SocketAddr) -> bool {
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        return addr.ip().is_loopback();
    };
    if ip.is_loopback() {
        return true;
    }
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    // (destination, mask) of each route, as the kernel writes them (hex, in memory order).
    let routes: Vec<(u32, u32)> = routes
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| u32::from_str_radix(fields.get(i)?, 16).ok();
            Some((hex(1)?, hex(7)?))
        })
        .collect();
    let target = u32::from_ne_bytes(ip.octets());
    let default_route = routes.iter().any(|&(_, mask)| mask == 0);
    let on_subnet = routes.iter().any(|&(dest, mask)| target & mask == dest);
    ip.is_private() && on_subnet && !default_route
}

/// Runs `scenario` with `tls` until its end or until `stop` is set (then what was
/// measured so far is reported). Prints a progress line a second on stderr when
/// `progress`.
pub async fn run(
    scenario: &Scenario,
    tls: rustls::ClientConfig,
    stop: Arc<AtomicBool>,
    progress: bool,
) -> anyhow::Result<Report> {
    let addr = scenario.addr()?;
    anyhow::ensure!(
        may_load(addr),
        "{addr} is not a loopback address: this tool only loads servers on this machine (or, run inside a network namespace of its own, test hosts on a private subnet there)"
    );
    let connections = match scenario.load {
        Load::Closed { connections, .. } | Load::Open { connections, .. } => connections,
    };
    let gateways: Vec<std::net::SocketAddr> = std::iter::once(addr)
        .chain(scenario.failover.iter().copied())
        .collect();
    for &gateway in &gateways[1..] {
        anyhow::ensure!(
            may_load(gateway),
            "--failover {gateway}: not a loopback address"
        );
    }
    let transport = if gateways.len() > 1 {
        &quic::WATCHFUL_CLIENT
    } else {
        &quic::CLIENT
    };
    let mut endpoints = Vec::new();
    let mut senders = Vec::new();
    for c in 0..connections {
        // One endpoint (one UDP socket) a client, as separate clients would have; its
        // own gateway the next in turn, so the clients spread over the gateways.
        let endpoint = quic::client(quic::any_local(addr), tls.clone(), transport)?;
        let mut route = Vec::new();
        for k in 0..gateways.len() {
            let gateway = gateways[(c + k) % gateways.len()];
            let (sender, _) =
                client::connect(&endpoint, gateway, &scenario.server_name, |_| {}).await?;
            route.push((gateway, sender));
        }
        senders.push(Route(route));
        endpoints.push(endpoint);
    }
    let start = Instant::now();
    // The generator's own CPU time over the measured window, and the watched
    // process's: sampled as it starts and after the last answer.
    let measure_from = start + scenario.warmup;
    let cpu_of = scenario.cpu_of;
    let cpu_at_measure = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from).await;
        (own_cpu_seconds(), cpu_of.map(CpuByThread::sample))
    });
    let run = Arc::new(Run {
        requests: scenario.requests.clone(),
        mix: Mutex::new(Mix::new(scenario.requests.iter().map(|r| r.weight))),
        tally: Mutex::new(Tally::new()),
        measure_from,
        end: start + scenario.warmup + scenario.duration,
        timeout: scenario.timeout,
        budget: AtomicU64::new(scenario.max_requests),
        in_flight: AtomicUsize::new(0),
        stop,
        failovers: AtomicU64::new(0),
    });
    let reporter = progress.then(|| tokio::spawn(report_progress(Arc::clone(&run))));
    let mut tasks = Vec::new();
    match scenario.load {
        Load::Closed { streams, .. } => {
            for sender in &senders {
                for _ in 0..streams {
                    let (run, mut sender) = (Arc::clone(&run), sender.clone());
                    tasks.push(tokio::spawn(async move {
                        while !run.over()
                            && run
                                .budget
                                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok()
                        {
                            let which = run.pick();
                            run.exchange(&mut sender, which, Instant::now()).await;
                        }
                    }));
                }
            }
        }
        Load::Open { rate, ramp_to, .. } => {
            let schedule = Schedule {
                rate,
                ramp_to: ramp_to.unwrap_or(rate),
                warmup: scenario.warmup,
                duration: scenario.duration,
            };
            let run = Arc::clone(&run);
            tasks.push(tokio::spawn(async move {
                let mut in_flight = tokio::task::JoinSet::new();
                let mut i = 0u64;
                while let Some(offset) = schedule.due(i) {
                    if run.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let due = start + offset;
                    tokio::time::sleep_until(due).await;
                    while in_flight.try_join_next().is_some() {}
                    if run.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                        if due >= run.measure_from {
                            run.tally().error(ErrorKind::NotSent);
                        }
                    } else {
                        let which = run.pick();
                        let (run, mut sender) = (
                            Arc::clone(&run),
                            senders[i as usize % senders.len()].clone(),
                        );
                        run.in_flight.fetch_add(1, Ordering::Relaxed);
                        in_flight.spawn(async move {
                            run.exchange(&mut sender, which, due).await;
                            run.in_flight.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    i += 1;
                }
                while in_flight.join_next().await.is_some() {}
            }));
        }
    }
    for task in tasks {
        task.await?;
    }
    // The measured window: to its end, or to the stop.
    let elapsed = Instant::now()
        .min(run.end)
        .saturating_duration_since(run.measure_from)
        .max(Duration::from_millis(1));
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    for endpoint in endpoints {
        endpoint.close(0u32.into(), b"done");
    }
    let mut report = run.tally().report(elapsed);
    report.failovers = run.failovers.load(Ordering::Relaxed);
    let (own_before, target_before) = cpu_at_measure.await?;
    report.generator_cpu_seconds = own_cpu_seconds() - own_before;
    if let (Some(pid), Some(before)) = (cpu_of, target_before) {
        let before = before.with_context(|| format!("reading the CPU time of process {pid}"))?;
        let after = CpuByThread::sample(pid)
            .with_context(|| format!("reading the CPU time of process {pid}"))?;
        report.target_cpu = Some(after.since(&before));
    }
    Ok(report)
}

fn own_cpu_seconds() -> f64 {
    CpuByThread::sample(std::process::id()).map_or(0.0, |c| c.total())
}

/// One line a second on stderr: seconds, answers in that second, errors, p99 so far.
async fn report_progress(run: Arc<Run>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last = 0;
    loop {
        ticker.tick().await;
        let (answered, errors, p99) = {
            let t = run.tally();
            (t.answered(), t.errors(), t.latency_at(0.99))
        };
        let phase = if Instant::now() < run.measure_from {
            "warm-up"
        } else {
            "measuring"
        };
        eprintln!(
            "{phase:>9} {:>6.1} s  {:>8} req/s  errors {errors:<6} p99 {:.2} ms",
            run.measure_from.elapsed().as_secs_f64(),
            answered - last,
            p99.as_secs_f64() * 1e3
        );
        last = answered;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tally::Tally;

    #[test]
    fn an_open_loop_schedule_holds_its_rate_and_ramps() {
        let steady = Schedule {
            rate: 100.0,
            ramp_to: 100.0,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(2),
        };
        assert_eq!(steady.due(0), Some(Duration::ZERO));
        assert_eq!(steady.due(150), Some(Duration::from_millis(1500)));
        assert_eq!(steady.due(199).unwrap().as_millis(), 1990);
        assert_eq!(steady.due(200), None);

        // 100/s ramping to 300/s over 2 s: n(t) = 100·t + 50·t² requests by time t,
        // so request 150 is due at t = 1 s and 400 requests fit in all.
        let ramp = Schedule {
            ramp_to: 300.0,
            ..steady
        };
        assert!((ramp.due(150).unwrap().as_secs_f64() - 1.0).abs() < 1e-9);
        assert!(ramp.due(399).is_some());
        assert_eq!(ramp.due(400), None);

        // A warm-up at the starting rate comes first.
        let warm = Schedule {
            warmup: Duration::from_secs(1),
            ..steady
        };
        assert_eq!(warm.due(50), Some(Duration::from_millis(500)));
        assert_eq!(warm.due(100), Some(Duration::from_secs(1)));
        assert_eq!(warm.due(300), None);
    }

    /// A server that answers in 1 ms but stalls for one second at t = 1 s, loaded at
    /// 100 requests per second for 3 s. Measured from each request's scheduled time,
    /// the ~100 requests due during the stall wait 1000, 990, ..., 10 ms; measured from
    /// when a blocked client finally sent them, they would all look like 1 ms.
    #[test]
    fn latency_counts_from_the_scheduled_time_so_stalls_are_not_hidden() {
        let schedule = Schedule {
            rate: 100.0,
            ramp_to: 100.0,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(3),
        };
        let t0 = Instant::now();
        let stall = (Duration::from_secs(1), Duration::from_secs(2));
        let service = Duration::from_millis(1);
        let mut corrected = Tally::new();
        let mut omitted = Tally::new();
        let mut i = 0;
        while let Some(due) = schedule.due(i) {
            let starts = if due >= stall.0 && due < stall.1 {
                stall.1
            } else {
                due
            };
            let completed = t0 + starts + service;
            for (tally, from) in [(&mut corrected, t0 + due), (&mut omitted, t0 + starts)] {
                tally.answer(&crate::tally::Answer {
                    request: "r",
                    latency: latency(from, completed),
                    at: starts,
                    status: http::StatusCode::OK,
                    node: None,
                    refused: None,
                    timing: None,
                    expected: true,
                });
            }
            i += 1;
        }
        let corrected = corrected.report(Duration::from_secs(3));
        let omitted = omitted.report(Duration::from_secs(3));
        assert_eq!(corrected.answered, 300);
        // 100 of 300 requests hit the stall: waits of 1001, 991, ..., 11 ms. The median
        // of all 300 is 1 ms; the 90th percentile (the 270th smallest) is the 70th
        // smallest stalled one: 11 + 69·10 = 701 ms; the 99th (297th): 11 + 96·10 = 971.
        assert!((corrected.latency.p50_ms - 1.0).abs() < 0.01);
        assert!(
            (corrected.latency.p90_ms - 701.0).abs() < 1.0,
            "{}",
            corrected.latency.p90_ms
        );
        assert!(
            (corrected.latency.p99_ms - 971.0).abs() < 1.0,
            "{}",
            corrected.latency.p99_ms
        );
        assert!((corrected.latency.max_ms - 1001.0).abs() < 1.0);
        // Without the correction the stall vanishes.
        assert!((omitted.latency.max_ms - 1.0).abs() < 0.01);
    }
}
