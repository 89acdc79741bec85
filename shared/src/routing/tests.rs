//! Routing over scripted views: the policies, the pre-warm target, home placement.

use std::collections::HashSet;

use std::net::SocketAddr;

use crate::gossip::{WarmSet, fingerprint};

use super::*;

/// A view of `addrs` before any report: all up, idle, nothing warm.
fn initial(addrs: &[SocketAddr]) -> ClusterView {
    ClusterView {
        nodes: addrs
            .iter()
            .map(|&addr| NodeState {
                addr,
                name: addr.to_string(),
                up: true,
                draining: false,
                slots: 1,
                in_flight: 0,
                queued: 0,
                warm: WarmSet::default(),
                warming: WarmSet::default(),
                own_in_flight_at_report: 0,
            })
            .collect(),
    }
}

fn view(n: usize) -> ClusterView {
    let addrs: Vec<SocketAddr> = (0..n)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)))
        .collect();
    let mut v = initial(&addrs);
    for node in &mut v.nodes {
        node.slots = 4;
    }
    v
}

fn pick(
    policy: RoutingPolicy,
    v: &ClusterView,
    own: &[usize],
    seq: usize,
    rng: &mut SplitMix64,
) -> usize {
    order(
        self::policy(policy),
        &Input {
            view: v,
            function: fingerprint("hello@0123456789abcdef"),
            own_in_flight: own,
            recently_failed: &[],
            sequence: seq,
            growth: 1.0,
            min_warm: 1,
        },
        rng,
    )[0]
}

const ALL: [RoutingPolicy; 3] = [
    RoutingPolicy::LeastLoadedWarm,
    RoutingPolicy::RoundRobin,
    RoutingPolicy::Random,
];

#[test]
fn never_picks_a_down_or_draining_node_first_and_lists_every_node() {
    let mut v = view(4);
    v.nodes[0].up = false;
    v.nodes[2].draining = true;
    for node in &mut v.nodes {
        node.warm = WarmSet::of(["hello@0123456789abcdef"]);
    }
    let mut rng = SplitMix64(7);
    for policy in ALL {
        for seq in 0..200 {
            let o = order(
                self::policy(policy),
                &Input {
                    view: &v,
                    function: fingerprint("hello@0123456789abcdef"),
                    own_in_flight: &[0; 4],
                    recently_failed: &[],
                    sequence: seq,
                    growth: 1.0,
                    min_warm: 1,
                },
                &mut rng,
            );
            assert!(o[0] == 1 || o[0] == 3, "{policy:?} chose {}", o[0]);
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3], "{policy:?}: {o:?}");
            assert!(!o[..2].contains(&0) && !o[..2].contains(&2));
        }
    }
}

#[test]
fn with_equal_load_every_policy_spreads() {
    let mut v = view(3);
    for node in &mut v.nodes {
        node.warm = WarmSet::of(["hello@0123456789abcdef"]);
    }
    let mut rng = SplitMix64(1);
    for policy in ALL {
        let mut counts = [0; 3];
        for seq in 0..3000 {
            counts[pick(policy, &v, &[0; 3], seq, &mut rng)] += 1;
        }
        for c in counts {
            assert!((800..=1200).contains(&c), "{policy:?}: {counts:?}");
        }
    }
}

#[test]
fn prefers_warm_nodes_and_sends_cold_starts_to_the_same_node() {
    let mut v = view(4);
    v.nodes[2].warm = WarmSet::of(["hello@0123456789abcdef"]);
    let mut rng = SplitMix64(3);
    for seq in 0..100 {
        assert_eq!(
            pick(RoutingPolicy::LeastLoadedWarm, &v, &[0; 4], seq, &mut rng),
            2
        );
    }
    // Cold everywhere: one node, the function's rendezvous choice, every time.
    let cold = view(4);
    let first = pick(RoutingPolicy::LeastLoadedWarm, &cold, &[0; 4], 0, &mut rng);
    for seq in 0..100 {
        assert_eq!(
            pick(
                RoutingPolicy::LeastLoadedWarm,
                &cold,
                &[0; 4],
                seq,
                &mut rng
            ),
            first
        );
    }
    // And another function is spread elsewhere by the same hashing.
    let targets: HashSet<usize> = (0..40)
        .map(|f| {
            order(
                &LeastLoadedWarm,
                &Input {
                    view: &cold,
                    function: fingerprint(&format!("f{f}@0123456789abcdef")),
                    own_in_flight: &[0; 4],
                    recently_failed: &[],
                    sequence: 0,
                    growth: 1.0,
                    min_warm: 1,
                },
                &mut rng,
            )[0]
        })
        .collect();
    assert_eq!(
        targets.len(),
        4,
        "cold starts of many functions use every node"
    );
}

