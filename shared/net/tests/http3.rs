//! HTTP/3 between edge's client and server over real connections. Header fields survive
//! QPACK both ways: the request's through the client's encoder and the server's decoder,
//! the answer's the other way. Every field is a literal, so each goes through the
//! Huffman coder (the vendored h3's fast encoder, vendor/README.md) and back through
//! h3's decoder. And a connection given up here fails its requests as `lost`, one the
//! server closed does not.

use std::sync::Arc;

use bytes::Bytes;
use edge_net::client::{self, H3Client};
use edge_net::http3::{self, Handler, Peer, ServerStream};
use edge_net::lifecycle::{InFlight, Shutdown};
use edge_net::pki::{ClusterCa, Usage};
use edge_net::{quic, tls};
use http::{HeaderMap, HeaderName, HeaderValue, Request};

/// Answers with the request's own `x-*` header fields; `/hang` only after 30 s.
struct Echo;

impl Handler for Echo {
    async fn handle(
        self: Arc<Self>,
        _peer: Peer,
        request: http::Request<()>,
        mut stream: ServerStream,
    ) {
        if request.uri().path() == "/hang" {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        }
        let mut response = http::Response::builder().status(200);
        for (name, value) in request.headers() {
            if name.as_str().starts_with("x-") {
                response = response.header(name, value);
            }
        }
        let response = response.body(()).expect("a valid response");
        let _ = http3::respond(&mut stream, response, Bytes::new()).await;
    }
}

/// Field values of every byte a value may hold (visible ASCII, space, tab inside, and
/// obs-text), of every length up to 300, and with all 256 codes' lengths mixed.
fn fields() -> HeaderMap {
    let legal: Vec<u8> = (0x20..=0x7e).chain(0x80..=0xff).collect();
    let mut fields = HeaderMap::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for len in 1..=300usize {
        let value: Vec<u8> = (0..len)
            .map(|i| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                match i {
                    // No leading or trailing whitespace: HTTP trims it.
                    0 => b'a',
                    _ if i == len - 1 => b'z',
                    _ if i % 37 == 5 => b'\t',
                    _ => legal[(seed % legal.len() as u64) as usize],
                }
            })
            .collect();
        let name = HeaderName::try_from(format!("x-field-{len}")).unwrap();
        fields.insert(name, HeaderValue::from_bytes(&value).unwrap());
    }
    // Names of every letter, digit and symbol a name may hold.
    let name = "x-!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz";
    fields.insert(
        HeaderName::try_from(name).unwrap(),
        HeaderValue::from_static("v"),
    );
    fields
}

