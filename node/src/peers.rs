//! Compiled artifacts from other nodes: a node that lacks a module's artifact asks the
//! nodes that have its deployment warm, of the same engine key, before it compiles.
//!
//! Who has what comes from gossip: each node publishes its engine key and its warm set,
//! and a node warm for a deployment holds its module's artifact. The fetch goes over the
//! cluster's mutual TLS (this node's certificate as a client; the peer's checked for the
//! member name gossip gives it), and what comes back is checked before anything loads
//! it: the seal must be signed by a node of the cluster CA under its own name, for this
//! module and engine key, over these very bytes
//! ([`edge_net::gossip::Credentials::verify_artifact`]). One that fails is logged and
//! counted, and the next peer is asked; with none left, the node compiles.
//!
//! Also here, the node's side of it: signing what it compiles, handing artifacts to
//! other nodes, and the `warming` set it gossips while it loads a deployment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use dashmap::DashMap;
use edge_net::client;
use edge_net::gossip::{Credentials, Gossip, Role, fingerprint};
use edge_shared::artifact::SignedArtifact;
use edge_shared::config::ArtifactsConfig;
use edge_shared::gossip::member_dns_name;
use edge_shared::manifest::{ContentId, DeploymentId};
use edge_shared::wire;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use http::{Request, StatusCode};

use crate::Node;
use crate::runtime::cache::{LoadError, ModuleCache};

/// An artifact taken from a peer, its seal checked.
pub struct Fetched {
    /// The seal (its compiling node's signature).
    pub seal: String,
    /// The artifact's bytes.
    pub artifact: Bytes,
    /// The node it came from.
    pub from: String,
    /// How long it took, connection included.
    pub took: Duration,
}

/// What a node needs to take artifacts from its peers.
pub struct Peers {
    name: String,
    cache: Arc<ModuleCache>,
    gossip: Arc<Gossip>,
    credentials: Credentials,
    endpoint: quinn::Endpoint,
    config: ArtifactsConfig,
    /// Open connections, one per peer, shared by the fetches from it (a wave of
    /// warm-ups asks one peer for many artifacts at once: one handshake, not one each);
    /// dropped when they close.
    connections: Arc<DashMap<SocketAddr, client::Sender>>,
    /// Held while a connection to a peer is being opened, so only one is.
    connecting: DashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>,
}

/// One peer that may hold an artifact.
struct Holder {
    down: bool,
    name: String,
    quic: SocketAddr,
    load: usize,
}

impl Peers {
    /// Peers of the node `name`, whose artifacts go to `cache` (and must be of its
    /// engine key), found through `gossip`, reached from `endpoint` (a client endpoint
    /// presenting this node's certificate), their artifacts checked with `credentials`.
    pub fn new(
        name: &str,
        cache: Arc<ModuleCache>,
        gossip: Arc<Gossip>,
        credentials: Credentials,
        endpoint: quinn::Endpoint,
        config: ArtifactsConfig,
    ) -> Peers {
        Peers {
            name: name.to_string(),
            cache,
            gossip,
            credentials,
            endpoint,
            config,
            connections: Arc::new(DashMap::new()),
            connecting: DashMap::new(),
        }
    }

