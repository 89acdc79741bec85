//! The gateway's side of the cluster: turning gossip into snapshots as news arrives,
//! publishing its own load, placing functions on their home nodes, and warming them
//! ahead of need where routing asks for it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use edge_net::gossip::{Gossip, LoadReport, WarmSet};
use edge_net::lifecycle::Shutdown;
use edge_shared::config::Prewarm;
use edge_shared::routing;
use edge_shared::view::Departure;

use crate::functions::{Function, Functions};
use bytes::Bytes;
use edge_net::client::read_to_end;
use edge_shared::wire::{self, Refusal};
use http::{HeaderValue, Method, Request, StatusCode};

use crate::membership::Snapshot;
use crate::nodes::ForwardError;
use crate::proxy::{Gateway, refusal_of};

impl Gateway {
    /// Turns gossip into cluster snapshots as news arrives, publishes this gateway's
    /// own load every round, places functions on nodes that join, and deploys functions
    /// ahead of need where routing asks for it, until `stop` fires.
    pub async fn watch_cluster(
        self: Arc<Self>,
        gossip: Arc<Gossip>,
        every: Duration,
        stop: Shutdown,
    ) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prewarm = self
            .prewarm_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("watch_cluster runs once");
        let mut retired = self
            .retired_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("watch_cluster runs once");
        let mut changes = gossip.subscribe();
        let stopped = stop.fired();
        tokio::pin!(stopped);
        // Every member's load changes every round: rebuild at most four times a round,
        // each rebuild taking in all the news since the last.
        let min_gap = every / 4;
        let mut rebuilt_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = &mut stopped => return,
                () = changes.changed() => {
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
                Some(f) = retired.recv() => {
                    let gateway = Arc::clone(&self);
                    tokio::spawn(async move { gateway.retire(f).await });
                    continue;
                }
            }
            rebuilt_at = tokio::time::Instant::now();
            let changes = self.membership.update(&gossip.members().await, &self.name);
            for (node, name, why) in changes.left {
                tracing::warn!(%node, %name, why = why.as_str(), "node left the request path");
                if why == Departure::Down && self.nodes.abandon(node) {
                    self.metrics.connection_given_up();
                }
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

    /// After the grace period, drops `function` (a version no longer taking traffic)
    /// from every node, unless it takes traffic again by then. Requests that were
    /// routed to it before have long finished: the grace is far over any timeout.
    async fn retire(&self, function: Arc<Function>) {
        tokio::time::sleep(Duration::from_millis(self.config.unrouted_grace_ms)).await;
        if self.functions().versions().any(|v| v.key == function.key) {
            return;
        }
        let nodes: Vec<SocketAddr> = self
            .membership
            .snapshot()
            .view
            .nodes
            .iter()
            .map(|n| n.addr)
            .collect();
        for node in nodes {
            match self.undeploy(node, &function).await {
                Ok(true) => {
                    tracing::info!(%node, deployment = %function.deployment, "dropped a version no longer routed")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(%node, error = %e, "dropping a version no longer routed failed")
                }
            }
        }
    }

    /// Nodes this gateway can send requests to now.
    pub fn usable_nodes(&self) -> usize {
        self.membership.snapshot().view.usable()
    }

    /// Deploys `function` on `node` ahead of need (a pre-warm), then lets it be asked
    /// for again once gossip shows it warm (or after a failure).
    async fn prewarm(&self, node: SocketAddr, function: Arc<Function>, round: Duration) {
        if self.deploy_logged(node, &function, "pre-warm").await {
            tracing::info!(%node, deployment = %function.deployment, "pre-warmed");
        }
        // Until gossip lists it warm, routing would ask again: wait for it.
        tokio::time::sleep(round * 3).await;
        self.warming().remove(&(node, function.key));
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
        for function in self.functions().versions() {
            let Some(home) =
                routing::home(&snapshot.view, function.key).map(|i| snapshot.view.nodes[i].addr)
            else {
                continue;
            };
            if only.is_none_or(|node| node == home) {
                self.deploy_logged(home, function, "placement").await;
            }
        }
    }

    /// Places each version of function `name` that `next` serves and `current` does
    /// not on its home node, when its deploy asked for it (`precompile`): called before
    /// `next` is served, so a new version's compile is not on a user's request.
    pub async fn place_fresh(&self, current: &Functions, next: &Functions, name: &str) {
        let Some(served) = next.named(name) else {
            return;
        };
        for (function, _) in &served.shares {
            let known = current
                .named(name)
                .and_then(|s| s.version(function.version))
                .is_some_and(|f| f.key == function.key);
            if !known && function.precompile {
                self.place_new(function).await;
            }
        }
    }

    /// Deploys `function` (a new version) on its home node, where its compile then
    /// happens before it takes traffic rather than on a user's request; `false` if
    /// there is no usable node or the deploy failed (logged: requests deploy again on
    /// demand).
    pub async fn place_new(&self, function: &Function) -> bool {
        let snapshot = self.membership.snapshot();
        match routing::home(&snapshot.view, function.key) {
            Some(i) => {
                let home = snapshot.view.nodes[i].addr;
                self.deploy_logged(home, function, "placement at deploy")
                    .await
            }
            None => false,
        }
    }

    /// Loads `function` on `node`: first by content id alone (the manifest), and with
    /// the module only if the node does not hold it, so a module crosses the wire once
    /// per node however many versions and rollbacks share it. The node checks the
    /// module's hash either way.
    ///
    /// One at a time per node and function: many requests meeting the same cold node at
    /// once (the first seconds of a step in load) wait for the one deploy under way and
    /// take its success, instead of each sending its own. If it failed (or its request
    /// gave up), the next of them deploys.
    pub(crate) async fn deploy(
        &self,
        node: SocketAddr,
        function: &Function,
    ) -> Result<(), DeployError> {
        let key = (node, function.key);
        loop {
            let under_way = {
                let mut deploys = self.deploys.lock().unwrap_or_else(|p| p.into_inner());
                match deploys.get(&key) {
                    Some(watch) => Err(watch.clone()),
                    None => {
                        let (done, watch) = tokio::sync::watch::channel(None);
                        deploys.insert(key, watch);
                        Ok(done)
                    }
                }
            };
            match under_way {
                Ok(done) => {
                    let leading = Leading { gateway: self, key };
                    let result = self.deploy_now(node, function).await;
                    // Gone before the news: a waiter told of a failure deploys anew.
                    drop(leading);
                    done.send_replace(Some(result.is_ok()));
                    return result;
                }
                Err(mut watch) => {
                    if let Ok(done) = watch.wait_for(Option::is_some).await
                        && *done == Some(true)
                    {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn deploy_now(&self, node: SocketAddr, function: &Function) -> Result<(), DeployError> {
        let holders = function.holders_for(node);
        let request = || {
            let mut call = deployment_call(Method::PUT, function);
            if let Some(value) = holders
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok())
            {
                call.headers_mut().insert(wire::HOLDERS_HEADER, value);
            }
            call
        };
        let (mut head, mut stream) = self
            .nodes
            .send(node, request(), function.manifest_body.clone())
            .await
            .map_err(DeployError::Forward)?;
        if refusal_of(&head) == Some(Refusal::ModuleMissing) {
            tracing::debug!(%node, content_id = %function.manifest.content_id.as_str(), "node lacks the module: sending it");
            (head, stream) = self
                .nodes
                .send(node, request(), function.deploy_body.clone())
                .await
                .map_err(DeployError::Forward)?;
        }
        if head.status() == StatusCode::CREATED {
            tracing::info!(%node, deployment = %function.deployment, "deployed on node");
            function.loaded(node);
            return Ok(());
        }
        let reason = read_to_end(&mut stream).await.unwrap_or_default();
        let reason = format!(
            "{}: {}",
            head.status(),
            String::from_utf8_lossy(&reason).trim()
        );
        tracing::error!(%node, deployment = %function.deployment, %reason, "deploy refused by node");
        Err(DeployError::Refused(reason))
    }

    /// Drops `function` from `node`; whether the node had it.
    pub(crate) async fn undeploy(
        &self,
        node: SocketAddr,
        function: &Function,
    ) -> Result<bool, ForwardError> {
        let request = deployment_call(Method::DELETE, function);
        let (head, _) = self.nodes.send(node, request, Bytes::new()).await?;
        Ok(head.status() == StatusCode::NO_CONTENT)
    }

    /// Deploys `function` on `node` ahead of need; `false` (logged) if that failed.
    pub(crate) async fn deploy_logged(
        &self,
        node: SocketAddr,
        function: &Function,
        why: &str,
    ) -> bool {
        match self.deploy(node, function).await {
            Ok(()) => true,
            Err(DeployError::Refused(reason)) => {
                tracing::warn!(%node, function = %function.manifest.name, %reason, "{why} failed");
                false
            }
            Err(DeployError::Forward(e)) => {
                tracing::warn!(%node, function = %function.manifest.name, reason = %e, "{why} failed");
                false
            }
        }
    }
}

/// The deploy under way for a (node, deployment fingerprint): its entry goes when it
/// ends, however it ends.
struct Leading<'a> {
    gateway: &'a Gateway,
    key: (SocketAddr, u64),
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let mut deploys = self
            .gateway
            .deploys
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        deploys.remove(&self.key);
    }
}

/// Why a deploy did not happen.
pub(crate) enum DeployError {
    /// The node refused the module (its reason).
    Refused(String),
    /// The node could not be asked.
    Forward(ForwardError),
}

/// `method` on `function`'s deployment at a node's control plane.
fn deployment_call(method: Method, function: &Function) -> Request<()> {
    control_call(
        method,
        &format!("{}{}", wire::DEPLOY_PATH, function.deployment),
    )
}

/// `method path` (with its query) at a node's control plane.
pub(crate) fn control_call(method: Method, path: &str) -> Request<()> {
    Request::builder()
        .method(method)
        .uri(format!("https://{}{path}", wire::NODE_SERVER_NAME))
        .body(())
        .expect("a valid request")
}

/// The routing decision of one request, and the warm-ups it asks for.
impl Gateway {
    /// The routing decision for `function`, with this gateway's own in-flight counts
    /// and recent failures as input.
    pub(crate) fn decide(&self, snapshot: &Snapshot, function: &Function) -> routing::Decision {
        let (own, failed) = self.membership.health(snapshot);
        let growth = match self.config.prewarm {
            Prewarm::Projected => {
                let now_ms = self.membership.now_ms();
                let mut demand = function.demand.lock().unwrap_or_else(|p| p.into_inner());
                demand.record(now_ms);
                demand.growth(now_ms)
            }
            Prewarm::Threshold | Prewarm::Off => 1.0,
        };
        let input = routing::Input {
            view: &snapshot.view,
            function: function.key,
            own_in_flight: &own,
            recently_failed: &failed,
            sequence: self.next_node.fetch_add(1, Ordering::Relaxed),
            growth,
            min_warm: self.config.min_warm_nodes,
        };
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let mut decision = routing::decide(self.config.routing, &input, &mut *rng);
        if self.config.prewarm == Prewarm::Off {
            decision.prewarm = None;
        }
        decision
    }

    /// Asks the cluster loop to warm `function` on `node`, once until it is done.
    pub(crate) fn ask_prewarm(&self, node: SocketAddr, function: &Arc<Function>) {
        if self.warming().insert((node, function.key)) {
            let _ = self.prewarm.send((node, Arc::clone(function)));
        }
    }

    pub(crate) fn warming(&self) -> MutexGuard<'_, HashSet<(SocketAddr, u64)>> {
        self.warming.lock().unwrap_or_else(|p| p.into_inner())
    }
}
