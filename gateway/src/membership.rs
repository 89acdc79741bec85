//! The gateway's picture of the cluster: an immutable [`Snapshot`] of the
//! [`ClusterView`] that gossip builds, swapped in whole whenever gossip brings news
//! (routing reads never wait), and beside it, per node, what this gateway itself knows
//! exactly and freshly: its requests in flight there, and whether it failed to reach the
//! node moments ago. Those counters outlive snapshots and are read without a lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use edge_net::gossip::Member;
use edge_shared::view::{Changes, ClusterView};

/// How long a node this gateway could not reach goes last in the routing order.
const FAILED_FOR: Duration = Duration::from_secs(2);

/// What this gateway knows of one node by itself.
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Its requests in flight there now.
    in_flight: AtomicUsize,
    /// Until when (ms since the membership's start) it counts as just failed; 0: not.
    failed_until_ms: AtomicU64,
}

impl NodeCounters {
    /// Counts one request in flight until the guard is dropped.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }
}

/// One request in flight to a node.
pub struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One routing-ready picture of the cluster.
#[derive(Default)]
pub struct Snapshot {
    /// The nodes, ordered by address.
    pub view: ClusterView,
    /// This gateway's counters of each node of `view`, same order.
    pub counters: Vec<Arc<NodeCounters>>,
}

/// The current snapshot and the counters it is made with.
pub struct Membership {
    snapshot: ArcSwap<Snapshot>,
    counters: Mutex<HashMap<SocketAddr, Arc<NodeCounters>>>,
    started: Instant,
}

impl Default for Membership {
    fn default() -> Membership {
        Membership {
            snapshot: ArcSwap::default(),
            counters: Mutex::default(),
            started: Instant::now(),
        }
    }
}

impl Membership {
    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Each node's in-flight count and whether it failed moments ago, now, in the order
    /// of `snapshot`: the routing decision's input.
    pub fn health(&self, snapshot: &Snapshot) -> (Vec<usize>, Vec<bool>) {
        let now = self.now_ms();
        snapshot
            .counters
            .iter()
            .map(|c| {
                let failed = c.failed_until_ms.load(Ordering::Relaxed) > now;
                (c.in_flight.load(Ordering::Relaxed), failed)
            })
            .unzip()
    }

    /// Notes that `node` could not be reached: it goes last for a moment.
    pub fn failed(&self, counters: &NodeCounters) {
        counters.failed_until_ms.store(
            self.now_ms() + FAILED_FOR.as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    /// Notes that `node` answered.
    pub fn answered(&self, counters: &NodeCounters) {
        counters.failed_until_ms.store(0, Ordering::Relaxed);
    }

    /// Requests this gateway has in flight to all nodes.
    pub fn total_in_flight(&self) -> usize {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters
            .values()
            .map(|n| n.in_flight.load(Ordering::Relaxed))
            .sum()
    }

    /// Swaps in a snapshot of `members` as seen by the gateway named `me`; returns how
    /// the set of usable nodes changed.
    pub fn update(&self, members: &[Member], me: &str) -> Changes {
        let view = ClusterView::build(members, me);
        let changes = view.changes_since(&self.snapshot().view);
        let counters = {
            let mut all = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            view.nodes
                .iter()
                .map(|n| Arc::clone(all.entry(n.addr).or_default()))
                .collect()
        };
        self.snapshot.store(Arc::new(Snapshot { view, counters }));
        changes
    }

    pub(crate) fn now_ms(&self) -> u64 {
        // Never 0, so 0 can mean "not failed".
        self.started.elapsed().as_millis() as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use edge_net::gossip::{LoadReport, Role, WarmSet};

    use super::*;

    fn node(port: u16, live: bool) -> Member {
        Member {
            name: format!("node-{port}"),
            role: Role::Node,
            quic: SocketAddr::from(([127, 0, 0, 1], port)),
            version: "0.1.0".into(),
            draining: false,
            live,
            gossip: SocketAddr::from(([127, 0, 0, 1], port + 1000)),
            generation: 1,
            load: LoadReport::default(),
            warm: WarmSet::default(),
            warming: WarmSet::default(),
            engine: String::new(),
            state_version: 1,
        }
    }

    #[test]
    fn counters_outlive_snapshots_and_failures_go_last_for_a_moment() {
        let membership = Membership::default();
        let changes = membership.update(&[node(5001, true), node(5002, true)], "gw");
        assert_eq!(changes.joined.len(), 2);
        let snapshot = membership.snapshot();
        let request = snapshot.counters[1].start();
        membership.failed(&snapshot.counters[0]);
        assert_eq!(
            membership.health(&snapshot),
            (vec![0, 1], vec![true, false])
        );

        // A new snapshot (node 5001 down) keeps both counters.
        membership.update(&[node(5001, false), node(5002, true)], "gw");
        let next = membership.snapshot();
        assert_eq!(membership.health(&next), (vec![0, 1], vec![true, false]));
        assert_eq!(membership.total_in_flight(), 1);
        drop(request);
        membership.answered(&next.counters[0]);
        assert_eq!(membership.health(&next), (vec![0, 0], vec![false, false]));
    }
}
