//! Faults survived under load: a steady open-loop load from `edge-loadtest` runs through
//! the gateway while a node is killed, paused or restarted, and what was lost is
//! reported. For each fault: the requests sent, answered 2xx, failed and retried, the
//! time until the gateway stopped routing to the node, and the time until it was back
//! in the rotation. Each test prints its row (`RELIABILITY | ...`) for RELIABILITY.md
//! (`scripts/reliability.sh` collects them). Idempotent requests (GETs): none may fail.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_cli::cluster::{LocalCluster, bin_dir};
use edge_shared::manifest::Limits;
use support::{function, start, url};

/// The load: requests a second, open loop.
const RATE: u32 = 200;

/// One sample of the gateway's metrics.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    usable: u64,
    retries: u64,
}

/// Samples the gateway's usable nodes and retries every 50 ms until dropped.
struct Watch {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
}

/// The value of the metric line starting with `name ` in `text`.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

fn scrape(at: SocketAddr) -> Option<String> {
    let mut tcp = std::net::TcpStream::connect_timeout(&at, Duration::from_secs(1)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).ok()?;
    Some(text)
}

impl Watch {
    fn start(at: SocketAddr) -> Watch {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (into, stopped) = (Arc::clone(&samples), Arc::clone(&stop));
        std::thread::spawn(move || {
            // Bounded: a test lasts well under ten minutes.
            for _ in 0..12_000 {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(text) = scrape(at) {
                    let usable = metric(&text, "edge_gateway_usable_nodes");
                    let retries = metric(&text, "edge_gateway_retries_total");
                    if let (Some(usable), Some(retries)) = (usable, retries) {
                        let sample = Sample {
                            at: Instant::now(),
                            usable,
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
    fn first(&self, after: Instant, check: impl Fn(&Sample) -> bool) -> Option<Sample> {
        let samples = self.samples.lock().unwrap();
        samples.iter().find(|s| s.at >= after && check(s)).copied()
    }

    /// Waits at most `within` until a sample from now on has `usable` nodes.
    fn wait_usable(&self, usable: u64, within: Duration) -> Instant {
        let from = Instant::now();
        assert!(
            support::wait_for(within, || self
                .first(from, |s| s.usable == usable)
                .is_some()),
            "the gateway did not reach {usable} usable nodes within {within:?}"
        );
        self.first(from, |s| s.usable == usable).unwrap().at
    }

    fn retries(&self) -> u64 {
        self.samples.lock().unwrap().last().map_or(0, |s| s.retries)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An `edge-loadtest` run in the background.
struct Load {
    child: Child,
    report: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Load {
    fn start(cluster: &LocalCluster, seconds: u64) -> Load {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("report.json");
        let child = Command::new(bin_dir().unwrap().join("edge-loadtest"))
            .arg(url(cluster, "/hello"))
            .args(["--rate", &RATE.to_string(), "--connections", "4"])
            .args(["--duration", &format!("{seconds}s"), "--quiet"])
            .arg("--ca")
            .arg(&cluster.certs().ca)
            .arg("--json")
            .arg(&report)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Load {
            child,
            report,
            _dir: dir,
        }
    }

    /// Waits for the run to end: (requests, answered 2xx, p99 and max latency in ms).
    fn finish(mut self) -> (u64, u64, f64, f64) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "edge-loadtest exited {status}");
        let runs: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&self.report).unwrap()).unwrap();
        // The report holds one run per target; this load has one.
        let report = runs.as_object().unwrap().values().next().unwrap().clone();
        let requests = report["requests"].as_u64().unwrap();
        let ok = report["by_status"]["2xx"].as_u64().unwrap_or(0);
        eprintln!(
            "load: by node {}, latency {}",
            report["by_node"], report["latency"]
        );
        let latency = |p: &str| report["latency"][p].as_f64().unwrap_or(0.0);
        (requests, ok, latency("p99_ms"), latency("max_ms"))
    }
}

/// What one fault cost.
struct Row<'a> {
    fault: &'a str,
    /// (requests, answered 2xx, p99 and max latency in ms).
    load: (u64, u64, f64, f64),
    retried: u64,
    detect: Option<Duration>,
    back: Option<Duration>,
}

impl Row<'_> {
    /// Prints the row for RELIABILITY.md and checks that no request failed.
    fn report(&self) {
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

/// The node (0-based) that answered the most requests so far: the one whose loss the
/// load feels.
fn busiest_node(cluster: &LocalCluster) -> usize {
    let text = scrape(cluster.gateway_metrics_addrs().unwrap()[0]).unwrap();
    let answered = |i: usize| -> u64 {
        let node = format!("node=\"node-{}\"", i + 1);
        text.lines()
            .filter(|l| l.starts_with("edge_gateway_requests_total{") && l.contains(&node))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    };
    let busiest = (0..3).max_by_key(|&i| answered(i)).unwrap();
    assert!(answered(busiest) > 0, "no node answered yet");
    busiest
}

/// A cluster of three nodes serving `hello`, warm on all of them, and its watch.
fn cluster() -> (LocalCluster, tempfile::TempDir, Watch) {
    let (cluster, dir) = start(3, vec![function("hello", Limits::default())]);
    let watch = Watch::start(cluster.gateway_metrics_addrs().unwrap()[0]);
    watch.wait_usable(3, Duration::from_secs(20));
    (cluster, dir, watch)
}

#[test]
fn a_node_killed_under_load_loses_no_request() {
    let (mut cluster, _dir, watch) = cluster();
    let load = Load::start(&cluster, 12);
    std::thread::sleep(Duration::from_secs(3));
    let retries = watch.retries();
    let node = busiest_node(&cluster);
    let killed = Instant::now();
    cluster.kill_node(node);
    std::thread::sleep(Duration::from_secs(4));
    let revived = Instant::now();
    cluster.restart_node(node).unwrap();
    let back = watch.wait_usable(3, Duration::from_secs(20));
    let load = load.finish();
    let detect = watch.first(killed, |s| s.usable < 3).map(|s| s.at - killed);
    Row {
        fault: "node SIGKILL, restarted 4 s later",
        load,
        retried: watch.retries() - retries,
        detect,
        back: Some(back - revived),
    }
    .report();
}

#[test]
fn a_node_paused_for_10_s_under_load_loses_no_request() {
    let (cluster, _dir, watch) = cluster();
    let load = Load::start(&cluster, 18);
    std::thread::sleep(Duration::from_secs(3));
    let retries = watch.retries();
    let pid = cluster.node_pid(busiest_node(&cluster)).to_string();
    let paused = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_secs(10));
    let resumed = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let back = watch.wait_usable(3, Duration::from_secs(20));
    let load = load.finish();
    let detect = watch.first(paused, |s| s.usable < 3).map(|s| s.at - paused);
    Row {
        fault: "node SIGSTOP 10 s, then SIGCONT",
        load,
        retried: watch.retries() - retries,
        detect,
        back: Some(back - resumed),
    }
    .report();
}

#[test]
fn a_rolling_restart_of_every_node_under_load_loses_no_request() {
    let (mut cluster, _dir, watch) = cluster();
    let load = Load::start(&cluster, 30);
    std::thread::sleep(Duration::from_secs(3));
    let retries = watch.retries();
    let started = Instant::now();
    let mut detect = Duration::ZERO;
    for i in 0..3 {
        let stopping = Instant::now();
        cluster.terminate_node(i);
        assert!(
            cluster.wait_node(i, Duration::from_secs(30)).is_some(),
            "node {i} did not exit"
        );
        if let Some(s) = watch.first(stopping, |s| s.usable < 3) {
            detect = detect.max(s.at - stopping);
        }
        cluster.restart_node(i).unwrap();
        watch.wait_usable(3, Duration::from_secs(20));
    }
    let took = started.elapsed();
    let load = load.finish();
    Row {
        fault: "rolling restart of 3 nodes (SIGTERM, restart, next)",
        load,
        retried: watch.retries() - retries,
        detect: Some(detect),
        back: Some(took),
    }
    .report();
}
