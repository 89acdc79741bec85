//! Pooled HTTP/3 connections from the gateway to nodes.
//!
//! One QUIC connection per node, opened on first use and shared by all requests to it;
//! a connection that closes is dropped from the pool and the next request reconnects.
//! The exchange itself is [`edge_net::client::exchange`], the one every client of edge
//! uses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use edge_net::client::{self, ClientStream, ExchangeError, Sender};
use edge_net::quic;
use edge_shared::attempt::Outcome;
use edge_shared::wire::NODE_SERVER_NAME;
use http::{Request, Response};

/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the gateway closed a connection to a node gossip holds down (H3_NO_ERROR: the
/// node did nothing wrong that the gateway knows of).
const NODE_DOWN: quinn::VarInt = quinn::VarInt::from_u32(0x100);

/// Why a request did not get a response from a node.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// No connection: nothing was sent, so any request may go to another node.
    #[error("node {node} unreachable: {reason}")]
    Unreachable {
        /// The node.
        node: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The request was (perhaps) sent, then the stream or connection failed: only
    /// idempotent requests may be retried.
    #[error("node {node} failed mid-request: {reason}")]
    Broken {
        /// The node.
        node: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The gateway gave the node's connection up, because gossip holds the node down,
    /// while the request was on it: it goes on to another node rather than wait for a
    /// new connection to a node that is likely dead.
    #[error("node {node} held down by gossip")]
    GivenUp {
        /// The node.
        node: SocketAddr,
        /// Whether the request may have reached it.
        sent: bool,
    },
}

impl ForwardError {
    /// What it means for the attempt sequence.
    pub fn outcome(&self) -> Outcome {
        match self {
            ForwardError::Unreachable { .. } => Outcome::Unreachable,
            ForwardError::Broken { .. } => Outcome::Broken,
            ForwardError::GivenUp { sent, .. } => Outcome::GivenUp { sent: *sent },
        }
    }
}

#[derive(Default)]
struct Connections {
    by_node: HashMap<SocketAddr, Pooled>,
    generation: u64,
}

/// One node's connection: what opens requests on it, the QUIC connection (to give it
/// up), and which connection attempt made it.
struct Pooled {
    sender: Sender,
    quic: quinn::Connection,
    generation: u64,
}

/// Connections to nodes.
pub struct NodePool {
    endpoint: quinn::Endpoint,
    connections: Arc<Mutex<Connections>>,
}

impl NodePool {
    /// The endpoint the connections to nodes are made from.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// A pool whose connections trust node certificates per `tls` (the cluster CA).
    pub fn new(tls: rustls::ClientConfig) -> anyhow::Result<NodePool> {
        let any_v6 = SocketAddr::from(([0u16; 8], 0));
        let endpoint = quic::client(any_v6, tls.clone(), &quic::NODE_POOL).or_else(|_| {
            quic::client(
                quic::any_local(SocketAddr::from(([0; 4], 0))),
                tls,
                &quic::NODE_POOL,
            )
        })?;
        Ok(NodePool {
            endpoint,
            connections: Arc::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn connect(&self, node: SocketAddr) -> Result<Sender, ForwardError> {
        let generation = {
            let mut pool = self.lock();
            pool.generation += 1;
            pool.generation
        };
        let connections = Arc::clone(&self.connections);
        let on_close = move |reason: String| {
            tracing::debug!(%node, %reason, "node connection closed");
            let mut pool = connections.lock().unwrap_or_else(|p| p.into_inner());
            if pool
                .by_node
                .get(&node)
                .is_some_and(|pooled| pooled.generation == generation)
            {
                pool.by_node.remove(&node);
            }
        };
        let connecting = client::connect(&self.endpoint, node, NODE_SERVER_NAME, on_close);
        let (sender, quic) = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(connected)) => connected,
            Ok(Err(e)) => {
                return Err(ForwardError::Unreachable {
                    node,
                    reason: format!("{e:#}"),
                });
            }
            Err(_) => {
                return Err(ForwardError::Unreachable {
                    node,
                    reason: "connect timed out".into(),
                });
            }
        };
        let pooled = Pooled {
            sender: sender.clone(),
            quic,
            generation,
        };
        self.lock().by_node.insert(node, pooled);
        Ok(sender)
    }

    /// Sends a request with its whole body to `node` and waits for the response head.
    ///
    /// A pooled connection can turn out dead (the node restarted, say): then, if nothing
    /// was sent or the method is idempotent, the request goes once more over a new
    /// connection before the node counts as failed. Not when the gateway gave the
    /// connection up because gossip holds the node down ([`ForwardError::GivenUp`]):
    /// the attempt sequence decides whether another node takes the request or this one
    /// is tried again ([`NodePool::abandon`] left no connection to it, so the next send
    /// makes one).
    pub async fn send(
        &self,
        node: SocketAddr,
        request: Request<()>,
        body: Bytes,
    ) -> Result<(Response<()>, ClientStream), ForwardError> {
        let pooled = self.lock().by_node.get(&node).map(|p| p.sender.clone());
        if let Some(mut sender) = pooled {
            match client::exchange(&mut sender, copy_head(&request), body.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(e) if e.lost => {
                    return Err(ForwardError::GivenUp { node, sent: e.sent });
                }
                Err(e) if e.connection && (!e.sent || request.method().is_idempotent()) => {
                    tracing::debug!(%node, reason = %e, "pooled connection failed, reconnecting");
                    self.lock().by_node.remove(&node);
                }
                Err(e) => return Err(self.failed(node, e)),
            }
        }
        // Boxed: connecting (TLS, the HTTP/3 set-up) is rare, and its future is large;
        // inline, every request's future would carry room for it and be copied whole.
        let mut sender = Box::pin(self.connect(node)).await?;
        client::exchange(&mut sender, request, body)
            .await
            .map_err(|e| self.failed(node, e))
    }

    fn failed(&self, node: SocketAddr, e: ExchangeError) -> ForwardError {
        if e.connection {
            self.lock().by_node.remove(&node);
        }
        if e.sent {
            ForwardError::Broken {
                node,
                reason: e.reason,
            }
        } else {
            ForwardError::Unreachable {
                node,
                reason: e.reason,
            }
        }
    }

    /// Gives up the connection to `node`, which gossip holds down: requests in flight
    /// there fail now (an idempotent one goes on to another node) instead of waiting
    /// out the connection's idle timeout. Whether there was one.
    pub fn abandon(&self, node: SocketAddr) -> bool {
        let Some(pooled) = self.lock().by_node.remove(&node) else {
            return false;
        };
        pooled.quic.close(NODE_DOWN, b"node held down by gossip");
        true
    }

    /// Closes every connection and waits (at most `within`) until nodes have been told.
    pub async fn close(&self, within: Duration) {
        quic::close(&self.endpoint, "gateway shutting down", within).await;
    }
}

/// A request's head without its extensions, for sending it a second time.
fn copy_head(request: &Request<()>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    copy
}
