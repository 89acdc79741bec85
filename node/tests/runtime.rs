//! The node's runtime in process, on real wasmer with the example guests: module checks
//! at deploy, fresh instances per request, cold starts after eviction, admission under a
//! burst.

mod support;

use std::sync::Arc;
use std::time::Duration;

use edge_node::runtime::invoke::RunError;
use edge_node::{DeployError, Failure, Node};
use edge_shared::manifest::{ContentId, DeploymentId, Limits};
use edge_shared::wire::Refusal;
use http::StatusCode;
use support::{call, deploy, deploy_wasm, example, manifest, node, until_status};

fn body(answer: &edge_node::Answer) -> &[u8] {
    &answer.output[answer.head.body_start..]
}

#[test]
fn bad_modules_are_refused_at_deploy_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |_| {});
    let refused = |wasm: &[u8], limits: Limits| {
        node.deploy(manifest("bad", wasm, limits), Some(wasm))
            .expect_err("refused")
            .to_string()
    };
    let wat = |text: &str| wasmer::wat2wasm(text.as_bytes()).unwrap().into_owned();

    let import = wat(
        r#"(module (import "env" "open_socket" (func)) (memory (export "memory") 1)
        (func (export "_start")))"#,
    );
    assert!(
        refused(&import, Limits::default()).contains("env.open_socket"),
        "{}",
        refused(&import, Limits::default())
    );
    let no_start = wat(r#"(module (memory (export "memory") 1))"#);
    assert!(refused(&no_start, Limits::default()).contains("_start"));
    assert!(refused(b"\x7fELF not wasm at all", Limits::default()).contains("not"));
    let huge = vec![0u8; edge_shared::module_check::MAX_MODULE_BYTES + 1];
    assert!(refused(&huge, Limits::default()).contains("bytes"));
    // Valid, but its memory's minimum (64 MiB) is over the function's 16 MiB limit:
    // instantiating it is tried at deploy, not first by a request.
    let big_memory = wat(r#"(module (memory (export "memory") 1024) (func (export "_start")))"#);
    let limits = Limits {
        memory_limit_mib: Some(16),
        ..Limits::default()
    };
    let reason = refused(&big_memory, limits);
    assert!(reason.contains("cannot be instantiated"), "{reason}");

    // A manifest whose content id is not the module's hash.
    let hello = example("hello");
    let mut m = manifest("hello", &hello, Limits::default());
    m.content_id = ContentId::of(b"other");
    assert!(matches!(
        node.deploy(m, Some(&hello)),
        Err(DeployError::ContentMismatch { .. })
    ));
    // None of it touched the node: it still deploys and serves.
    assert!(node.status().deployments.is_empty());
    let id = deploy(&node, "hello", Limits::default());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let deployment = node.deployment(&id).unwrap();
    let answer = runtime
        .block_on(node.invoke(&deployment, call("name=x")))
        .unwrap();
    assert_eq!(body(&answer), b"hello, x!\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_sees_a_fresh_instance_and_comes_from_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |_| {});
    let id = deploy(&node, "counter", Limits::default());
    let deployment = node.deployment(&id).unwrap();
    for _ in 0..30 {
        // Between requests, as between real ones, idle workers refill: both of them hold
        // a ready instance before the next request, whichever takes it.
        assert!(
            until_status(&node, |s| s.deployments[0].pool_ready == 2).await,
            "the pool was not refilled: {:?}",
            node.status().deployments
        );
        let answer = node.invoke(&deployment, call("")).await.unwrap();
        assert_eq!(
            body(&answer),
            b"1\n",
            "a global survived into the next request"
        );
    }
    let status = node.status();
    let d = &status.deployments[0];
    assert_eq!(
        (d.pool_hits, d.pool_misses),
        (30, 0),
        "a request with a ready instance waiting instantiated on its own path: {d:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_zero_releases_the_pooled_memory_and_the_function_stays_warm() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |c| c.instance_pool.idle_ttl_ms = 200);
    let id = deploy(&node, "hello", Limits::default());
    let deployment = node.deployment(&id).unwrap();
    node.invoke(&deployment, call("name=x")).await.unwrap();
    assert!(
        until_status(&node, |s| s.load.memory_reserved > 0).await,
        "the pool never reserved memory"
    );
    // Idle past the TTL: the workers drop every ready instance and give back what they
    // reserved, while the compiled module stays in memory.
    assert!(
        until_status(&node, |s| s.load.memory_reserved == 0
            && s.deployments[0].pool_ready == 0)
        .await,
        "pooled instances outlived the idle TTL: {:?}",
        node.status()
    );
    let status = node.status();
    assert_eq!(status.load.warm, vec![id.clone()], "still warm");
    assert_eq!(status.load.in_flight, 0);
    // And back from zero without a cold start.
    let answer = node.invoke(&deployment, call("name=back")).await.unwrap();
    assert_eq!(body(&answer), b"hello, back!\n");
    assert_eq!(answer.timing.get_ms("cold"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_idle_past_its_ttl_leaves_memory_and_comes_back_from_disk_in_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |c| c.module_idle_ttl_ms = 1_000);
    let hello = deploy(&node, "hello", Limits::default());
    let fib = deploy(&node, "fib", Limits::default());
    let deployment = node.deployment(&hello).unwrap();
    node.invoke(&deployment, call("name=x")).await.unwrap();
    // Not idle long enough yet: both stay.
    node.scale_down_idle();
    assert_eq!(node.status().modules_in_memory, 2);
    // fib idles past the TTL while hello keeps being called.
    let until = std::time::Instant::now() + Duration::from_millis(1_300);
    while std::time::Instant::now() < until {
        node.invoke(&deployment, call("name=x")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.scale_down_idle();
    let status = node.status();
    assert_eq!(status.modules_in_memory, 1, "{status:?}");
    assert_eq!(
        status.load.warm,
        vec![hello.clone()],
        "fib left the warm set"
    );
    assert_eq!(status.evictions, 1);
    // Back from zero: from the artifact on disk, never compiled again.
    let answer = node
        .invoke(&node.deployment(&fib).unwrap(), call("n=10"))
        .await
        .unwrap();
    assert_eq!(answer.head.status, StatusCode::OK);
    let timing = &answer.timing;
    println!("back from zero: {}", timing.header_value());
    assert!(
        timing.get_ms("deserialize").unwrap() > 0.0,
        "{}",
        timing.header_value()
    );
    assert_eq!(timing.get_ms("compile"), None);
    assert_eq!(node.status().compiles, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_module_comes_back_by_deserializing_with_its_phases_reported() {
    let dir = tempfile::tempdir().unwrap();
    // Room for one compiled module (the examples' artifacts are about 0.7 MiB each).
    let node = node(dir.path(), |c| c.module_cache_mib = 1);
    let hello = deploy(&node, "hello", Limits::default());
    let fib = deploy(&node, "fib", Limits::default());
    let status = node.status();
    assert_eq!(status.evictions, 1);
    assert_eq!(status.load.warm, vec![fib.clone()]);

    let deployment = node.deployment(&hello).unwrap();
    let answer = node.invoke(&deployment, call("name=back")).await.unwrap();
    assert_eq!(body(&answer), b"hello, back!\n");
    let timing = &answer.timing;
    assert!(
        timing.get_ms("cold").unwrap() > 0.0,
        "{}",
        timing.header_value()
    );
    assert!(timing.get_ms("deserialize").unwrap() > 0.0);
    assert!(timing.get_ms("instantiate").unwrap() > 0.0);
    assert_eq!(timing.get_ms("compile"), None);

    let status = node.status();
    assert_eq!(
        status.compiles, 2,
        "an evicted module is never compiled again"
    );
    assert_eq!(status.load.warm, vec![hello.clone()]);
    let d = status.deployments.iter().find(|d| d.id == hello).unwrap();
    assert_eq!(d.cold_starts, 1);
    assert!(d.cold_load_us > 0 && d.cold_instantiate_us > 0, "{d:?}");

    // Warm now: the next request has no cold phase.
    let answer = node.invoke(&deployment, call("name=warm")).await.unwrap();
    assert_eq!(answer.timing.get_ms("cold"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_gone_from_disk_and_memory_asks_for_a_redeploy() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |c| c.module_cache_mib = 1);
    let hello = deploy(&node, "hello", Limits::default());
    deploy(&node, "fib", Limits::default());
    std::fs::remove_dir_all(dir.path().join("blobs")).unwrap();
    std::fs::remove_dir_all(dir.path().join("artifacts")).unwrap();
    let deployment = node.deployment(&hello).unwrap();
    let failure = node.invoke(&deployment, call("")).await.err().unwrap();
    assert!(matches!(failure, Failure::Refused(Refusal::NotFound)));
    assert!(node.deployment(&hello).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_slots_is_refused_quickly_and_the_admitted_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    // 2 slots; each fib request reserves 64 MiB of a 160 MiB budget: two run at once.
    let node = node(dir.path(), |c| c.memory_budget_mib = 160);
    let limits = Limits {
        memory_limit_mib: Some(64),
        queue_depth: Some(2),
        queue_timeout_ms: Some(60_000),
        ..Limits::default()
    };
    let id = deploy(&node, "fib", limits);
    let deployment = node.deployment(&id).unwrap();
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let node = Arc::clone(&node);
            let deployment = Arc::clone(&deployment);
            tokio::spawn(async move { node.invoke(&deployment, call("n=30")).await })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for task in burst {
        match task.await.unwrap() {
            Ok(answer) => {
                assert_eq!(answer.head.status, StatusCode::OK);
                assert_eq!(body(&answer), b"832040\n");
                ok += 1;
            }
            Err(Failure::Refused(Refusal::Overloaded)) => refused += 1,
            Err(other) => panic!("an admitted request failed: {other}"),
        }
    }
    // At most 2 running + 2 queued at any time are admitted from a simultaneous burst;
    // the rest are refused at once rather than waiting for the minute-long timeout.
    assert_eq!(ok + refused, 20);
    assert!(ok >= 4, "{ok} served");
    assert!(refused >= 10, "{refused} refused");
    let status = node.status();
    assert!(status.peak_memory_reserved <= 160 << 20, "{status:?}");
    assert!(status.peak_memory_reserved >= 128 << 20, "{status:?}");
    assert_eq!(status.overloaded, refused);
    // Permits go back on the workers just after the answers: give them a moment.
    for _ in 0..100 {
        if node.busy() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((node.busy(), node.load().queued), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_memory_limits_hold_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |c| c.worker_threads = 4);
    let queue = |l: Limits| Limits {
        queue_timeout_ms: Some(60_000),
        ..l
    };
    let forever = deploy(
        &node,
        "forever",
        queue(Limits {
            timeout_ms: Some(200),
            ..Limits::default()
        }),
    );
    let hog = deploy(
        &node,
        "hog",
        queue(Limits {
            memory_limit_mib: Some(16),
            ..Limits::default()
        }),
    );
    let hello = deploy(&node, "hello", queue(Limits::default()));
    let mut tasks = Vec::new();
    for (id, n) in [(&forever, 3), (&hog, 3), (&hello, 12)] {
        for _ in 0..n {
            let node = Arc::clone(&node);
            let deployment = node.deployment(id).unwrap();
            tasks.push(tokio::spawn(async move {
                let outcome = node.invoke(&deployment, call("name=x")).await;
                (
                    deployment.manifest.name.clone(),
                    outcome.map(|a| body(&a).to_vec()),
                )
            }));
        }
    }
    for task in tasks {
        match task.await.unwrap() {
            (name, Ok(body)) => {
                assert_eq!(name, "hello");
                assert_eq!(body, b"hello, x!\n");
            }
            (name, Err(failure)) => {
                let expected = match name.as_str() {
                    "forever" => StatusCode::GATEWAY_TIMEOUT,
                    "hog" => StatusCode::INTERNAL_SERVER_ERROR,
                    other => panic!("{other} failed: {failure}"),
                };
                assert_eq!(failure.status(), expected, "{name}: {failure}");
                if name == "hog" {
                    assert!(failure.to_string().contains("16 MiB"), "{failure}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_client_finds_its_slot_free_again_after_each_answer() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |_| {});
    // One at a time, and no waiting at all: a slot still held after its answer would
    // refuse the next request.
    let limits = Limits {
        max_concurrency: Some(1),
        queue_depth: Some(0),
        ..Limits::default()
    };
    let id = deploy(&node, "hello", limits);
    let deployment = node.deployment(&id).unwrap();
    for _ in 0..200 {
        let answer = node.invoke(&deployment, call("name=x")).await;
        assert!(answer.is_ok(), "refused right after the previous answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_sleeps_as_asked_but_never_past_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |c| c.worker_threads = 1);
    let id = deploy(
        &node,
        "sleep",
        Limits {
            timeout_ms: Some(300),
            ..Limits::default()
        },
    );
    let deployment = node.deployment(&id).unwrap();
    let started = std::time::Instant::now();
    let answer = node.invoke(&deployment, call("ms=50")).await.unwrap();
    let text = String::from_utf8_lossy(body(&answer)).to_string();
    let slept: u64 = text
        .trim()
        .strip_prefix("slept ")
        .and_then(|t| t.strip_suffix(" ms"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{text:?}"));
    assert!(slept >= 50, "{text}");
    assert!(started.elapsed() >= Duration::from_millis(50));

    // Asking for 10 s with a 300 ms timeout: a timeout, and the node's one worker is free
    // again for the next request (it was stopped at the deadline, not left sleeping).
    let Err(failure) = node.invoke(&deployment, call("ms=10000")).await else {
        panic!("a 10 s sleep answered within a 300 ms timeout");
    };
    assert_eq!(failure.status(), StatusCode::GATEWAY_TIMEOUT, "{failure}");
    let answer = node.invoke(&deployment, call("ms=0")).await.unwrap();
    assert!(body(&answer).starts_with(b"slept "));
    let s = node.status();
    assert_eq!(s.load.in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_cold_requests_compiles_no_more_at_once_than_the_node_has_slots() {
    let dir = tempfile::tempdir().unwrap();
    // Two slots, and room in memory for one compiled module: the others are cold.
    let node = node(dir.path(), |c| {
        c.module_cache_mib = 1;
        c.defaults.queue_timeout_ms = 60_000;
    });
    let names = ["hello", "fib", "counter", "echo", "sleep"];
    let ids: Vec<DeploymentId> = names
        .iter()
        .map(|name| deploy(&node, name, Limits::default()))
        .collect();
    // No artifact on disk either: every cold start compiles.
    for host in std::fs::read_dir(dir.path().join("artifacts")).unwrap() {
        for artifact in std::fs::read_dir(host.unwrap().path()).unwrap() {
            std::fs::remove_file(artifact.unwrap().path()).unwrap();
        }
    }
    let compiled_before = node.status().compiles;
    let burst: Vec<_> = ids
        .iter()
        .flat_map(|id| [id.clone(), id.clone()])
        .map(|id| {
            let node = Arc::clone(&node);
            tokio::spawn(async move {
                let deployment = node.deployment(&id).unwrap();
                node.invoke(&deployment, call("n=5")).await
            })
        })
        .collect();
    for task in burst {
        let answer = task.await.unwrap().expect("a cold request failed");
        assert_eq!(answer.head.status, StatusCode::OK);
    }
    let status = node.status();
    assert!(status.compiles > compiled_before, "{status:?}");
    assert!(
        (1..=2).contains(&status.peak_concurrent_loads),
        "{} cold loads ran at once on a node of 2 slots",
        status.peak_concurrent_loads
    );
}

#[test]
fn modules_with_threads_several_memories_or_memory64_are_refused_at_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |_| {});
    let wat = |text: &str| wasmer::wat2wasm(text.as_bytes()).unwrap().into_owned();
    for (what, module) in [
        (
            "shared memory",
            r#"(module (memory (export "memory") 1 1 shared) (func (export "_start")))"#,
        ),
        (
            "several memories",
            r#"(module (memory (export "memory") 1) (memory 1) (func (export "_start")))"#,
        ),
        (
            "memory64",
            r#"(module (memory (export "memory") i64 1) (func (export "_start")))"#,
        ),
        (
            "an atomic wait",
            r#"(module (memory (export "memory") 1)
                (func (export "_start")
                  (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))))"#,
        ),
    ] {
        let wasm = wat(module);
        let refused = node
            .deploy(manifest("hostile", &wasm, Limits::default()), Some(&wasm))
            .expect_err(what);
        assert!(
            matches!(
                refused,
                DeployError::Module(edge_shared::module_check::ModuleError::UnsupportedFeature(
                    _
                ))
            ),
            "{what}: {refused}"
        );
        assert!(
            refused.to_string().contains("feature edge does not run"),
            "{what}: {refused}"
        );
    }
    assert!(node.status().deployments.is_empty());
    // The compiler itself refuses them too, should a module ever skip the check.
    let shared = wat(r#"(module (memory 1 1 shared) (func (export "_start")))"#);
    assert!(edge_node::runtime::engine::compile(&shared).is_err());
    // The node serves on.
    let id = deploy(&node, "hello", Limits::default());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answer = runtime
        .block_on(node.invoke(&node.deployment(&id).unwrap(), call("name=x")))
        .unwrap();
    assert_eq!(body(&answer), b"hello, x!\n");
}

/// A guest that makes one hostile host call, `call` (leaving an errno on the stack), and
/// answers `survived` only if the host refused it with `errno`; otherwise it traps.
fn hostile(call: &str, errno: i32) -> Vec<u8> {
    let text = format!(
        r#"(module
          (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 64) "Status: 200\n\nsurvived\n")
          (func (export "_start")
            (if (i32.ne {call} (i32.const {errno})) (then unreachable))
            (i32.store (i32.const 0) (i32.const 64))
            (i32.store (i32.const 4) (i32.const 22))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#
    );
    wasmer::wat2wasm(text.as_bytes()).unwrap().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_host_calls_get_an_errno_and_the_node_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |_| {});
    const FAULT: i32 = 21;
    const FBIG: i32 = 22;
    const INVAL: i32 = 28;
    // An iovec of 4 GiB at address 200 first, for the calls that use one.
    let huge_iovec =
        "(i32.store (i32.const 200) (i32.const 0)) (i32.store (i32.const 204) (i32.const -1))";
    let cases = [
        (
            "random_get of 4 GiB",
            "(call $random_get (i32.const 0) (i32.const -1))".to_string(),
            FAULT,
        ),
        (
            "random_get past the end",
            "(call $random_get (i32.const 65000) (i32.const 1000))".to_string(),
            FAULT,
        ),
        (
            "fd_write of 2^31 iovecs",
            "(call $fd_write (i32.const 1) (i32.const 0) (i32.const 0x7fffffff) (i32.const 16))"
                .to_string(),
            INVAL,
        ),
        (
            "fd_write of iovecs past the end",
            "(call $fd_write (i32.const 1) (i32.const 65532) (i32.const 2) (i32.const 16))"
                .to_string(),
            FAULT,
        ),
        (
            "a 4 GiB write to stderr",
            format!(
                "(block (result i32) {huge_iovec} (call $fd_write (i32.const 2) (i32.const 200) (i32.const 1) (i32.const 16)))"
            ),
            FAULT,
        ),
        (
            "environ_get at the end of the address space",
            "(call $environ_get (i32.const -8) (i32.const 0))".to_string(),
            FAULT,
        ),
    ];
    for (what, call_text, errno) in cases {
        let wasm = hostile(&call_text, errno);
        let id = deploy_wasm(&node, "hostile", &wasm, Limits::default());
        let deployment = node.deployment(&id).unwrap();
        let answer = node
            .invoke(&deployment, call(""))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(body(&answer), b"survived\n", "{what}");
    }
    // A 4 GiB write to stdout is refused before the host reads a byte of it (FBIG), and
    // the request ends as over its response limit.
    let wasm = hostile(
        &format!(
            "(block (result i32) {huge_iovec} (call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 16)))"
        ),
        FBIG,
    );
    let id = deploy_wasm(&node, "hostile", &wasm, Limits::default());
    let failure = node
        .invoke(&node.deployment(&id).unwrap(), call(""))
        .await
        .err()
        .expect("a 4 GiB answer");
    assert_eq!(failure.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(failure.to_string().contains("response limit"), "{failure}");

    let id = deploy(&node, "hello", Limits::default());
    let answer = node
        .invoke(&node.deployment(&id).unwrap(), call("name=x"))
        .await
        .unwrap();
    assert_eq!(body(&answer), b"hello, x!\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_operations_and_host_copies_pay_fuel_by_their_length() {
    let dir = tempfile::tempdir().unwrap();
    // 10 M units for a 10 s request: a loop of 1 MiB bulk operations or host copies
    // charged one unit each would run into the deadline; charged by length, it runs
    // out of fuel after about 80 of them.
    let node = node(dir.path(), |c| c.fuel_per_ms = 1_000);
    let hello = deploy(&node, "hello", Limits::default());
    let wat = |body: &str| {
        let text = format!(
            r#"(module
              (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
              (memory (export "memory") 32)
              (table 1000 1000 funcref)
              (func (export "_start") {body}))"#
        );
        wasmer::wat2wasm(text.as_bytes()).unwrap().into_owned()
    };
    for (what, guest) in [
        (
            "memory.fill",
            "(loop (memory.fill (i32.const 0) (i32.const 0) (i32.const 1048576)) (br 0))",
        ),
        (
            "memory.copy",
            "(loop (memory.copy (i32.const 0) (i32.const 1048576) (i32.const 1048576)) (br 0))",
        ),
        (
            "table.fill",
            "(loop (table.fill (i32.const 0) (ref.null func) (i32.const 1000)) (br 0))",
        ),
        (
            "random_get",
            "(loop (drop (call $random_get (i32.const 0) (i32.const 1048576))) (br 0))",
        ),
    ] {
        let limits = Limits {
            timeout_ms: Some(10_000),
            memory_limit_mib: Some(64),
            ..Limits::default()
        };
        let id = deploy_wasm(&node, "bulk", &wat(guest), limits);
        let failure = fails_then_hello_runs(&node, &id, &hello, what).await;
        assert!(
            matches!(failure, Failure::Run(RunError::FuelExhausted { .. })),
            "{what}: {failure}"
        );
    }
}

/// A node with one worker thread and fuel for minutes: only the deadline can stop its
/// guests, and a worker it failed to free would stop the node.
fn deadline_only_node(dir: &std::path::Path) -> Arc<Node> {
    node(dir, |c| {
        c.worker_threads = 1;
        c.fuel_per_ms = 1_000_000_000;
    })
}

/// Invokes `id`, which must fail (`what` names it), then `hello`, which must answer:
/// the failed run gave its worker back. Returns the failure.
async fn fails_then_hello_runs(
    node: &Node,
    id: &DeploymentId,
    hello: &DeploymentId,
    what: &str,
) -> Failure {
    let failure = node
        .invoke(&node.deployment(id).unwrap(), call(""))
        .await
        .err()
        .unwrap_or_else(|| panic!("{what} answered"));
    let answer = node
        .invoke(&node.deployment(hello).unwrap(), call("name=next"))
        .await
        .unwrap_or_else(|e| panic!("after {what}: {e}"));
    assert_eq!(body(&answer), b"hello, next!\n", "after {what}");
    failure
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_past_its_deadline_is_stopped_there_and_its_worker_freed() {
    let dir = tempfile::tempdir().unwrap();
    let node = deadline_only_node(dir.path());
    let wat = |body: &str| {
        let text = format!(
            r#"(module
              (import "wasi_snapshot_preview1" "sched_yield" (func $sched_yield (result i32)))
              (memory (export "memory") 1)
              (func (export "_start") {body}))"#
        );
        wasmer::wat2wasm(text.as_bytes()).unwrap().into_owned()
    };
    let hello = deploy(
        &node,
        "hello",
        Limits {
            // Longer than a stopped guest keeps the worker, far shorter than the fuel.
            queue_timeout_ms: Some(5_000),
            ..Limits::default()
        },
    );
    for (what, guest) in [
        ("a hot loop", "(loop br 0)"),
        (
            "a host-call loop",
            "(loop (drop (call $sched_yield)) (br 0))",
        ),
        (
            "a memory.fill loop",
            "(loop (memory.fill (i32.const 0) (i32.const 0) (i32.const 65536)) (br 0))",
        ),
    ] {
        let wasm = wat(guest);
        let limits = Limits {
            timeout_ms: Some(200),
            ..Limits::default()
        };
        let id = deploy_wasm(&node, "runaway", &wasm, limits);
        // The node's one worker is free again: the next request runs.
        let failure = fails_then_hello_runs(&node, &id, &hello, what).await;
        assert_eq!(
            failure.status(),
            StatusCode::GATEWAY_TIMEOUT,
            "{what}: {failure}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_not_sealed_by_this_node_is_never_loaded() {
    let dir = tempfile::tempdir().unwrap();
    // Room for one module in memory: deploying fib pushes hello out to its artifact.
    let node = node(dir.path(), |c| c.module_cache_mib = 1);
    let hello = deploy(&node, "hello", Limits::default());
    deploy(&node, "fib", Limits::default());
    let compiles = node.status().compiles;
    // Someone who can write the cache folder swaps hello's artifact for other bytes.
    let artifacts: Vec<_> = std::fs::read_dir(dir.path().join("artifacts"))
        .unwrap()
        .flat_map(|host| std::fs::read_dir(host.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .collect();
    let hello_wasm = example("hello");
    let target = artifacts
        .iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(ContentId::of(&hello_wasm).as_str())
        })
        .unwrap();
    let mut bytes = std::fs::read(target).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(target, &bytes).unwrap();

    let answer = node
        .invoke(&node.deployment(&hello).unwrap(), call("name=safe"))
        .await
        .unwrap();
    assert_eq!(body(&answer), b"hello, safe!\n");
    let status = node.status();
    assert_eq!(status.refused_artifacts, 1, "{status:?}");
    assert_eq!(status.compiles, compiles + 1, "compiled again instead");
    assert_eq!(status.deserializations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_capped_at_the_nodes_limit() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |c| c.max_table_elements = 1_000);
    let wat = |text: &str| wasmer::wat2wasm(text.as_bytes()).unwrap().into_owned();
    // A guest growing its table far past the limit is told no (-1); it answers only then.
    let grower = wat(r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (table 1 funcref)
          (data (i32.const 64) "Status: 200\n\nrefused\n")
          (func (export "_start")
            (if (i32.ne (table.grow (ref.null func) (i32.const 100000000)) (i32.const -1))
              (then unreachable))
            (i32.store (i32.const 0) (i32.const 64))
            (i32.store (i32.const 4) (i32.const 21))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#);
    let id = deploy_wasm(&node, "grower", &grower, Limits::default());
    let answer = node
        .invoke(&node.deployment(&id).unwrap(), call(""))
        .await
        .unwrap();
    assert_eq!(body(&answer), b"refused\n");
    // A module whose table starts over the limit is refused at deploy, with the reason.
    let big = wat(
        r#"(module (memory (export "memory") 1) (table 5000 funcref) (func (export "_start")))"#,
    );
    let refused = node
        .deploy(manifest("big-table", &big, Limits::default()), Some(&big))
        .expect_err("a 5000-element table")
        .to_string();
    assert!(refused.contains("max_table_elements"), "{refused}");
    // Tables count in the memory budget: a pooled instance reserves its cap too.
    assert!(
        until_status(&node, |s| s.load.memory_reserved >= 1_000 * 16).await,
        "{:?}",
        node.status().load
    );
}

#[test]
fn a_deploy_by_content_id_uses_the_blob_held_and_checks_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |_| {});
    let hello = example("hello");
    // Not held yet: refused as missing, nothing loaded.
    let by_id = manifest("greet", &hello, Limits::default());
    assert!(matches!(
        node.deploy(by_id.clone(), None),
        Err(DeployError::ModuleMissing(id)) if id == ContentId::of(&hello)
    ));
    assert!(node.status().deployments.is_empty());
    // Once one deployment brought the module, another naming it by id needs no bytes.
    deploy(&node, "hello", Limits::default());
    let id = by_id.deployment_id();
    node.deploy(by_id, None).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answer = runtime
        .block_on(node.invoke(&node.deployment(&id).unwrap(), call("name=id")))
        .unwrap();
    assert_eq!(body(&answer), b"hello, id!\n");
    // A blob altered on disk no longer matches its id: dropped, and missing again.
    let blob = dir
        .path()
        .join(format!("blobs/{}.wasm", ContentId::of(&hello).as_str()));
    assert!(blob.is_file(), "{}", blob.display());
    let mut altered = hello.clone();
    altered.push(0);
    std::fs::write(&blob, &altered).unwrap();
    let again = manifest("again", &hello, Limits::default());
    assert!(matches!(
        node.deploy(again, None),
        Err(DeployError::ModuleMissing(_))
    ));
    assert!(!blob.exists());
}

#[test]
fn an_undeployed_deployment_refuses_new_calls_and_can_be_deployed_again() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |_| {});
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let id = deploy(&node, "hello", Limits::default());
    let first = node.deployment(&id).unwrap();
    runtime
        .block_on(node.invoke(&first, call("name=a")))
        .unwrap();
    // Its pool filled by the workers first, as on a node left alone for a moment.
    std::thread::sleep(Duration::from_millis(300));
    assert!(node.undeploy(&id));
    assert!(!node.undeploy(&id));
    std::thread::sleep(Duration::from_millis(300));
    assert!(node.deployment(&id).is_none());
    assert!(node.status().deployments.is_empty());
    // Again, by content id: served as before.
    let m = manifest("hello", &example("hello"), Limits::default());
    node.deploy(m, None).unwrap();
    let again = node.deployment(&id).unwrap();
    for _ in 0..3 {
        let answer = runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(30), node.invoke(&again, call("name=b")))
                    .await
            })
            .expect("the call after a redeploy answers")
            .unwrap();
        assert_eq!(body(&answer), b"hello, b!\n");
    }
}

#[test]
fn a_module_shared_by_two_deployments_outlives_the_first_ones_undeploy() {
    // Two deployments of one module: the second loads it from memory. The first is
    // undeployed and its pool's instances dropped; the second still runs: the module's
    // code lives in the engine it was loaded into, which must go with the module.
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |_| {});
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let hello = example("hello");
    let first = deploy_wasm(&node, "first", &hello, Limits::default());
    let second = deploy_wasm(&node, "second", &hello, Limits::default());
    std::thread::sleep(Duration::from_millis(300));
    assert!(node.undeploy(&first));
    std::thread::sleep(Duration::from_millis(300));
    let deployment = node.deployment(&second).unwrap();
    for _ in 0..20 {
        let answer = runtime
            .block_on(node.invoke(&deployment, call("name=still")))
            .unwrap();
        assert_eq!(body(&answer), b"hello, still!\n");
    }
}

/// Guests that wait in host calls up to their deadline (asleep, or writing to a stream
/// nobody reads) are stopped when the wait ends there, by the fuel the watchdog emptied
/// meanwhile. Dozens of them in a row end at their deadline, free their slots, and leave
/// the node serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_waiting_in_host_calls_at_their_deadline_leave_the_node_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |_| {});
    let short = Limits {
        timeout_ms: Some(30),
        ..Limits::default()
    };
    let sleeper = node
        .deployment(&deploy(&node, "sleep", short.clone()))
        .unwrap();
    let writer = node.deployment(&deploy(&node, "stream", short)).unwrap();
    for round in 0..30 {
        let Err(failure) = node.invoke(&sleeper, call("ms=10000")).await else {
            panic!("a 10 s sleep answered within 30 ms");
        };
        assert_eq!(failure.status(), StatusCode::GATEWAY_TIMEOUT, "{failure}");
        // Held without reading: it waits for room in its stream until the deadline.
        let mut answer = node.invoke(&writer, call("mib=16")).await.unwrap();
        let rest = answer.rest.take().expect("streams");
        assert!(
            until_status(&node, |s| s.load.in_flight == 0).await,
            "round {round}: a writer outlived its deadline"
        );
        drop(rest);
    }
    let hello = node
        .deployment(&deploy(&node, "hello", Limits::default()))
        .unwrap();
    let answer = node.invoke(&hello, call("name=x")).await.unwrap();
    assert_eq!(body(&answer), b"hello, x!\n");
}

/// A guest that spends its time in short host calls is most likely to be in one, or in
/// wasmer's glue around one, at its deadline. Stopping it must not disturb host code:
/// hundreds of such guests in a row, on the node's one worker thread, each end at their
/// deadline with a 504, and the worker then runs `hello` as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_in_short_host_calls_at_their_deadline_are_stopped_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let node = deadline_only_node(dir.path());
    let hello = deploy(&node, "hello", Limits::default());
    let wasm = wasmer::wat2wasm(
        br#"(module
          (import "wasi_snapshot_preview1" "clock_time_get"
            (func $clock_time_get (param i32 i64 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "_start")
            (loop
              (drop (call $clock_time_get (i32.const 1) (i64.const 0) (i32.const 64)))
              ;; No iovecs: a write of nothing to stderr.
              (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 0) (i32.const 72)))
              (br 0))))"#,
    )
    .unwrap()
    .into_owned();
    let id = deploy_wasm(
        &node,
        "host-calls",
        &wasm,
        Limits {
            timeout_ms: Some(5),
            ..Limits::default()
        },
    );
    // With wasmer's signal interrupt, 1,500 rounds broke the node in three runs of four
    // (a worker aborted on a leaked `RefCell` borrow, or lost), after 1,000 and more.
    for round in 0..1500 {
        let failure = fails_then_hello_runs(&node, &id, &hello, &format!("round {round}")).await;
        assert_eq!(
            failure.status(),
            StatusCode::GATEWAY_TIMEOUT,
            "round {round}: {failure}"
        );
    }
}
