//! The gateway's request path, shared by the HTTP/3 and the TCP ingress: with the
//! function and version [`crate::route`] resolved, order the nodes, then walk the [`Attempts`] sequence (send, deploy and send
//! again, move on), and add the headers users see (`alt-svc`, `x-edge-request-id`,
//! `server-timing`). Every answer the gateway makes itself comes from
//! [`Gateway::error_response`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes};
use edge_net::client::ClientStream;
use edge_net::tls;
use edge_shared::attempt::{self, Attempts, Outcome, Step};
use edge_shared::config::GatewayConfig;
use edge_shared::routing::SplitMix64;
use edge_shared::trace;
use edge_shared::wire::{self, Refusal, ServerTiming};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};

use crate::budget::BodyBudget;
use crate::cluster::DeployError;
use crate::functions::{Function, Functions};
use crate::membership::{InFlight, Membership};
use crate::metrics::GatewayMetrics;
use crate::nodes::{ForwardError, NodePool};
use crate::request_trace::{Trace, trace_of};
use crate::route::Routed;

/// Where a response's body comes from.
pub enum ResponseBody {
    /// Made by the gateway.
    Full(Bytes),
    /// Streamed from a node.
    Node(Box<ClientStream>),
}

impl ResponseBody {
    /// The next chunk; `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, String>> {
        match self {
            ResponseBody::Full(bytes) if bytes.is_empty() => None,
            ResponseBody::Full(bytes) => Some(Ok(std::mem::take(bytes))),
            ResponseBody::Node(stream) => match stream.recv_data().await {
                Ok(Some(mut chunk)) => Some(Ok(chunk.copy_to_bytes(chunk.remaining()))),
                Ok(None) => None,
                Err(e) => Some(Err(e.to_string())),
            },
        }
    }
}

/// A response on its way to the user.
pub struct Forwarded {
    /// Status and headers.
    pub head: Response<()>,
    /// The body.
    pub body: ResponseBody,
}

/// Why the gateway answers by itself.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    #[error("no function is routed at this host and path")]
    NoRoute,
    #[error("function {0:?} has no version {1:?} taking traffic")]
    NoVersion(String, String),
    #[error("request body over the {0} byte limit")]
    BodyTooLarge(u64),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("the gateway holds too many request bodies right now")]
    BodyBudget,
    #[error("no node could take the request: {0}")]
    NoNode(String),
    #[error("function could not be loaded on a node: {0}")]
    DeployFailed(String),
    #[error("no answer from the node within {0:?}")]
    Timeout(Duration),
    #[error("the node's answer broke off or did not match its length")]
    BrokenAnswer,
}

impl GatewayError {
    fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute | GatewayError::NoVersion(..) => StatusCode::NOT_FOUND,
            GatewayError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::BodyBudget => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::NoNode(_) | GatewayError::BrokenAnswer => StatusCode::BAD_GATEWAY,
            GatewayError::DeployFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// What users read; node addresses and internals stay in the log.
    fn public_message(&self) -> String {
        match self {
            GatewayError::NoRoute
            | GatewayError::NoVersion(..)
            | GatewayError::BodyTooLarge(_)
            | GatewayError::BodyTimeout
            | GatewayError::BodyBudget => {
                format!("{self}\n")
            }
            GatewayError::NoNode(_) => "no node could take the request\n".into(),
            GatewayError::DeployFailed(_) => "function could not be loaded\n".into(),
            GatewayError::Timeout(_) => "the function's node did not answer in time\n".into(),
            GatewayError::BrokenAnswer => "the function's answer broke off\n".into(),
        }
    }
}

/// Why a send got no answer.
enum SendError {
    /// No answer within the gateway's request timeout.
    TimedOut,
    /// The exchange failed.
    Forward(ForwardError),
}

