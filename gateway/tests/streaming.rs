//! Long answers stream from the function through the node and the gateway to the user:
//! real processes on loopback, `functions/stream`, over HTTP/3 and HTTP/1.1.

mod support;

use bytes::{Buf, Bytes};
use edge_net::{client, quic};
use edge_shared::manifest::Limits;
use http::{Request, StatusCode};
use support::{function, start, url};

/// `stream`'s body of `mib` MiB: numbered 64-byte lines, in order.
fn check_lines(body: &[u8], mib: usize) {
    assert_eq!(body.len(), mib << 20, "body length");
    for (n, line) in body.chunks(64).enumerate() {
        assert_eq!(&line[..9], format!("{n:08} ").as_bytes(), "line {n}");
    }
}

/// `GET url`, answered `200`: the response's stream, its body still to read.
async fn get(sender: &mut client::Sender, url: &str) -> client::ClientStream {
    let request = Request::get(url).body(()).unwrap();
    let (head, stream) = client::exchange(sender, request, Bytes::new())
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK, "{url}");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_answer_reaches_the_user_while_the_function_still_writes_it() {
    let (cluster, _dir) = start(1, vec![function("stream", Limits::default())]);
    let tls = client::trusting(&cluster.certs().ca).unwrap();
    let addr = cluster.gateway_addr();
    let endpoint = quic::client(quic::any_local(addr), tls, &quic::CLIENT).unwrap();
    let (mut sender, _) = client::connect(&endpoint, addr, "localhost", |_| {})
        .await
        .unwrap();

    // 16 MiB, more than every buffer on the way (the node's few chunks, two QUIC
    // stream windows, the gateway's hand-over): while the user holds the first bytes
    // and reads no more, the function cannot have finished writing.
    let mut stream = get(&mut sender, &url(&cluster, "/stream?mib=16")).await;
    let mut body = Vec::with_capacity(16 << 20);
    let mut first = stream.recv_data().await.unwrap().expect("a first chunk");
    body.extend_from_slice(&first.copy_to_bytes(first.remaining()));
    assert_eq!(
        support::running(&cluster, 0, "stream").await,
        1,
        "the function had finished before the user got its first bytes"
    );
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    check_lines(&body, 16);

    // A function that fails after its head went out: the user's stream is reset, never
    // ended as if the answer were whole.
    let mut stream = get(&mut sender, &url(&cluster, "/stream?mib=8&fail=1024")).await;
    let mut received = 0;
    let broken = loop {
        match stream.recv_data().await {
            Ok(Some(chunk)) => received += chunk.remaining(),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(
        broken,
        "a stream that failed after {received} bytes ended cleanly"
    );
    assert!(received < 8 << 20);

    // And over HTTP/1.1 on the gateway's TCP port: the whole body, and a broken one
    // that curl reports as such.
    let ca = cluster.certs().ca.clone();
    let curl = |path: &str| {
        let url = url(&cluster, path).replace("localhost", "127.0.0.1");
        let ca = ca.clone();
        async move {
            tokio::process::Command::new("curl")
                .args(["-s", "--http1.1", "--max-time", "20", "--cacert"])
                .arg(&ca)
                .arg(&url)
                .output()
                .await
                .unwrap()
        }
    };
    let whole = curl("/stream?mib=4").await;
    assert!(whole.status.success(), "{whole:?}");
    check_lines(&whole.stdout, 4);
    let broken = curl("/stream?mib=8&fail=1024").await;
    assert!(
        !broken.status.success(),
        "curl took a broken answer of {} bytes as whole",
        broken.stdout.len()
    );
    assert!(broken.stdout.len() < 8 << 20);
}
