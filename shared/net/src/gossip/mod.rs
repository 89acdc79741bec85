//! Cluster membership, failure detection and load dissemination: the gossip agent every
//! node and gateway runs. What it publishes (the key-values and their codecs) is
//! [`edge_shared::gossip`]; this is the agent that gossips them over UDP.
//!
//! # Why chitchat
//!
//! Both candidates were read before choosing:
//!
//! - **chitchat** (Quickwit): scuttlebutt reconciliation of per-member key-value state,
//!   phi-accrual failure detection, seeds, a pluggable transport. Load and warm sets are
//!   key-values as they are; only changed keys travel.
//! - **foca**: SWIM membership, sans-IO, excellent for deterministic simulation, but
//!   member state beyond identity must ride custom broadcasts that we would have to
//!   design, version and bound ourselves.
//!
//! chitchat fits what is disseminated (soft state every round) with the least code of
//! our own. Version 0.11 is used, not 0.13: from 0.12 on the message encoding is private
//! to the crate, and the transport here must encode each message to sign it.
//!
//! # Security
//!
//! Every datagram is signed with the cluster key ([`auth`]); unsigned or mis-signed ones
//! are dropped and counted, and so are stale or replayed ones (each carries its seal
//! time, and a tag is accepted once). Each member's identity is signed with its own
//! certificate's key besides ([`identity`]), so a key holder can write only its own.

pub mod auth;
pub mod budget;
pub mod identity;
pub mod memory;
pub mod simulation;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState};
use tokio::sync::watch;

pub use self::auth::{ClusterKey, Counters, Link, SignedTransport};
pub use self::identity::Credentials;
use self::identity::{Accepted, node_id, unix_ms};
pub use edge_shared::gossip::{
    Claims, ENGINE_KEY, IDENTITY_KEY, Identity, LoadReport, Member, Role, WARM_SHARDS, WARMING_KEY,
    WarmSet, fingerprint, warm_key,
};

/// Chitchat's cluster id: a member of another edge cluster (another key) could not
/// reach this far anyway; this guards against mixing up protocol versions.
const CLUSTER_ID: &str = "edge/1";

/// The phi-accrual threshold members use: with rounds every 200 ms, a silent member is
/// marked down after about 1-2 s (measured in the simulation, BENCHMARKS.md).
pub const PHI_THRESHOLD: f64 = 8.0;

/// How a member takes part in gossip.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Its name.
    pub name: String,
    /// What it is.
    pub role: Role,
    /// The address its HTTP/3 service is reached at.
    pub quic: SocketAddr,
    /// Seed addresses (`host:port`) to join through; none for the first member.
    pub seeds: Vec<String>,
    /// Time between gossip rounds.
    pub interval: Duration,
    /// Phi-accrual threshold above which a silent member counts as down.
    pub phi_threshold: f64,
    /// Bytes per second this member sends on average before it opens fewer exchanges
    /// of its own (see [`budget`]); 0: no limit.
    pub budget_bytes_per_s: u64,
    /// Its certificate and key, which sign its identity, and the cluster CA, which
    /// others' identities must chain to.
    pub credentials: Credentials,
}

/// A running gossip agent.
pub struct Gossip {
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    /// Taken when the member leaves.
    handle: std::sync::Mutex<Option<ChitchatHandle>>,
    addr: SocketAddr,
    counters: Arc<Counters>,
    /// Other members the failure detector held alive at the last publish.
    live_members: AtomicUsize,
    /// Other members known and down, as of the last publish.
    down_members: AtomicUsize,
    cpu: std::sync::Mutex<CpuMeter>,
    changes: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    credentials: Credentials,
    /// What this member claims; re-signed when it starts draining.
    claims: std::sync::Mutex<Claims>,
    accepted: std::sync::Mutex<Accepted>,
}