/// The gateway: its functions, routes and node connections.
pub struct Gateway {
    pub(crate) config: GatewayConfig,
    /// Its member name in gossip, sent to nodes with each request.
    pub(crate) name: String,
    /// The functions served: a snapshot swapped whole when they change; a request keeps
    /// the function it was routed to until it has answered.
    pub(crate) functions: ArcSwap<Functions>,
    /// Held while the functions served change (a deploy, a registry change from another
    /// gateway): each change starts from the functions the previous one left.
    pub changing: tokio::sync::Mutex<()>,
    pub(crate) nodes: NodePool,
    pub(crate) next_node: AtomicUsize,
    /// The nodes as gossip tells of them, and this gateway's own counters of each.
    pub(crate) membership: Membership,
    /// Whether functions have been placed on the first nodes (see [`Gateway::place`]).
    pub(crate) placed: AtomicBool,
    pub(crate) rng: Mutex<SplitMix64>,
    /// (node, function) pairs to warm ahead of need, for [`Gateway::watch_cluster`].
    pub(crate) prewarm: tokio::sync::mpsc::UnboundedSender<WarmUp>,
    pub(crate) prewarm_queue: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<WarmUp>>>,
    /// Versions that stopped taking traffic, for [`Gateway::watch_cluster`] to drop
    /// from nodes after `unrouted_grace_ms`.
    pub(crate) retired: tokio::sync::mpsc::UnboundedSender<Arc<Function>>,
    pub(crate) retired_queue: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Arc<Function>>>>,
    /// (node, deployment fingerprint) pairs being warmed now (asked for once).
    pub(crate) warming: Mutex<HashSet<(SocketAddr, u64)>>,
    /// Deploys on their way to a node, by (node, deployment fingerprint): a request that
    /// meets one waits for it (see [`Gateway::deploy`]).
    pub(crate) deploys: Mutex<HashMap<(SocketAddr, u64), DeployWatch>>,
    alt_svc: HeaderValue,
    /// Its Prometheus metrics.
    pub(crate) metrics: GatewayMetrics,
    /// The users' port (HTTP/3 and TCP).
    pub(crate) port: u16,
    body_budget: BodyBudget,
}

/// Tells of a deploy on its way: `Some(true)` once it succeeded, `Some(false)` if not.
pub(crate) type DeployWatch = tokio::sync::watch::Receiver<Option<bool>>;

/// A function to warm on a node ahead of need.
pub(crate) type WarmUp = (SocketAddr, Arc<Function>);

impl Gateway {
    /// A gateway serving `functions` (from the registry), with its node pool.
    /// `h3_port` is advertised in `alt-svc`; `name` is the gateway's gossip member name.
    pub fn new(
        config: GatewayConfig,
        functions: Functions,
        h3_port: u16,
        name: String,
    ) -> anyhow::Result<Gateway> {
        let member = tls::Identity {
            cert: &config.cluster_cert,
            key: &config.cluster_key,
        };
        let nodes = NodePool::new(tls::client_config(
            &config.cluster_ca,
            Some(member),
            &[wire::ALPN_H3],
        )?)?;
        let alt_svc = HeaderValue::from_str(&format!("h3=\":{h3_port}\"; ma=86400"))?;
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("the OS random source");
        let (prewarm, prewarm_queue) = tokio::sync::mpsc::unbounded_channel();
        let (retired, retired_queue) = tokio::sync::mpsc::unbounded_channel();
        let body_budget = BodyBudget::new(config.ingress.max_buffered_body_bytes);
        Ok(Gateway {
            name,
            prewarm,
            prewarm_queue: Mutex::new(Some(prewarm_queue)),
            retired,
            retired_queue: Mutex::new(Some(retired_queue)),
            warming: Mutex::default(),
            deploys: Mutex::default(),
            membership: Membership::default(),
            placed: AtomicBool::new(false),
            rng: Mutex::new(SplitMix64(u64::from_le_bytes(seed))),
            config,
            functions: ArcSwap::from_pointee(functions),
            changing: tokio::sync::Mutex::new(()),
            nodes,
            next_node: AtomicUsize::new(0),
            alt_svc,
            metrics: GatewayMetrics::default(),
            port: h3_port,
            body_budget,
        })
    }

    /// The functions served now.
    pub fn functions(&self) -> Arc<Functions> {
        self.functions.load_full()
    }