#[test]
fn follows_load_changes_and_the_gateways_own_in_flight() {
    let mut v = view(2);
    for node in &mut v.nodes {
        node.warm = WarmSet::of(["hello@0123456789abcdef"]);
    }
    v.nodes[0].in_flight = 3;
    let mut rng = SplitMix64(5);
    for seq in 0..50 {
        assert_eq!(
            pick(RoutingPolicy::LeastLoadedWarm, &v, &[0, 0], seq, &mut rng),
            1
        );
    }
    // The 3 on node 0 were this gateway's and have finished, and it has 4 on node 1
    // now: node 0 is the lighter.
    v.nodes[0].own_in_flight_at_report = 3;
    for seq in 0..50 {
        assert_eq!(
            pick(RoutingPolicy::LeastLoadedWarm, &v, &[0, 4], seq, &mut rng),
            0
        );
    }
    // A saturated warm node loses to a cold one.
    v.nodes[0].in_flight = 4;
    v.nodes[0].own_in_flight_at_report = 0;
    v.nodes[1].warm = WarmSet::default();
    assert_eq!(
        pick(RoutingPolicy::LeastLoadedWarm, &v, &[0, 0], 0, &mut rng),
        1
    );
}

#[test]
fn the_next_node_is_warmed_when_the_warm_ones_fill_up() {
    let mut v = view(3);
    v.nodes[0].warm = WarmSet::of(["hello@0123456789abcdef"]);
    let input = |v: &ClusterView, own: &[usize]| {
        prewarm_target(&Input {
            view: v,
            function: fingerprint("hello@0123456789abcdef"),
            own_in_flight: own,
            recently_failed: &[],
            sequence: 0,
            growth: 1.0,
            min_warm: 1,
        })
    };
    // Room on the warm node (1 of 4 slots): nothing to do.
    v.nodes[0].in_flight = 1;
    assert_eq!(input(&v, &[0; 3]), None);
    // Half full: warm the cold node with the highest rendezvous score, the one a
    // cold start would pick.
    v.nodes[0].in_flight = 2;
    let target = input(&v, &[0; 3]).unwrap();
    let mut cold = view(3);
    cold.nodes.retain(|n| n.addr != v.nodes[0].addr);
    let mut rng = SplitMix64(0);
    let cold_first = pick(RoutingPolicy::LeastLoadedWarm, &cold, &[0; 2], 0, &mut rng);
    assert_eq!(v.nodes[target].addr, cold.nodes[cold_first].addr);
    // Nothing warm yet, or a down candidate: never that.
    assert_eq!(input(&view(3), &[0; 3]), None);
    v.nodes[target].up = false;
    assert_ne!(input(&v, &[0; 3]), Some(target));
}

#[test]
fn a_node_warming_the_function_waits_behind_warm_ones_and_ahead_of_cold_ones() {
    let id = "hello@0123456789abcdef";
    let mut v = view(3);
    v.nodes[0].warm = WarmSet::of([id]);
    v.nodes[0].in_flight = 3;
    fn input(v: &ClusterView) -> Input<'_> {
        Input {
            view: v,
            function: fingerprint("hello@0123456789abcdef"),
            own_in_flight: &[0; 3],
            recently_failed: &[],
            sequence: 0,
            growth: 1.0,
            min_warm: 1,
        }
    }
    let target = prewarm_target(&input(&v)).unwrap();
    let cold = 3 - target;
    // The target says it is warming: no second warm-up is asked of anyone.
    v.nodes[target].warming = WarmSet::of([id]);
    assert_eq!(prewarm_target(&input(&v)), None);
    let mut rng = SplitMix64(3);
    // While the warm node has room, requests go there, then to the warming node,
    // never first to a cold one.
    assert_eq!(
        order(&LeastLoadedWarm, &input(&v), &mut rng),
        [0, target, cold]
    );
    // Once it is full, the warming node (ready soonest) goes first; a cold node
    // would start from nothing.
    v.nodes[0].in_flight = 4;
    assert_eq!(
        order(&LeastLoadedWarm, &input(&v), &mut rng),
        [target, cold, 0]
    );
    // Warming another function changes nothing for this one.
    v.nodes[target].warming = WarmSet::of(["other@0123456789abcdef"]);
    v.nodes[0].in_flight = 3;
    assert_eq!(prewarm_target(&input(&v)), Some(target));
}

