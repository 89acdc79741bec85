//! Linear memories reused across requests (`runtime::memories`), attacked as a guest
//! would: secrets left behind for the next request, of the same function or another, a
//! trap in the middle of writing them, reads past the end of a memory whose slot was
//! larger before, growth past the limit. On real wasmer, through `Node::invoke`.

mod support;

use std::sync::Arc;

use edge_node::Node;
use edge_shared::config::NodeConfig;
use edge_shared::manifest::{DeploymentId, Limits};
use http::StatusCode;
use support::{call, deploy_wasm, manifest, node, until_status};

const PAGE: u64 = 64 << 10;

/// The body of a call of `id`, or its failure's status and message.
async fn invoke(node: &Node, id: &DeploymentId) -> Result<String, (StatusCode, String)> {
    let deployment = node.deployment(id).unwrap();
    match node.invoke(&deployment, call("")).await {
        Ok(answer) => Ok(String::from_utf8_lossy(&answer.output[answer.head.body_start..]).into()),
        Err(failure) => Err((failure.status(), failure.to_string())),
    }
}

/// A guest with `initial` pages that answers `clean` if every byte of its memory from
/// 128 on is zero (`dirty` otherwise), after filling all of it with secrets, growing by
/// `grow` pages and filling those too (`refused` if the growth is refused); with `trap`,
/// it traps after writing the secrets instead of answering.
fn snoop(initial: u32, grow: u32, trap: bool) -> Vec<u8> {
    let trap = if trap { "unreachable" } else { "" };
    let text = format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") {initial})
          (data (i32.const 16) "Status: 200\n\nclean\n")
          (data (i32.const 48) "Status: 200\n\ndirty\n")
          (data (i32.const 80) "Status: 200\n\nrefused\n")
          (func $nonzero (param $at i32) (param $end i32) (result i32)
            (local $found i32)
            (block $done (loop $next
              (br_if $done (i32.ge_u (local.get $at) (local.get $end)))
              (if (i64.ne (i64.load (local.get $at)) (i64.const 0))
                (then (local.set $found (i32.add (local.get $found) (i32.const 1)))))
              (local.set $at (i32.add (local.get $at) (i32.const 8)))
              (br $next)))
            (local.get $found))
          (func $answer (param $at i32) (param $len i32)
            (i32.store (i32.const 0) (local.get $at))
            (i32.store (i32.const 4) (local.get $len))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
          (func (export "_start")
            (local $end i32) (local $dirty i32)
            (local.set $end (i32.mul (memory.size) (i32.const 65536)))
            (local.set $dirty (call $nonzero (i32.const 128) (local.get $end)))
            (memory.fill (i32.const 128) (i32.const 0xAB) (i32.sub (local.get $end) (i32.const 128)))
            (if (i32.eq (memory.grow (i32.const {grow})) (i32.const -1))
              (then (call $answer (i32.const 80) (i32.const 21)) (return)))
            (memory.fill (local.get $end) (i32.const 0xAB) (i32.mul (i32.const {grow}) (i32.const 65536)))
            {trap}
            (if (local.get $dirty)
              (then (call $answer (i32.const 48) (i32.const 19)))
              (else (call $answer (i32.const 16) (i32.const 19))))))"#
    );
    wasmer::wat2wasm(text.as_bytes()).unwrap().into_owned()
}

