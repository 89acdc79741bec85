//! The gateway's request path, shared by the HTTP/3 and the TCP ingress: resolve the
//! function, choose a node, forward, retry on the next node where that is safe, and add
//! the headers users see (`alt-svc`, `x-edge-request-id`, `server-timing`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Buf, Bytes};
use edge_shared::config::{GatewayConfig, RoutingPolicy};
use edge_shared::gossip::{Gossip, LoadReport, WarmSet, fingerprint};
use edge_shared::manifest::{ContentId, DeploymentId, FunctionManifest};
use edge_shared::module_check::check_module;
use edge_shared::tls;
use edge_shared::wire::{self, Refusal, ServerTiming};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

use crate::membership::{Membership, Snapshot};
use crate::nodes::{ForwardError, NodePool, NodeStream};
use crate::routes::{RouteTable, default_routes};
use crate::routing::{self, SplitMix64};

/// A function the gateway serves.
pub struct Function {
    /// Its manifest.
    pub manifest: FunctionManifest,
    /// Its deployment id.
    pub deployment: DeploymentId,
    /// The deployment id's fingerprint: how warm sets and routing know it.
    key: u64,
    /// Body of the deploy request nodes get (manifest and module).
    deploy_body: Bytes,
}

/// Where a response's body comes from.
pub enum ResponseBody {
    /// Made by the gateway.
    Full(Bytes),
    /// Streamed from a node.
    Node(Box<NodeStream>),
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
enum GatewayError {
    #[error("no function is routed at this host and path")]
    NoRoute,
    #[error("request body over the {0} byte limit")]
    BodyTooLarge(u64),
    #[error("no node could take the request: {0}")]
    NoNode(String),
    #[error("function could not be loaded on a node: {0}")]
    DeployFailed(String),
    #[error("no answer from the node within {0:?}")]
    Timeout(Duration),
}

impl GatewayError {
    fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::NoNode(_) => StatusCode::BAD_GATEWAY,
            GatewayError::DeployFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// What users read; node addresses and internals stay in the log.
    fn public_message(&self) -> String {
        match self {
            GatewayError::NoRoute | GatewayError::BodyTooLarge(_) => format!("{self}\n"),
            GatewayError::NoNode(_) => "no node could take the request\n".into(),
            GatewayError::DeployFailed(_) => "function could not be loaded\n".into(),
            GatewayError::Timeout(_) => "the function's node did not answer in time\n".into(),
        }
    }
}

/// The gateway: its functions, routes and node connections.
pub struct Gateway {
    config: GatewayConfig,
    /// Its member name in gossip, sent to nodes with each request.
    name: String,
    functions: Vec<Function>,
    routes: RouteTable,
    nodes: NodePool,
    next_node: AtomicUsize,
    /// The nodes as gossip tells of them, and this gateway's own in-flight counts.
    membership: Membership,
    /// Whether functions have been placed on the first nodes (see [`Gateway::place`]).
    placed: AtomicBool,
    rng: Mutex<SplitMix64>,
    /// (node, function) pairs to warm ahead of need, for [`Gateway::watch_cluster`].
    prewarm: tokio::sync::mpsc::UnboundedSender<(SocketAddr, usize)>,
    prewarm_queue: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(SocketAddr, usize)>>>,
    /// Pairs being warmed now (asked for once).
    warming: Mutex<std::collections::HashSet<(SocketAddr, usize)>>,
    alt_svc: HeaderValue,
}

/// Counts one request in flight to a node while alive.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn start(counter: &'a AtomicUsize) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Most nodes one request is tried on.
const MAX_ATTEMPTS: usize = 3;

/// A request whose route has been resolved.
pub struct Routed {
    function: usize,
    script_name: String,
    /// Largest body to accept for it.
    pub body_limit: u64,
}

impl Gateway {
    /// Loads and checks every function module, builds the route table and the node pool.
    /// `h3_port` is advertised in `alt-svc`; `name` is the gateway's gossip member name.
    pub fn new(config: GatewayConfig, h3_port: u16, name: String) -> anyhow::Result<Gateway> {
        let mut functions = Vec::new();
        for f in &config.functions {
            let module = std::fs::read(&f.module).with_context(|| {
                format!("function {:?}: reading {}", f.name, f.module.display())
            })?;
            check_module(&module)
                .with_context(|| format!("function {:?}: module {}", f.name, f.module.display()))?;
            let manifest = FunctionManifest {
                name: f.name.clone(),
                content_id: ContentId::of(&module),
                routes: if f.routes.is_empty() {
                    default_routes(&f.name, &config.domain)
                } else {
                    f.routes.clone()
                },
                env: f.env.clone(),
                limits: f.limits.clone(),
            };
            if let Err(problems) = manifest.validate() {
                let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
                anyhow::bail!("function {:?}: {}", f.name, text.join("; "));
            }
            let deploy_body = Bytes::from(wire::encode_deploy_body(&manifest, &module));
            let deployment = manifest.deployment_id();
            functions.push(Function {
                key: fingerprint(deployment.as_str()),
                deployment,
                manifest,
                deploy_body,
            });
        }
        let manifests: Vec<FunctionManifest> =
            functions.iter().map(|f| f.manifest.clone()).collect();
        let routes = RouteTable::new(&manifests).map_err(anyhow::Error::msg)?;
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
        Ok(Gateway {
            name,
            prewarm,
            prewarm_queue: Mutex::new(Some(prewarm_queue)),
            warming: Mutex::new(std::collections::HashSet::new()),
            membership: Membership::default(),
            placed: AtomicBool::new(false),
            rng: Mutex::new(SplitMix64(u64::from_le_bytes(seed))),
            config,
            functions,
            routes,
            nodes,
            next_node: AtomicUsize::new(0),
            alt_svc,
        })
    }