impl Gossip {
    /// Joins the cluster over `link`, signing with `key`, publishing `settings`' identity.
    pub async fn start(settings: &Settings, link: Link, key: ClusterKey) -> anyhow::Result<Gossip> {
        let addr = link.local_addr()?;
        let counters = Arc::new(Counters::default());
        let generation = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let id = ChitchatId::new(node_id(&settings.name, addr), generation, addr);
        let interval = settings.interval;
        let config = ChitchatConfig {
            chitchat_id: id,
            cluster_id: CLUSTER_ID.to_string(),
            gossip_interval: interval,
            listen_addr: addr,
            seed_nodes: settings.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: settings.phi_threshold,
                sampling_window_size: 100,
                // Longer silences are not learned as normal heartbeat spacing.
                max_interval: interval * 10,
                initial_interval: interval * 2,
                dead_node_grace_period: Duration::from_secs(3600),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let claims = Claims {
            role: settings.role,
            name: settings.name.clone(),
            quic: settings.quic,
            version: env!("CARGO_PKG_VERSION").to_string(),
            draining: false,
            generation,
            gossip: addr,
            issued_ms: unix_ms(),
        };
        let signed = settings
            .credentials
            .sign(&claims)
            .map_err(|e| anyhow::anyhow!("signing this member's gossip identity: {e}"))?;
        let mut identity = vec![
            (IDENTITY_KEY.to_string(), signed),
            ("load".to_string(), LoadReport::default().encode()),
        ];
        identity.extend((0..WARM_SHARDS).map(|i| (warm_key(i), String::new())));
        let transport = SignedTransport::new(
            link,
            key,
            Arc::clone(&counters),
            settings.budget_bytes_per_s,
        );
        let handle = chitchat::spawn_chitchat(config, identity, &transport).await?;
        let changes = handle.chitchat().lock().await.live_nodes_watcher();
        Ok(Gossip {
            chitchat: handle.chitchat(),
            handle: std::sync::Mutex::new(Some(handle)),
            addr,
            counters,
            live_members: AtomicUsize::new(0),
            down_members: AtomicUsize::new(0),
            cpu: std::sync::Mutex::new(CpuMeter::default()),
            changes,
            credentials: settings.credentials.clone(),
            claims: std::sync::Mutex::new(claims),
            accepted: std::sync::Mutex::new(Accepted::default()),
        })
    }

    /// The gossip address bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Traffic counters (sent, received, rejected).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counters and membership at a glance, for status pages.
    pub fn stats(&self) -> GossipStats {
        let c = &self.counters;
        GossipStats {
            addr: self.addr,
            live_members: self.live_members.load(Ordering::Relaxed),
            down_members: self.down_members.load(Ordering::Relaxed),
            sent: Counters::get(&c.sent),
            sent_bytes: Counters::get(&c.sent_bytes),
            received: Counters::get(&c.received),
            received_bytes: Counters::get(&c.received_bytes),
            rejected: Counters::get(&c.rejected),
            undecodable: Counters::get(&c.undecodable),
            replayed: Counters::get(&c.replayed),
            forged: Counters::get(&c.forged),
        }
    }

    /// Publishes this member's load and warm set (only what changed travels). The CPU
    /// figure is filled in from the process's own use since the previous call.
    pub async fn publish(&self, load: LoadReport, warm: &WarmSet) {
        let load = LoadReport {
            cpu_permille: self
                .cpu
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .permille(),
            ..load
        };
        let shards = warm.encode();
        let chitchat = &self.chitchat;
        let mut chitchat = chitchat.lock().await;
        let others = chitchat.live_nodes().count().saturating_sub(1);
        self.live_members.store(others, Ordering::Relaxed);
        self.down_members
            .store(chitchat.dead_nodes().count(), Ordering::Relaxed);
        let me = chitchat.self_node_state();
        me.set("load", load.encode());
        for (i, shard) in shards.into_iter().enumerate() {
            me.set(warm_key(i), shard);
        }
    }

    /// Publishes the deployments this node is loading now: gateways send none of their
    /// requests here, and ask no other warm-up of it, until they show in the warm set.
    pub async fn publish_warming(&self, warming: &WarmSet) {
        let value = warming.encode_one();
        let chitchat = &self.chitchat;
        chitchat
            .lock()
            .await
            .self_node_state()
            .set(WARMING_KEY, value);
    }

    /// Publishes this node's engine key: nodes of one key take each other's compiled
    /// artifacts.
    pub async fn publish_engine(&self, engine: &str) {
        let chitchat = &self.chitchat;
        chitchat
            .lock()
            .await
            .self_node_state()
            .set(ENGINE_KEY, engine);
    }

    /// The version of this member's own state: it grows with every change published.
    pub async fn own_state_version(&self) -> u64 {
        let chitchat = &self.chitchat;
        chitchat.lock().await.self_node_state().max_version()
    }

    /// Says this member is shutting down: gateways skip it from the next round on.
    pub async fn set_draining(&self) {
        let signed = {
            let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
            claims.draining = true;
            claims.issued_ms = unix_ms().max(claims.issued_ms + 1);
            self.credentials.sign(&claims)
        };
        match signed {
            Ok(signed) => {
                let chitchat = &self.chitchat;
                chitchat
                    .lock()
                    .await
                    .self_node_state()
                    .set(IDENTITY_KEY, signed);
            }
            Err(e) => tracing::error!(error = %e, "could not sign the draining identity"),
        }
    }

    /// Every other member with a valid identity, live or not. Identities that fail
    /// verification are counted in `forged` (and logged, the first and one in a
    /// thousand); the member's last valid one stands.
    pub async fn members(&self) -> Vec<Member> {
        let chitchat = &self.chitchat;
        let chitchat = chitchat.lock().await;
        let me = chitchat.self_chitchat_id().clone();
        let live: std::collections::HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        let mut accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
        let states = chitchat.node_states();
        accepted.retain(|id| states.contains_key(id));
        states
            .iter()
            .filter(|(id, _)| **id != me)
            .filter_map(|(id, state)| {
                let text = state.get(IDENTITY_KEY)?;
                let forged = |reason: &'static str| {
                    let forged = self.counters.forged.fetch_add(1, Ordering::Relaxed) + 1;
                    if forged == 1 || forged.is_multiple_of(1000) {
                        tracing::warn!(member = %id.node_id, reason, forged, "gossip identity refused");
                    }
                };
                let claims = accepted.check(&self.credentials, id, text, forged)?;
                let identity = Identity {
                    gossip: id.gossip_advertise_addr,
                    generation: id.generation_id,
                    live: live.contains(id),
                    state_version: state.max_version(),
                };
                Some(Member::decode(claims, |key| state.get(key), identity))
            })
            .collect()
    }

