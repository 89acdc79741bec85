//! Clusters of gossip agents on an in-memory [`Network`], for tests and for measuring
//! gossip cost. Run them under tokio's paused clock (`start_paused`): time then advances
//! only when every member waits, so figures count protocol rounds, not machine speed.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::memory::Network;
use super::{ClusterKey, Credentials, Gossip, Link, LoadReport, Member, Role, Settings, WarmSet};
use crate::pki::ClusterCa;

/// Members of a simulated cluster, by index.
pub struct Simulation {
    /// The network they talk over: cut, delay and isolate through it.
    pub network: Network,
    /// The cluster CA, which issues each member's certificate.
    pub ca: ClusterCa,
    /// Each member's send budget (bytes per second; 0, the default: none), for the
    /// members started after it is set.
    pub budget_bytes_per_s: u64,
    key: ClusterKey,
    interval: Duration,
    members: Vec<Option<Gossip>>,
}

/// How often [`Simulation::wait_until`] checks.
const POLL: Duration = Duration::from_millis(10);

impl Simulation {
    /// An empty cluster whose members gossip every `interval` and sign with `key`.
    pub fn new(key: ClusterKey, interval: Duration) -> Simulation {
        Simulation {
            network: Network::default(),
            ca: ClusterCa::generate().expect("a new CA"),
            budget_bytes_per_s: 0,
            key,
            interval,
            members: Vec::new(),
        }
    }

    /// Member `i`'s gossip address: `10.0.i/256.i%256:7946`.
    pub fn addr(i: usize) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(10, 0, (i / 256) as u8, (i % 256) as u8), 7946))
    }

    /// Starts member `i` (a node), joining through the members in `seeds`.
    pub async fn start(&mut self, i: usize, seeds: &[usize]) -> anyhow::Result<()> {
        let key = self.key.clone();
        self.start_with_key(i, seeds, key).await
    }

    /// Starts member `i` signing with `key` (an intruder, when it is not the cluster's).
    pub async fn start_with_key(
        &mut self,
        i: usize,
        seeds: &[usize],
        key: ClusterKey,
    ) -> anyhow::Result<()> {
        let credentials = self.credentials(&Simulation::name(i))?;
        self.start_as(i, seeds, key, &Simulation::name(i), credentials)
            .await
    }

    /// Member `i`'s name: `m{i}`.
    pub fn name(i: usize) -> String {
        format!("m{i}")
    }

    /// A node certificate for `name`, issued by the cluster's CA.
    pub fn credentials(&self, name: &str) -> anyhow::Result<Credentials> {
        let issued = self.ca.issue_member(Role::Node, name)?;
        Credentials::from_pem(self.ca.cert_pem(), &issued.cert_pem, &issued.key_pem)
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// Starts member `i` as a node named `name`, signing its identity with
    /// `credentials` and its datagrams with `key`: an impostor, when they are not its.
    pub async fn start_as(
        &mut self,
        i: usize,
        seeds: &[usize],
        key: ClusterKey,
        name: &str,
        credentials: Credentials,
    ) -> anyhow::Result<()> {
        let settings = Settings {
            name: name.to_string(),
            role: Role::Node,
            quic: SocketAddr::from((Simulation::addr(i).ip(), 5000)),
            seeds: seeds
                .iter()
                .map(|&s| Simulation::addr(s).to_string())
                .collect(),
            interval: self.interval,
            phi_threshold: super::PHI_THRESHOLD,
            budget_bytes_per_s: self.budget_bytes_per_s,
            credentials,
        };
        let link = Link::Memory(self.network.bind(Simulation::addr(i))?);
        let gossip = Gossip::start(&settings, link, key).await?;
        if self.members.len() <= i {
            self.members.resize_with(i + 1, || None);
        }
        self.members[i] = Some(gossip);
        Ok(())
    }

    /// Member `i`, if running.
    pub fn member(&self, i: usize) -> Option<&Gossip> {
        self.members.get(i)?.as_ref()
    }

    /// Stops member `i` without a word, as a crash would.
    pub fn crash(&mut self, i: usize) {
        if let Some(g) = self.members.get_mut(i).and_then(Option::take) {
            g.abort();
        }
    }

    /// What member `observer` knows of member `target`.
    pub async fn view_of(&self, observer: usize, target: usize) -> Option<Member> {
        let gossip = self.member(observer)?;
        gossip
            .members()
            .await
            .into_iter()
            .find(|m| m.gossip == Simulation::addr(target))
    }

    /// Publishes a load with `in_flight` requests and a warm set from member `i`.
    pub async fn publish(&self, i: usize, in_flight: usize, warm: &[&str]) {
        if let Some(g) = self.member(i) {
            let load = LoadReport {
                in_flight,
                slots: 4,
                ..LoadReport::default()
            };
            g.publish(load, &WarmSet::of(warm.iter().copied())).await;
        }
    }

    /// Whether every running member in `group` sees every other one live, with its latest
    /// state.
    pub async fn converged(&self, group: &[usize]) -> bool {
        for &target in group {
            let Some(version) = self.own_version(target).await else {
                continue;
            };
            for &observer in group {
                if observer == target || self.member(observer).is_none() {
                    continue;
                }
                match self.view_of(observer, target).await {
                    Some(m) if m.live && m.state_version >= version => {}
                    _ => return false,
                }
            }
        }
        true
    }

    async fn own_version(&self, i: usize) -> Option<u64> {
        Some(self.member(i)?.own_state_version().await)
    }

    /// Waits until `check` holds, checking every 10 ms of (simulated) time for at most
    /// `within`; returns the time it took, or `None` if it never held.
    pub async fn wait_until<F>(&self, within: Duration, mut check: F) -> Option<Duration>
    where
        F: AsyncFnMut(&Simulation) -> bool,
    {
        let start = tokio::time::Instant::now();
        loop {
            if check(self).await {
                return Some(start.elapsed());
            }
            if start.elapsed() >= within {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