    /// The artifact of module `content_id` from a node where `deployment` is warm, or one
    /// of the nodes `named` by the gateway as having loaded it (gossip may not show it
    /// yet), its seal checked; `None` when no such node has one that passes (the caller
    /// compiles).
    pub async fn fetch(
        &self,
        deployment: &DeploymentId,
        content_id: &ContentId,
        named: &[SocketAddr],
    ) -> Option<Fetched> {
        let function = fingerprint(deployment.as_str());
        let mut holders: Vec<Holder> = self
            .gossip
            .members()
            .await
            .into_iter()
            .filter(|m| {
                m.role == Role::Node
                    && !m.draining
                    && m.name != self.name
                    && m.engine == self.cache.engine()
                    && (m.warm.contains(function) || named.contains(&m.quic))
            })
            .map(|m| Holder {
                down: !m.live,
                load: (m.load.in_flight + m.load.queued) * 1000 / m.load.slots.max(1),
                name: m.name,
                quic: m.quic,
            })
            .collect();
        // The ones the failure detector holds alive first, the least loaded first among
        // them (handing over an artifact costs its sender a little). A node that has just
        // joined holds nobody alive yet: it asks the others all the same, each under the
        // fetch timeout.
        holders.sort_by_key(|h| (h.down, h.load));
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.fetch_timeout();
        let ask_next_after = self.config.ask_next_after();
        let mut queue = 0..holders.len().min(self.config.max_peers);
        let ask = |i: usize| {
            let holder = &holders[i];
            async move { (holder, self.ask(holder, content_id).await) }
        };
        let mut asking = FuturesUnordered::new();
        asking.push(ask(queue.next()?));
        let mut next_at = tokio::time::Instant::now() + ask_next_after;
        // Hedged: a holder slow to answer is not given up on, the next one is asked as
        // well, and the first good answer is taken. Under load, a peer that answers late
        // still costs far less than a compile on cores that are short already.
        loop {
            let more = !queue.is_empty();
            tokio::select! {
                Some((holder, answer)) = asking.next() => {
                    match answer {
                        Ok(Some(body)) => match self.check(&body, content_id) {
                            Ok((seal, artifact)) => {
                                return Some(Fetched {
                                    seal,
                                    artifact,
                                    from: holder.name.clone(),
                                    took: started.elapsed(),
                                });
                            }
                            Err(reason) => {
                                tracing::warn!(peer = %holder.name, %content_id, reason, "artifact from a peer refused: not loaded");
                                let refused = &self.cache.stats().refused_fetches;
                                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        },
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(peer = %holder.name, error = %e, "fetching an artifact failed");
                        }
                    }
                    // That one is done without an artifact: the next is asked now.
                    match queue.next() {
                        Some(next) => {
                            asking.push(ask(next));
                            next_at = tokio::time::Instant::now() + ask_next_after;
                        }
                        None if asking.is_empty() => return None,
                        None => {}
                    }
                }
                () = tokio::time::sleep_until(next_at), if more => {
                    let next = queue.next().expect("more holders");
                    tracing::debug!(peer = %holders[next].name, "no answer yet: asking another peer as well");
                    asking.push(ask(next));
                    next_at = tokio::time::Instant::now() + ask_next_after;
                }
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(timeout_ms = self.config.fetch_timeout_ms, "fetching an artifact ran out of artifacts.fetch_timeout_ms: compiling");
                    return None;
                }
            }
        }
    }

    /// The seal and bytes of an artifact's answer, if the seal holds for them.
    fn check(&self, body: &Bytes, content_id: &ContentId) -> Result<(String, Bytes), &'static str> {
        let (seal, artifact) = SignedArtifact::split(body).ok_or("no seal line")?;
        self.credentials
            .verify_artifact(seal, content_id, self.cache.engine(), artifact)?;
        let at = body.len() - artifact.len();
        Ok((seal.to_string(), body.slice(at..)))
    }

    /// The open connection to `holder`, or a new one.
    async fn connection(&self, holder: &Holder) -> anyhow::Result<client::Sender> {
        let open = |peers: &Peers| peers.connections.get(&holder.quic).map(|s| s.clone());
        if let Some(sender) = open(self) {
            return Ok(sender);
        }
        let lock = Arc::clone(&self.connecting.entry(holder.quic).or_default());
        let _only_one = lock.lock().await;
        if let Some(sender) = open(self) {
            return Ok(sender);
        }
        let (connections, addr) = (Arc::clone(&self.connections), holder.quic);
        let server_name = member_dns_name(&holder.name);
        let connecting = client::connect(&self.endpoint, addr, &server_name, move |_| {
            connections.remove(&addr);
        });
        // A node that completes no handshake in this time is taken as paused or gone
        // (one that answers late on an open connection is only slow, and is waited for).
        let (sender, _) = tokio::time::timeout(self.config.ask_next_after(), connecting)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no connection within artifacts.ask_next_after_ms ({} ms)",
                    self.config.ask_next_after_ms
                )
            })??;
        self.connections.insert(addr, sender.clone());
        Ok(sender)
    }

    /// Asks `holder` for the artifact: its answer's body, or `None` if it has none.
    async fn ask(&self, holder: &Holder, content_id: &ContentId) -> anyhow::Result<Option<Bytes>> {
        let mut sender = self.connection(holder).await?;
        let server_name = member_dns_name(&holder.name);
        let uri = format!(
            "https://{server_name}{}{content_id}?engine={}",
            wire::ARTIFACT_PATH,
            self.cache.engine()
        );
        let request = Request::get(uri).body(())?;
        let (head, mut stream) = match client::exchange(&mut sender, request, Bytes::new()).await {
            Ok(answer) => answer,
            Err(e) => {
                // A connection that failed an exchange is not offered to the next fetch.
                self.connections.remove(&holder.quic);
                return Err(e.into());
            }
        };
        if head.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        anyhow::ensure!(
            head.status() == StatusCode::OK,
            "answered {}",
            head.status()
        );
        let limit = self.config.max_artifact_mib << 20;
        let mut body = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            anyhow::ensure!(
                (body.len() + chunk.remaining()) as u64 <= limit,
                "an artifact over artifacts.max_artifact_mib ({} MiB)",
                self.config.max_artifact_mib
            );
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        Ok(Some(body.freeze()))
    }
}

