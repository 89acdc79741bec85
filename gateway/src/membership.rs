//! The gateway's picture of the cluster, made from gossip: an immutable [`Snapshot`]
//! swapped in whole whenever gossip brings news (routing reads never wait), and the
//! gateway's own exact in-flight count per node, which outlives snapshots.
//!
//! Each node's gossiped load says how many of its requests came from each gateway. The
//! estimate a routing decision uses is the node's reported load, minus this gateway's
//! share in that report, plus this gateway's exact count now: only other gateways'
//! requests are as old as the report.

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

/// The current snapshot and what it is made from.
#[derive(Default)]
pub struct Membership {
    snapshot: ArcSwap<Snapshot>,
    in_flight: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
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

    /// Swaps in a snapshot of `members` (the nodes among them), as seen by the gateway
    /// named `me`; returns how the set of usable nodes changed.
    pub fn update(&self, members: &[Member], me: &str) -> Changes {
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
        let mut view = ClusterView::default();
        let mut in_flight = Vec::with_capacity(nodes.len());
        for m in nodes {
            let counter = Arc::clone(counters.entry(m.quic).or_default());
            view.nodes.push(NodeState {
                addr: m.quic,
                name: m.name.clone(),
                up: m.live,
                draining: m.draining,
                slots: m.load.slots,
                in_flight: m.load.in_flight,
                queued: m.load.queued,
                warm: m.warm.clone(),
                own_in_flight_at_report: m.load.from_gateway(me),
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

#[cfg(test)]
mod tests {
    use edge_shared::gossip::{LoadReport, WarmSet};

    use super::*;

    fn node(port: u16, live: bool, draining: bool, from: &[(&str, usize)]) -> Member {
        Member {
            name: format!("node-{port}"),
            role: Role::Node,
            quic: SocketAddr::from(([127, 0, 0, 1], port)),
            version: "0.1.0".into(),
            draining,
            live,
            gossip: SocketAddr::from(([127, 0, 0, 1], port + 1000)),
            generation: 1,
            load: LoadReport {
                in_flight: 7,
                slots: 4,
                from_gateways: from.iter().map(|&(g, n)| (g.to_string(), n)).collect(),
                ..LoadReport::default()
            },
            warm: WarmSet::default(),
            state_version: 1,
        }
    }

    #[test]
    fn own_share_comes_from_the_report_and_changes_are_named() {
        let membership = Membership::default();
        let gateway = Member {
            role: Role::Gateway,
            ..node(9000, true, false, &[])
        };
        let changes = membership.update(
            &[
                node(5001, true, false, &[("gw-a", 2), ("gw-b", 5)]),
                gateway,
            ],
            "gw-a",
        );
        assert_eq!(changes.joined, [SocketAddr::from(([127, 0, 0, 1], 5001))]);
        let snapshot = membership.snapshot();
        assert_eq!(snapshot.view.nodes.len(), 1, "gateways are not nodes");
        assert_eq!(snapshot.view.nodes[0].own_in_flight_at_report, 2);
        assert_eq!(snapshot.view.nodes[0].in_flight, 7);

        // The in-flight counter outlives the snapshot; a draining node leaves, named.
        snapshot.in_flight[0].fetch_add(1, Ordering::Relaxed);
        let changes = membership.update(&[node(5001, true, true, &[])], "gw-a");
        assert_eq!(changes.left[0].2, "draining");
        assert_eq!(membership.snapshot().own_in_flight(), [1]);
        assert_eq!(membership.total_in_flight(), 1);
        let changes = membership.update(&[node(5001, false, false, &[])], "gw-a");
        assert!(changes.left.is_empty(), "already out: {changes:?}");
        let changes = membership.update(&[node(5001, true, false, &[])], "gw-a");
        assert_eq!(changes.joined.len(), 1);
        let changes = membership.update(&[], "gw-a");
        assert_eq!(changes.left[0].2, "gone");
    }
}
