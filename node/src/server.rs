//! The node's HTTP/3 server for gateways: quinn + h3, one task per request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use edge_shared::manifest::DeploymentId;
use edge_shared::wire::{self, Refusal, ServerTiming};
use h3::server::RequestStream;
use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::{Call, Failure, Node, cgi};

type Stream = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Largest deploy body: the largest module plus room for the manifest.
const MAX_DEPLOY_BODY: u64 = edge_shared::module_check::MAX_MODULE_BYTES as u64 + (1 << 20);

/// A QUIC endpoint serving HTTP/3 on `addr` with the node's certificate.
pub fn endpoint(addr: SocketAddr, tls: rustls::ServerConfig) -> anyhow::Result<quinn::Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(1024u32.into());
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
    config.transport_config(Arc::new(transport));
    Ok(quinn::Endpoint::server(config, addr)?)
}

/// Serves gateways on `endpoint` until `shutdown` resolves, then drains: new calls are
/// refused with `draining`, calls in flight get up to `grace` to finish.
pub async fn serve(
    endpoint: quinn::Endpoint,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let node = Arc::clone(&node);
                tokio::spawn(async move {
                    if let Err(e) = connection(incoming, node).await {
                        tracing::debug!(error = %e, "gateway connection ended");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    node.drain();
    let until = Instant::now() + grace;
    while node.busy() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    endpoint.close(0u32.into(), b"node shutting down");
    endpoint.wait_idle().await;
}

async fn connection(incoming: quinn::Incoming, node: Arc<Node>) -> anyhow::Result<()> {
    let conn = incoming.await?;
    let remote = conn.remote_address();
    let mut h3 = h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn)).await?;
    while let Some(resolver) = h3.accept().await? {
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            match resolver.resolve_request().await {
                Ok((req, stream)) => request(node, req, stream).await,
                Err(e) => tracing::debug!(%remote, error = %e, "bad request stream"),
            }
        });
    }
    Ok(())
}

async fn request(node: Arc<Node>, req: Request<()>, mut stream: Stream) {
    let path = req.uri().path();
    let result = if let Some(id) = path.strip_prefix(wire::DEPLOY_PATH) {
        if req.method() == Method::PUT {
            deploy(&node, id, &mut stream).await
        } else {
            Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "deploy with PUT\n"))
        }
    } else if path == wire::STATUS_PATH {
        let json = serde_json::to_vec(&node.status()).unwrap_or_default();
        Ok(with_type(StatusCode::OK, "application/json", json.into()))
    } else {
        invoke(&node, &req, &mut stream).await
    };
    let (response, body) = match result {
        Ok(r) => r,
        Err(failure) => failure_response(&node, &req, failure),
    };
    if let Err(e) = send(&mut stream, response, body).await {
        tracing::debug!(error = %e, "sending the response failed");
    }
    // An answer given before the whole request was read (not-found, 413) asks the gateway
    // to stop sending without error (RFC 9114 4.1), rather than quinn's default code 0.
    stream.stop_sending(h3::error::Code::H3_NO_ERROR);
}

async fn send(
    stream: &mut Stream,
    response: Response<()>,
    body: Bytes,
) -> Result<(), h3::error::StreamError> {
    stream.send_response(response).await?;
    if !body.is_empty() {
        stream.send_data(body).await?;
    }
    stream.finish().await
}

fn plain(status: StatusCode, text: &str) -> (Response<()>, Bytes) {
    with_type(
        status,
        "text/plain; charset=utf-8",
        Bytes::copy_from_slice(text.as_bytes()),
    )
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> (Response<()>, Bytes) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    (response, body)
}

/// The one place failures become responses: status, `x-edge-refused`, `Retry-After`,
/// a public reason; the detail goes to the log.
fn failure_response(node: &Node, req: &Request<()>, failure: Failure) -> (Response<()>, Bytes) {
    let request_id = header(req, wire::REQUEST_ID_HEADER).unwrap_or("-");
    let function = header(req, wire::FUNCTION_HEADER).unwrap_or("-");
    let status = failure.status();
    if status.is_server_error() && !matches!(failure, Failure::Refused(_)) {
        tracing::warn!(request_id, function, status = status.as_u16(), error = %failure, "request failed");
    } else {
        tracing::debug!(request_id, function, status = status.as_u16(), error = %failure, "request refused");
    }
    let (mut response, body) = plain(status, &failure.public_message());
    let headers = response.headers_mut();
    if let Failure::Refused(refusal) = failure {
        headers.insert(
            wire::REFUSED_HEADER,
            HeaderValue::from_static(refusal.as_str()),
        );
        if refusal == Refusal::Overloaded {
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(node.retry_after_secs()),
            );
        }
    }
    if let Ok(name) = HeaderValue::from_str(node.name()) {
        headers.insert(wire::NODE_HEADER, name);
    }
    (response, body)
}

