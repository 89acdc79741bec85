//! The admin API: HTTPS (HTTP/1.1 and HTTP/2) on a listener of its own, never the users'
//! port, JSON in and out, every call with the bearer token of `admin.token_file`. The
//! calls are described in `gateway/openapi.json`, which a test checks against this
//! server.
//!
//! - `GET /v1/cluster`: the members as this gateway sees them (state, load, warm
//!   deployments) and its gossip.
//! - `PUT /v1/functions/{name}`: a module (base64) with routes, env, secrets, limits and
//!   a schedule makes a new version serving all traffic (or, with `"promote": false`,
//!   0% beside the version serving); the same module and settings again return the
//!   version serving. Checked first, as the cluster file's functions are at start:
//!   `400` for what is not valid, `409` for a route another function has, each naming
//!   it. A new version is deployed on its home node before it serves, so its compile is
//!   not on a user's request.
//! - `GET /v1/functions`, `GET /v1/functions/{name}`: versions, content ids, routes, the
//!   traffic split, the nodes holding each version warm, secrets by name only, and a
//!   schedule's last and next run.
//! - `DELETE /v1/functions/{name}`.
//! - `PUT /v1/functions/{name}/traffic`: `{"traffic": [{"version": 7, "percent": 10},
//!   {"version": 6, "percent": 90}]}`, at most two versions.
//! - `POST /v1/functions/{name}/rollback`, optionally `{"version": N}`: a new version
//!   with the module and settings of version N, or of the previous version that served
//!   all traffic, serving all traffic at once.
//!
//! - `GET /v1/functions/{name}/tail`: the function's calls and log lines as they
//!   happen, as JSON lines ([`tail`]).
//! - `GET /v1/usage[?since=RFC3339]`: what each function and version used over the
//!   cluster ([`usage`]).
//!
//! A call without the token, or with another, is answered `401` and logged with its
//! remote address. Secrets are never in an answer nor a log line.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use edge_net::lifecycle::Shutdown;
use edge_shared::manifest::{Limits, Route, Secrets, is_function_name};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::functions::{self, Functions, Refusal};
use crate::proxy::Gateway;
use crate::registry::{FunctionSpec, Registry, RegistryError, Share};
use crate::status::StatusServer;

mod tail;
mod usage;
mod views;

/// The body of an admin answer: whole, or a stream (`tail`).
pub type AdminBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The shortest token accepted.
const MIN_TOKEN_CHARS: usize = 32;
/// Admin connections open at once; more are closed as they arrive.
const MAX_CONNECTIONS: usize = 64;
/// Longest a TLS handshake or a request's headers may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head.
const MAX_HEAD_BYTES: usize = 16 << 10;
/// Largest deploy request (a module of up to about 48 MiB, in base64).
pub const MAX_DEPLOY_BYTES: usize = 64 << 20;

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
    /// The gateway whose functions it changes.
    pub gateway: Arc<Gateway>,
    /// Where functions are kept.
    pub registry: Arc<dyn Registry>,
    /// Tails that may be open at once (`admin.max_tails`).
    pub tails: Arc<Semaphore>,
}

/// `PUT /v1/functions/{name}`'s body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    /// The module, base64.
    module: String,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    secrets: Secrets,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    schedule: Option<String>,
    /// Whether the new version serves all traffic (else 0% beside the version serving).
    #[serde(default = "yes")]
    promote: bool,
    /// Whether it is compiled on its home node before it takes traffic.
    #[serde(default = "yes")]
    precompile: bool,
}

fn yes() -> bool {
    true
}

/// `PUT /v1/functions/{name}/traffic`'s body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TrafficRequest {
    traffic: Vec<Share>,
}

