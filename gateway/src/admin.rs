//! The admin API: HTTPS (HTTP/1.1 and HTTP/2) on a listener of its own, never the users'
//! port, JSON in and out, every call with the bearer token of `admin.token_file`. The
//! calls are described in `gateway/openapi.json`, which a test checks against this
//! server.
//!
//! - `GET /v1/cluster`: the members as this gateway sees them (state, load, warm
//!   deployments) and its gossip.
//!
//! A call without the token, or with another, is answered `401` and logged with its
//! remote address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edge_net::lifecycle::Shutdown;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::status::StatusServer;

/// The shortest token accepted.
const MIN_TOKEN_CHARS: usize = 32;
/// Admin connections open at once; more are closed as they arrive.
const MAX_CONNECTIONS: usize = 64;
/// Longest a TLS handshake or a request's headers may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head.
const MAX_HEAD_BYTES: usize = 16 << 10;

/// The bearer token callers must present.
pub struct Token(String);

impl Token {
    /// The token in `file`: owner-only, at least 32 characters, surrounding whitespace
    /// ignored.
    pub fn read(file: &Path) -> anyhow::Result<Token> {
        let name = file.display();
        edge_net::tls::check_secret_file(file).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let token = text.trim();
        if token.len() < MIN_TOKEN_CHARS || token.contains(char::is_whitespace) {
            anyhow::bail!(
                "{name}: the admin token must be at least {MIN_TOKEN_CHARS} characters, without spaces"
            );
        }
        Ok(Token(token.to_string()))
    }

    /// Whether `header` (an `Authorization` value) presents this token; compared in
    /// time independent of where they differ.
    fn admits(&self, header: Option<&HeaderValue>) -> bool {
        let Some(given) = header
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
        else {
            return false;
        };
        let (a, b) = (given.as_bytes(), self.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// What the admin API answers from.
pub struct Admin {
    /// The bearer token.
    pub token: Token,
    /// The gateway's view of the cluster.
    pub status: Arc<StatusServer>,
}

/// Serves the admin API on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    admin: Arc<Admin>,
    stop: Shutdown,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let stopped = stop.fired();
    tokio::pin!(stopped);
    loop {
        let (socket, remote) = tokio::select! {
            accepted = crate::ingress::tcp::accept(&listener) => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an admin connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stopped => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(%remote, "admin connection closed: {MAX_CONNECTIONS} open already");
            continue;
        };
        let (acceptor, admin) = (acceptor.clone(), Arc::clone(&admin));
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(tls)) => tls,
                _ => return,
            };
            let service = hyper::service::service_fn(move |request| {
                let admin = Arc::clone(&admin);
                async move { Ok::<_, Infallible>(admin.answer(&request, remote)) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES.max(8192));
            builder.http2().max_header_list_size(MAX_HEAD_BYTES as u32);
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%remote, error = %e, "admin connection ended");
            }
        });
    }
}

impl Admin {
    fn answer(
        &self,
        request: &http::Request<Incoming>,
        remote: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if !self
            .token
            .admits(request.headers().get(http::header::AUTHORIZATION))
        {
            tracing::warn!(%remote, %path, "admin call refused: no valid bearer token");
            let mut answer = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            answer.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            return answer;
        }
        match (request.method(), path) {
            (&Method::GET, "/v1/cluster") => json(StatusCode::OK, &self.status.status()),
            (_, "/v1/cluster") => error(StatusCode::METHOD_NOT_ALLOWED, "GET only"),
            _ => error(StatusCode::NOT_FOUND, "no such admin call"),
        }
    }
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    answer
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_is_admitted() {
        let token = Token("t".repeat(40));
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(token.admits(Some(&header(&format!("Bearer {}", "t".repeat(40))))));
        for wrong in [
            format!("Bearer {}", "t".repeat(39)),
            format!("Bearer {}u", "t".repeat(39)),
            format!("Basic {}", "t".repeat(40)),
            "t".repeat(40),
        ] {
            assert!(!token.admits(Some(&header(&wrong))), "{wrong}");
        }
        assert!(!token.admits(None));
    }

    #[test]
    fn a_short_or_loose_token_file_is_refused_naming_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.token");
        std::fs::write(&file, "short\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = Token::read(&file).err().unwrap().to_string();
        assert!(err.contains("admin.token") && err.contains("32"), "{err}");
        std::fs::write(&file, format!("{}\n", "a".repeat(64))).unwrap();
        assert!(Token::read(&file).is_ok());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Token::read(&file).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