#[test]
fn a_function_warm_on_fewer_nodes_than_min_warm_gets_a_spare_however_light_its_load() {
    let id = "hello@0123456789abcdef";
    let mut v = view(3);
    v.nodes[0].warm = WarmSet::of([id]);
    let target = |v: &ClusterView, min_warm: usize| {
        prewarm_target(&Input {
            view: v,
            function: fingerprint(id),
            own_in_flight: &[0; 3],
            recently_failed: &[],
            sequence: 0,
            growth: 1.0,
            min_warm,
        })
    };
    // Idle, warm on one node: a spare with min_warm 2, nothing with 1.
    assert_eq!(target(&v, 1), None);
    let spare = target(&v, 2).unwrap();
    assert_ne!(spare, 0);
    // The spare is where load would have put it: the rendezvous choice.
    v.nodes[0].in_flight = 2;
    assert_eq!(target(&v, 1), Some(spare));
    v.nodes[0].in_flight = 0;
    // One warm-up at a time.
    v.nodes[spare].warming = WarmSet::of([id]);
    assert_eq!(target(&v, 2), None);
    // Warm on two: nothing more with 2, a third with 3.
    v.nodes[spare].warming = WarmSet::default();
    v.nodes[spare].warm = WarmSet::of([id]);
    assert_eq!(target(&v, 2), None);
    assert_eq!(target(&v, 3), Some(3 - spare));
    // A warm node gossip holds down does not count: its spare is warmed.
    v.nodes[spare].up = false;
    assert_eq!(target(&v, 2), Some(3 - spare));
    // Never a first warm-up: a function nobody called stays cold.
    assert_eq!(target(&view(3), 2), None);
}

#[test]
fn a_rising_rate_warms_the_next_node_early_and_a_falling_one_holds_back() {
    let mut v = view(3);
    v.nodes[0].warm = WarmSet::of(["hello@0123456789abcdef"]);
    let at = |v: &ClusterView, growth: f64| {
        prewarm_target(&Input {
            view: v,
            function: fingerprint("hello@0123456789abcdef"),
            own_in_flight: &[0; 3],
            recently_failed: &[],
            sequence: 0,
            growth,
            min_warm: 1,
        })
    };
    // A quarter busy: nothing while steady, a warm-up when the rate is set to
    // double within the lead.
    v.nodes[0].in_flight = 1;
    assert_eq!(at(&v, 1.0), None);
    assert!(at(&v, 2.0).is_some());
    // Three quarters busy: a warm-up while steady, none when the rate is falling
    // away fast.
    v.nodes[0].in_flight = 3;
    assert!(at(&v, 1.0).is_some());
    assert_eq!(at(&v, 0.5), None);
}

#[test]
fn only_least_loaded_warm_asks_for_a_prewarm_and_recent_failures_go_last() {
    let mut v = view(3);
    v.nodes[0].warm = WarmSet::of(["hello@0123456789abcdef"]);
    v.nodes[0].in_flight = 3;
    let input = Input {
        view: &v,
        function: fingerprint("hello@0123456789abcdef"),
        own_in_flight: &[0; 3],
        recently_failed: &[true, false, false],
        sequence: 0,
        growth: 1.0,
        min_warm: 1,
    };
    let mut rng = SplitMix64(11);
    let llw = decide(RoutingPolicy::LeastLoadedWarm, &input, &mut rng);
    assert!(llw.prewarm.is_some_and(|i| i != 0), "{llw:?}");
    for name in [RoutingPolicy::RoundRobin, RoutingPolicy::Random] {
        let d = decide(name, &input, &mut rng);
        assert_eq!(d.prewarm, None, "{name:?}");
        assert_eq!(d.order.last(), Some(&0), "{name:?}: {:?}", d.order);
    }
    // The warm node that just failed goes last even under least-loaded-warm.
    assert_eq!(llw.order.last(), Some(&0), "{:?}", llw.order);
}

#[test]
fn when_every_node_is_saturated_the_least_loaded_goes_first() {
    let mut v = view(3);
    v.nodes[0].warm = WarmSet::of(["hello@0123456789abcdef"]);
    for (node, in_flight) in v.nodes.iter_mut().zip([9, 6, 5]) {
        node.in_flight = in_flight;
    }
    let mut rng = SplitMix64(9);
    for seq in 0..20 {
        assert_eq!(
            pick(RoutingPolicy::LeastLoadedWarm, &v, &[0; 3], seq, &mut rng),
            2
        );
    }
}

#[test]
fn the_same_seed_makes_the_same_choices() {
    let mut v = view(5);
    for node in &mut v.nodes {
        node.warm = WarmSet::of(["hello@0123456789abcdef"]);
    }
    let run = |seed| {
        let mut rng = SplitMix64(seed);
        (0..100)
            .map(|seq| pick(RoutingPolicy::LeastLoadedWarm, &v, &[0; 5], seq, &mut rng))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}
