//! The routing decision at fleet scale: 100 nodes, 10,000 deployed functions, each warm
//! on 10 nodes (1,000 warm per node, as in the scale target), so every warm set gossiped
//! holds 1,000 fingerprints. One decision per iteration, for a function drawn at random:
//! its order over all 100 nodes and whether to pre-warm (the gateway's per-request work
//! in `edge_shared::routing::decide`), and the view built from gossip members.
//!
//! Run: `cargo bench -p edge-shared --profile dev --bench routing`.
#![allow(missing_docs)]

use std::net::SocketAddr;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use edge_shared::config::RoutingPolicy;
use edge_shared::gossip::{LoadReport, Member, Role, WarmSet, fingerprint};
use edge_shared::routing::{self, Input, Rng, SplitMix64};
use edge_shared::view::ClusterView;

const NODES: usize = 100;
const FUNCTIONS: usize = 10_000;
const COPIES: usize = 10;

fn function(f: usize) -> String {
    format!("fn-{f}@0123456789abcdef")
}

/// The members gossip would give: node `n` is warm for the functions `f` with
/// `f % NODES` within `COPIES` of `n`, and loaded a little.
fn members() -> Vec<Member> {
    (0..NODES)
        .map(|n| {
            let warm: Vec<String> = (0..FUNCTIONS)
                .filter(|f| (n + NODES - f % NODES) % NODES < COPIES)
                .map(function)
                .collect();
            Member {
                name: format!("node-{n}"),
                role: Role::Node,
                quic: SocketAddr::from(([10, 0, (n / 250) as u8, (n % 250) as u8], 4434)),
                version: "0.1.0".into(),
                draining: false,
                live: true,
                gossip: SocketAddr::from(([10, 0, (n / 250) as u8, (n % 250) as u8], 7946)),
                generation: 1,
                load: LoadReport {
                    in_flight: n % 5,
                    slots: 8,
                    ..LoadReport::default()
                },
                warm: WarmSet::of(warm.iter().map(String::as_str)),
                warming: WarmSet::default(),
                engine: "0123456789abcdef".into(),
                state_version: 1,
            }
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let members = members();
    let view = ClusterView::build(&members, "gateway");
    assert_eq!(view.nodes.len(), NODES);
    assert!(
        view.nodes
            .iter()
            .all(|n| n.warm.len() == FUNCTIONS * COPIES / NODES)
    );
    let keys: Vec<u64> = (0..FUNCTIONS).map(|f| fingerprint(&function(f))).collect();
    let own = vec![0usize; NODES];
    let failed = vec![false; NODES];
    let mut rng = SplitMix64(7);
    let mut group = c.benchmark_group("routing");
    group.bench_function("decide_100_nodes_10000_functions", |b| {
        b.iter_batched(
            || keys[rng.below(FUNCTIONS)],
            |function| {
                let input = Input {
                    view: &view,
                    function,
                    own_in_flight: &own,
                    recently_failed: &failed,
                    sequence: 0,
                    growth: 1.0,
                    min_warm: 1,
                };
                let mut rng = SplitMix64(function);
                routing::decide(RoutingPolicy::LeastLoadedWarm, &input, &mut rng)
            },
            BatchSize::SmallInput,
        );
    });
    group.sample_size(20);
    group.bench_function("view_100_nodes_1000_warm_each", |b| {
        b.iter(|| ClusterView::build(&members, "gateway"));
    });
    group.finish();
}

criterion_group!(routing_benches, benches);
criterion_main!(routing_benches);
