//! Pooled HTTP/3 connections from the gateway to nodes.
//!
//! One QUIC connection per node, opened on first use and shared by all requests to it;
//! a connection that closes is dropped from the pool and the next request reconnects.
//! A node that could not be reached is skipped for a short while.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_shared::wire::NODE_SERVER_NAME;
use http::{Request, Response};

/// An open request stream to a node.
pub type NodeStream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;
type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// How long a node that could not be reached is skipped.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// No response within the gateway's request timeout: not retried, the function may
    /// still be running.
    #[error("node {node} gave no response within {after:?}")]
    TimedOut {
        /// The node.
        node: SocketAddr,
        /// The timeout.
        after: Duration,
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
}

impl ForwardError {
    /// Whether a request with this method may be sent to another node.
    pub fn retryable(&self, method: &http::Method) -> bool {
        match self {
            ForwardError::Unreachable { .. } => true,
            ForwardError::Broken { .. } => method.is_idempotent(),
            ForwardError::TimedOut { .. } => false,
        }
    }
}

struct Pooled {
    sender: Sender,
    generation: u64,
}

#[derive(Default)]
struct PoolState {
    connections: HashMap<SocketAddr, Pooled>,
    down_until: HashMap<SocketAddr, Instant>,
    generation: u64,
}

/// Connections to nodes.
pub struct NodePool {
    endpoint: quinn::Endpoint,
    state: Arc<Mutex<PoolState>>,
}

impl NodePool {
    /// A pool whose connections trust node certificates per `tls` (the cluster CA).
    pub fn new(tls: rustls::ClientConfig) -> anyhow::Result<NodePool> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_millis(500)));
        transport.max_idle_timeout(Some(Duration::from_secs(3).try_into()?));
        config.transport_config(Arc::new(transport));
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 0], 0)))
            .or_else(|_| quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0))))?;
        endpoint.set_default_client_config(config);
        Ok(NodePool {
            endpoint,
            state: Arc::default(),
        })
    }

    /// Whether `node` failed recently enough to be skipped.
    pub fn is_down(&self, node: SocketAddr) -> bool {
        let state = self.state.lock().expect("pool lock");
        state
            .down_until
            .get(&node)
            .is_some_and(|until| Instant::now() < *until)
    }

    fn mark_down(&self, node: SocketAddr) {
        let mut state = self.state.lock().expect("pool lock");
        state.down_until.insert(node, Instant::now() + DOWN_FOR);
        state.connections.remove(&node);
    }

    fn pooled(&self, node: SocketAddr) -> Option<Sender> {
        let state = self.state.lock().expect("pool lock");
        state.connections.get(&node).map(|p| p.sender.clone())
    }

    async fn connect(&self, node: SocketAddr) -> Result<Sender, ForwardError> {
        let unreachable = |reason: String| ForwardError::Unreachable { node, reason };
        let connecting = self
            .endpoint
            .connect(node, NODE_SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let generation = {
            let mut state = self.state.lock().expect("pool lock");
            state.generation += 1;
            let generation = state.generation;
            state.down_until.remove(&node);
            state.connections.insert(
                node,
                Pooled {
                    sender: sender.clone(),
                    generation,
                },
            );
            generation
        };
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            let closed = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            tracing::debug!(%node, reason = %closed, "node connection closed");
            let mut state = state.lock().expect("pool lock");
            if state
                .connections
                .get(&node)
                .is_some_and(|p| p.generation == generation)
            {
                state.connections.remove(&node);
            }
        });
        Ok(sender)
    }

    /// Sends a request with its whole body to `node` and waits for the response head.
    ///
    /// A pooled connection can turn out dead (the node restarted, say): then, if nothing
    /// was sent or the method is idempotent, the request goes once more over a new
    /// connection before the node counts as failed.
    pub async fn send(
        &self,
        node: SocketAddr,
        request: Request<()>,
        body: Bytes,
    ) -> Result<(Response<()>, NodeStream), ForwardError> {
        if let Some(sender) = self.pooled(node) {
            match exchange(sender, copy_head(&request), body.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(failure)
                    if failure.connection
                        && (!failure.sent || request.method().is_idempotent()) =>
                {
                    tracing::debug!(%node, reason = %failure.reason, "pooled connection failed, reconnecting");
                    self.state
                        .lock()
                        .expect("pool lock")
                        .connections
                        .remove(&node);
                }
                Err(failure) => return Err(self.failed(node, failure)),
            }
        }
        let sender = match self.connect(node).await {
            Ok(s) => s,
            Err(e) => {
                self.mark_down(node);
                return Err(e);
            }
        };
        exchange(sender, request, body)
            .await
            .map_err(|failure| self.failed(node, failure))
    }

    fn failed(&self, node: SocketAddr, failure: Failure) -> ForwardError {
        if failure.connection {
            self.mark_down(node);
        }
        if failure.sent {
            ForwardError::Broken {
                node,
                reason: failure.reason,
            }
        } else {
            ForwardError::Unreachable {
                node,
                reason: failure.reason,
            }
        }
    }

    /// Closes every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"gateway shutting down");
    }
}

/// How one exchange on a connection failed.
struct Failure {
    /// The connection itself failed (not just this stream).
    connection: bool,
    /// The request may have reached the node.
    sent: bool,
    reason: String,
}

/// A request's head without its extensions, for sending it a second time.
fn copy_head(request: &Request<()>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    copy
}

async fn exchange(
    mut sender: Sender,
    request: Request<()>,
    body: Bytes,
) -> Result<(Response<()>, NodeStream), Failure> {
    let is_connection =
        |e: &h3::error::StreamError| matches!(e, h3::error::StreamError::ConnectionError { .. });
    let mut stream = sender.send_request(request).await.map_err(|e| Failure {
        connection: is_connection(&e),
        sent: false,
        reason: e.to_string(),
    })?;
    let sent = async {
        if !body.is_empty() {
            stream.send_data(body).await?;
        }
        stream.finish().await
    }
    .await;
    // A node may answer (413, not-found) and stop reading before the body is all sent: the
    // response, when there is one, counts more than the send error.
    match stream.recv_response().await {
        Ok(response) => Ok((response, stream)),
        Err(e) => {
            let error = sent.err().unwrap_or(e);
            Err(Failure {
                connection: is_connection(&error),
                sent: true,
                reason: error.to_string(),
            })
        }
    }
}
