//! The node's HTTP/3 server for gateways, on the shared accept loop of
//! `edge_net::http3`: it turns a request into a deploy, the status or a [`Call`], and
//! what came of it back into HTTP. Failures become answers in one place
//! ([`failure_response`]); the detail goes to the log, never into a body.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_net::gossip::Role;
use edge_net::http3::{self, BodyError, Handler, Peer, ServerStream};
use edge_shared::manifest::{ContentId, DeploymentId};
use edge_shared::trace;
use edge_shared::wire::{self, Refusal, ServerTiming};
use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::call::Streaming;
use crate::runtime::cache::Source;
use crate::runtime::guest_log::trace_id;
use crate::runtime::invoke::RunError;
use crate::tail::{Next, TailEvent, TailKind};
use crate::usage::CallUsage;
use crate::{Answer, Call, DeployError, Deployment, Failure, Node};
use edge_net::gossip::identity::unix_ms;

/// How often a quiet tail stream sends an empty line: how a watcher that went away is
/// noticed, and a draining node ends the stream.
const TAIL_HEARTBEAT: Duration = Duration::from_secs(2);

/// Largest deploy body: the largest module plus room for the manifest.
const MAX_DEPLOY_BODY: u64 = edge_shared::module_check::MAX_MODULE_BYTES as u64 + (1 << 20);

impl Handler for Node {
    /// Cluster members only, by their certificate of the cluster CA: gateways (for
    /// everything), and with `artifacts.share`, other nodes (for artifacts only).
    fn admits(&self, peer: &quinn::Connection) -> Option<Peer> {
        if edge_net::tls::peer_has_name(peer, wire::GATEWAY_MEMBER_NAME) {
            Some(Peer::Member(Role::Gateway))
        } else if self.config.artifacts.share
            && edge_net::tls::peer_has_name(peer, wire::NODE_SERVER_NAME)
        {
            Some(Peer::Member(Role::Node))
        } else {
            None
        }
    }

    async fn handle(self: Arc<Self>, peer: Peer, req: Request<()>, mut stream: ServerStream) {
        // For the log, should it fail (cheap clones: header values share their bytes).
        let named = Named {
            request_id: req.headers().get(wire::REQUEST_ID_HEADER).cloned(),
            traceparent: req.headers().get(trace::TRACEPARENT).cloned(),
            function: req.headers().get(wire::FUNCTION_HEADER).cloned(),
        };
        // A node reaches its peers' artifacts and nothing else: no invocation, deploy,
        // status, tail or usage.
        if peer == Peer::Member(Role::Node) {
            let result = artifact(&self, &req).await;
            let (response, body) = result.unwrap_or_else(|f| failure_response(&self, &named, f));
            if let Err(e) = http3::respond(&mut stream, response, body).await {
                tracing::debug!(error = %e, "sending an artifact failed");
            }
            http3::stop_reading(&mut stream);
            return;
        }
        // A request naming a function is an invocation, whatever its path, host or other
        // headers: a user's path never reaches a control handler (the gateway sets
        // `x-edge-function` on every user's request and drops any the user sent).
        let result = if req.headers().contains_key(wire::FUNCTION_HEADER) {
            invoke(&self, req, &mut stream, &named).await
        } else if let Some(function) = req.uri().path().strip_prefix(wire::TAIL_PATH) {
            if req.method() == Method::GET {
                let function = function.to_string();
                return tail(&self, &function, stream).await;
            }
            Err(Failure::MethodNotAllowed("GET"))
        } else {
            control(&self, &req, &mut stream).await.map(Some)
        };
        let (response, body) = match result {
            Ok(Some(r)) => r,
            // Streamed: answered already.
            Ok(None) => {
                http3::stop_reading(&mut stream);
                return;
            }
            Err(failure) => failure_response(&self, &named, failure),
        };
        if let Err(e) = http3::respond(&mut stream, response, body).await {
            tracing::debug!(error = %e, "sending the response failed");
        }
        http3::stop_reading(&mut stream);
    }
}

/// A compiled artifact for another node: `GET /_edge/v1/artifacts/{content id}?engine=KEY`,
/// its seal line and bytes, or `404` when this node has none of that engine key.
async fn artifact(node: &Arc<Node>, req: &Request<()>) -> Result<(Response<()>, Bytes), Failure> {
    let Some(id) = req.uri().path().strip_prefix(wire::ARTIFACT_PATH) else {
        return Err(Failure::NodesFetchOnly);
    };
    if req.method() != Method::GET {
        return Err(Failure::MethodNotAllowed("GET"));
    }
    let id = ContentId::try_from(id.to_string()).map_err(|e| Failure::BadRequest(e.to_string()))?;
    let engine = req.uri().query().and_then(|q| q.strip_prefix("engine="));
    if engine != Some(node.engine()) {
        return Err(Failure::NoArtifact);
    }
    let server = Arc::clone(node);
    let body = tokio::task::spawn_blocking(move || server.shared_artifact(&id))
        .await
        .map_err(|_| Failure::Internal)?
        .ok_or(Failure::NoArtifact)?;
    Ok(with_type(
        StatusCode::OK,
        "application/octet-stream",
        body.into(),
    ))
}

