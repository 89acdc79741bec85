//! Abusive clients against real processes, each bounded in time, with other users served
//! all along: clients that never read a large answer (HTTP/1.1, HTTP/2, HTTP/3),
//! connections left idle after a request, thousands of streams on one HTTP/3 connection
//! that never finish their headers, a header flood over HTTP/2, and garbage datagrams
//! at every UDP port of the cluster.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use edge_net::client::trusting;
use edge_shared::config::{FunctionConfig, IngressConfig};
use edge_shared::manifest::Limits;
use http::StatusCode;
use support::{client, function, start_with, url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Far longer than any limit below: a client still held after it was never let go.
const LONGER_THAN_ANY_LIMIT: Duration = Duration::from_secs(15);
/// The large answer: more than socket buffers and flow-control windows hold.
const LARGE: usize = 32 << 20;

async fn hello_is_served(cluster: &edge_cli::cluster::LocalCluster) {
    let c = client(cluster).await;
    let r = c.get(&url(cluster, "/hello")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

/// A guest that answers 32 MiB (its 64 KiB first page, 512 times) to any request.
const SPEW: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) "Content-Type: text/plain\n\n")
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 65536) (i32.const 0))
    (i32.store (i32.const 65540) (i32.const 26))
    (drop (call $fd_write (i32.const 1) (i32.const 65536) (i32.const 1) (i32.const 65544)))
    (i32.store (i32.const 65540) (i32.const 65536))
    (loop $more
      (drop (call $fd_write (i32.const 1) (i32.const 65536) (i32.const 1) (i32.const 65544)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const 512))))))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_a_large_answer_are_abandoned_on_time() {
    let modules = tempfile::tempdir().unwrap();
    let spew = modules.path().join("spew.wasm");
    std::fs::write(&spew, wat::parse_str(SPEW).unwrap()).unwrap();
    let functions = vec![
        function("hello", Limits::default()),
        FunctionConfig {
            name: "spew".into(),
            module: spew,
            limits: Limits {
                max_response_body_bytes: Some(64 << 20),
                ..Limits::default()
            },
            ..FunctionConfig::default()
        },
    ];
    let (cluster, _dir) = start_with(1, functions, |spec| {
        spec.ingress = IngressConfig {
            write_timeout_ms: 500,
            ..IngressConfig::default()
        };
    });
    let spew = url(&cluster, "/spew");
    // HTTP/1.1: a client with a 4 KiB receive buffer that reads nothing. The socket
    // stalls, and the gateway resets the connection.
    let mut h1 = small_buffer_tls(&cluster, b"http/1.1").await;
    h1.write_all(b"GET /spew HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // HTTP/2: a client that never gives the answer flow-control credit, over the same
    // kind of socket: the answer stalls inside HTTP/2, and the gateway resets it.
    let h2 = small_buffer_tls(&cluster, b"h2").await;
    let (mut h2_sender, h2_connection) = h2::client::handshake(h2).await.unwrap();
    tokio::spawn(h2_connection);
    let (h2_answer, _) = h2_sender
        .send_request(http::Request::get(&spew).body(()).unwrap(), true)
        .unwrap();
    let h2_answer = h2_answer.await.unwrap();
    assert_eq!(h2_answer.status(), StatusCode::OK);
    // HTTP/3: a client whose flow-control windows are 64 KiB and which reads nothing.
    let (_endpoint, mut sender) = small_window_h3(&cluster).await;
    let request = http::Request::get(&spew).body(()).unwrap();
    let (head, mut h3) = edge_net::client::exchange(&mut sender, request, Bytes::new())
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);

    // Meanwhile, others are served; then the three read, past the write timeout. Each
    // gets what its buffers held, then the reset, never the whole answer.
    hello_is_served(&cluster).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let read = tokio::time::timeout(LONGER_THAN_ANY_LIMIT, async {
        let mut read = 0;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match h1.read(&mut buf).await {
                Ok(0) | Err(_) => return read,
                Ok(n) => read += n,
            }
        }
    });
    let read = read
        .await
        .expect("HTTP/1.1: the answer neither ended nor was reset");
    assert!(
        read < LARGE,
        "HTTP/1.1: the whole answer came ({read} bytes)"
    );

    let mut body = h2_answer.into_body();
    let (mut read, mut ended) = (0, None);
    while ended.is_none() {
        match tokio::time::timeout(LONGER_THAN_ANY_LIMIT, body.data()).await {
            Ok(Some(Ok(chunk))) => read += chunk.len(),
            Ok(Some(Err(e))) => ended = Some(Err(e)),
            Ok(None) => ended = Some(Ok(())),
            Err(_) => panic!("HTTP/2: the answer neither ended nor was reset"),
        }
    }
    assert!(
        ended.unwrap().is_err(),
        "HTTP/2: the whole answer came ({read} bytes)"
    );

    let mut read = 0;
    let ended = tokio::time::timeout(LONGER_THAN_ANY_LIMIT, async {
        loop {
            match h3.recv_data().await {
                Ok(Some(mut chunk)) => read += chunk.copy_to_bytes(chunk.remaining()).len(),
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("HTTP/3: the answer neither ended nor was reset");
    assert!(
        ended.is_err(),
        "HTTP/3: the whole answer came ({read} bytes)"
    );
    assert!(read < LARGE, "HTTP/3: {read} bytes");
    hello_is_served(&cluster).await;
}

/// A TLS connection to the gateway (ALPN `protocol`) over a socket whose receive
/// buffer is 4 KiB.
async fn small_buffer_tls(
    cluster: &edge_cli::cluster::LocalCluster,
    protocol: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = edge_net::tls::client_config(&cluster.certs().ca, None, &[]).unwrap();
    tls.alpn_protocols = vec![protocol.to_vec()];
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(cluster.gateway_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// An HTTP/3 connection to the gateway whose flow-control windows are 64 KiB.
async fn small_window_h3(
    cluster: &edge_cli::cluster::LocalCluster,
) -> (
    quinn::Endpoint,
    h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
) {
    let conn = small_window_connection(cluster).await;
    let endpoint = conn.0;
    let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn.1))
        .await
        .unwrap();
    tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    (endpoint, sender)
}

async fn small_window_connection(
    cluster: &edge_cli::cluster::LocalCluster,
) -> (quinn::Endpoint, quinn::Connection) {
    let tls = trusting(&cluster.certs().ca).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(64 << 10));
    transport.receive_window(quinn::VarInt::from_u32(128 << 10));
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(cluster.gateway_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_left_idle_is_closed() {
    let (cluster, _dir) = support::hello_with_ingress(IngressConfig {
        idle_timeout_ms: 500,
        // Longer than the test waits: the idle timeout, not this, closes it.
        header_read_timeout_ms: 600_000,
        ..IngressConfig::default()
    });
    let mut stream = small_buffer_tls(&cluster, b"http/1.1").await;
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // The answer, then nothing: the connection stays open for a next request, and
    // is closed once idle.
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(LONGER_THAN_ANY_LIMIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle keep-alive connection stayed open");
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("hello, world"), "{seen}");
    hello_is_served(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_requests_on_one_connection_run_256_at_a_time_and_all_answer() {
    let (cluster, _dir) = support::hello_with_ingress(IngressConfig::default());
    // 2,000 requests at once on one connection: the gateway lets 256 run at a time
    // (the QUIC stream limit), and answers them all.
    let (_endpoint, sender) = small_window_h3(&cluster).await;
    let hello = url(&cluster, "/hello");
    let requests: Vec<_> = (0..2000)
        .map(|_| {
            let (mut sender, hello) = (sender.clone(), hello.clone());
            tokio::spawn(async move {
                let request = http::Request::get(&hello).body(()).unwrap();
                let (head, mut stream) =
                    edge_net::client::exchange(&mut sender, request, Bytes::new()).await?;
                edge_net::client::read_to_end(&mut stream).await?;
                anyhow::Ok(head.status())
            })
        })
        .collect();
    let mut ok = 0;
    for request in requests {
        let status = tokio::time::timeout(LONGER_THAN_ANY_LIMIT * 4, request)
            .await
            .expect("a request on the crowded connection was never answered");
        ok += usize::from(status.unwrap().unwrap() == StatusCode::OK);
    }
    assert_eq!(ok, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_streams_stall_their_headers_is_closed() {
    let (cluster, _dir) = support::hello_with_ingress(IngressConfig {
        header_read_timeout_ms: 300,
        ..IngressConfig::default()
    });
    // 3,000 streams that each start a HEADERS frame (type 1, 128 bytes announced) and
    // never finish it, held open: the first to stall past the header-read timeout
    // closes the connection, so it never holds more than its 256 streams.
    let (_endpoint, conn) = small_window_connection(&cluster).await;
    let attack = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..3000 {
            let Ok((mut send, recv)) = conn.open_bi().await else {
                break;
            };
            if send.write_all(&[0x01, 0x40, 0x80]).await.is_err() {
                break;
            }
            held.push((send, recv));
        }
        (held.len(), conn.close_reason())
    });
    hello_is_served(&cluster).await;
    let (opened, closed) = tokio::time::timeout(LONGER_THAN_ANY_LIMIT, attack)
        .await
        .expect("the stalling connection was never closed")
        .unwrap();
    assert!(opened <= 256, "{opened} streams held at once");
    let closed = closed
        .expect("the stalling connection is closed")
        .to_string();
    assert!(closed.contains("request headers timed out"), "{closed}");
    hello_is_served(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_flood_over_http2_is_refused_and_others_are_served() {
    let (cluster, dir) = support::hello_with_ingress(IngressConfig {
        max_header_bytes: 4096,
        ..IngressConfig::default()
    });
    // 2,000 headers of 40 bytes: 80 KB of header block, in CONTINUATION frames.
    let headers = dir.path().join("headers.txt");
    let lines: String = (0..2000)
        .map(|i| format!("x-flood-{i:04}: {}\n", "v".repeat(24)))
        .collect();
    std::fs::write(&headers, lines).unwrap();
    let output = tokio::process::Command::new("curl")
        .args([
            "-s",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
        ])
        .arg(LONGER_THAN_ANY_LIMIT.as_secs().to_string())
        .arg("--cacert")
        .arg(&cluster.certs().ca)
        .arg("-H")
        .arg(format!("@{}", headers.display()))
        .arg(url(&cluster, "/hello"))
        .output()
        .await
        .unwrap();
    let code = String::from_utf8_lossy(&output.stdout).to_string();
    assert_ne!(output.status.code(), Some(28), "the flood was held open");
    assert_ne!(code, "200", "an 80 KB header block was taken");
    hello_is_served(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_at_every_udp_port_change_nothing() {
    let (cluster, _dir) = start_with(1, vec![function("hello", Limits::default())], |_| {});
    let targets = [
        cluster.gateway_addr(),
        cluster.gossip_seed(),
        cluster.node_addrs()[0],
    ];
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..6000 {
        // A cheap generator: the bytes need be unpredictable to the parser only.
        let len = 1 + (i * 37) % 1400;
        let datagram: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        // Some look like QUIC long headers (first bits 11), the rest anything.
        let mut datagram = datagram;
        if i % 2 == 0 {
            datagram[0] |= 0xc0;
        }
        let _ = socket.send_to(&datagram, targets[i % targets.len()]).await;
    }
    hello_is_served(&cluster).await;
    let status = support::gateway_status(&cluster).await;
    assert!(
        status["gossip"]["rejected"].as_u64() >= Some(1000),
        "{}",
        status["gossip"]
    );
    assert_eq!(
        support::node_state(&cluster, "node-1").await.as_deref(),
        Some("usable")
    );
    hello_is_served(&cluster).await;
}
