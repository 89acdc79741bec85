//! The bare-transport baseline: a minimal quinn + h3 server that answers every request
//! with a constant body (the size of `hello`'s answer). It is the gateway's own
//! transport code, not a copy: the same QUIC settings (`edge_net::quic::USERS`), TLS
//! set-up and HTTP/3 accept loop (`edge_net::http3::serve`), with a constant handler in
//! place of the gateway. Loading it on the same machine in the same run says what the
//! transport alone can do, so a full-path figure can be read as a fraction of it.
//!
//! The bare relay is the floor of the whole path's shape: a server with the same accept
//! loop that forwards each request over one pooled QUIC connection (the gateway's
//! client settings, `edge_net::quic::NODE_POOL`) to a baseline server and relays the
//! answer. Two QUIC hops and three endpoints, as gateway and node, with no routing,
//! admission or wasm: what the whole path would reach if edge's own work cost nothing.

use std::net::SocketAddr;
use std::path::Path;

use std::sync::Arc;

use bytes::Bytes;
use edge_cli::devcerts::DevCerts;
use edge_net::client::{self, Sender};
use edge_net::http3::{self, Handler, Peer, ServerStream};
use edge_net::lifecycle::{InFlight, Shutdown};
use edge_net::{quic, tls};
use edge_shared::wire;

/// The constant answer.
pub const BODY: &[u8] = b"hello, world!\n";

/// A baseline server bound to `addr` with development certificates in `cert_dir`
/// (made there if missing; clients trust `cert_dir/ca.pem`).
pub fn bind(addr: SocketAddr, cert_dir: &Path) -> anyhow::Result<(quinn::Endpoint, DevCerts)> {
    let certs = DevCerts::ensure(cert_dir, "edge.localhost")?;
    let identity = tls::Identity {
        cert: &certs.gateway_cert,
        key: &certs.gateway_key,
    };
    let config = tls::server_config(identity, None, &[wire::ALPN_H3], true)?;
    let endpoint = quic::server(addr, config, &quic::USERS)?;
    Ok((endpoint, certs))
}

/// The constant answer to every request.
struct Constant;

impl Handler for Constant {
    async fn handle(
        self: Arc<Self>,
        _peer: Peer,
        _request: http::Request<()>,
        mut stream: ServerStream,
    ) {
        let response = http::Response::builder()
            .status(http::StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(wire::NODE_HEADER, "baseline")
            .body(())
            .expect("a valid response");
        let _ = http3::respond(&mut stream, response, Bytes::from_static(BODY)).await;
    }
}

/// Forwards every request to one upstream server and relays its answer.
struct Relay {
    upstream: Sender,
}

impl Handler for Relay {
    async fn handle(
        self: Arc<Self>,
        _peer: Peer,
        request: http::Request<()>,
        mut stream: ServerStream,
    ) {
        let answer = async {
            let (head, mut body) =
                client::exchange(&mut self.upstream.clone(), request, Bytes::new()).await?;
            let body = client::read_to_end(&mut body).await?;
            let (mut parts, ()) = head.into_parts();
            parts
                .headers
                .insert(wire::NODE_HEADER, http::HeaderValue::from_static("relay"));
            anyhow::Ok((http::Response::from_parts(parts, ()), body))
        };
        let (response, body) = match answer.await {
            Ok(answer) => answer,
            Err(e) => {
                eprintln!("relay: {e:#}");
                let failed = http::Response::builder()
                    .status(http::StatusCode::BAD_GATEWAY)
                    .body(())
                    .expect("a valid response");
                (failed, Bytes::new())
            }
        };
        let _ = http3::respond(&mut stream, response, body).await;
    }
}

/// A relay's connection to the baseline server at `upstream`, which trusts `ca`.
async fn relay_to(upstream: SocketAddr, ca: &Path) -> anyhow::Result<Relay> {
    let tls = tls::client_config(ca, None, &[wire::ALPN_H3])?;
    let endpoint = quic::client(quic::any_local(upstream), tls, &quic::NODE_POOL)?;
    let (upstream, _) = client::connect(&endpoint, upstream, "localhost", |_| {}).await?;
    Ok(Relay { upstream })
}

/// Answers every request on `endpoint` until the process ends: with the constant, or,
/// given an `upstream` baseline server (whose certificates are in `cert_dir` too), by
/// relaying to it.
pub async fn serve(
    endpoint: quinn::Endpoint,
    upstream: Option<SocketAddr>,
    cert_dir: &Path,
) -> anyhow::Result<()> {
    match upstream {
        None => serve_with(endpoint, Arc::new(Constant)).await,
        Some(upstream) => {
            let relay = relay_to(upstream, &cert_dir.join("ca.pem")).await?;
            serve_with(endpoint, Arc::new(relay)).await;
        }
    }
    Ok(())
}

async fn serve_with<H: Handler>(endpoint: quinn::Endpoint, handler: Arc<H>) {
    // Never fired: the baseline runs until it is killed.
    let (_never, forever) = Shutdown::manual();
    let grace = std::time::Duration::ZERO;
    // The gateway's default limits for users, as everything else about it.
    let limits = http3::Limits::for_users(&edge_shared::config::IngressConfig::default());
    http3::serve(
        &endpoint,
        handler,
        limits,
        forever,
        InFlight::default(),
        grace,
    )
    .await;
}

/// A baseline server in a child process (`edge-loadtest baseline`), so that it does not
/// share this process's runtime; killed when dropped.
pub struct Child {
    child: std::process::Child,
    /// Its address.
    pub addr: SocketAddr,
    /// The CA its certificate comes from.
    pub ca: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Child {
    /// Starts `edge-loadtest baseline` on a free loopback port.
    pub fn start() -> anyhow::Result<Child> {
        Child::spawn(tempfile::tempdir()?, None)
    }

    /// Starts a bare relay to `upstream` on a free loopback port, with its certificates.
    pub fn start_relay(upstream: &Child) -> anyhow::Result<Child> {
        // The upstream's certificates, so that each trusts the other's CA.
        let dir = tempfile::tempdir()?;
        for file in std::fs::read_dir(upstream.dir.path())? {
            let file = file?;
            if file.file_type()?.is_file() && file.file_name() != "addr" {
                std::fs::copy(file.path(), dir.path().join(file.file_name()))?;
            }
        }
        Child::spawn(dir, Some(upstream.addr))
    }

    fn spawn(dir: tempfile::TempDir, upstream: Option<SocketAddr>) -> anyhow::Result<Child> {
        let announce = dir.path().join("addr");
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command
            .args(["baseline", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir.path())
            .arg("--announce")
            .arg(&announce)
            .stdout(std::process::Stdio::null());
        if let Some(upstream) = upstream {
            command.arg("--relay-to").arg(upstream.to_string());
        }
        let mut child = command.spawn()?;
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(&announce)
                && let Ok(addr) = text.trim().parse()
            {
                return Ok(Child {
                    child,
                    addr,
                    ca: dir.path().join("ca.pem"),
                    dir,
                });
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("the baseline server exited at start ({status})");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        anyhow::bail!("the baseline server did not start within 10 s")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
