//! Cluster simulations over the in-memory network, scripted step by step, under tokio's
//! paused clock: convergence of the view, the failure detector, link cuts, delays,
//! draining, and members without the cluster key.

use std::time::Duration;

use edge_net::gossip::simulation::Simulation;
use edge_net::gossip::{ClusterKey, Counters, fingerprint};

const ROUND: Duration = Duration::from_millis(200);

fn key(byte: u8) -> ClusterKey {
    ClusterKey::new(&[byte; 32]).unwrap()
}

/// Members 0..n, each joining through member 0 only.
async fn cluster(n: usize) -> Simulation {
    let mut sim = Simulation::new(key(1), ROUND);
    for i in 0..n {
        let seeds: &[usize] = if i == 0 { &[] } else { &[0] };
        sim.start(i, seeds).await.unwrap();
    }
    sim
}

async fn converges(sim: &Simulation, group: &[usize], within: Duration) -> Duration {
    let group = group.to_vec();
    sim.wait_until(within, async |s| s.converged(&group).await)
        .await
        .unwrap_or_else(|| panic!("{group:?} did not converge within {within:?}"))
}

async fn down_in_view(sim: &Simulation, observer: usize, target: usize) -> bool {
    sim.view_of(observer, target).await.is_some_and(|m| !m.live)
}

#[tokio::test(start_paused = true)]
async fn members_joining_through_one_seed_learn_of_all_and_of_each_change() {
    let mut sim = cluster(5).await;
    let all = [0, 1, 2, 3, 4];
    converges(&sim, &all, Duration::from_secs(10)).await;

    // A load and a warm set published by one member reach all.
    sim.publish(3, 7, &["hello@1"]).await;
    converges(&sim, &all, Duration::from_secs(5)).await;
    for observer in [0, 1, 2, 4] {
        let m = sim.view_of(observer, 3).await.unwrap();
        assert_eq!(m.load.in_flight, 7);
        assert!(m.warm.contains(fingerprint("hello@1")));
        assert_eq!(m.name, "m3");
    }

    // A member started later, seeded by a member other than the first, joins all.
    sim.start(5, &[2]).await.unwrap();
    converges(&sim, &[0, 1, 2, 3, 4, 5], Duration::from_secs(10)).await;
}