/// `POST /v1/functions/{name}/rollback`'s body, if any.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    /// The version to roll back to; default: the one that served before.
    version: Option<u64>,
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
                async move { Ok::<_, Infallible>(admin.respond(request, remote).await) }
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
    /// Checks the token, then answers: a tail as a stream, any other call whole.
    async fn respond(
        &self,
        request: http::Request<Incoming>,
        remote: SocketAddr,
    ) -> Response<AdminBody> {
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
            return answer.map(BodyExt::boxed);
        }
        let tail = path
            .strip_prefix("/v1/functions/")
            .and_then(|rest| rest.strip_suffix("/tail"))
            .filter(|name| !name.contains('/'));
        match tail {
            Some(name) if request.method() == Method::GET => self.tail(name, remote),
            Some(_) => error(StatusCode::METHOD_NOT_ALLOWED, "GET only").map(BodyExt::boxed),
            None => self.answer(request, remote).await.map(BodyExt::boxed),
        }
    }

    async fn answer(
        &self,
        request: http::Request<Incoming>,
        remote: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        if path == "/v1/cluster" {
            return match method {
                Method::GET => json(StatusCode::OK, &self.status.status()),
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "GET only"),
            };
        }
        if path == "/v1/usage" {
            return match method {
                Method::GET => self.usage(request.uri().query()).await,
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "GET only"),
            };
        }
        if path == "/v1/functions" {
            return match method {
                Method::GET => match self.views(None).await {
                    Ok(views) => json(StatusCode::OK, &views),
                    Err(e) => internal(&e),
                },
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "GET only"),
            };
        }
        let Some(rest) = path.strip_prefix("/v1/functions/") else {
            return error(StatusCode::NOT_FOUND, "no such admin call");
        };
        let (name, call) = rest.split_once('/').unwrap_or((rest, ""));
        // A name no function can have is found nowhere, and never becomes a registry key
        // (NATS refuses `*`, `>` or `%` in one); a deploy under it says why it is refused.
        let deploying = call.is_empty() && method == Method::PUT;
        if !deploying && !is_function_name(name) {
            return error(StatusCode::NOT_FOUND, &format!("no function {name:?}"));
        }
        let body = request.into_body();
        match (call, method) {
            ("", Method::GET) => match self.views(Some(name)).await {
                Ok(views) if !views.is_empty() => json(StatusCode::OK, &views[0]),
                Ok(_) => error(StatusCode::NOT_FOUND, &format!("no function {name:?}")),
                Err(e) => internal(&e),
            },
            ("", Method::PUT) => self.deploy(name, body, remote).await,
            ("", Method::DELETE) => self.delete(name, remote).await,
            ("", _) => error(StatusCode::METHOD_NOT_ALLOWED, "GET, PUT or DELETE"),
            ("rollback", Method::POST) => self.rollback(name, body, remote).await,
            ("rollback", _) => error(StatusCode::METHOD_NOT_ALLOWED, "POST only"),
            ("traffic", Method::PUT) => self.traffic(name, body, remote).await,
            ("traffic", _) => error(StatusCode::METHOD_NOT_ALLOWED, "PUT only"),
            _ => error(StatusCode::NOT_FOUND, "no such admin call"),
        }
    }

    async fn deploy(
        &self,
        name: &str,
        body: Incoming,
        remote: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let request: DeployRequest = match read_json(body, MAX_DEPLOY_BYTES).await {
            Ok(Some(request)) => request,
            Ok(None) => return error(StatusCode::BAD_REQUEST, "body: a deploy needs a module"),
            Err(refused) => return refused,
        };
        let Ok(module) = base64::engine::general_purpose::STANDARD.decode(&request.module) else {
            return error(StatusCode::BAD_REQUEST, "module: not base64");
        };
        let spec = FunctionSpec {
            routes: request.routes,
            env: request.env,
            secrets: request.secrets,
            limits: request.limits,
            schedule: request.schedule,
            precompile: request.precompile,
        };
        let promote = request.promote;
        let _changing = self.gateway.changing.lock().await;
        let current = self.gateway.functions();
        let config = self.gateway.config();
        let deployed = functions::deploy(
            &*self.registry,
            &current,
            config,
            name,
            spec,
            module.into(),
            promote,
        )
        .await;
        match deployed {
            Ok((deployed, next)) => {
                let version = deployed.version;
                let placed = self.take_traffic(&current, next, name, version).await;
                tracing::info!(%remote, function = name, version, created = deployed.created, promote, "deployed");
                let status = if deployed.created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                let mut answer = placed.answer(name, version);
                answer["created"] = deployed.created.into();
                json(status, &answer)
            }
            Err(refusal) => refused(refusal),
        }
    }

    async fn traffic(
        &self,
        name: &str,
        body: Incoming,
        remote: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let request: TrafficRequest = match read_json(body, MAX_HEAD_BYTES).await {
            Ok(Some(request)) => request,
            Ok(None) => return error(StatusCode::BAD_REQUEST, "body: a split is needed"),
            Err(refused) => return refused,
        };
        let _changing = self.gateway.changing.lock().await;
        let current = self.gateway.functions();
        let config = self.gateway.config();
        match functions::set_traffic(&*self.registry, &current, config, name, request.traffic).await
        {
            Ok((record, next)) => {
                let split: Vec<String> = record
                    .traffic
                    .iter()
                    .map(|s| format!("v{}={}%", s.version, s.percent))
                    .collect();
                // A version new to traffic is placed before it takes any.
                self.gateway.place_fresh(&current, &next, name).await;
                self.gateway.serve_functions(next);
                tracing::info!(%remote, function = name, traffic = %split.join(" "), "traffic split");
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "name": name, "traffic": record.traffic }),
                )
            }
            Err(refusal) => refused(refusal),
        }
    }

    /// Serves `next` after placing `name`'s versions new to traffic
    /// ([`Gateway::place_fresh`]). Reports version `version`'s content id and URLs.
    async fn take_traffic(
        &self,
        current: &Functions,
        next: Functions,
        name: &str,
        version: u64,
    ) -> Placed {
        self.gateway.place_fresh(current, &next, name).await;
        let function = next
            .named(name)
            .and_then(|f| f.version(version).or(Some(f.primary())))
            .map(Arc::clone);
        self.gateway.serve_functions(next);
        Placed {
            content_id: function
                .as_ref()
                .map(|f| f.manifest.content_id.as_str().to_string()),
            urls: function
                .as_ref()
                .map_or_else(Vec::new, |f| self.gateway.urls(f)),
        }
    }

    async fn rollback(
        &self,
        name: &str,
        body: Incoming,
        remote: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let to = match read_json::<RollbackRequest>(body, MAX_HEAD_BYTES).await {
            Ok(request) => request.and_then(|r| r.version),
            Err(refused) => return refused,
        };
        let _changing = self.gateway.changing.lock().await;
        let current = self.gateway.functions();
        let config = self.gateway.config();
        match functions::rollback(&*self.registry, &current, config, name, to).await {
            Ok((rolled, next)) => {
                let placed = self
                    .take_traffic(&current, next, name, rolled.version)
                    .await;
                tracing::info!(%remote, function = name, version = rolled.version, restores = rolled.restores, "rolled back");
                let mut answer = placed.answer(name, rolled.version);
                answer["restores"] = rolled.restores.into();
                json(StatusCode::CREATED, &answer)
            }
            Err(refusal) => refused(refusal),
        }
    }

    async fn delete(&self, name: &str, remote: SocketAddr) -> Response<Full<Bytes>> {
        let _changing = self.gateway.changing.lock().await;
        match self.registry.delete(name).await {
            Ok(true) => {}
            Ok(false) => return error(StatusCode::NOT_FOUND, &format!("no function {name:?}")),
            Err(e) => return internal(&e.to_string()),
        }
        self.gateway
            .serve_functions(self.gateway.functions().without(name));
        tracing::info!(%remote, function = name, "deleted");
        let mut answer = Response::new(Full::new(Bytes::new()));
        *answer.status_mut() = StatusCode::NO_CONTENT;
        answer
    }
}