    /// The functions served.
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// Resolves the function of a request.
    pub fn route(&self, request: &Request<()>) -> Option<Routed> {
        let host = request.uri().host().or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let m = self.routes.resolve(host, request.uri().path())?;
        let limits = &self.functions[m.function].manifest.limits;
        Some(Routed {
            function: m.function,
            script_name: m.script_name.to_string(),
            body_limit: limits
                .max_request_body_bytes
                .unwrap_or(self.config.max_request_body_bytes),
        })
    }

    /// The answer to a request no function is routed at.
    pub fn not_found(&self) -> Forwarded {
        self.error_response(GatewayError::NoRoute, &new_request_id())
    }

    /// The answer to a body over `routed.body_limit`.
    pub fn body_too_large(&self, routed: &Routed) -> Forwarded {
        self.error_response(
            GatewayError::BodyTooLarge(routed.body_limit),
            &new_request_id(),
        )
    }

    /// Forwards a routed request with its whole body to a node and returns the answer.
    pub async fn forward(&self, routed: Routed, request: Request<()>, body: Bytes) -> Forwarded {
        let started = Instant::now();
        let request_id = new_request_id();
        let function = &self.functions[routed.function];
        let method = request.method().clone();
        let mut cold = Duration::ZERO;
        let mut last_error = String::from("no node has joined the cluster yet");
        let mut last_refusal = None;
        let snapshot = self.membership.snapshot();
        for i in self
            .node_order(&snapshot, routed.function)
            .into_iter()
            .take(MAX_ATTEMPTS)
        {
            let node = snapshot.view.nodes[i].addr;
            let _in_flight = InFlight::start(&snapshot.in_flight[i]);
            let outcome = self
                .send(node, function, &routed, &request, &request_id, body.clone())
                .await;
            let (head, stream) = match outcome {
                Ok(answer) => answer,
                Err(ForwardError::TimedOut { after, .. }) => {
                    return self.error_response(GatewayError::Timeout(after), &request_id);
                }
                Err(e) => {
                    tracing::warn!(%request_id, error = %e, "forwarding failed");
                    let retry = e.retryable(&method);
                    last_error = e.to_string();
                    if retry { continue } else { break }
                }
            };
            let refusal = head
                .headers()
                .get(wire::REFUSED_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(Refusal::parse);
            match refusal {
                Some(Refusal::NotFound) => {
                    let deployed = Instant::now();
                    if let Err(reason) = self.deploy(node, function).await {
                        return self
                            .error_response(GatewayError::DeployFailed(reason), &request_id);
                    }
                    cold += deployed.elapsed();
                    match self
                        .send(node, function, &routed, &request, &request_id, body.clone())
                        .await
                    {
                        Ok((head, stream)) if head.status() != StatusCode::SERVICE_UNAVAILABLE => {
                            return self.finish(head, stream, &request_id, cold, started);
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            last_error = e.to_string();
                            if e.retryable(&method) {
                                continue;
                            } else {
                                break;
                            }
                        }
                    }
                }
                Some(other) => {
                    tracing::debug!(%request_id, %node, refusal = other.as_str(), "node refused, trying the next");
                    last_refusal = Some((head, stream));
                }
                None => return self.finish(head, stream, &request_id, cold, started),
            }
        }
        match last_refusal {
            Some((head, stream)) => self.finish(head, stream, &request_id, cold, started),
            None => self.error_response(GatewayError::NoNode(last_error), &request_id),
        }
    }

    /// Nodes (indexes into the snapshot) in the order to try, as the routing policy
    /// ranks them for function `f`; nodes that just failed go last. Under
    /// `least-loaded-warm` it also asks for a pre-warm when routing says so.
    fn node_order(&self, snapshot: &Snapshot, f: usize) -> Vec<usize> {
        let function = &self.functions[f];
        let own = snapshot.own_in_flight();
        let input = routing::Input {
            view: &snapshot.view,
            function: function.key,
            own_in_flight: &own,
            sequence: self.next_node.fetch_add(1, Ordering::Relaxed),
        };
        let ranked = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            routing::order(routing::policy(self.config.routing), &input, &mut *rng)
        };
        if self.config.routing == RoutingPolicy::LeastLoadedWarm
            && let Some(node) = routing::prewarm_target(&input).map(|i| snapshot.view.nodes[i].addr)
            && self
                .warming
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((node, f))
        {
            let _ = self.prewarm.send((node, f));
        }
        let mut order = ranked;
        order.sort_by_key(|&i| self.nodes.is_down(snapshot.view.nodes[i].addr));
        order
    }

