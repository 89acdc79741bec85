//! Serving HTTP/3: the accept loop every server of edge runs (gateway ingress, node,
//! baseline), one task per request, and bounded body reading.
//!
//! [`serve`] accepts connections until its [`Shutdown`] fires. Then it accepts no more:
//! each connection sends GOAWAY, takes no new request, and stays open until the
//! requests already on it have answered. Every request holds an [`InFlight`] guard
//! while its handler runs, so the caller can wait for them under a grace period.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use edge_shared::gossip::Role;
use h3::server::RequestStream;
use http::Request;

use crate::lifecycle::{InFlight, Shutdown};

/// The QUIC application error a connection from a peer without the right role is
/// closed with (H3_REQUEST_REJECTED: nothing was processed).
const REFUSED_ROLE: quinn::VarInt = quinn::VarInt::from_u32(0x10b);
/// The QUIC application error a connection is closed with when a request's headers do
/// not arrive in time (H3_REQUEST_INCOMPLETE).
const H3_REQUEST_INCOMPLETE: quinn::VarInt = quinn::VarInt::from_u32(0x10d);

/// How long a connection stays open after its last answer on shutdown, unless the
/// client closes it first: time for the last bytes to be acknowledged.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// A request stream as a server sees it.
pub type ServerStream = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Who a connection comes from, as its handler admitted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Anyone: the server asks for no role (users; the load tester's baselines).
    Anyone,
    /// A cluster member of this role, by its certificate from the cluster CA.
    Member(Role),
}

/// Handles one request: answers on its stream.
pub trait Handler: Send + Sync + 'static {
    /// Who the peer of a new connection is, or `None` not to serve it at all (for
    /// example: not a role this server serves); a refused connection is closed before
    /// any request. Every request of the connection is handled as from that peer. By
    /// default, anyone.
    fn admits(&self, _connection: &quinn::Connection) -> Option<Peer> {
        Some(Peer::Anyone)
    }

    /// Answers `request` from `peer` on `stream`.
    fn handle(
        self: Arc<Self>,
        peer: Peer,
        request: Request<()>,
        stream: ServerStream,
    ) -> impl Future<Output = ()> + Send;
}

/// What one peer's connections may hold, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once; more are refused as they arrive.
    pub max_connections: usize,
    /// Longest a QUIC handshake may take.
    pub handshake_timeout: Duration,
    /// Longest a request stream may take to deliver its headers.
    pub header_read_timeout: Duration,
    /// Largest header block (field section) of a request, refused before it is
    /// buffered whole.
    pub max_field_section_bytes: u64,
}

impl Limits {
    /// For users, as the gateway's `[ingress]` says.
    pub fn for_users(ingress: &edge_shared::config::IngressConfig) -> Limits {
        Limits {
            max_connections: ingress.max_connections,
            handshake_timeout: ingress.handshake_timeout(),
            header_read_timeout: ingress.header_read_timeout(),
            max_field_section_bytes: u64::from(ingress.max_header_bytes),
        }
    }

    /// For cluster members (gateways calling nodes, members reading a status): trusted
    /// peers, generous limits.
    pub const MEMBERS: Limits = Limits {
        max_connections: 4096,
        handshake_timeout: Duration::from_secs(10),
        header_read_timeout: Duration::from_secs(30),
        max_field_section_bytes: 1 << 20,
    };
}

/// Serves HTTP/3 on `endpoint` with `handler` until `stop` fires, under `limits`, every
/// request counted in `in_flight` while it runs. Then it accepts no more, and returns
/// once every connection has closed (each after its requests have answered), at most
/// `grace` later; the caller then closes the endpoint.
pub async fn serve<H: Handler>(
    endpoint: &quinn::Endpoint,
    handler: Arc<H>,
    limits: Limits,
    stop: Shutdown,
    in_flight: InFlight,
    grace: Duration,
) {
    let connections = InFlight::default();
    let stopped = stop.fired();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if connections.count() >= limits.max_connections {
                    tracing::debug!(remote = %incoming.remote_address(), "connection refused: at max_connections");
                    incoming.refuse();
                    continue;
                }
                let open = connections.start();
                let handler = Arc::clone(&handler);
                let (stop, in_flight) = (stop.clone(), in_flight.clone());
                tokio::spawn(async move {
                    let _open = open;
                    if let Err(e) = connection(incoming, handler, limits, stop, in_flight).await {
                        tracing::debug!(error = %e, "HTTP/3 connection ended");
                    }
                });
            }
            () = &mut stopped => break,
        }
    }
    let open = connections.drained(grace).await;
    if open > 0 {
        tracing::warn!(
            open,
            ?grace,
            "grace period over: closing connections with requests in flight"
        );
    }
}