    /// Serves `functions` from now on; requests routed before finish on the function
    /// they were routed to. Versions no longer served are dropped from nodes after the
    /// grace period, unless they serve again by then.
    pub fn serve_functions(&self, functions: Functions) {
        let before = self.functions.swap(Arc::new(functions));
        let now = self.functions.load();
        for version in before.versions() {
            if !now.versions().any(|v| v.key == version.key) {
                let _ = self.retired.send(Arc::clone(version));
            }
        }
    }

    /// The registry of the gateway's metrics, to serve (gossip and QUIC are added by
    /// whoever runs those).
    pub fn metrics(self: &Arc<Self>) -> prometheus_client::registry::Registry {
        crate::metrics::registry(self)
    }

    /// The endpoint its connections to nodes are made from.
    pub fn node_endpoint(&self) -> &quinn::Endpoint {
        self.nodes.endpoint()
    }

    /// The gateway's configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The answer to a body over `routed.body_limit`.
    pub fn body_too_large(&self, routed: &Routed) -> Forwarded {
        self.error_response(
            GatewayError::BodyTooLarge(routed.body_limit),
            &new_request_id(),
        )
    }

    /// The answer to a body the gateway-wide body budget has no room for.
    pub fn body_over_budget(&self) -> Forwarded {
        let mut answer = self.error_response(GatewayError::BodyBudget, &new_request_id());
        answer
            .head
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        answer
    }

    /// The gateway-wide budget of request bodies held in memory.
    pub fn body_budget(&self) -> &BodyBudget {
        &self.body_budget
    }

    /// The answer to a body that did not arrive within the ingress's body-read timeout.
    pub fn body_timed_out(&self) -> Forwarded {
        self.error_response(GatewayError::BodyTimeout, &new_request_id())
    }

    /// Forwards a routed request with its whole body to a node and returns the answer,
    /// trying nodes as the [`Attempts`] sequence says.
    pub async fn forward(&self, routed: Routed, request: Request<()>, body: Bytes) -> Forwarded {
        let started = Instant::now();
        let _in_flight = self.metrics.in_flight();
        let function = Arc::clone(&routed.function);
        let trace = trace_of(request.headers());
        // Boxed: the attempts' future is several KB (it holds a send to a node), and
        // inline it would be copied whole into each future that awaits this one.
        let forwarded = Box::pin(self.attempt(routed, request, body, &trace, started)).await;
        let node = forwarded
            .head
            .headers()
            .get(wire::NODE_HEADER)
            .and_then(|v| v.to_str().ok());
        let (status, took) = (forwarded.head.status().as_u16(), started.elapsed());
        let name = &function.manifest.name;
        self.metrics.answered(name, status, node, took);
        tracing::debug!(target: "access", request_id = %trace.request_id, trace_id = %trace.context.trace_id_hex(),
            function = %name, version = function.version, node = node.unwrap_or("-"), status,
            ms = took.as_secs_f64() * 1e3, "request");
        forwarded
    }

