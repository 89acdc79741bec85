//! The threads of a real cluster run under the scheduling policy their config gives:
//! the gateway's and the node's network threads under `SCHED_BATCH` by default (a woken
//! network thread does not preempt a running guest), the guests' worker threads under
//! Linux's default.

mod support;

use std::collections::BTreeMap;

use edge_shared::manifest::Limits;
use http::StatusCode;
use support::{client, function, start, url};

/// `SCHED_OTHER` and `SCHED_BATCH`, as `/proc/PID/task/TID/stat` reports them.
const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

/// The policies of process `pid`'s threads, by thread name with its number cut off.
fn policies(pid: u32) -> BTreeMap<String, Vec<u32>> {
    let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
        let name = stat[open + 1..close].trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        // Field 41 of stat(5); the fields after the name start at field 3.
        let policy = stat[close + 1..].split_whitespace().nth(41 - 3).unwrap();
        seen.entry(name.to_string())
            .or_default()
            .push(policy.parse().unwrap());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_threads_run_under_sched_batch_and_guests_do_not() {
    let (cluster, _dir) = start(1, vec![function("hello", Limits::default())]);
    let c = client(&cluster).await;
    let r = c.get(&url(&cluster, "/hello")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);

    let node = policies(cluster.node_pid(0));
    assert!(
        node["tokio-rt-worker"].iter().all(|p| *p == SCHED_BATCH),
        "{node:?}"
    );
    assert!(
        node["edge-worker"].iter().all(|p| *p == SCHED_OTHER),
        "{node:?}"
    );
    let gateway = policies(cluster.gateway_pid().unwrap());
    assert!(
        gateway["tokio-rt-worker"].iter().all(|p| *p == SCHED_BATCH),
        "{gateway:?}"
    );
}
