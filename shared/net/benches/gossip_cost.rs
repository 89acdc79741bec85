//! Gossip cost: bytes per second per member and times to converge, for 3, 10 and 100
//! members on the in-memory network (paused clock: simulated seconds), and for 3 and
//! 10 members over real UDP on loopback (wall-clock seconds).
//!
//! `cargo bench -p edge-net --profile dev --bench gossip_cost`
//!
//! From the environment: `ONLY=N` (one cluster size), `ROUND_MS` (the round, 200),
//! `BUDGET` (each member's send budget in bytes/s; the config's default, 10,000, and 0
//! for none), `WARM` (functions warm on each member, 50) and `CHURN` (warm-set changes
//! per member per second during the steady state, 0).

use std::net::SocketAddr;
use std::time::Duration;

use edge_net::gossip::simulation::Simulation;
use edge_net::gossip::{ClusterKey, Counters, Gossip, Link, LoadReport, Role, Settings, WarmSet};

const ROUND: Duration = Duration::from_millis(200);

/// The gossip round: [`ROUND`], or `ROUND_MS` from the environment.
fn interval() -> Duration {
    std::env::var("ROUND_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(ROUND, Duration::from_millis)
}
/// Steady state measured over this long, every member publishing a new load each round.
const STEADY: Duration = Duration::from_secs(30);

/// `name` from the environment, else `default`.
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Each member's send budget, bytes per second.
fn budget() -> u64 {
    let default = edge_shared::config::GossipConfig::default().budget_bytes_per_s;
    knob("BUDGET", default as usize) as u64
}

fn key() -> ClusterKey {
    ClusterKey::new(&[1; 32]).expect("a key")
}

/// Member `member`'s warm set after `changes` changes: `WARM` functions, the oldest
/// replaced by a new one at each change.
fn warm_set(member: usize, changes: usize) -> WarmSet {
    let ids: Vec<String> = (changes..changes + knob("WARM", 50))
        .map(|f| format!("fn-{member}-{f}@v1"))
        .collect();
    WarmSet::of(ids.iter().map(String::as_str))
}

/// Warm-set changes of each member by `round` (`CHURN` a second).
fn changes(round: usize) -> usize {
    let per_second = knob("CHURN", 0) as f64;
    (round as f64 * interval().as_secs_f64() * per_second) as usize
}

fn load(round: usize, member: usize) -> LoadReport {
    LoadReport {
        in_flight: (round + member) % 7,
        queued: 0,
        slots: 4,
        ewma_run_us: 100 + (round % 3) as u64,
        cpu_permille: 0,
        from_gateways: Vec::new(),
    }
}

fn sent_bytes(members: &[&Gossip]) -> u64 {
    members
        .iter()
        .map(|g| Counters::get(&g.counters().sent_bytes))
        .sum()
}

async fn simulated(n: usize) {
    let mut sim = Simulation::new(key(), interval());
    sim.budget_bytes_per_s = budget();
    let start = tokio::time::Instant::now();
    for i in 0..n {
        let seeds: &[usize] = if i == 0 { &[] } else { &[0] };
        sim.start(i, seeds).await.expect("member starts");
        sim.publish(i, 0, &[]).await;
    }
    let all: Vec<usize> = (0..n).collect();
    let join = sim
        .wait_until(Duration::from_secs(120), async |s| s.converged(&all).await)
        .await
        .map(|_| start.elapsed());
    for i in 0..n {
        if let Some(g) = sim.member(i) {
            g.publish(load(0, i), &warm_set(i, 0)).await;
        }
    }
    let warm = sim
        .wait_until(Duration::from_secs(120), async |s| s.converged(&all).await)
        .await;
    let members: Vec<&Gossip> = (0..n).filter_map(|i| sim.member(i)).collect();
    let before = sent_bytes(&members);
    let rounds = (STEADY.as_millis() / interval().as_millis()) as usize;
    for round in 1..=rounds {
        for (i, g) in members.iter().enumerate() {
            g.publish(load(round, i), &warm_set(i, changes(round)))
                .await;
        }
        tokio::time::sleep(interval()).await;
    }
    let per_member = (sent_bytes(&members) - before) as f64 / n as f64 / STEADY.as_secs_f64();
    let held_back: u64 = members
        .iter()
        .map(|g| Counters::get(&g.counters().held_back))
        .sum();
    sim.publish(1, 99, &[]).await;
    let change = sim
        .wait_until(Duration::from_secs(60), async |s| s.converged(&all).await)
        .await;
    sim.crash(n - 1);
    let alive: Vec<usize> = (0..n - 1).collect();
    let detect = sim
        .wait_until(Duration::from_secs(60), async |s| {
            for &o in &alive {
                if s.view_of(o, n - 1).await.is_none_or(|m| m.live) {
                    return false;
                }
            }
            true
        })
        .await;
    println!(
        "simulated {n:>3} members: join {}, warm sets {}, steady {per_member:>8.0} B/s per member \
         ({held_back} exchanges held back), one change reaches all in {}, crash marked down by \
         all in {}",
        show(join),
        show(warm),
        show(change),
        show(detect)
    );
}

fn show(d: Option<Duration>) -> String {
    d.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

async fn over_udp(n: usize) -> anyhow::Result<()> {
    let mut members = Vec::new();
    let mut seed: Option<SocketAddr> = None;
    let start = std::time::Instant::now();
    let ca = edge_net::pki::ClusterCa::generate()?;
    for i in 0..n {
        let issued = ca.issue_member(Role::Node, &format!("m{i}"))?;
        let credentials = edge_net::gossip::Credentials::from_pem(
            ca.cert_pem(),
            &issued.cert_pem,
            &issued.key_pem,
        )
        .map_err(anyhow::Error::msg)?;
        let link = Link::udp(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let settings = Settings {
            name: format!("m{i}"),
            role: Role::Node,
            quic: SocketAddr::from(([127, 0, 0, 1], 5000 + i as u16)),
            seeds: seed.iter().map(ToString::to_string).collect(),
            interval: interval(),
            phi_threshold: edge_net::gossip::PHI_THRESHOLD,
            budget_bytes_per_s: budget(),
            credentials,
        };
        let gossip = Gossip::start(&settings, link, key()).await?;
        seed.get_or_insert(gossip.addr());
        members.push(gossip);
    }
    let mut joined = None;
    while start.elapsed() < Duration::from_secs(30) {
        let mut all = true;
        for g in &members {
            all &= g.members().await.iter().filter(|m| m.live).count() == n - 1;
        }
        if all {
            joined = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refs: Vec<&Gossip> = members.iter().collect();
    let before = sent_bytes(&refs);
    let steady = Duration::from_secs(10);
    let rounds = (steady.as_millis() / interval().as_millis()) as usize;
    let measured = std::time::Instant::now();
    for round in 1..=rounds {
        for (i, g) in members.iter().enumerate() {
            g.publish(load(round, i), &warm_set(i, changes(round)))
                .await;
        }
        tokio::time::sleep(interval()).await;
    }
    let per_member =
        (sent_bytes(&refs) - before) as f64 / n as f64 / measured.elapsed().as_secs_f64();
    println!(
        "UDP loopback {n:>3} members: all live in {}, steady {per_member:>8.0} B/s per member",
        show(joined)
    );
    for g in members {
        g.leave().await;
    }
    Ok(())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("gossip_cost: benchmark");
        return;
    }
    for n in std::env::var("ONLY")
        .ok()
        .map_or(vec![3, 10, 100], |n| vec![n.parse().unwrap()])
    {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime")
            .block_on(simulated(n));
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    for n in [3, 10] {
        runtime.block_on(over_udp(n)).expect("UDP members run");
    }
}