/// A node's side of sharing: what it hands others, what it takes from them, and what it
/// is loading now.
impl Node {
    /// Takes compiled artifacts it lacks from `peers` from now on, and signs the ones it
    /// compiles with `credentials` for them.
    pub fn share_artifacts(&self, credentials: Credentials, peers: Peers) {
        self.cache.sign_with(credentials, self.name());
        let _ = self.peers.set(peers);
    }

    /// Its module cache.
    pub fn cache(&self) -> Arc<ModuleCache> {
        Arc::clone(&self.cache)
    }

    /// Module `content_id`'s artifact with its seal, for another node.
    pub fn shared_artifact(&self, content_id: &ContentId) -> Option<Vec<u8>> {
        self.cache.shared_artifact(content_id)
    }

    /// The engine key of this node's compiled artifacts.
    pub fn engine(&self) -> &str {
        self.cache.engine()
    }

    /// Deployments loading now.
    pub fn warming(&self) -> Vec<DeploymentId> {
        self.warming.iter().map(|e| e.key().clone()).collect()
    }

    /// Marks `id` as loading until the guard goes, unless it is warm already.
    pub(crate) fn start_warming(&self, id: &DeploymentId) -> Option<Warming<'_>> {
        let warm = self
            .deployment(id)
            .is_some_and(|d| self.warm_pool(&d).is_some());
        if warm {
            return None;
        }
        self.warming.insert(id.clone(), ());
        Some(Warming {
            node: self,
            id: id.clone(),
        })
    }

    /// If this node holds no compiled artifact of `content_id`, takes one from a node
    /// where `deployment` is warm or from the `holders` a deploy named (checked, then
    /// kept as this node's own): how long that took, or `None` if it was not needed or
    /// no peer had one that checked out (the load then compiles).
    pub async fn fetch_artifact(
        &self,
        deployment: &DeploymentId,
        content_id: &ContentId,
        holders: &[SocketAddr],
    ) -> Option<Duration> {
        let peers = self.peers.get()?;
        if self.cache.has_artifact(content_id) {
            return None;
        }
        let lock = Arc::clone(&self.fetching.entry(content_id.clone()).or_default());
        let mut outcome = lock.lock().await;
        if self.cache.has_artifact(content_id) {
            return None;
        }
        if *outcome == FetchOutcome::NoneHad {
            // The fetch this load waited for asked every holder: asking the same ones
            // again (a paused holder costs its whole timeout each time) only delays the
            // compile.
            tracing::debug!(%deployment, "no peer had the artifact moments ago: compiling");
            return None;
        }
        let fetched = peers.fetch(deployment, content_id, holders).await;
        let kept = match fetched {
            Some(Fetched {
                seal,
                artifact,
                from,
                took,
            }) => {
                let cache = Arc::clone(&self.cache);
                let id = content_id.clone();
                let kept =
                    tokio::task::spawn_blocking(move || cache.keep_fetched(&id, &seal, &artifact))
                        .await
                        .map_err(|e| LoadError::Compile(e.to_string()))
                        .and_then(|kept| kept);
                Some((from, took, kept))
            }
            None => None,
        };
        // Only once it is on disk: a load arriving meanwhile waits on the lock above and
        // then finds it there, or finds that no peer had one, rather than fetching again.
        // A load arriving after this asks the peers anew.
        if !matches!(kept, Some((_, _, Ok(())))) {
            *outcome = FetchOutcome::NoneHad;
        }
        self.fetching.remove(content_id);
        let (from, took, kept) = kept?;
        match kept {
            Ok(()) => {
                tracing::info!(%deployment, %from, ms = took.as_secs_f64() * 1e3, "artifact taken from a peer");
                Some(took)
            }
            Err(e) => {
                tracing::error!(%deployment, error = %e, "keeping an artifact from a peer failed");
                None
            }
        }
    }
}

/// What the last fetch of a module's artifact under one lock found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FetchOutcome {
    /// Not asked yet.
    #[default]
    NotAsked,
    /// No peer had one that checked out, or keeping it failed: the loads compile.
    NoneHad,
}

/// A deployment loading: in the node's `warming` set while alive.
pub(crate) struct Warming<'a> {
    node: &'a Node,
    id: DeploymentId,
}

impl Drop for Warming<'_> {
    fn drop(&mut self) {
        self.node.warming.remove(&self.id);
    }
}
