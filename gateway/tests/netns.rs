//! The cluster across hosts: the gateway, three nodes and a client each in a network
//! namespace of their own with their own address, joined by a bridge (veth pairs, made
//! here as root with `ip netns`). The end-to-end checks run across them, and the faults
//! a network brings run under load: a node cut off from the gateway but not from the
//! other nodes, then the reverse, 100 ms more and 5% loss on a node's link, a throttled
//! link, and healing. Where namespaces cannot be made (not
//! root, no `ip`), each test says so and passes without running.
//!
//! A cut is a route to the peer through a neighbour that does not exist: packets are
//! dropped silently, as on a partition. This kernel has no `netem` (nor `prio` or tc
//! actions), so added latency and loss come from `scripts/netem.py`: the node's packets
//! to its peers are routed into a TUN device, held and dropped there, and sent on.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edge_cli::cluster::{LocalCluster, bin_dir};
use edge_shared::config::Host;
use edge_shared::manifest::Limits;
use support::load::{Load, Row, Target, Watch, answered_by, busiest_node};
use support::{function, start_with};

/// The test hosts' subnet (inside the namespaces only: no route leads there from
/// outside them).
const SUBNET: [u8; 3] = [10, 77, 0];
/// An address on the subnet that no host has: routes through it drop packets.
const NOBODY: u8 = 250;

