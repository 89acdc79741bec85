//! Which node a request goes to: routing policies over an immutable [`ClusterView`].
//!
//! A policy is pure: given the view, the function, the gateway's own in-flight counts
//! and an RNG, it returns the nodes to try in order (the first, then fallbacks for
//! retries). `least-loaded-warm` (see `DESIGN.md`, *Routing*):
//!
//! - a node's estimated load is other gateways' requests as it last reported them (its
//!   in-flight + queued less this gateway's share of that report), plus this gateway's own
//!   requests to it now, counted exactly; over its slots;
//! - among nodes where the function is warm and below saturation, power of two choices:
//!   two drawn at random, the lower estimate first;
//! - with no such node, rendezvous (HRW) hashing of the function id over the healthy
//!   nodes, so that repeated cold starts of one function land on the same few nodes;
//! - down and draining nodes never come first; they close the list, for the retry logic.

use crate::config::RoutingPolicy;
use crate::view::{ClusterView, NodeState};

/// A source of randomness, injected so that decisions can be replayed.
pub trait Rng {
    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64;

    /// A number below `n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// SplitMix64: small, fast, seedable; plenty for load balancing.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl Rng for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// One routing decision's input.
pub struct Input<'a> {
    /// The cluster.
    pub view: &'a ClusterView,
    /// The function: the [`fingerprint`](crate::gossip::fingerprint) of its deployment id (computed once per function,
    /// not per request).
    pub function: u64,
    /// This gateway's in-flight requests per node, now (same order as the view).
    pub own_in_flight: &'a [usize],
    /// Nodes this gateway failed to reach moments ago (same order as the view): they go
    /// last, whatever gossip says of them.
    pub recently_failed: &'a [bool],
    /// Requests this gateway has routed so far (round robin's position).
    pub sequence: usize,
    /// The function's arrival rate one warm-up ahead over its rate now
    /// ([`crate::demand::Demand::growth`]); 1 when unknown.
    pub growth: f64,
}

/// A routing policy: ranks the usable nodes for one request. Pure: all it may use is its
/// input and the RNG, so a decision can be replayed.
pub trait Policy: Send + Sync {
    /// `usable` (up and not draining; indexes into the view), each once, in the order to
    /// try.
    fn rank(&self, input: &Input<'_>, usable: &[usize], rng: &mut dyn Rng) -> Vec<usize>;
}

/// Each request starts one node further along.
pub struct RoundRobin;

impl Policy for RoundRobin {
    fn rank(&self, input: &Input<'_>, usable: &[usize], _: &mut dyn Rng) -> Vec<usize> {
        rotate(usable, input.sequence)
    }
}

/// Each request starts at a node drawn uniformly at random.
pub struct Random;

impl Policy for Random {
    fn rank(&self, _: &Input<'_>, usable: &[usize], rng: &mut dyn Rng) -> Vec<usize> {
        let start = if usable.is_empty() {
            0
        } else {
            rng.below(usable.len())
        };
        rotate(usable, start)
    }
}

/// Power of two choices among warm nodes below saturation, then rendezvous order (see the
/// module's documentation).
pub struct LeastLoadedWarm;

impl Policy for LeastLoadedWarm {
    fn rank(&self, input: &Input<'_>, usable: &[usize], rng: &mut dyn Rng) -> Vec<usize> {
        least_loaded_warm(input, usable, rng)
    }
}

/// The policy a configuration names.
pub fn policy(name: RoutingPolicy) -> &'static dyn Policy {
    match name {
        RoutingPolicy::RoundRobin => &RoundRobin,
        RoutingPolicy::Random => &Random,
        RoutingPolicy::LeastLoadedWarm => &LeastLoadedWarm,
    }
}

/// One request's routing decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The nodes to try, best first (indexes into the view; see [`order`]).
    pub order: Vec<usize>,
    /// A node to warm the function on ahead of need (see [`prewarm_target`]); only
    /// `least-loaded-warm` asks for one.
    pub prewarm: Option<usize>,
}

/// Decides one request's routing under the policy `name`.
pub fn decide(name: RoutingPolicy, input: &Input<'_>, rng: &mut dyn Rng) -> Decision {
    Decision {
        order: order(policy(name), input, rng),
        prewarm: match name {
            RoutingPolicy::LeastLoadedWarm => prewarm_target(input),
            RoutingPolicy::RoundRobin | RoutingPolicy::Random => None,
        },
    }
}

/// The nodes to try, in order: indexes into the view. Every node appears once; down and
/// draining nodes come last, and before them the ones that failed moments ago.
pub fn order(policy: &dyn Policy, input: &Input<'_>, rng: &mut dyn Rng) -> Vec<usize> {
    let nodes = &input.view.nodes;
    let usable: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].usable()).collect();
    let mut first = policy.rank(input, &usable, rng);
    first.sort_by_key(|&i| input.recently_failed.get(i).copied().unwrap_or(false));
    first.extend((0..nodes.len()).filter(|i| !usable.contains(i)));
    first
}

fn rotate(items: &[usize], start: usize) -> Vec<usize> {
    let n = items.len();
    (0..n).map(|k| items[(start + k) % n.max(1)]).collect()
}

