//! Load and watch for the fault tests: an open-loop `edge-loadtest` run in the
//! background (in a network namespace if asked), the gateway's usable nodes and retries
//! sampled every 50 ms, and the row each fault prints for RELIABILITY.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_cli::cluster::bin_dir;

/// The load: requests a second, open loop.
pub const RATE: u32 = 200;

/// One sample of the gateway's metrics.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub usable: u64,
    /// Nodes the gateway failed to reach moments ago.
    pub failing: u64,
    pub retries: u64,
}

/// The value of the unlabelled metric `name` in `text`.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The requests node `i` (0-based) answered, as the gateway's metrics `text` say.
pub fn answered_by(text: &str, i: usize) -> u64 {
    let node = format!("node=\"node-{}\"", i + 1);
    text.lines()
        .filter(|l| l.starts_with("edge_gateway_requests_total{") && l.contains(&node))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The node (0-based, of `nodes`) the gateway's metrics `text` say answered the most.
pub fn busiest_node(text: &str, nodes: usize) -> usize {
    let busiest = (0..nodes).max_by_key(|&i| answered_by(text, i)).unwrap();
    assert!(answered_by(text, busiest) > 0, "no node answered yet");
    busiest
}

/// Samples the gateway's usable nodes and retries every 50 ms until dropped.
pub struct Watch {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
}

impl Watch {
    /// Samples what `scrape` returns (the gateway's metrics text).
    pub fn start(scrape: impl Fn() -> Option<String> + Send + 'static) -> Watch {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (into, stopped) = (Arc::clone(&samples), Arc::clone(&stop));
        std::thread::spawn(move || {
            // Bounded: a test lasts well under ten minutes.
            for _ in 0..12_000 {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(text) = scrape() {
                    let usable = metric(&text, "edge_gateway_usable_nodes");
                    let failing = metric(&text, "edge_gateway_failing_nodes");
                    let retries = metric(&text, "edge_gateway_retries_total");
                    if let (Some(usable), Some(failing), Some(retries)) = (usable, failing, retries)
                    {
                        let sample = Sample {
                            at: Instant::now(),
                            usable,
                            failing,
                            retries,
                        };
                        into.lock().unwrap().push(sample);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Watch { samples, stop }
    }

    /// The first sample from `after` on for which `check` holds.
    pub fn first(&self, after: Instant, check: impl Fn(&Sample) -> bool) -> Option<Sample> {
        let samples = self.samples.lock().unwrap();
        samples.iter().find(|s| s.at >= after && check(s)).copied()
    }

    /// Waits at most `within` until a sample from now on has `usable` nodes.
    pub fn wait_usable(&self, usable: u64, within: Duration) -> Instant {
        let from = Instant::now();
        assert!(
            super::wait_for(within, || self
                .first(from, |s| s.usable == usable)
                .is_some()),
            "the gateway did not reach {usable} usable nodes within {within:?}"
        );
        self.first(from, |s| s.usable == usable).unwrap().at
    }

    /// The gateway's retries so far.
    pub fn retries(&self) -> u64 {
        self.samples.lock().unwrap().last().map_or(0, |s| s.retries)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Where a load goes.
pub struct Target {
    /// `https://localhost:PORT/hello`.
    pub url: String,
    /// The address to connect to instead of the URL's host.
    pub connect: Option<SocketAddr>,
    /// The CA to trust.
    pub ca: PathBuf,
    /// The network namespace to run the load tester in.
    pub netns: Option<String>,
    /// Other gateways to fail over to (`edge-loadtest --failover`).
    pub failover: Vec<SocketAddr>,
}

/// An `edge-loadtest` run in the background.
pub struct Load {
    child: Child,
    report: PathBuf,
    _dir: tempfile::TempDir,
}

impl Load {
    /// `RATE` requests a second to `target` for `seconds`.
    pub fn start(target: &Target, seconds: u64) -> Load {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("report.json");
        let exe = bin_dir().unwrap().join("edge-loadtest");
        let mut command = match &target.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        command
            .arg(&target.url)
            .args(["--rate", &RATE.to_string(), "--connections", "4"])
            .args(["--duration", &format!("{seconds}s"), "--quiet"])
            .arg("--ca")
            .arg(&target.ca)
            .arg("--json")
            .arg(&report);
        if let Some(at) = target.connect {
            command.arg("--connect").arg(at.to_string());
        }
        for at in &target.failover {
            command.arg("--failover").arg(at.to_string());
        }
        let child = command.stdout(Stdio::null()).spawn().unwrap();
        Load {
            child,
            report,
            _dir: dir,
        }
    }

    /// Waits for the run to end: (requests, answered 2xx, p99 and max latency in ms).
    pub fn finish(self) -> (u64, u64, f64, f64) {
        self.finish_counting_failovers().0
    }

    /// [`Load::finish`], and the requests the load tester sent again to another
    /// gateway.
    pub fn finish_counting_failovers(mut self) -> ((u64, u64, f64, f64), u64) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "edge-loadtest exited {status}");
        let runs: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&self.report).unwrap()).unwrap();
        // The report holds one run per target; this load has one.
        let report = runs.as_object().unwrap().values().next().unwrap().clone();
        let requests = report["requests"].as_u64().unwrap();
        let ok = report["by_status"]["2xx"].as_u64().unwrap_or(0);
        eprintln!(
            "load: by node {}, latency {}, errors {}, first lost {}",
            report["by_node"], report["latency"], report["errors"], report["lost_examples"]
        );
        let latency = |p: &str| report["latency"][p].as_f64().unwrap_or(0.0);
        let failovers = report["failovers"].as_u64().unwrap_or(0);
        (
            (requests, ok, latency("p99_ms"), latency("max_ms")),
            failovers,
        )
    }
}

/// What one fault cost.
pub struct Row<'a> {
    pub fault: &'a str,
    /// (requests, answered 2xx, p99 and max latency in ms).
    pub load: (u64, u64, f64, f64),
    pub retried: u64,
    pub detect: Option<Duration>,
    pub back: Option<Duration>,
}

impl Row<'_> {
    /// Prints the row for RELIABILITY.md and checks that no request failed.
    pub fn report(&self) {
        let ms =
            |d: Option<Duration>| d.map_or_else(|| "-".into(), |d| format!("{} ms", d.as_millis()));
        let (requests, ok, p99, max) = self.load;
        let failed = requests - ok;
        println!(
            "RELIABILITY | {} | {RATE} req/s | {requests} | {failed} | {} | {} | {} | {p99:.1} ms | {max:.0} ms |",
            self.fault,
            self.retried,
            ms(self.detect),
            ms(self.back)
        );
        assert!(requests >= u64::from(RATE), "{requests} requests sent");
        assert_eq!(
            failed, 0,
            "{}: {failed} of {requests} requests failed",
            self.fault
        );
    }
}