#[tokio::test(start_paused = true)]
async fn a_crashed_member_is_marked_down_and_a_cut_link_or_delays_are_not_deaths() {
    let mut sim = cluster(4).await;
    converges(&sim, &[0, 1, 2, 3], Duration::from_secs(10)).await;

    // Cut link: 1 and 2 hear of each other through 0 and 3, and keep each other live.
    sim.network.cut(Simulation::addr(1), Simulation::addr(2));
    sim.publish(1, 3, &[]).await;
    converges(&sim, &[0, 1, 2, 3], Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    for (a, b) in [(1, 2), (2, 1)] {
        assert!(
            !down_in_view(&sim, a, b).await,
            "{a} holds {b} down over a cut link"
        );
    }
    sim.network.heal(Simulation::addr(1), Simulation::addr(2));

    // Every link 150 ms slower (most of a round): still no false death.
    sim.network.delay_all(Duration::from_millis(150));
    sim.publish(0, 1, &[]).await;
    converges(&sim, &[0, 1, 2, 3], Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    for observer in [0, 1, 2, 3] {
        for target in [0, 1, 2, 3] {
            if observer != target {
                assert!(!down_in_view(&sim, observer, target).await);
            }
        }
    }
    sim.network.delay_all(Duration::ZERO);

    // A crash: every other member marks it down within a few seconds.
    sim.crash(3);
    let took = sim
        .wait_until(Duration::from_secs(10), async |s| {
            let mut all = true;
            for o in [0, 1, 2] {
                all &= down_in_view(s, o, 3).await;
            }
            all
        })
        .await
        .expect("member 3 marked down by all within 10 s");
    assert!(took >= ROUND, "not before a round went by: {took:?}");

    // An isolated member is marked down, then live again when the network heals.
    sim.network.isolate(Simulation::addr(2));
    sim.wait_until(Duration::from_secs(10), async |s| {
        down_in_view(s, 0, 2).await && down_in_view(s, 2, 0).await
    })
    .await
    .expect("an isolated member and the rest mark each other down");
    sim.network.rejoin(Simulation::addr(2));
    converges(&sim, &[0, 1, 2], Duration::from_secs(10)).await;
}

#[tokio::test(start_paused = true)]
async fn draining_reaches_every_member_within_rounds() {
    let sim = cluster(3).await;
    converges(&sim, &[0, 1, 2], Duration::from_secs(10)).await;
    sim.member(2).unwrap().set_draining().await;
    let took = sim
        .wait_until(Duration::from_secs(5), async |s| {
            let mut all = true;
            for o in [0, 1] {
                all &= s.view_of(o, 2).await.is_some_and(|m| m.draining && m.live);
            }
            all
        })
        .await
        .expect("draining seen by all");
    assert!(took <= ROUND * 10, "draining took {took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_member_without_the_cluster_key_is_dropped_and_counted() {
    let mut sim = cluster(3).await;
    converges(&sim, &[0, 1, 2], Duration::from_secs(10)).await;
    sim.start_with_key(3, &[0, 1], key(2)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    for observer in [0, 1, 2] {
        assert!(
            sim.view_of(observer, 3).await.is_none(),
            "{observer} let the intruder in"
        );
    }
    assert!(
        sim.view_of(3, 0).await.is_none(),
        "the intruder learned the cluster"
    );
    let rejected: u64 = [0, 1]
        .iter()
        .map(|&i| Counters::get(&sim.member(i).unwrap().counters().rejected))
        .sum();
    assert!(rejected >= 10, "intruder datagrams counted: {rejected}");
    let intruder_rejected = Counters::get(&sim.member(3).unwrap().counters().rejected);
    assert_eq!(intruder_rejected, 0, "members never answered the intruder");
    converges(&sim, &[0, 1, 2], Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_key_holder_cannot_pass_as_another_member() {
    let mut sim = cluster(3).await;
    converges(&sim, &[0, 1, 2], Duration::from_secs(10)).await;
    // Member 3 holds the cluster key and a node certificate of its own, for `m3`, and
    // joins as `m1` (a later incarnation, which would shadow the real one), draining.
    let own = sim.credentials("m3").unwrap();
    sim.start_as(3, &[0], key(1), "m1", own).await.unwrap();
    sim.member(3).unwrap().set_draining().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    for observer in [0, 2] {
        let members = sim.member(observer).unwrap().members().await;
        let named_m1: Vec<_> = members.iter().filter(|m| m.name == "m1").collect();
        assert_eq!(named_m1.len(), 1, "{observer} sees {named_m1:?}");
        assert_eq!(named_m1[0].gossip, Simulation::addr(1));
        assert!(!named_m1[0].draining);
        assert!(
            !members.iter().any(|m| m.gossip == Simulation::addr(3)),
            "{observer} admitted the impostor"
        );
        let forged = Counters::get(&sim.member(observer).unwrap().counters().forged);
        assert!(forged >= 1, "{observer} counted no forgery");
    }
    // Datagrams were signed with the cluster key: the transport let them through.
    let received = Counters::get(&sim.member(0).unwrap().counters().rejected);
    assert_eq!(received, 0);
}

#[tokio::test(start_paused = true)]
async fn a_member_warming_a_function_is_known_as_such_until_it_shows_warm() {
    use edge_net::gossip::WarmSet;
    use edge_shared::routing::{self, Input, SplitMix64};
    use edge_shared::view::ClusterView;
    let sim = cluster(4).await;
    let all = [0, 1, 2, 3];
    converges(&sim, &all, Duration::from_secs(10)).await;
    // m1 has the function warm and full; m2 starts loading it and says so.
    sim.publish(1, 8, &["hello@1"]).await;
    let warming = WarmSet::of(["hello@1"]);
    let m2 = sim.member(2).unwrap();
    m2.publish_warming(&warming).await;
    m2.publish_engine("0123456789abcdef").await;
    converges(&sim, &all, Duration::from_secs(5)).await;
    let seen = sim.view_of(0, 2).await.unwrap();
    assert!(seen.warming.contains(fingerprint("hello@1")));
    assert_eq!(seen.engine, "0123456789abcdef");

    // What member 0 routes on: m1 is full (8 in flight on 4 slots), so the warming m2
    // comes first, before the cold m3 (which would start from nothing), and no second
    // warm-up is asked of anyone.
    let order = |members: &[edge_net::gossip::Member]| {
        let view = ClusterView::build(members, "m0");
        let input = Input {
            view: &view,
            function: fingerprint("hello@1"),
            own_in_flight: &vec![0; view.nodes.len()],
            recently_failed: &vec![false; view.nodes.len()],
            sequence: 0,
            growth: 1.0,
            min_warm: 1,
        };
        let decision = routing::decide(
            edge_shared::config::RoutingPolicy::LeastLoadedWarm,
            &input,
            &mut SplitMix64(1),
        );
        let names: Vec<String> = decision
            .order
            .iter()
            .map(|&i| view.nodes[i].name.clone())
            .collect();
        (names, decision.prewarm)
    };
    let members = sim.member(0).unwrap().members().await;
    let (names, prewarm) = order(&members);
    assert_eq!(names, ["m2", "m3", "m1"], "{names:?}");
    assert_eq!(prewarm, None);

    // Ready: the warming set empties and the warm set has it.
    sim.publish(2, 0, &["hello@1"]).await;
    m2.publish_warming(&WarmSet::default()).await;
    converges(&sim, &all, Duration::from_secs(5)).await;
    let seen = sim.view_of(0, 2).await.unwrap();
    assert!(seen.warming.is_empty() && seen.warm.contains(fingerprint("hello@1")));
    let (names, _) = order(&sim.member(0).unwrap().members().await);
    assert_eq!(names[0], "m2", "{names:?}");
}
