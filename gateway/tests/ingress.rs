//! The ingress under abuse, over real processes: connections that never finish their TLS
//! handshake or their headers are closed on time, the connection cap holds, a header
//! flood is refused, and other users are served all along.

mod support;

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use edge_shared::config::IngressConfig;
use edge_shared::manifest::Limits;
use http::StatusCode;
use support::{client, function, start_with, url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Far longer than any limit below: a connection still open after it was never closed.
const LONGER_THAN_ANY_LIMIT: Duration = Duration::from_secs(15);

/// Whether the server closed `socket` before [`LONGER_THAN_ANY_LIMIT`] passed.
fn closed_by_server(mut socket: std::net::TcpStream) -> bool {
    socket
        .set_read_timeout(Some(LONGER_THAN_ANY_LIMIT))
        .unwrap();
    let mut buf = [0u8; 512];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_header_connections_are_closed_on_time_while_others_are_served() {
    let (cluster, _dir) = support::hello_with_ingress(IngressConfig {
        handshake_timeout_ms: 300,
        header_read_timeout_ms: 300,
        ..IngressConfig::default()
    });
    let addr = cluster.gateway_addr();
    // 20 connections that never start TLS.
    let silent: Vec<_> = (0..20)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // 20 that finish TLS, then send half a request head and stop.
    let mut tls = edge_net::tls::client_config(&cluster.certs().ca, None, &[b"http/1.1"]).unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let mut slow = Vec::new();
    for _ in 0..20 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = connector.connect(name, tcp).await.unwrap();
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(stream);
    }
    // Meanwhile, others are served.
    let c = client(&cluster).await;
    for _ in 0..5 {
        assert_eq!(
            c.get(&url(&cluster, "/hello")).await.unwrap().status,
            StatusCode::OK
        );
    }
    let silent_closed = tokio::task::spawn_blocking(move || {
        silent
            .into_iter()
            .filter(|s| closed_by_server(s.try_clone().unwrap()))
            .count()
    });
    for mut stream in slow {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(LONGER_THAN_ANY_LIMIT, stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "a slow-header connection was never closed");
        assert!(
            !String::from_utf8_lossy(&rest).contains("hello, world"),
            "a half-sent request was served"
        );
    }
    assert_eq!(
        silent_closed.await.unwrap(),
        20,
        "a silent connection was never closed"
    );
    assert_eq!(
        c.get(&url(&cluster, "/hello")).await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_and_frees_up() {
    let (cluster, _dir) = support::hello_with_ingress(IngressConfig {
        max_connections: 3,
        ..IngressConfig::default()
    });
    let addr = cluster.gateway_addr();
    let held: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // Give the gateway time to accept the three before the fourth arrives: poll its
    // refusal (a fourth is closed at once; before the three are counted it would wait).
    let mut refused = false;
    for _ in 0..50 {
        let extra = std::net::TcpStream::connect(addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 1];
        if matches!((&extra).read(&mut buf), Ok(0)) {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "a fourth TCP connection was kept over max_connections = 3"
    );
    // HTTP/3 has its own count; and once the three go, TCP takes connections again.
    let c = client(&cluster).await;
    assert_eq!(
        c.get(&url(&cluster, "/hello")).await.unwrap().status,
        StatusCode::OK
    );
    drop(held);
    let ca = cluster.certs().ca.clone();
    let hello = url(&cluster, "/hello").replace("localhost", "127.0.0.1");
    let served = support::eventually(Duration::from_secs(10), || {
        let (ca, hello) = (ca.clone(), hello.clone());
        async move {
            let out = tokio::process::Command::new("curl")
                .args(["-s", "--http1.1", "--max-time", "2", "--cacert"])
                .arg(&ca)
                .arg(&hello)
                .output()
                .await
                .unwrap();
            out.stdout == b"hello, world!\n"
        }
    })
    .await;
    assert!(served, "TCP never took connections again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_flood_over_http3_is_refused_and_others_are_served() {
    let (cluster, _dir) = support::hello_with_ingress(IngressConfig {
        max_header_bytes: 4096,
        ..IngressConfig::default()
    });
    let c = client(&cluster).await;
    let flood = "x".repeat(64 << 10);
    let request = http::Request::get(url(&cluster, "/hello"))
        .header("x-flood", flood)
        .body(())
        .unwrap();
    let answer = c.send(request, bytes::Bytes::new()).await;
    assert!(
        answer.as_ref().map_or(true, |r| r.status != StatusCode::OK),
        "a 64 KiB header block was taken: {answer:?}"
    );
    let c = client(&cluster).await;
    assert_eq!(
        c.get(&url(&cluster, "/hello")).await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_held_at_once_are_bounded_gateway_wide() {
    let (cluster, _dir) = start_with(1, vec![function("echo", Limits::default())], |spec| {
        spec.ingress = IngressConfig {
            max_buffered_body_bytes: 64 << 10,
            ..IngressConfig::default()
        };
    });
    let c = client(&cluster).await;
    let post = |size: usize| {
        let request = http::Request::post(url(&cluster, "/echo"))
            .body(())
            .unwrap();
        (request, bytes::Bytes::from(vec![b'x'; size]))
    };
    // Within the function's 16 MiB limit, but more than the gateway holds at once.
    let (request, body) = post(100 << 10);
    let r = c.send(request, body).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("retry-after"), Some("1"));
    let (request, body) = post(10 << 10);
    let r = c.send(request, body).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "what was held is given back");
}