    /// Turns gossip into cluster snapshots as news arrives, publishes this gateway's
    /// own load every round, places functions on nodes that join, and deploys functions
    /// ahead of need where routing asks for it, until the process ends.
    pub async fn watch_cluster(self: Arc<Self>, mut gossip: Gossip, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prewarm = self
            .prewarm_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("watch_cluster runs once");
        // Every member's load changes every round: rebuild at most four times a round,
        // each rebuild taking in all the news since the last.
        let min_gap = every / 4;
        let mut rebuilt_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = gossip.changed() => {
                    tokio::time::sleep_until(rebuilt_at + min_gap).await;
                }
                _ = ticker.tick() => {
                    let load = LoadReport {
                        in_flight: self.membership.total_in_flight(),
                        ..LoadReport::default()
                    };
                    gossip.publish(load, &WarmSet::default()).await;
                }
                Some((node, f)) = prewarm.recv() => {
                    let gateway = Arc::clone(&self);
                    tokio::spawn(async move { gateway.prewarm(node, f, every).await });
                    continue;
                }
            }
            rebuilt_at = tokio::time::Instant::now();
            let changes = self.membership.update(&gossip.members().await, &self.name);
            for (node, name, why) in changes.left {
                tracing::warn!(%node, %name, why, "node left the request path");
            }
            for node in changes.joined {
                tracing::info!(%node, "node joined the request path");
                if self.placed.load(Ordering::Acquire) {
                    let gateway = Arc::clone(&self);
                    tokio::spawn(async move { gateway.place(Some(node)).await });
                }
            }
        }
    }

    /// Nodes this gateway can send requests to now.
    pub fn usable_nodes(&self) -> usize {
        let snapshot = self.membership.snapshot();
        snapshot
            .view
            .nodes
            .iter()
            .filter(|n| n.up && !n.draining)
            .count()
    }

    /// Deploys function `f` on `node` ahead of need (a pre-warm), then lets it be asked
    /// for again once gossip shows it warm (or after a failure).
    async fn prewarm(&self, node: SocketAddr, f: usize, round: Duration) {
        let function = &self.functions[f];
        match self.deploy(node, function).await {
            Ok(()) => tracing::info!(%node, deployment = %function.deployment, "pre-warmed"),
            Err(reason) => {
                tracing::warn!(%node, deployment = %function.deployment, %reason, "pre-warm failed")
            }
        }
        // Until gossip lists it warm, routing would ask again: wait for it.
        tokio::time::sleep(round * 3).await;
        self.warming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(node, f));
    }

    async fn send(
        &self,
        node: SocketAddr,
        function: &Function,
        routed: &Routed,
        request: &Request<()>,
        request_id: &str,
        body: Bytes,
    ) -> Result<(Response<()>, NodeStream), ForwardError> {
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
        set(headers, wire::FUNCTION_HEADER, function.deployment.as_str());
        set(headers, wire::REQUEST_ID_HEADER, request_id);
        set(headers, wire::GATEWAY_HEADER, &self.name);
        set(headers, wire::SCRIPT_NAME_HEADER, &routed.script_name);
        set(
            headers,
            wire::DEADLINE_HEADER,
            &self.config.request_timeout_ms.to_string(),
        );
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        match tokio::time::timeout(timeout, self.nodes.send(node, outgoing, body)).await {
            Ok(result) => result,
            Err(_) => Err(ForwardError::TimedOut {
                node,
                after: timeout,
            }),
        }
    }

    /// Loads `function` on `node`.
    async fn deploy(&self, node: SocketAddr, function: &Function) -> Result<(), String> {
        let request = Request::builder()
            .method(Method::PUT)
            .uri(format!(
                "https://{}{}{}",
                wire::NODE_SERVER_NAME,
                wire::DEPLOY_PATH,
                function.deployment
            ))
            .body(())
            .expect("a valid request");
        let (head, mut stream) = self
            .nodes
            .send(node, request, function.deploy_body.clone())
            .await
            .map_err(|e| e.to_string())?;
        if head.status() == StatusCode::CREATED {
            tracing::info!(%node, deployment = %function.deployment, "deployed on node");
            return Ok(());
        }
        let mut reason = Vec::new();
        while let Ok(Some(mut chunk)) = stream.recv_data().await {
            reason.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        let reason = format!(
            "{}: {}",
            head.status(),
            String::from_utf8_lossy(&reason).trim()
        );
        tracing::error!(%node, deployment = %function.deployment, %reason, "deploy refused by node");
        Err(reason)
    }

    /// Places each function on its home node, the usable node its cold starts go to
    /// (rendezvous order), whatever the policy: the first requests find it warm there,
    /// other nodes get it on demand when a request reaches them. Placement is the
    /// cluster's, not the policy's, so policies are compared from the same start.
    /// With `only`, just the functions whose home is that node (one that joined).
    /// Failures are logged; requests deploy again on demand.
    pub async fn place(&self, only: Option<SocketAddr>) {
        self.placed.store(true, Ordering::Release);
        let snapshot = self.membership.snapshot();
        for function in &self.functions {
            let Some(home) =
                routing::home(&snapshot.view, function.key).map(|i| snapshot.view.nodes[i].addr)
            else {
                continue;
            };
            if only.is_some_and(|node| node != home) {
                continue;
            }
            if let Err(reason) = self.deploy(home, function).await {
                tracing::warn!(node = %home, function = %function.manifest.name, %reason, "placement failed");
            }
        }
    }

    fn finish(
        &self,
        mut head: Response<()>,
        stream: NodeStream,
        request_id: &str,
        cold: Duration,
        started: Instant,
    ) -> Forwarded {
        let headers = head.headers_mut();
        let mut timing = ServerTiming::default();
        timing.push("deploy", cold);
        if let Some(node_timing) = headers.get("server-timing").and_then(|v| v.to_str().ok()) {
            timing.extend(ServerTiming::parse(node_timing));
        }
        timing.push("total", started.elapsed());
        if let Ok(v) = HeaderValue::from_str(&timing.header_value()) {
            headers.insert("server-timing", v);
        }
        self.decorate(headers, request_id);
        Forwarded {
            head,
            body: ResponseBody::Node(Box::new(stream)),
        }
    }

    fn error_response(&self, error: GatewayError, request_id: &str) -> Forwarded {
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

    /// Closes the node connections.
    pub fn close(&self) {
        self.nodes.close();
    }
}

/// A random request id.
pub fn new_request_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source");
    hex::encode(bytes)
}

/// Copies the headers a node may see: not hop-by-hop ones, not the cluster's own
/// `x-edge-*` (users cannot forge them), not `host` (set separately).
fn copy_end_to_end_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        let n = name.as_str();
        let skip = n.starts_with("x-edge-")
            || matches!(
                n,
                "connection"
                    | "keep-alive"
                    | "te"
                    | "transfer-encoding"
                    | "upgrade"
                    | "proxy-connection"
                    | "host"
            );
        if !skip {
            to.append(name.clone(), value.clone());
        }
    }
}