    /// [`Gateway::forward`]'s attempts, from `started`.
    async fn attempt(
        &self,
        routed: Routed,
        request: Request<()>,
        body: Bytes,
        trace: &Trace,
        started: Instant,
    ) -> Forwarded {
        let request_id = &trace.request_id;
        let function = &routed.function;
        let snapshot = self.membership.snapshot();
        let decision = self.decide(&snapshot, function);
        if let Some(i) = decision.prewarm {
            self.ask_prewarm(snapshot.view.nodes[i].addr, function);
        }
        let mut attempts = Attempts::new(decision.order, request.method().is_idempotent());
        let mut deploying = Duration::ZERO;
        let mut answered = None;
        let mut refused = None;
        let mut last_error = String::from("no node has joined the cluster yet");
        // Counts the request against the node it is on (through a deploy and the send
        // after it), so that routing sees requests waiting on a cold start.
        let mut on_node: Option<(usize, InFlight<'_>)> = None;
        let mut sent_to = None;
        loop {
            let step = attempts.step();
            if let Step::Send(i) = step {
                if sent_to.is_some_and(|before| before != i) {
                    self.metrics.retried();
                }
                sent_to = Some(i);
            }
            if let Step::Send(i) | Step::Deploy(i) = step
                && on_node.as_ref().is_none_or(|(at, _)| *at != i)
            {
                on_node = Some((i, snapshot.counters[i].start()));
            }
            let outcome = match step {
                Step::Send(i) => {
                    let node = snapshot.view.nodes[i].addr;
                    let sent = self
                        .send(node, function, &routed, &request, trace, body.clone())
                        .await;
                    match sent {
                        Ok((head, stream)) => {
                            self.membership.answered(&snapshot.counters[i]);
                            match refusal_of(&head) {
                                Some(refusal) => {
                                    tracing::debug!(%request_id, %node, refusal = refusal.as_str(), "node refused");
                                    if refusal != Refusal::NotFound {
                                        refused = Some((head, stream));
                                    }
                                    if refusal == Refusal::Overloaded
                                        && attempts.has_next_node()
                                        && !function.retry_budget.spend()
                                    {
                                        self.metrics.retry_over_budget();
                                        Outcome::RefusedOverBudget
                                    } else {
                                        Outcome::Refused(refusal)
                                    }
                                }
                                None => {
                                    function.retry_budget.answered();
                                    answered = Some((head, stream));
                                    Outcome::Answered
                                }
                            }
                        }
                        Err(SendError::TimedOut) => Outcome::TimedOut,
                        Err(SendError::Forward(e)) => {
                            tracing::warn!(%request_id, trace_id = %trace.context.trace_id_hex(), error = %e, "forwarding failed");
                            if matches!(e, ForwardError::Unreachable { .. }) {
                                self.membership.failed(&snapshot.counters[i]);
                            }
                            last_error = e.to_string();
                            e.outcome()
                        }
                    }
                }
                Step::Deploy(i) => {
                    let at = Instant::now();
                    // Boxed, as a cold path with a large future (see `NodePool::send`).
                    let deploying_on = Box::pin(self.deploy(snapshot.view.nodes[i].addr, function));
                    let outcome = match deploying_on.await {
                        Ok(()) => Outcome::Deployed,
                        Err(DeployError::Refused(reason)) => {
                            last_error = reason;
                            Outcome::DeployRefused
                        }
                        Err(DeployError::Forward(e)) => {
                            last_error = e.to_string();
                            e.outcome()
                        }
                    };
                    deploying += at.elapsed();
                    outcome
                }
                Step::Answer | Step::AnswerRefusal => {
                    let kept = if step == Step::Answer {
                        answered.take()
                    } else {
                        refused.take()
                    };
                    return match kept {
                        Some((head, stream)) => {
                            self.finish(head, stream, function, request_id, deploying, started)
                        }
                        None => self.error_response(GatewayError::NoNode(last_error), request_id),
                    };
                }
                Step::Fail(failure) => {
                    let error = match failure {
                        attempt::Failure::NoNode => GatewayError::NoNode(last_error),
                        attempt::Failure::DeployFailed => GatewayError::DeployFailed(last_error),
                        attempt::Failure::TimedOut => GatewayError::Timeout(self.request_timeout()),
                    };
                    return self.error_response(error, request_id);
                }
            };
            attempts.next(outcome);
        }
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    async fn send(
        &self,
        node: SocketAddr,
        function: &Function,
        routed: &Routed,
        request: &Request<()>,
        trace: &Trace,
        body: Bytes,
    ) -> Result<(Response<()>, ClientStream), SendError> {
        // The user's authority travels as the request's own (h3 refuses a `host` header
        // that differs from it); the TLS name checked is the connection's, `edge-node`.
        let authority = request
            .uri()
            .authority()
            .cloned()
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)?
                    .to_str()
                    .ok()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| http::uri::Authority::from_static(wire::NODE_SERVER_NAME));
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut outgoing = Request::builder()
            .method(request.method().clone())
            .uri(format!("https://{authority}{path}"))
            .body(())
            .expect("a valid request");
        let headers = outgoing.headers_mut();
        copy_end_to_end_headers(request.headers(), headers);
        let set = |headers: &mut HeaderMap, name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        };
        // The trace as this gateway passes it on: never the user's header as it came.
        headers.remove(trace::TRACEPARENT);
        headers.remove(trace::TRACESTATE);
        set(headers, trace::TRACEPARENT, &trace.context.header());
        if let Some(state) = &trace.state {
            headers.insert(trace::TRACESTATE, state.clone());
        }
        set(headers, wire::FUNCTION_HEADER, function.deployment.as_str());
        set(headers, wire::REQUEST_ID_HEADER, &trace.request_id);
        set(headers, wire::GATEWAY_HEADER, &self.name);
        set(headers, wire::SCRIPT_NAME_HEADER, &routed.script_name);
        set(
            headers,
            wire::DEADLINE_HEADER,
            &self.config.request_timeout_ms.to_string(),
        );
        match tokio::time::timeout(
            self.request_timeout(),
            self.nodes.send(node, outgoing, body),
        )
        .await
        {
            Ok(result) => result.map_err(SendError::Forward),
            Err(_) => Err(SendError::TimedOut),
        }
    }

    fn finish(
        &self,
        mut head: Response<()>,
        stream: ClientStream,
        function: &Function,
        request_id: &str,
        deploying: Duration,
        started: Instant,
    ) -> Forwarded {
        let headers = head.headers_mut();
        // The node's timings (its header: guests cannot set it) go through as they are.
        let node_timing = headers.get("server-timing").and_then(|v| v.to_str().ok());
        let deploy = ServerTiming::of("deploy", deploying);
        let total = ServerTiming::of("total", started.elapsed());
        if let Ok(v) = HeaderValue::from_str(&ServerTiming::joined(&deploy, node_timing, &total)) {
            headers.insert("server-timing", v);
        }
        self.decorate(headers, request_id);
        headers.insert(wire::VERSION_HEADER, HeaderValue::from(function.version));
        Forwarded {
            head,
            body: ResponseBody::Node(Box::new(stream)),
        }
    }

    /// The one place the gateway's own failures become answers: status, a public
    /// reason, the detail in the log.
    pub(crate) fn error_response(&self, error: GatewayError, request_id: &str) -> Forwarded {
        let status = error.status();
        if status.is_server_error() {
            tracing::warn!(%request_id, status = status.as_u16(), error = %error, "request failed at the gateway");
        }
        let mut head = Response::new(());
        *head.status_mut() = status;
        let headers = head.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        self.decorate(headers, request_id);
        Forwarded {
            head,
            body: ResponseBody::Full(Bytes::from(error.public_message())),
        }
    }

    fn decorate(&self, headers: &mut HeaderMap, request_id: &str) {
        headers.insert(http::header::ALT_SVC, self.alt_svc.clone());
        if let Ok(v) = HeaderValue::from_str(request_id) {
            headers.insert(wire::REQUEST_ID_HEADER, v);
        }
    }

    /// Closes the node connections, waiting at most `within` for nodes to be told.
    pub async fn close(&self, within: Duration) {
        self.nodes.close(within).await;
    }
}

/// The node's refusal in an answer, if it is one.
pub(crate) fn refusal_of(head: &Response<()>) -> Option<Refusal> {
    head.headers()
        .get(wire::REFUSED_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(Refusal::parse)
}

/// A random request id.
pub fn new_request_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source");
    hex::encode(bytes)
}

/// Copies the headers a node may see: not hop-by-hop ones nor those `Connection`
/// nominates, not the cluster's own `x-edge-*` in any spelling (users cannot forge
/// them), not `host` (set separately).
fn copy_end_to_end_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let nominated = wire::connection_nominated(
        from.get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    for (name, value) in from {
        let n = name.as_str();
        if !wire::is_internal_request_header(n) && !nominated.iter().any(|x| x == n) {
            to.append(name.clone(), value.clone());
        }
    }
}