/// The control plane: deploys and the status, for cluster members.
async fn control(
    node: &Arc<Node>,
    req: &Request<()>,
    stream: &mut ServerStream,
) -> Result<(Response<()>, Bytes), Failure> {
    let path = req.uri().path();
    if let Some(id) = path.strip_prefix(wire::DEPLOY_PATH) {
        match *req.method() {
            Method::PUT => deploy(node, req, id, stream).await,
            Method::DELETE => {
                let id = DeploymentId::parse(id).map_err(|e| Failure::BadRequest(e.to_string()))?;
                if node.undeploy(&id) {
                    Ok((
                        Response::builder()
                            .status(StatusCode::NO_CONTENT)
                            .body(())
                            .expect("a valid response"),
                        Bytes::new(),
                    ))
                } else {
                    Err(Failure::Refused(Refusal::NotFound))
                }
            }
            _ => Err(Failure::MethodNotAllowed("PUT or DELETE")),
        }
    } else if path == wire::USAGE_PATH {
        if req.method() != Method::GET {
            return Err(Failure::MethodNotAllowed("GET"));
        }
        let since_ms = match req.uri().query().and_then(|q| q.strip_prefix("since_ms=")) {
            None => None,
            Some(n) => Some(n.parse().map_err(|_| {
                Failure::BadRequest(format!("since_ms: {n:?} is not Unix milliseconds"))
            })?),
        };
        let report = node.usage.report(node.name(), since_ms, unix_ms());
        let json = serde_json::to_vec(&report).unwrap_or_default();
        Ok(with_type(StatusCode::OK, "application/json", json.into()))
    } else if path == wire::STATUS_PATH {
        if req.method() != Method::GET {
            return Err(Failure::MethodNotAllowed("GET"));
        }
        let json = serde_json::to_vec(&node.status()).unwrap_or_default();
        Ok(with_type(StatusCode::OK, "application/json", json.into()))
    } else {
        Err(Failure::NoSuchControl)
    }
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

/// What names a request in the log (cheap clones: header values share their bytes).
struct Named {
    request_id: Option<HeaderValue>,
    traceparent: Option<HeaderValue>,
    function: Option<HeaderValue>,
}

impl Named {
    fn request_id(&self) -> &str {
        text(self.request_id.as_ref())
    }

    fn trace_id(&self) -> String {
        trace_id(self.traceparent.as_ref())
    }
}

/// A header value as text, `-` without one.
fn text(value: Option<&HeaderValue>) -> &str {
    value.and_then(|v| v.to_str().ok()).unwrap_or("-")
}

/// The one place failures become responses: status, `x-edge-refused`, `Retry-After`,
/// a public reason; the detail goes to the log.
fn failure_response(node: &Node, named: &Named, failure: Failure) -> (Response<()>, Bytes) {
    let (request_id, function) = (named.request_id(), text(named.function.as_ref()));
    let status = failure.status();
    let worth_a_warning = match failure {
        Failure::Refused(_) => false,
        Failure::DeployRefused(_) => true,
        _ => status.is_server_error(),
    };
    if worth_a_warning {
        tracing::warn!(%request_id, trace_id = %named.trace_id(), %function, status = status.as_u16(), error = %failure, "request failed");
    } else {
        tracing::debug!(%request_id, trace_id = %named.trace_id(), %function, status = status.as_u16(), error = %failure, "request refused");
    }
    let (mut response, body) = plain(status, &failure.public_message());
    let headers = response.headers_mut();
    if let Failure::Refused(refusal) = failure {
        node.metrics.refused(refusal);
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

/// Reads the whole body under `limit`.
async fn read_body(stream: &mut ServerStream, limit: u64) -> Result<Bytes, Failure> {
    http3::read_body(stream, limit).await.map_err(|e| match e {
        BodyError::TooLarge(limit) => Failure::BodyTooLarge(limit),
        other => Failure::BadRequest(other.to_string()),
    })
}

async fn deploy(
    node: &Arc<Node>,
    req: &Request<()>,
    id: &str,
    stream: &mut ServerStream,
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
    // An empty module: the manifest names it by content id alone.
    let module = (!module.is_empty()).then(|| body.slice(body.len() - module.len()..));
    // Where the gateway loaded it before: askable before gossip shows them warm.
    let holders = header(req, wire::HOLDERS_HEADER).map_or_else(Vec::new, wire::parse_holders);
    let _warming = node.start_warming(&id);
    let fetched = node
        .fetch_artifact(&id, &manifest.content_id, &holders)
        .await;
    let loader = Arc::clone(node);
    let loaded = tokio::task::spawn_blocking(move || loader.deploy(manifest, module.as_deref()))
        .await
        .map_err(|_| Failure::Internal)?;
    match loaded {
        Ok((source, took)) => {
            let source = match (fetched, source) {
                (Some(_), Source::Disk) => Source::Peer,
                _ => source,
            };
            let took = took + fetched.unwrap_or_default();
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
        Err(DeployError::ModuleMissing(_)) => Err(Failure::Refused(Refusal::ModuleMissing)),
        Err(e) => Err(Failure::DeployRefused(format!("{id}: {e}"))),
    }
}

/// Turns an invocation request into a [`Call`] and the function's answer into HTTP: the
/// response to send, or `None` when a streamed answer was sent here.
async fn invoke(
    node: &Node,
    request: Request<()>,
    stream: &mut ServerStream,
    named: &Named,
) -> Result<Option<(Response<()>, Bytes)>, Failure> {
    let function = header(&request, wire::FUNCTION_HEADER)
        .ok_or_else(|| Failure::BadRequest(format!("missing {}", wire::FUNCTION_HEADER)))?;
    let id = DeploymentId::parse(function).map_err(|e| Failure::BadRequest(e.to_string()))?;
    let deployment = node
        .deployment(&id)
        .ok_or(Failure::Refused(Refusal::NotFound))?;
    let body = read_body(stream, deployment.limits.max_request_body_bytes).await?;
    let bytes_in = body.len() as u64;
    let started = Instant::now();
    let text = |name: &str| header(&request, name).map(str::to_string);
    let call = Call {
        script_name: text(wire::SCRIPT_NAME_HEADER).unwrap_or_default(),
        request_id: text(wire::REQUEST_ID_HEADER).unwrap_or_else(|| "-".into()),
        deadline: header(&request, wire::DEADLINE_HEADER)
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis),
        gateway: text(wire::GATEWAY_HEADER),
        body,
        request,
    };
    let mut answer = match node.invoke(&deployment, call).await {
        Ok(answer) => answer,
        Err(failure) => {
            // A refusal ran nothing: it is no invocation.
            let ran = !matches!(failure, Failure::Refused(_));
            let usage = ran.then_some(CallUsage {
                error: true,
                bytes_in,
                ..CallUsage::default()
            });
            let status = failure.status().as_u16();
            finished(node, &deployment, named, (status, usage), None, started);
            return Err(failure);
        }
    };
    if let Some(rest) = answer.rest.take() {
        let response = response_of(node, &answer);
        let first = answer.body();
        let call = (&*deployment, named, bytes_in, started);
        send_streamed(node, call, (response, first, rest), answer.timing, stream).await;
        return Ok(None);
    }
    let status = answer.head.status.as_u16();
    let usage = CallUsage {
        error: status >= 500,
        run: answer.run,
        fuel: answer.fuel_used,
        memory_bytes: answer.memory_bytes,
        bytes_in,
        bytes_out: answer.output.len() as u64,
    };
    let timing = Some(&answer.timing);
    finished(
        node,
        &deployment,
        named,
        (status, Some(usage)),
        timing,
        started,
    );
    Ok(Some((response_of(node, &answer), answer.body())))
}

/// The HTTP head of a function's answer.
fn response_of(node: &Node, answer: &Answer) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = answer.head.status;
    let headers = response.headers_mut();
    for (name, value) in &answer.head.headers {
        headers.append(name, value.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&answer.timing.header_value()) {
        headers.insert("server-timing", v);
    }
    if let Ok(v) = HeaderValue::from_str(node.name()) {
        headers.insert(wire::NODE_HEADER, v);
    }
    response
}

/// Longest a gateway may take no bytes of a streamed answer before the node gives up on
/// it (and the function's next write fails).
const STREAM_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends an answer the function is still writing: the head and the first bytes at once,
/// then each chunk as it comes. A run that fails after the head went out can no longer
/// change the status: the stream is reset (`H3_INTERNAL_ERROR`), so the gateway, and the
/// user after it, see a broken answer, never a short one that looks whole.
async fn send_streamed(
    node: &Node,
    (deployment, named, bytes_in, started): (&Deployment, &Named, u64, Instant),
    (response, first, mut rest): (Response<()>, Bytes, Streaming),
    timing: ServerTiming,
    stream: &mut ServerStream,
) {
    let status = response.status().as_u16();
    let mut bytes_out = first.len() as u64;
    let sent = async {
        use tokio::time::timeout;
        timeout(STREAM_SEND_TIMEOUT, stream.send_response(response)).await??;
        timeout(STREAM_SEND_TIMEOUT, stream.send_data(first)).await??;
        while let Some(chunk) = rest.next().await {
            bytes_out += chunk.len() as u64;
            timeout(STREAM_SEND_TIMEOUT, stream.send_data(chunk)).await??;
        }
        anyhow::Ok(())
    }
    .await;
    let ended = match sent {
        Ok(()) => rest.end().await,
        Err(e) => {
            tracing::debug!(request_id = named.request_id(), error = %e, "the gateway stopped taking a streamed answer");
            let _ = rest.end().await;
            Err(Failure::Run(RunError::Abandoned))
        }
    };
    let (status, usage) = match ended {
        Ok(ended) => {
            bytes_out += ended.tail.len() as u64;
            let tail = ended.tail;
            let finished = async {
                if !tail.is_empty() {
                    stream.send_data(tail).await?;
                }
                stream.finish().await
            };
            if let Err(e) = tokio::time::timeout(STREAM_SEND_TIMEOUT, finished).await {
                tracing::debug!(request_id = named.request_id(), error = %e, "finishing a streamed answer failed");
            }
            let usage = CallUsage {
                error: status >= 500,
                run: ended.run,
                fuel: ended.fuel_used,
                memory_bytes: ended.memory_bytes,
                bytes_in,
                bytes_out,
            };
            (status, usage)
        }
        Err(failure) => {
            stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
            let status = failure.status().as_u16();
            tracing::warn!(request_id = named.request_id(), trace_id = %named.trace_id(), function = %deployment.manifest.name, status, error = %failure, "streamed answer broken off");
            let usage = CallUsage {
                error: true,
                bytes_in,
                bytes_out,
                ..CallUsage::default()
            };
            (status, usage)
        }
    };
    finished(
        node,
        deployment,
        named,
        (status, Some(usage)),
        Some(&timing),
        started,
    );
}

/// What the end of a call tells: the metrics, the usage meter (for a call that ran),
/// the access log (target `access`, at debug level: `log_filter = "info,access=debug"`
/// shows it) and `edge tail` watchers. The ids are written out only for the log line or
/// a watcher, and only when there is one.
fn finished(
    node: &Node,
    deployment: &Deployment,
    named: &Named,
    (status, usage): (u16, Option<CallUsage>),
    timing: Option<&ServerTiming>,
    started: Instant,
) {
    let function = &deployment.manifest.name;
    node.metrics.called(function, status, timing);
    if let Some(usage) = usage {
        node.usage
            .record(&deployment.id, function, &usage, unix_ms());
    }
    let ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(target: "access", request_id = named.request_id(), trace_id = %named.trace_id(), %function, deployment = %deployment.id, status, ms, "call");
    node.tails.send(|| TailEvent {
        function: function.clone(),
        deployment: deployment.id.as_str().to_string(),
        request_id: named.request_id().to_string(),
        trace_id: named.trace_id(),
        kind: TailKind::Call { status, ms },
    });
}

/// Streams the calls and log lines of `function` as JSON lines, each with this node's
/// name, until the gateway goes away or the node drains.
async fn tail(node: &Node, function: &str, mut stream: ServerStream) {
    let mut watcher = node.tails.watch(function);
    let mut head = Response::new(());
    head.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if stream.send_response(head).await.is_err() {
        return;
    }
    tracing::info!(function, "tail started");
    #[derive(serde::Serialize)]
    struct Line<'a> {
        node: &'a str,
        #[serde(flatten)]
        event: &'a TailEvent,
    }
    loop {
        let line = match tokio::time::timeout(TAIL_HEARTBEAT, watcher.next()).await {
            Ok(Next::Event(event)) => {
                let line = Line {
                    node: node.name(),
                    event: &event,
                };
                serde_json::to_string(&line).unwrap_or_default()
            }
            Ok(Next::Missed(missed)) => {
                serde_json::json!({ "node": node.name(), "kind": "missed", "events": missed })
                    .to_string()
            }
            Err(_) if node.draining.load(Ordering::Relaxed) => break,
            Err(_) => String::new(),
        };
        if stream.send_data(Bytes::from(line + "\n")).await.is_err() {
            break;
        }
    }
    let _ = stream.finish().await;
    tracing::info!(function, "tail ended");
}