async fn connection<H: Handler>(
    incoming: quinn::Incoming,
    handler: Arc<H>,
    limits: Limits,
    stop: Shutdown,
    in_flight: InFlight,
) -> anyhow::Result<()> {
    let conn = tokio::time::timeout(limits.handshake_timeout, incoming)
        .await
        .map_err(|_| anyhow::anyhow!("QUIC handshake timed out"))??;
    let remote = conn.remote_address();
    let Some(peer) = handler.admits(&conn) else {
        tracing::warn!(%remote, "connection refused: the peer's certificate has no role here");
        conn.close(
            REFUSED_ROLE,
            b"certificate without the role this server serves",
        );
        return Ok(());
    };
    let quic = conn.clone();
    let mut h3 = h3::server::builder()
        .max_field_section_size(limits.max_field_section_bytes)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await?;
    // The requests of this connection: it stays open until they have answered.
    let own = InFlight::default();
    let stopped = stop.fired();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            accepted = h3.accept() => {
                let Some(resolver) = accepted? else { break };
                let guards = (in_flight.start(), own.start());
                let handler = Arc::clone(&handler);
                let quic = quic.clone();
                tokio::spawn(async move {
                    let _guards = guards;
                    let resolved =
                        tokio::time::timeout(limits.header_read_timeout, resolver.resolve_request())
                            .await;
                    match resolved {
                        // Boxed: the handler's future is large (11 KB at the gateway), and
                        // the task's own stays small, so that tokio does not copy the large
                        // one when it makes, runs and ends the task.
                        Ok(Ok((request, stream))) => {
                            Box::pin(handler.handle(peer, request, stream)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "malformed HTTP/3 request"),
                        Err(_) => {
                            // A stream that stalls its headers keeps its place in the
                            // connection's stream limit until the client lets it go,
                            // which a hostile one never does: the connection goes.
                            tracing::debug!(%remote, "request headers timed out: connection closed");
                            quic.close(H3_REQUEST_INCOMPLETE, b"request headers timed out");
                        }
                    }
                });
            }
            () = &mut stopped => {
                // GOAWAY: the client opens no new request here and goes elsewhere.
                let _ = h3.shutdown(0).await;
                break;
            }
        }
    }
    // Dropping the connection closes it, and a close discards stream data the client
    // has not acknowledged yet: not before its requests have answered and the client
    // has had a moment to receive the last bytes (or has closed itself). The server's
    // grace period bounds this.
    own.drained(Duration::MAX).await;
    let _ = tokio::time::timeout(CLOSE_LINGER, quic.closed()).await;
    Ok(())
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// It is longer than the limit.
    #[error("body over the {0} byte limit")]
    TooLarge(u64),
    /// The stream failed.
    #[error("reading the body: {0}")]
    Stream(#[from] h3::error::StreamError),
}

/// Reads a whole request body, failing as soon as it passes `limit` bytes (nothing past
/// the limit is buffered).
pub async fn read_body(stream: &mut ServerStream, limit: u64) -> Result<Bytes, BodyError> {
    let mut body = BytesMut::new();
    while let Some(mut chunk) = stream.recv_data().await? {
        if (body.len() + chunk.remaining()) as u64 > limit {
            return Err(BodyError::TooLarge(limit));
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

/// Answers on `stream` with `head` and a whole `body` (its `content-length` set), then
/// finishes the stream.
pub async fn respond(
    stream: &mut ServerStream,
    mut head: http::Response<()>,
    body: Bytes,
) -> Result<(), h3::error::StreamError> {
    // The length is known: a client (the gateway above all) can pass the answer on
    // whole, with its length, rather than chunked. Not for statuses that carry no body.
    let status = head.status();
    if !(status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED)
    {
        head.headers_mut()
            .insert(http::header::CONTENT_LENGTH, body.len().into());
    }
    stream.send_response(head).await?;
    if !body.is_empty() {
        stream.send_data(body).await?;
    }
    stream.finish().await
}

/// Tells the client to stop sending without error (RFC 9114 4.1): for answers given
/// before the whole request was read (404, 413, not-found), rather than quinn's default
/// reset code 0.
pub fn stop_reading(stream: &mut ServerStream) {
    stream.stop_sending(h3::error::Code::H3_NO_ERROR);
}