    /// News of membership, liveness or any member's state (heartbeats alone do not
    /// count), from now on.
    pub fn subscribe(&self) -> Changes {
        Changes(self.changes.clone())
    }

    /// Leaves: stops gossiping and frees the link. Members learn of it from the
    /// silence (announce `draining` first, so they stop sending before).
    pub async fn leave(&self) {
        let handle = self.handle.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.shutdown().await;
        }
    }

    /// Stops at once, as a crash would (simulations).
    pub fn abort(&self) {
        if let Some(handle) = self
            .handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            handle.abort();
        }
    }
}

/// News from gossip, as [`Gossip::subscribe`] gives it.
pub struct Changes(watch::Receiver<BTreeMap<ChitchatId, NodeState>>);

impl Changes {
    /// Resolves when something changed since the last call.
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A member's gossip at a glance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GossipStats {
    /// The gossip address.
    pub addr: SocketAddr,
    /// Other members alive, as of the last publish.
    pub live_members: usize,
    /// Other members known and down, as of the last publish.
    pub down_members: usize,
    /// Datagrams sent.
    pub sent: u64,
    /// Bytes sent.
    pub sent_bytes: u64,
    /// Datagrams accepted.
    pub received: u64,
    /// Bytes accepted.
    pub received_bytes: u64,
    /// Datagrams dropped for a missing or wrong cluster-key tag.
    pub rejected: u64,
    /// Signed datagrams that did not decode.
    pub undecodable: u64,
    /// Signed datagrams dropped as stale or replayed.
    pub replayed: u64,
    /// Member identities refused as not signed by the member they name.
    pub forged: u64,
}

/// This process's CPU use between calls, from `/proc/self/stat` (Linux; 0 elsewhere).
#[derive(Default)]
struct CpuMeter {
    last: Option<(Instant, f64)>,
}

impl CpuMeter {
    fn permille(&mut self) -> u64 {
        let Some(now) = process_cpu_seconds() else {
            return 0;
        };
        let at = Instant::now();
        let used = match self.last {
            Some((then, before)) if at > then => {
                (now - before) / at.duration_since(then).as_secs_f64() * 1000.0
            }
            _ => 0.0,
        };
        self.last = Some((at, now));
        used.max(0.0) as u64
    }
}

/// User + system CPU seconds of this process.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}
