//! Answers longer than one chunk stream while the function writes them: in process,
//! through `Node::invoke`, on real wasmer with `functions/stream`.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use edge_node::runtime::stdout::STREAM_CHUNK;
use edge_node::{Failure, NodeStatus};
use edge_shared::manifest::Limits;
use http::StatusCode;
use support::{call, deploy, node, until_status};

fn running(status: &NodeStatus) -> usize {
    status.deployments.iter().map(|d| d.running).sum()
}

/// Checks that `body` is `stream`'s numbered lines, in order, `mib` MiB of them.
fn check_lines(body: &[u8], mib: usize) {
    assert_eq!(body.len(), mib << 20, "body length");
    for (n, line) in body.chunks(64).enumerate() {
        assert_eq!(&line[..9], format!("{n:08} ").as_bytes(), "line {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_answer_arrives_while_the_function_still_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |_| {});
    let id = deploy(&node, "stream", Limits::default());
    let deployment = node.deployment(&id).unwrap();
    let mut answer = node.invoke(&deployment, call("mib=10")).await.unwrap();
    assert_eq!(answer.head.status, StatusCode::OK);
    let mut rest = answer.rest.take().expect("10 MiB streams");
    // The function cannot have finished: nobody has read its chunks, and the node holds
    // at most a few of them (the rest of its 10 MiB is still to be written).
    assert_eq!(
        running(&node.status()),
        1,
        "the function was not running as its first bytes arrived"
    );
    assert!(answer.output.len() <= STREAM_CHUNK + 64);
    let mut body = BytesMut::from(&answer.body()[..]);
    let mut chunks = 0;
    while let Some(chunk) = rest.next().await {
        assert!(chunk.len() <= STREAM_CHUNK, "a chunk of {}", chunk.len());
        body.extend_from_slice(&chunk);
        chunks += 1;
    }
    let ended = rest.end().await.unwrap();
    body.extend_from_slice(&ended.tail);
    check_lines(&body, 10);
    assert!(chunks >= 100, "only {chunks} chunks");
    assert!(ended.run > Duration::ZERO && ended.fuel_used > 0);
    assert!(until_status(&node, |s| running(s) == 0).await);

    // A short answer comes whole, as before.
    let mut answer = node.invoke(&deployment, call("mib=0")).await.unwrap();
    assert!(answer.rest.take().is_none());
    assert_eq!(answer.body().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_midway_ends_as_a_failure_not_a_short_answer() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |_| {});
    let id = deploy(&node, "stream", Limits::default());
    let deployment = node.deployment(&id).unwrap();

    // A trap after 512 KiB, with the head long gone.
    let mut answer = node
        .invoke(&deployment, call("mib=4&fail=512"))
        .await
        .unwrap();
    let mut rest = answer.rest.take().expect("streams");
    let mut received = answer.body().len();
    while let Some(chunk) = rest.next().await {
        received += chunk.len();
    }
    assert!(received < 4 << 20);
    let failure = rest.end().await.unwrap_err();
    assert_eq!(failure.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(failure.to_string().contains("trapped"), "{failure}");

    // Past the response limit while streaming: stopped there.
    let small = deploy(
        &node,
        "stream",
        Limits {
            max_response_body_bytes: Some(1 << 20),
            ..Limits::default()
        },
    );
    let small = node.deployment(&small).unwrap();
    let mut answer = node.invoke(&small, call("mib=4")).await.unwrap();
    let mut rest = answer.rest.take().expect("streams");
    let mut received = answer.body().len();
    while let Some(chunk) = rest.next().await {
        received += chunk.len();
    }
    assert!(received <= 1 << 20, "{received} bytes passed a 1 MiB limit");
    let failure = rest.end().await.unwrap_err();
    assert!(
        matches!(
            failure,
            Failure::Run(edge_node::runtime::invoke::RunError::ResponseTooLarge { .. })
        ),
        "{failure}"
    );
    assert!(until_status(&node, |s| running(s) == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_reading_frees_the_function_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |_| {});
    let id = deploy(&node, "stream", Limits::default());
    let deployment = node.deployment(&id).unwrap();
    let mut answer = node.invoke(&deployment, call("mib=16")).await.unwrap();
    let rest = answer.rest.take().expect("streams");
    assert_eq!(running(&node.status()), 1);
    // Gone without reading: the function's next write fails and its slot is free, long
    // before its 10 s deadline.
    let failure = rest.end().await.unwrap_err();
    assert!(failure.to_string().contains("stopped reading"), "{failure}");
    assert!(until_status(&node, |s| running(s) == 0).await);
    let mut again = node.invoke(&deployment, call("mib=0")).await.unwrap();
    assert!(again.rest.take().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_reads_too_slowly_holds_the_function_only_until_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), |_| {});
    let id = deploy(
        &node,
        "stream",
        Limits {
            timeout_ms: Some(300),
            ..Limits::default()
        },
    );
    let deployment = node.deployment(&id).unwrap();
    let mut answer = node.invoke(&deployment, call("mib=16")).await.unwrap();
    // Held, never read: the function waits in its write for room, and at its deadline
    // it is stopped there and its slot freed, while the caller still holds the stream.
    let rest = answer.rest.take().expect("streams");
    assert!(
        until_status(&node, |s| running(s) == 0).await,
        "a caller that does not read held the function past its deadline"
    );
    let failure = rest.end().await.unwrap_err();
    assert_eq!(failure.status(), StatusCode::GATEWAY_TIMEOUT, "{failure}");
}
