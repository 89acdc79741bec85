//! Deploys over real processes: a deploy, a traffic split and rollbacks while requests
//! keep arriving fail not one of them; a node that joins after a deploy gets the module
//! and serves it.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edge_shared::manifest::Limits;
use http::Method;
use support::{admin, admin_call, answered_by, client, deploy_request, function, start, url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_a_split_and_a_rollback_under_load_fail_no_request() {
    let (cluster, _dir) = start(2, vec![function("echo", Limits::default())]);
    let admin = admin(&cluster);
    let greet = "/v1/functions/greet";
    let route = serde_json::json!({ "routes": [{ "path": "/greet" }] });
    let v1 = deploy_request("hello", route.clone());
    admin_call(&admin, Method::PUT, greet, Some(v1), 201).await;

    // 8 request loops on one HTTP/3 connection until the changes are done (at most
    // 20,000 requests each).
    let c = Arc::new(client(&cluster).await);
    let at = url(&cluster, "/greet");
    let done = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (c, at, done) = (Arc::clone(&c), at.clone(), Arc::clone(&done));
        load.spawn(async move {
            let mut answers: BTreeMap<u64, usize> = BTreeMap::new();
            let mut failures = Vec::new();
            for _ in 0..20_000 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                match c.get(&at).await {
                    Ok(r) if r.status == http::StatusCode::OK => {
                        *answers.entry(answered_by(&r)).or_default() += 1;
                    }
                    Ok(r) => failures.push(format!("{} {:?}", r.status, r.body)),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (answers, failures)
        });
    }
    let pause = || tokio::time::sleep(Duration::from_millis(300));
    pause().await;
    // A new version (a new module, compiled on its home node before it serves).
    let v2 = deploy_request("echo", route.clone());
    assert_eq!(
        admin_call(&admin, Method::PUT, greet, Some(v2), 201).await["version"],
        2
    );
    pause().await;
    // Half and half.
    let split = serde_json::json!({ "traffic": [
        { "version": 1, "percent": 50 }, { "version": 2, "percent": 50 },
    ] });
    admin_call(
        &admin,
        Method::PUT,
        &format!("{greet}/traffic"),
        Some(split),
        200,
    )
    .await;
    pause().await;
    // Back to the last version that served everything: v2, as version 3.
    let back = admin_call(
        &admin,
        Method::POST,
        &format!("{greet}/rollback"),
        None,
        201,
    )
    .await;
    assert_eq!(back["restores"], 2, "{back}");
    pause().await;
    // And to version 1, named, as version 4.
    let named = serde_json::json!({ "version": 1 });
    let back = admin_call(
        &admin,
        Method::POST,
        &format!("{greet}/rollback"),
        Some(named),
        201,
    )
    .await;
    assert_eq!(back["version"], 4, "{back}");
    pause().await;
    done.store(true, Ordering::Relaxed);

    let mut answers: BTreeMap<u64, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    while let Some(loop_result) = load.join_next().await {
        let (a, f) = loop_result.unwrap();
        for (version, n) in a {
            *answers.entry(version).or_default() += n;
        }
        failures.extend(f);
    }
    // The rollbacks' versions reuse modules the nodes held: deployed by content id,
    // the module not sent again.
    let logs = cluster.log("node-1") + &cluster.log("node-2");
    assert!(logs.contains("by_content_id=true"), "{logs}");
    let total: usize = answers.values().sum();
    eprintln!(
        "under load: {total} requests, by version {answers:?}, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        answers.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "{answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_after_a_deploy_gets_the_module_and_serves_it() {
    let (mut cluster, _dir) = start(1, vec![function("hello", Limits::default())]);
    let admin = admin(&cluster);
    let route = serde_json::json!({ "routes": [{ "path": "/greet" }] });
    for module in ["hello", "echo"] {
        let body = deploy_request(module, route.clone());
        admin_call(&admin, Method::PUT, "/v1/functions/greet", Some(body), 201).await;
    }
    // node-2 joins; node-1 goes: only the newcomer can answer.
    let late = cluster.add_node().unwrap();
    let c = client(&cluster).await;
    let joined = support::eventually(Duration::from_secs(20), || async {
        support::node_state(&cluster, "node-2").await.as_deref() == Some("usable")
    })
    .await;
    assert!(joined, "node-2 never became usable at the gateway");
    cluster.kill_node(0);
    let served = support::eventually(Duration::from_secs(20), || async {
        c.get(&url(&cluster, "/greet")).await.is_ok_and(|r| {
            r.status == http::StatusCode::OK && r.header("x-edge-node") == Some("node-2")
        })
    })
    .await;
    assert!(served, "node-2 never served greet");
    let r = c.get(&url(&cluster, "/greet")).await.unwrap();
    assert_eq!(answered_by(&r), 2);
    assert!(
        String::from_utf8_lossy(&r.body).contains("\"path\""),
        "{:?}",
        r.body
    );
    assert!(
        cluster
            .log(&format!("node-{}", late + 1))
            .contains("deployed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_no_longer_routed_is_dropped_from_the_nodes_after_the_grace() {
    let (cluster, _dir) =
        support::start_with(1, vec![function("echo", Limits::default())], |spec| {
            // The shortest grace the gateway accepts is its request timeout, which
            // stays well above what a request takes on a busy machine.
            spec.unrouted_grace_ms = 5_000;
            spec.request_timeout_ms = 5_000;
        });
    let admin = admin(&cluster);
    let route = serde_json::json!({ "routes": [{ "path": "/greet" }] });
    let c = client(&cluster).await;
    for module in ["hello", "echo"] {
        let body = deploy_request(module, route.clone());
        admin_call(&admin, Method::PUT, "/v1/functions/greet", Some(body), 201).await;
        let r = c.get(&url(&cluster, "/greet")).await.unwrap();
        assert_eq!(r.status, http::StatusCode::OK);
    }
    let greets = || async {
        let status = support::node_status(&cluster, 0).await;
        let list = status["deployments"].as_array().unwrap().clone();
        list.into_iter()
            .filter(|d| d["id"].as_str().unwrap().starts_with("greet@"))
            .count()
    };
    // Version 1 leaves the node once its grace is over; version 2 stays and serves.
    let dropped =
        support::eventually(Duration::from_secs(30), || async { greets().await == 1 }).await;
    assert!(dropped, "version 1 is still on the node");
    assert!(
        cluster
            .log("node-1")
            .contains("undeployed: no longer routed")
    );
    let r = c.get(&url(&cluster, "/greet")).await.unwrap();
    assert_eq!((r.status, answered_by(&r)), (http::StatusCode::OK, 2));
    // Back to version 1's module and settings: served again, from the node's blob.
    let back = admin_call(
        &admin,
        Method::POST,
        "/v1/functions/greet/rollback",
        None,
        201,
    )
    .await;
    assert_eq!(back["restores"], 1);
    let r = c.get(&url(&cluster, "/greet")).await.unwrap();
    assert_eq!(
        r.status,
        http::StatusCode::OK,
        "{}\n{}",
        cluster.log("gateway"),
        cluster.log("node-1")
    );
    assert_eq!(r.body.as_ref(), b"hello, world!\n");
}
