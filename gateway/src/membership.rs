//! The gateway's picture of the cluster, made from gossip: an immutable [`Snapshot`]
//! swapped in whole whenever gossip brings news (routing reads never wait), and the
//! gateway's own exact in-flight count per node, which outlives snapshots.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use edge_shared::gossip::{Member, Role};

use crate::routing::{ClusterView, NodeState};

/// One routing-ready picture of the cluster.
#[derive(Default)]
pub struct Snapshot {
    /// The nodes, ordered by address.
    pub view: ClusterView,
    /// This gateway's requests in flight to each node of `view`, same order.
    pub in_flight: Vec<Arc<AtomicUsize>>,
}

impl Snapshot {
    /// Each node's in-flight count now.
    pub fn own_in_flight(&self) -> Vec<usize> {
        self.in_flight
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }
}

/// What the gateway last knew of a node's report.
struct Reported {
    state_version: u64,
    own_at_report: usize,
}

/// The current snapshot and what it is made from.
#[derive(Default)]
pub struct Membership {
    snapshot: ArcSwap<Snapshot>,
    in_flight: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
    reported: Mutex<HashMap<SocketAddr, Reported>>,
}

impl Membership {
    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Requests this gateway has in flight to all nodes.
    pub fn total_in_flight(&self) -> usize {
        let counters = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        counters.values().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// Swaps in a snapshot of `members` (the nodes among them); returns how the set of
    /// usable nodes changed.
    pub fn update(&self, members: &[Member]) -> Changes {
        // A node restarted on the same address appears twice: keep its newest incarnation.
        let mut nodes: HashMap<SocketAddr, &Member> = HashMap::new();
        for m in members.iter().filter(|m| m.role == Role::Node) {
            match nodes.get(&m.quic) {
                Some(seen) if seen.generation > m.generation => {}
                _ => {
                    nodes.insert(m.quic, m);
                }
            }
        }
        let mut nodes: Vec<&Member> = nodes.into_values().collect();
        nodes.sort_by_key(|m| m.quic);
        let previous = self.snapshot();
        let mut counters = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let mut view = ClusterView::default();
        let mut in_flight = Vec::with_capacity(nodes.len());
        for m in nodes {
            let counter = Arc::clone(counters.entry(m.quic).or_default());
            let own_now = counter.load(Ordering::Relaxed);
            let report = reported.entry(m.quic).or_insert(Reported {
                state_version: m.state_version,
                own_at_report: own_now,
            });
            if report.state_version != m.state_version {
                // A new report: the correction counts from now.
                report.state_version = m.state_version;
                report.own_at_report = own_now;
            }
            view.nodes.push(NodeState {
                addr: m.quic,
                name: m.name.clone(),
                up: m.live,
                draining: m.draining,
                slots: m.load.slots,
                in_flight: m.load.in_flight,
                queued: m.load.queued,
                warm: m.warm.clone(),
                own_in_flight_at_report: report.own_at_report,
            });
            in_flight.push(counter);
        }
        let usable = |nodes: &[NodeState], addr: SocketAddr| {
            nodes.iter().any(|n| n.addr == addr && n.up && !n.draining)
        };
        let changes = Changes {
            joined: view
                .nodes
                .iter()
                .filter(|n| usable(&view.nodes, n.addr) && !usable(&previous.view.nodes, n.addr))
                .map(|n| n.addr)
                .collect(),
            left: previous
                .view
                .nodes
                .iter()
                .filter(|p| usable(&previous.view.nodes, p.addr) && !usable(&view.nodes, p.addr))
                .map(|p| {
                    let now = view.nodes.iter().find(|n| n.addr == p.addr);
                    let why = match now {
                        Some(n) if n.draining => "draining",
                        Some(_) => "down",
                        None => "gone",
                    };
                    (p.addr, p.name.clone(), why)
                })
                .collect(),
        };
        self.snapshot.store(Arc::new(Snapshot { view, in_flight }));
        changes
    }
}

/// How the usable nodes changed with one update.
#[derive(Debug, Default)]
pub struct Changes {
    /// Nodes now usable that were not.
    pub joined: Vec<SocketAddr>,
    /// Nodes no longer usable: address, name, and why (`down`, `draining`, `gone`).
    pub left: Vec<(SocketAddr, String, &'static str)>,
}
