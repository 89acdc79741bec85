//! The bare-transport baseline: a minimal quinn + h3 server that answers every request
//! with a constant body (the size of `hello`'s answer), with the gateway's own QUIC
//! transport settings and TLS set-up. Loading it on the same machine in the same run says
//! what the transport alone can do, so a full-path figure can be read as a fraction of it.

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use edge_gateway::devcerts::DevCerts;
use edge_shared::{tls, wire};

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
    let endpoint = edge_gateway::ingress::h3::endpoint(addr, config)?;
    Ok((endpoint, certs))
}

/// Answers every request on `endpoint` until it closes.
pub async fn serve(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok(mut h3) =
                h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn)).await
            else {
                return;
            };
            while let Ok(Some(resolver)) = h3.accept().await {
                tokio::spawn(async move {
                    let Ok((_, mut stream)) = resolver.resolve_request().await else {
                        return;
                    };
                    let response = http::Response::builder()
                        .status(http::StatusCode::OK)
                        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                        .header(wire::NODE_HEADER, "baseline")
                        .body(())
                        .expect("a valid response");
                    if stream.send_response(response).await.is_ok()
                        && stream.send_data(Bytes::from_static(BODY)).await.is_ok()
                    {
                        let _ = stream.finish().await;
                    }
                });
            }
        });
    }
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