/// What a change that took traffic reports: the version's content id and URLs.
struct Placed {
    content_id: Option<String>,
    urls: Vec<String>,
}

impl Placed {
    fn answer(self, name: &str, version: u64) -> serde_json::Value {
        serde_json::json!({
            "name": name,
            "version": version,
            "content_id": self.content_id,
            "urls": self.urls,
        })
    }
}

/// A request's JSON body (`None` when empty), refused past `limit` bytes or when it
/// does not parse: then the `400` answer, naming why.
async fn read_json<T: serde::de::DeserializeOwned>(
    body: Incoming,
    limit: usize,
) -> Result<Option<T>, Response<Full<Bytes>>> {
    let body = read_limited(body, limit)
        .await
        .map_err(|why| error(StatusCode::BAD_REQUEST, &why))?;
    if body.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("body: {e}")))
}

/// A request body, refused past `limit` bytes.
async fn read_limited(mut body: Incoming, limit: usize) -> Result<Bytes, String> {
    use http_body_util::BodyExt;
    let mut read = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if read.len() + data.len() > limit {
                return Err(format!("body: over the {limit} byte limit"));
            }
            read.extend_from_slice(&data);
        }
    }
    Ok(read.freeze())
}

/// The answer to a refused deploy or rollback.
fn refused(refusal: Refusal) -> Response<Full<Bytes>> {
    match refusal {
        Refusal::Invalid(why) | Refusal::Registry(RegistryError::Invalid(why)) => {
            error(StatusCode::BAD_REQUEST, &why)
        }
        Refusal::Conflict(why) | Refusal::Registry(RegistryError::Conflict(why)) => {
            error(StatusCode::CONFLICT, &why)
        }
        Refusal::Registry(RegistryError::NotFound(why)) => error(StatusCode::NOT_FOUND, &why),
        Refusal::Registry(e) => internal(&e.to_string()),
    }
}

fn internal(why: &str) -> Response<Full<Bytes>> {
    tracing::error!(error = %why, "admin call failed");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the gateway could not complete the call",
    )
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