/// Estimated load over slots: other gateways' requests as the node last reported them
/// (in flight + queued, less this gateway's share of that report), plus this gateway's
/// own requests to it now, counted exactly (including those waiting on a cold start,
/// which the node does not yet count as in flight or queued).
pub fn estimated_load(node: &NodeState, own_in_flight_now: usize) -> f64 {
    let others = node
        .in_flight
        .saturating_add(node.queued)
        .saturating_sub(node.own_in_flight_at_report);
    others.saturating_add(own_in_flight_now) as f64 / node.slots.max(1) as f64
}

fn least_loaded_warm(input: &Input<'_>, usable: &[usize], rng: &mut dyn Rng) -> Vec<usize> {
    let nodes = &input.view.nodes;
    let load = |i: usize| estimated_load(&nodes[i], input.own_in_flight[i]);
    let function = input.function;
    let warm: Vec<usize> = usable
        .iter()
        .copied()
        .filter(|&i| nodes[i].warm.contains(function) && load(i) < 1.0)
        .collect();
    let mut order = Vec::with_capacity(usable.len());
    if !warm.is_empty() {
        // Power of two choices: two distinct warm nodes at random, the less loaded first
        // (a tie goes to the first drawn, itself random).
        let a = warm[rng.below(warm.len())];
        let b = if warm.len() > 1 {
            let mut b = warm[rng.below(warm.len() - 1)];
            if b == a {
                b = warm[warm.len() - 1];
            }
            b
        } else {
            a
        };
        let (first, second) = if load(b) < load(a) { (b, a) } else { (a, b) };
        order.push(first);
        if second != first {
            order.push(second);
        }
    }
    // Then every other usable node: first the ones loading the function now (gossiped
    // `warming`: ready soonest, where a cold node would start from nothing, so a request
    // never starts a second cold start beside a warm-up), then unsaturated ones in the
    // function's rendezvous order (where a cold start should land), then saturated ones
    // least loaded first (when every node is saturated, the least loaded of all goes
    // first, never the same rendezvous favourite).
    let mut rest: Vec<usize> = usable
        .iter()
        .copied()
        .filter(|i| !order.contains(i))
        .collect();
    // One hash per node, not one per comparison.
    rest.sort_by_cached_key(|&i| {
        let load = load(i);
        if nodes[i].warming.contains(function) && load < 1.0 {
            (0, std::cmp::Reverse(0), (load * 1e6) as u64)
        } else if load < 1.0 {
            (
                1,
                std::cmp::Reverse(rendezvous(input.function, &nodes[i])),
                0,
            )
        } else {
            (2, std::cmp::Reverse(0), (load * 1e6) as u64)
        }
    });
    order.extend(rest);
    order
}

/// Estimated load of the function's warm nodes from which the next node is warmed.
pub const PREWARM_AT: f64 = 0.5;

/// The node to warm the function on ahead of need: when every usable node where it is
/// warm is loaded past [`PREWARM_AT`] once its load is scaled by the function's projected
/// growth ([`Input::growth`]: a rising rate asks early, a falling one holds back), the
/// first cold usable node in its rendezvous order (where its next cold start would land
/// anyway). `None` while a warm node has
/// room, when nothing is warm yet (the first request warms it), while a node is warming
/// it already (one at a time), or when no cold node is left.
pub fn prewarm_target(input: &Input<'_>) -> Option<usize> {
    let nodes = &input.view.nodes;
    let usable: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].usable()).collect();
    let function = input.function;
    let is_warm = |i: usize| nodes[i].warm.contains(function);
    let warm: Vec<usize> = usable.iter().copied().filter(|&i| is_warm(i)).collect();
    // Cheapest test first: most requests find a warm node with room.
    if warm.is_empty()
        || warm
            .iter()
            .any(|&i| estimated_load(&nodes[i], input.own_in_flight[i]) * input.growth < PREWARM_AT)
        || usable.iter().any(|&i| nodes[i].warming.contains(function))
    {
        return None;
    }
    usable
        .into_iter()
        .filter(|&i| !is_warm(i))
        .max_by_key(|&i| rendezvous(input.function, &nodes[i]))
}

/// Where a function's cold starts land: the usable node with its highest rendezvous
/// score. Functions are placed there ahead of their first request.
pub fn home(view: &ClusterView, function: u64) -> Option<usize> {
    (0..view.nodes.len())
        .filter(|&i| view.nodes[i].usable())
        .max_by_key(|&i| rendezvous(function, &view.nodes[i]))
}

/// The rendezvous (highest random weight) score of `node` for `function`: a mix of the
/// function's fingerprint and the node's address, no allocation and no cryptographic
/// hash on the request path. The same on every gateway, so they agree on placement.
fn rendezvous(function: u64, node: &NodeState) -> u64 {
    let ip = match node.addr.ip() {
        std::net::IpAddr::V4(v4) => u128::from(v4.to_bits()),
        std::net::IpAddr::V6(v6) => v6.to_bits(),
    };
    let addr = mix(mix(ip as u64 ^ mix((ip >> 64) as u64)) ^ u64::from(node.addr.port()));
    mix(function ^ addr)
}

/// SplitMix64's finalizer: a strong 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
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
}
