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
    /// Nodes a function that takes requests is kept warm on, load or not (the gateway's
    /// `min_warm_nodes`): fewer, and the next is warmed ([`prewarm_target`]).
    pub min_warm: usize,
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

/// The node to warm the function on ahead of need, the first cold usable node in its
/// rendezvous order (where its next cold start would land anyway):
///
/// - while it is warm on fewer usable nodes than [`Input::min_warm`], whatever their
///   load: a spare, so that losing a node leaves a warm one to take its requests at
///   once, rather than every survivor starting cold;
/// - when every usable node where it is warm is loaded past [`PREWARM_AT`] once its load
///   is scaled by the function's projected growth ([`Input::growth`]: a rising rate asks
///   early, a falling one holds back).
///
/// `None` otherwise, when nothing is warm yet (the first request warms it), while a node
/// is warming it already (one at a time), or when no cold node is left.
pub fn prewarm_target(input: &Input<'_>) -> Option<usize> {
    let nodes = &input.view.nodes;
    let usable: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].usable()).collect();
    let function = input.function;
    let is_warm = |i: usize| nodes[i].warm.contains(function);
    let warm: Vec<usize> = usable.iter().copied().filter(|&i| is_warm(i)).collect();
    // Cheapest test first: most requests find enough warm nodes, one with room.
    if warm.is_empty()
        || (warm.len() >= input.min_warm
            && warm.iter().any(|&i| {
                estimated_load(&nodes[i], input.own_in_flight[i]) * input.growth < PREWARM_AT
            }))
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
mod tests;