fn header<'a>(req: &'a Request<()>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Reads the whole request body, failing once it passes `limit` bytes.
async fn read_body(stream: &mut Stream, limit: u64) -> Result<Bytes, Failure> {
    let mut body = BytesMut::new();
    while let Some(mut chunk) = stream
        .recv_data()
        .await
        .map_err(|e| Failure::BadRequest(format!("reading the body: {e}")))?
    {
        if (body.len() + chunk.remaining()) as u64 > limit {
            return Err(Failure::BodyTooLarge(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}

async fn deploy(
    node: &Arc<Node>,
    id: &str,
    stream: &mut Stream,
) -> Result<(Response<()>, Bytes), Failure> {
    let id = DeploymentId::parse(id).map_err(|e| Failure::BadRequest(e.to_string()))?;
    let body = read_body(stream, MAX_DEPLOY_BODY).await?;
    let (manifest, module) = wire::decode_deploy_body(&body).map_err(Failure::BadRequest)?;
    if manifest.deployment_id() != id {
        return Err(Failure::BadRequest(format!(
            "manifest is deployment {}, not {id}",
            manifest.deployment_id()
        )));
    }
    let module = body.slice(body.len() - module.len()..);
    let loader = Arc::clone(node);
    let loaded = tokio::task::spawn_blocking(move || loader.deploy(manifest, &module))
        .await
        .map_err(|_| Failure::Internal)?;
    match loaded {
        Ok((source, took)) => {
            let json = serde_json::json!({ "deployment": id.as_str(), "source": source, "ms": took.as_secs_f64() * 1e3 });
            let (mut response, body) = with_type(
                StatusCode::CREATED,
                "application/json",
                json.to_string().into(),
            );
            let mut timing = ServerTiming::default();
            timing.push("cold", took);
            if let Ok(v) = HeaderValue::from_str(&timing.header_value()) {
                response.headers_mut().insert("server-timing", v);
            }
            Ok((response, body))
        }
        Err(e) => {
            tracing::warn!(deployment = %id, error = %e, "deploy refused");
            Ok(plain(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("deploy refused: {e}\n"),
            ))
        }
    }
}

async fn invoke(
    node: &Node,
    req: &Request<()>,
    stream: &mut Stream,
) -> Result<(Response<()>, Bytes), Failure> {
    let function = header(req, wire::FUNCTION_HEADER)
        .ok_or_else(|| Failure::BadRequest(format!("missing {}", wire::FUNCTION_HEADER)))?;
    let id = DeploymentId::parse(function).map_err(|e| Failure::BadRequest(e.to_string()))?;
    let deployment = node
        .deployment(&id)
        .ok_or(Failure::Refused(Refusal::NotFound))?;
    let body = read_body(stream, deployment.limits.max_request_body_bytes).await?;
    let request_id = header(req, wire::REQUEST_ID_HEADER)
        .unwrap_or("-")
        .to_string();
    let deadline = header(req, wire::DEADLINE_HEADER)
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let cgi_env = cgi::environment(
        &cgi::CgiRequest {
            method: req.method().as_str(),
            script_name: header(req, wire::SCRIPT_NAME_HEADER).unwrap_or(""),
            path: req.uri().path(),
            query: req.uri().query().unwrap_or(""),
            host: req.uri().authority().map(|a| a.as_str()),
            headers: req.headers(),
            content_length: body.len(),
            request_id: &request_id,
        },
        &[],
    );
    let answer = node
        .invoke(
            &deployment,
            Call {
                request_id,
                cgi_env,
                body,
                deadline,
                gateway: header(req, wire::GATEWAY_HEADER).map(str::to_string),
            },
        )
        .await?;
    let mut response = Response::new(());
    *response.status_mut() = answer.head.status;
    let headers = response.headers_mut();
    for (name, value) in answer.head.headers {
        headers.append(name, value);
    }
    if let Ok(v) = HeaderValue::from_str(&answer.timing.header_value()) {
        headers.insert("server-timing", v);
    }
    if let Ok(v) = HeaderValue::from_str(node.name()) {
        headers.insert(wire::NODE_HEADER, v);
    }
    Ok((response, answer.output.slice(answer.head.body_start..)))
}
