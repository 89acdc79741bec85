//! The bare-transport baseline: a minimal quinn + h3 server that answers every request
//! with a constant body (the size of `hello`'s answer). It is the gateway's own
//! transport code, not a copy: the same QUIC settings (`edge_net::quic::USERS`), TLS
//! set-up and HTTP/3 accept loop (`edge_net::http3::serve`), with a constant handler in
//! place of the gateway. Loading it on the same machine in the same run says what the
//! transport alone can do, so a full-path figure can be read as a fraction of it.

use std::net::SocketAddr;
use std::path::Path;

use std::sync::Arc;

use bytes::Bytes;
use edge_cli::devcerts::DevCerts;
use edge_net::http3::{self, Handler, ServerStream};
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
    async fn handle(self: Arc<Self>, _request: http::Request<()>, mut stream: ServerStream) {
        let response = http::Response::builder()
            .status(http::StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(wire::NODE_HEADER, "baseline")
            .body(())
            .expect("a valid response");
        let _ = http3::respond(&mut stream, response, Bytes::from_static(BODY)).await;
    }
}

/// Answers every request on `endpoint` until the process ends.
pub async fn serve(endpoint: quinn::Endpoint) {
    // Never fired: the baseline runs until it is killed.
    let (_never, forever) = Shutdown::manual();
    let grace = std::time::Duration::ZERO;
    // The gateway's default limits for users, as everything else about it.
    let limits = http3::Limits::for_users(&edge_shared::config::IngressConfig::default());
    let constant = Arc::new(Constant);
    http3::serve(
        &endpoint,
        constant,
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
    _dir: tempfile::TempDir,
}

impl Child {
    /// Starts `edge-loadtest baseline` on a free loopback port.
    pub fn start() -> anyhow::Result<Child> {
        let dir = tempfile::tempdir()?;
        let announce = dir.path().join("addr");
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args(["baseline", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir.path())
            .arg("--announce")
            .arg(&announce)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(&announce)
                && let Ok(addr) = text.trim().parse()
            {
                return Ok(Child {
                    child,
                    addr,
                    ca: dir.path().join("ca.pem"),
                    _dir: dir,
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