/// A guest with `pages` pages that loads the first byte past its memory, which must
/// trap; it answers `reached` if the load returned.
fn peek(pages: u32) -> Vec<u8> {
    let text = format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") {pages})
          (data (i32.const 16) "Status: 200\n\nreached\n")
          (func (export "_start")
            (drop (i32.load8_u (i32.const {end})))
            (i32.store (i32.const 0) (i32.const 16))
            (i32.store (i32.const 4) (i32.const 21))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        end = u64::from(pages) * PAGE
    );
    wasmer::wat2wasm(text.as_bytes()).unwrap().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_sees_zeroed_memory_after_secrets_of_any_function_and_traps() {
    // Pooled (instances made ahead, a memory moves between functions at refills) and not
    // (each request instantiates, taking the memory the previous request gave back).
    for max_per_function in [16, 0] {
        let dir = tempfile::tempdir().unwrap();
        // A small kept part, so that memories are both zeroed in place and handed back.
        let node = node(dir.path(), |c| {
            c.worker_threads = 1;
            c.instance_pool.max_per_function = max_per_function;
            c.instance_pool.keep_resident_kib = 512;
        });
        let writer = deploy_wasm(&node, "writer", &snoop(40, 8, false), Limits::default());
        let trapper = deploy_wasm(&node, "trapper", &snoop(48, 4, true), Limits::default());
        let small = deploy_wasm(&node, "small", &snoop(20, 2, false), Limits::default());
        let before = node.status().memory_pool.reused;
        for round in 0..10 {
            for (name, id) in [("writer", &writer), ("small", &small), ("writer", &writer)] {
                assert_eq!(
                    invoke(&node, id).await.as_deref(),
                    Ok("clean\n"),
                    "{name} saw a previous request's bytes (round {round}, pool {max_per_function})"
                );
                let (status, message) = invoke(&node, &trapper).await.unwrap_err();
                assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
                assert!(message.contains("UnreachableCodeReached"), "{message}");
            }
        }
        let reused = node.status().memory_pool.reused - before;
        assert!(
            reused >= 40,
            "only {reused} instances got a reused memory: the test proved nothing (pool {max_per_function})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_past_the_end_traps_in_a_memory_that_was_larger_before() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |c| {
        c.worker_threads = 1;
        c.instance_pool.max_per_function = 0;
    });
    let grower = deploy_wasm(&node, "grower", &snoop(20, 20, false), Limits::default());
    let peek = deploy_wasm(&node, "peek", &peek(20), Limits::default());
    for _ in 0..5 {
        assert_eq!(invoke(&node, &grower).await.as_deref(), Ok("clean\n"));
        let reused = node.status().memory_pool.reused;
        let (status, message) = invoke(&node, &peek).await.unwrap_err();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(message.contains("HeapAccessOutOfBounds"), "{message}");
        assert_eq!(
            node.status().memory_pool.reused,
            reused + 1,
            "peek did not get the grown memory"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_limit_holds_in_reused_memories() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |c| c.worker_threads = 1);
    let four_mib = Limits {
        memory_limit_mib: Some(4),
        ..Limits::default()
    };
    // 40 pages (2.5 MiB) grown by 30 would be 4.4 MiB: refused; by 24 exactly 4 MiB.
    let over = deploy_wasm(&node, "over", &snoop(40, 30, false), four_mib.clone());
    let at = deploy_wasm(&node, "at", &snoop(40, 24, false), four_mib);
    for _ in 0..5 {
        assert_eq!(invoke(&node, &over).await.as_deref(), Ok("refused\n"));
        assert_eq!(invoke(&node, &at).await.as_deref(), Ok("clean\n"));
    }
    // Past the limit at instantiation, even where a spare memory is larger: refused at
    // deploy.
    let refused = node
        .deploy(
            manifest(
                "big",
                &snoop(80, 1, false),
                Limits {
                    memory_limit_mib: Some(4),
                    ..Limits::default()
                },
            ),
            Some(&snoop(80, 1, false)),
        )
        .expect_err("80 pages are over 4 MiB");
    assert!(refused.to_string().contains("memory"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_counts_each_ready_instance_at_its_length_and_idle_memories_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |c| {
        c.worker_threads = 2;
        c.instance_pool.idle_ttl_ms = 500;
        c.instance_pool.spare_memories = 1;
    });
    let table_bytes = u64::from(NodeConfig::default().max_table_elements) * 16;
    let writer = deploy_wasm(&node, "writer", &snoop(40, 8, false), Limits::default());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let node = Arc::clone(&node);
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move { invoke(&node, &writer).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().as_deref(), Ok("clean\n"));
    }
    // Ready instances hold their starting 40 pages (never the 48 a spent one grew to),
    // each counted at exactly that plus its table cap.
    assert!(
        until_status(&node, |s| {
            let ready = s.deployments[0].pool_ready as u64;
            ready > 0
                && s.load.in_flight == 0
                && s.load.memory_reserved == ready * (40 * PAGE + table_bytes)
        })
        .await,
        "reserved memory is not the ready instances at their length: {:?}",
        node.status()
    );
    // Idle past the TTL: nothing reserved, and at most 1 spare memory kept.
    assert!(
        until_status(&node, |s| s.load.memory_reserved == 0
            && s.deployments[0].pool_ready == 0)
        .await,
        "{:?}",
        node.status()
    );
    let pool = node.status().memory_pool;
    assert!(pool.spare <= 1, "{pool:?}");
    assert!(pool.unmapped > 0, "the spare list never filled: {pool:?}");
}