/// An echoing HTTP/3 server on loopback, under a member's limits; its CA's file, the
/// folder that holds it, and its endpoint.
async fn serve_echo() -> (
    std::net::SocketAddr,
    std::path::PathBuf,
    tempfile::TempDir,
    quinn::Endpoint,
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate().unwrap();
    let server = ca.issue(vec!["localhost".into()], Usage::Server).unwrap();
    let paths = ["ca.pem", "server.pem", "server.key"].map(|f| dir.path().join(f));
    std::fs::write(&paths[0], ca.cert_pem()).unwrap();
    std::fs::write(&paths[1], &server.cert_pem).unwrap();
    std::fs::write(&paths[2], &server.key_pem).unwrap();
    std::fs::set_permissions(
        &paths[2],
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let identity = tls::Identity {
        cert: &paths[1],
        key: &paths[2],
    };
    let config = tls::server_config(identity, None, &[b"h3"], true).unwrap();
    let endpoint = quic::server("127.0.0.1:0".parse().unwrap(), config, &quic::USERS).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let serving = endpoint.clone();
    let (stop, stopping) = Shutdown::manual();
    // About 46 KB of fields: past a user's limit, inside a member's.
    let limits = http3::Limits::MEMBERS;
    tokio::spawn(async move {
        let _stop = stop;
        http3::serve(
            &endpoint,
            Arc::new(Echo),
            limits,
            stopping,
            InFlight::default(),
            std::time::Duration::ZERO,
        )
        .await
    });
    let [ca, ..] = paths;
    (addr, ca, dir, serving)
}

#[tokio::test]
async fn header_fields_of_every_byte_round_trip_through_qpack() {
    let (addr, ca, _dir, _) = serve_echo().await;
    let client_tls = tls::client_config(&ca, None, &[b"h3"]).unwrap();
    let client = H3Client::connect(addr, "localhost", client_tls)
        .await
        .unwrap();
    let sent = fields();
    let mut request = Request::get(format!("https://localhost:{}/", addr.port()));
    for (name, value) in &sent {
        request = request.header(name, value);
    }
    let reply = client
        .send(request.body(()).unwrap(), Bytes::new())
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    for (name, value) in &sent {
        assert_eq!(reply.headers.get(name), Some(value), "{name}");
    }
    let echoed = reply
        .headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-"));
    assert_eq!(echoed.count(), sent.len());
    client.close().await;
}

/// A hostile client's header block whose Huffman string breaks RFC 7541 5.2 (padding
/// that is not all ones, padding past 7 bits, EOS inside): the connection is closed with
/// QPACK_DECOMPRESSION_FAILED, and the server goes on serving everyone else.
#[tokio::test]
async fn a_malformed_huffman_string_closes_its_connection_and_no_other() {
    let (addr, ca, _dir, _) = serve_echo().await;
    for name in [
        &[0b1001_1000, 0b1000_1101][..], // "gc" padded with 01101
        &[0xff],                         // 8 bits of padding
        &[0xff, 0xff, 0xff, 0xfc],       // EOS
    ] {
        let endpoint = quic::client(
            quic::any_local(addr),
            tls::client_config(&ca, None, &[b"h3"]).unwrap(),
            &quic::CLIENT,
        )
        .unwrap();
        let connection = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
        // A HEADERS frame: the QPACK prefix (no dynamic table), then one literal field
        // with a literal, Huffman-coded name (0b001N_H + a 3-bit length) and an empty
        // value.
        let mut block = vec![0x00, 0x00, 0b0010_1000 | name.len() as u8];
        block.extend_from_slice(name);
        block.push(0x00);
        let mut frame = vec![0x01, block.len() as u8];
        frame.extend_from_slice(&block);
        let (mut send, _recv) = connection.open_bi().await.unwrap();
        send.write_all(&frame).await.unwrap();
        send.finish().unwrap();
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), connection.closed())
            .await
            .expect("the server closes the connection");
        match closed {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, quinn::VarInt::from_u32(0x200), "{name:?}")
            }
            other => panic!("{name:?}: {other}"),
        }
    }
    // Everyone else is still served.
    let client = H3Client::connect(
        addr,
        "localhost",
        tls::client_config(&ca, None, &[b"h3"]).unwrap(),
    )
    .await
    .unwrap();
    let reply = client
        .send(
            Request::get(format!("https://localhost:{}/", addr.port()))
                .header("x-still", "served")
                .body(())
                .unwrap(),
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(reply.headers.get("x-still").unwrap(), "served");
    client.close().await;
}

/// What a request to `/hang` on a new connection to `addr` fails with once `end` has
/// ended the connection (here or at the server).
async fn hung_request_after(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    end: impl FnOnce(quinn::Connection),
) -> client::ExchangeError {
    let endpoint = quic::client(
        quic::any_local(addr),
        tls::client_config(ca, None, &[b"h3"]).unwrap(),
        &quic::CLIENT,
    )
    .unwrap();
    let (mut sender, connection) = client::connect(&endpoint, addr, "localhost", |_| {})
        .await
        .unwrap();
    let hang = Request::get(format!("https://localhost:{}/hang", addr.port()))
        .body(())
        .unwrap();
    let pending =
        tokio::spawn(async move { client::exchange(&mut sender, hang, Bytes::new()).await });
    end(connection);
    match tokio::time::timeout(std::time::Duration::from_secs(10), pending).await {
        Ok(joined) => joined.unwrap().err().expect("no answer from /hang"),
        Err(_) => panic!("the request outlived its connection"),
    }
}

/// The gateway sends a request whose node connection it gave up (gossip holds the node
/// down) on to another node at once, and reconnects to the same node first when the
/// node closed it (a node that restarted): the two must tell apart.
#[tokio::test]
async fn a_connection_given_up_here_fails_its_requests_as_lost_and_one_closed_there_not() {
    let (addr, ca, _dir, server) = serve_echo().await;
    let given_up = hung_request_after(addr, &ca, |connection| {
        connection.close(quinn::VarInt::from_u32(0x100), b"node held down")
    })
    .await;
    assert!(given_up.connection && given_up.lost, "{given_up:?}");
    let closed_there = hung_request_after(addr, &ca, move |_| {
        server.close(quinn::VarInt::from_u32(0x100), b"restarting")
    })
    .await;
    assert!(
        closed_there.connection && !closed_there.lost,
        "{closed_there:?}"
    );
}