/// Test hosts: 0 the client, 1 the gateway, 2.. the nodes, each a namespace with
/// `eth0` on a bridge in a namespace of its own. Removed when dropped.
struct Hosts {
    prefix: String,
    count: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    /// `count` hosts, or why they cannot be made here.
    fn make(count: usize) -> Result<Hosts, String> {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "edge{}-{}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        );
        let hosts = Hosts { prefix, count };
        let switch = hosts.switch();
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for i in 0..count {
            let ns = hosts.ns(i);
            let port = format!("p{i}");
            ip(&["netns", "add", &ns])?;
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("{}/24", hosts.addr(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    fn addr(&self, i: usize) -> IpAddr {
        IpAddr::from([SUBNET[0], SUBNET[1], SUBNET[2], 1 + i as u8])
    }

    /// Runs `program args` on host `i`.
    fn exec(&self, i: usize, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(i), program])
            .args(args)
            .output()
            .unwrap()
    }

    /// Drops every packet between hosts `a` and `b`, both ways.
    fn cut(&self, a: usize, b: usize) {
        let nobody = IpAddr::from([SUBNET[0], SUBNET[1], SUBNET[2], NOBODY]).to_string();
        for (from, to) in [(a, b), (b, a)] {
            let to = format!("{}/32", self.addr(to));
            ip(&["-n", &self.ns(from), "route", "add", &to, "via", &nobody]).unwrap();
        }
    }

    /// Undoes [`Hosts::cut`].
    fn heal(&self, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let to = format!("{}/32", self.addr(to));
            ip(&["-n", &self.ns(from), "route", "del", &to]).unwrap();
        }
    }

    /// The gateway's metrics at `at`, scraped from the client's host.
    fn scrape(&self, at: SocketAddr) -> Option<String> {
        scrape_from(&self.ns(0), at)
    }

    /// A watch of the gateway's metrics at `at`, scraped from the client's host.
    fn watch(&self, at: SocketAddr) -> Watch {
        let client = self.ns(0);
        Watch::start(move || scrape_from(&client, at))
    }
}

/// The metrics at `at`, scraped with curl from namespace `ns`.
fn scrape_from(ns: &str, at: SocketAddr) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sf", "--max-time", "2"])
        .arg(format!("http://{at}/metrics"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 0..self.count {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
    }
}

/// Hosts for a gateway and `nodes` nodes, or `None` (said on stderr) where they cannot
/// be made.
fn hosts(nodes: usize) -> Option<Hosts> {
    match Hosts::make(nodes + 2) {
        Ok(hosts) => Some(hosts),
        Err(why) => {
            eprintln!(
                "SKIPPED: network namespaces unavailable here ({why}); run as root with iproute2"
            );
            None
        }
    }
}

/// A cluster with its gateway on host 1 and node i on host i + 2.
fn cluster_on(hosts: &Hosts, nodes: usize) -> (LocalCluster, tempfile::TempDir) {
    start_with(nodes, vec![function("hello", Limits::default())], |spec| {
        spec.hosts = (1..=nodes + 1)
            .map(|i| Host {
                netns: hosts.ns(i),
                addr: hosts.addr(i),
            })
            .collect();
    })
}

/// `https://edge.localhost:PORT/PATH`, with the gateway's address to connect to.
fn user_url(cluster: &LocalCluster, path: &str) -> (String, SocketAddr) {
    let at = cluster.gateway_addr();
    (format!("https://edge.localhost:{}{path}", at.port()), at)
}

#[test]
fn a_cluster_across_hosts_serves_users_over_http3_and_tcp_and_routes_around_a_lost_node() {
    let Some(hosts) = hosts(3) else { return };
    let (mut cluster, _dir) = cluster_on(&hosts, 3);
    let at = cluster.gateway_addr();
    assert_eq!(
        at.ip(),
        hosts.addr(1),
        "the gateway serves on its host's address"
    );
    let metrics = cluster.gateway_metrics_addrs().unwrap()[0];
    let watch = hosts.watch(metrics);
    watch.wait_usable(3, Duration::from_secs(30));

    // HTTP/3 from the client's host, with edge call.
    let (url, _) = user_url(&cluster, "/hello");
    let edge = bin_dir().unwrap().join("edge");
    let ca = cluster.certs().ca.to_string_lossy().to_string();
    let call = |url: &str| {
        hosts.exec(
            0,
            edge.to_str().unwrap(),
            &["call", url, "--ca", &ca, "--connect", &at.to_string()],
        )
    };
    let out = call(&url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello, world!"),
        "{out:?}"
    );
    // HTTP/1.1 and HTTP/2 over TCP, with curl.
    let connect_to = format!("edge.localhost:{}:{}:{}", at.port(), at.ip(), at.port());
    for version in ["--http1.1", "--http2"] {
        let out = hosts.exec(
            0,
            "curl",
            &[
                "-sf",
                version,
                "--cacert",
                &ca,
                "--connect-to",
                &connect_to,
                "-w",
                "\n%{http_version}",
                &url,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("hello, world!"),
            "{version}: {text}"
        );
    }
    // Every node took part: each answers once the others are gone.
    let node_of = |out: &Output| {
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (1..=3).find(|n| text.contains(&format!("node-{n}")))
    };
    let verbose = |url: &str| {
        hosts.exec(
            0,
            edge.to_str().unwrap(),
            &[
                "call",
                url,
                "--ca",
                &ca,
                "--connect",
                &at.to_string(),
                "-H",
                "x-probe: 1",
            ],
        )
    };
    let first = node_of(&verbose(&url));
    eprintln!("first answer from node {first:?}");
    for lost in 0..2 {
        cluster.kill_node(lost);
        watch.wait_usable(2 - lost as u64, Duration::from_secs(30));
        let out = call(&url);
        assert!(
            out.status.success(),
            "with node {} gone: {}",
            lost + 1,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(watch);
}

/// Cuts node `node` (0-based) per `cut` under load and heals it after 5 s: the row.
fn partition(
    fault: &str,
    cut: impl Fn(&Hosts, usize),
    heal: impl Fn(&Hosts, usize),
    expect_detect: bool,
) {
    let Some(hosts) = hosts(3) else { return };
    let (cluster, _dir) = cluster_on(&hosts, 3);
    let metrics = cluster.gateway_metrics_addrs().unwrap()[0];
    let watch = hosts.watch(metrics);
    watch.wait_usable(3, Duration::from_secs(30));
    let (url, at) = user_url(&cluster, "/hello");
    let target = Target {
        url,
        connect: Some(at),
        ca: cluster.certs().ca.clone(),
        netns: Some(hosts.ns(0)),
        failover: Vec::new(),
    };
    let load = Load::start(&target, 16);
    std::thread::sleep(Duration::from_secs(3));
    let node = busiest_node(&hosts.scrape(metrics).unwrap(), 3);
    let retries = watch.retries();
    let cut_at = Instant::now();
    cut(&hosts, node + 2);
    std::thread::sleep(Duration::from_secs(5));
    let answered = |hosts: &Hosts| hosts.scrape(metrics).map_or(0, |t| answered_by(&t, node));
    let before = answered(&hosts);
    let healed = Instant::now();
    heal(&hosts, node + 2);
    // Back in the rotation: the node answers requests again.
    let back = expect_detect.then(|| {
        assert!(
            support::wait_for(Duration::from_secs(30), || answered(&hosts) > before),
            "node-{} answered nothing after healing",
            node + 1
        );
        healed.elapsed()
    });
    let load = load.finish();
    // Detected: gossip drops the node, or this gateway's own failures route it last.
    let detect = watch
        .first(cut_at, |s| s.usable < 3 || s.failing > 0)
        .map(|s| s.at - cut_at);
    if !expect_detect {
        assert!(
            detect.is_none_or(|d| d > Duration::from_secs(5)),
            "the gateway dropped a node it still reaches"
        );
    }
    Row {
        fault,
        load,
        retried: watch.retries() - retries,
        detect: detect.filter(|_| expect_detect),
        back,
    }
    .report();
}

#[test]
fn a_node_cut_off_from_the_gateway_but_not_the_other_nodes_loses_no_request() {
    partition(
        "netns: node cut off from the gateway, not from the nodes, 5 s, healed",
        |hosts, node| hosts.cut(1, node),
        |hosts, node| hosts.heal(1, node),
        true,
    );
}

#[test]
fn a_node_cut_off_from_the_other_nodes_but_not_the_gateway_loses_no_request() {
    partition(
        "netns: node cut off from the other nodes, not from the gateway, 5 s, healed",
        |hosts, node| {
            for other in 2..5 {
                if other != node {
                    hosts.cut(node, other);
                }
            }
        },
        |hosts, node| {
            for other in 2..5 {
                if other != node {
                    hosts.heal(node, other);
                }
            }
        },
        false,
    );
}

#[test]
fn a_node_on_a_throttled_lossy_link_loses_no_request() {
    // netem is not in this kernel; a token bucket far below the node's traffic gives
    // its link queueing delay (up to 100 ms) and drops instead.
    let shape = |hosts: &Hosts, node: usize| {
        let ns = hosts.ns(node);
        ip(&[
            "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate",
            "100kbit", "burst", "4kb", "latency", "100ms",
        ])
        .unwrap();
    };
    let unshape = |hosts: &Hosts, node: usize| {
        ip(&[
            "netns",
            "exec",
            &hosts.ns(node),
            "tc",
            "qdisc",
            "del",
            "dev",
            "eth0",
            "root",
        ])
        .unwrap();
    };
    partition(
        "netns: node's link throttled (tbf 100 kbit/s, 100 ms queue: delay and drops), 5 s, healed",
        shape,
        unshape,
        false,
    );
}

#[test]
fn a_node_with_100_ms_more_and_5_percent_loss_on_its_link_loses_no_request() {
    // What `tc qdisc add dev eth0 root netem delay 100ms loss 5%` does, in userspace
    // (this kernel has no netem): the node's packets to its peers go through a TUN
    // device to scripts/netem.py, which holds them 100 ms and drops 5%.
    let running: std::sync::Mutex<Option<std::process::Child>> = std::sync::Mutex::new(None);
    let peers = |hosts: &Hosts, node: usize| -> Vec<String> {
        (1..hosts.count)
            .filter(|&i| i != node)
            .map(|i| format!("{}/32", hosts.addr(i)))
            .collect()
    };
    let impair = |hosts: &Hosts, node: usize| {
        let ns = hosts.ns(node);
        let src = hosts.addr(node).to_string();
        ip(&["-n", &ns, "tuntap", "add", "dev", "tun0", "mode", "tun"]).unwrap();
        ip(&["-n", &ns, "link", "set", "tun0", "up"]).unwrap();
        let script = support::repo_root().join("scripts/netem.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "python3"])
            .arg(script)
            .args([
                "--dev",
                "tun0",
                "--out",
                "eth0",
                "--delay-ms",
                "100",
                "--loss",
                "5",
            ])
            .args(["--max-seconds", "120"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let said = support::lines_of(child.stdout.take().unwrap());
        let ready = said.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(ready.starts_with("netem:"), "{ready}");
        for peer in peers(hosts, node) {
            ip(&["-n", &ns, "route", "add", &peer, "dev", "tun0", "src", &src]).unwrap();
        }
        *running.lock().unwrap() = Some(child);
    };
    let heal = |hosts: &Hosts, node: usize| {
        let ns = hosts.ns(node);
        for peer in peers(hosts, node) {
            ip(&["-n", &ns, "route", "del", &peer, "dev", "tun0"]).unwrap();
        }
        if let Some(mut child) = running.lock().unwrap().take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        ip(&["-n", &ns, "link", "del", "tun0"]).unwrap();
    };
    partition(
        "netns: 100 ms added and 5% loss on one node's link (userspace netem), 5 s, healed",
        impair,
        heal,
        false,
    );
}
