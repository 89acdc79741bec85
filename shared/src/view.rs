//! The cluster view: what a gateway knows of the nodes, built from gossip members. Pure:
//! the gateway swaps a new view in whole whenever gossip brings news, and routing reads
//! it without waiting.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::gossip::{Member, Role, WarmSet};

/// What the gateway knows of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    /// Its address.
    pub addr: SocketAddr,
    /// Its name.
    pub name: String,
    /// Whether the failure detector holds it alive.
    pub up: bool,
    /// Whether it said it is shutting down.
    pub draining: bool,
    /// Execution slots.
    pub slots: usize,
    /// Requests running when it reported.
    pub in_flight: usize,
    /// Requests queued when it reported.
    pub queued: usize,
    /// Deployments warm on it.
    pub warm: WarmSet,
    /// Deployments it is loading now, not ready yet.
    pub warming: WarmSet,
    /// Of the requests it reported, how many came from this gateway.
    pub own_in_flight_at_report: usize,
}

impl NodeState {
    /// Whether requests may be sent to it: alive and not draining.
    pub fn usable(&self) -> bool {
        self.up && !self.draining
    }
}

/// An immutable snapshot of the cluster, swapped in whole when news arrives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// The nodes, ordered by address.
    pub nodes: Vec<NodeState>,
}

impl ClusterView {
    /// The view of `members` (the nodes among them) as the gateway named `me` sees it. A
    /// restarted node appears twice in gossip: its newest incarnation counts. Nodes are
    /// told apart by name, which each proves with its certificate, not by the address
    /// they claim: a node claiming another's address never hides it.
    pub fn build(members: &[Member], me: &str) -> ClusterView {
        let mut newest: HashMap<&str, &Member> = HashMap::new();
        for m in members.iter().filter(|m| m.role == Role::Node) {
            match newest.get(m.name.as_str()) {
                Some(seen) if seen.generation > m.generation => {}
                _ => {
                    newest.insert(&m.name, m);
                }
            }
        }
        let mut nodes: Vec<NodeState> = newest
            .into_values()
            .map(|m| NodeState {
                addr: m.quic,
                name: m.name.clone(),
                up: m.live,
                draining: m.draining,
                slots: m.load.slots,
                in_flight: m.load.in_flight,
                queued: m.load.queued,
                warm: m.warm.clone(),
                warming: m.warming.clone(),
                own_in_flight_at_report: m.load.from_gateway(me),
            })
            .collect();
        nodes.sort_by_key(|n| n.addr);
        ClusterView { nodes }
    }

    /// Usable nodes.
    pub fn usable(&self) -> usize {
        self.nodes.iter().filter(|n| n.usable()).count()
    }

    fn is_usable(&self, addr: SocketAddr) -> bool {
        self.nodes.iter().any(|n| n.addr == addr && n.usable())
    }

    /// How the usable nodes changed from `previous` to this view.
    pub fn changes_since(&self, previous: &ClusterView) -> Changes {
        Changes {
            joined: self
                .nodes
                .iter()
                .filter(|n| n.usable() && !previous.is_usable(n.addr))
                .map(|n| n.addr)
                .collect(),
            left: previous
                .nodes
                .iter()
                .filter(|p| p.usable() && !self.is_usable(p.addr))
                .map(|p| {
                    let why = match self.nodes.iter().find(|n| n.addr == p.addr) {
                        Some(n) if n.draining => Departure::Draining,
                        Some(_) => Departure::Down,
                        None => Departure::Gone,
                    };
                    (p.addr, p.name.clone(), why)
                })
                .collect(),
        }
    }
}

/// Why a node left the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The failure detector holds it dead.
    Down,
    /// It said it is shutting down.
    Draining,
    /// Gossip no longer lists it.
    Gone,
}

impl Departure {
    /// Its name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Departure::Down => "down",
            Departure::Draining => "draining",
            Departure::Gone => "gone",
        }
    }
}

/// How the usable nodes changed with one update.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Nodes now usable that were not.
    pub joined: Vec<SocketAddr>,
    /// Nodes no longer usable: address, name, and why.
    pub left: Vec<(SocketAddr, String, Departure)>,
}

#[cfg(test)]
mod tests {
    use crate::gossip::LoadReport;

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
            warming: WarmSet::default(),
            engine: String::new(),
            state_version: 1,
        }
    }

    #[test]
    fn own_share_comes_from_the_report_and_gateways_are_not_nodes() {
        let gateway = Member {
            role: Role::Gateway,
            ..node(9000, true, false, &[])
        };
        let view = ClusterView::build(
            &[
                node(5001, true, false, &[("gw-a", 2), ("gw-b", 5)]),
                gateway,
            ],
            "gw-a",
        );
        assert_eq!(view.nodes.len(), 1, "gateways are not nodes");
        assert_eq!(view.nodes[0].own_in_flight_at_report, 2);
        assert_eq!(view.nodes[0].in_flight, 7);
        assert_eq!(view.usable(), 1);
    }

    #[test]
    fn a_restarted_node_counts_by_its_newest_incarnation_and_nodes_sort_by_address() {
        let old = Member {
            live: false,
            ..node(5002, true, false, &[])
        };
        let new = Member {
            generation: 2,
            ..node(5002, true, false, &[])
        };
        let view = ClusterView::build(&[new.clone(), node(5001, true, false, &[]), old], "gw");
        assert_eq!(view.nodes.len(), 2);
        assert!(view.nodes[0].addr < view.nodes[1].addr);
        assert!(view.nodes[1].up, "the newest incarnation is alive");
    }

    #[test]
    fn joins_and_departures_are_named() {
        let build = |members: &[Member]| ClusterView::build(members, "gw-a");
        let up = build(&[node(5001, true, false, &[])]);
        let changes = up.changes_since(&ClusterView::default());
        assert_eq!(changes.joined, [SocketAddr::from(([127, 0, 0, 1], 5001))]);
        let draining = build(&[node(5001, true, true, &[])]);
        assert_eq!(draining.changes_since(&up).left[0].2, Departure::Draining);
        let down = build(&[node(5001, false, false, &[])]);
        assert_eq!(down.changes_since(&up).left[0].2, Departure::Down);
        assert_eq!(
            down.changes_since(&draining),
            Changes::default(),
            "already out"
        );
        assert_eq!(up.changes_since(&down).joined.len(), 1);
        let gone = build(&[]);
        assert_eq!(gone.changes_since(&up).left[0].2, Departure::Gone);
    }
}
