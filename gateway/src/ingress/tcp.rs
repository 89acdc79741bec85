//! HTTP/1.1 and HTTP/2 ingress over TLS on TCP (ALPN picks), with hyper.
//!
//! Accepted sockets get `TCP_NODELAY`: an answer is written as a head and a body, and
//! with Nagle's algorithm the second write waits for the client's delayed ACK (about
//! 40 ms a request, measured in BENCHMARKS.md). On shutdown the listener closes and
//! every connection shuts down gracefully: requests in flight are answered, idle
//! keep-alive connections close. A connection with no request in flight for
//! `ingress.idle_timeout_ms` shuts down the same way.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edge_net::lifecycle::{InFlight, Shutdown};
use edge_shared::config::IngressConfig;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::connection::{Activity, WriteStall};
use crate::budget::Held;
use crate::proxy::{Forwarded, Gateway, GatewayError, ResponseBody};

type Body = BoxBody<Bytes, std::io::Error>;

/// How long accepting pauses after an error (out of file descriptors, say), so a
/// failing `accept` is not retried in a tight loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts one connection, with `TCP_NODELAY` set on it.
pub(crate) async fn accept(listener: &TcpListener) -> std::io::Result<(TcpStream, SocketAddr)> {
    let (socket, remote) = listener.accept().await?;
    socket.set_nodelay(true)?;
    Ok((socket, remote))
}

/// Serves users on `listener` until `stop` fires, under the `ingress` limits, every
/// connection counted in `in_flight` until it has closed.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    gateway: Arc<Gateway>,
    ingress: IngressConfig,
    stop: Shutdown,
    in_flight: InFlight,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let connections = Arc::new(Semaphore::new(ingress.max_connections));
    let ingress = Arc::new(ingress);
    let stopped = stop.fired();
    tokio::pin!(stopped);
    loop {
        let (socket, remote) = tokio::select! {
            accepted = accept(&listener) => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a TCP connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut stopped => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::debug!(%remote, "connection closed: at ingress.max_connections");
            continue;
        };
        let guard = in_flight.start();
        let acceptor = acceptor.clone();
        let (gateway, ingress) = (Arc::clone(&gateway), Arc::clone(&ingress));
        let stop = stop.clone();
        tokio::spawn(async move {
            let _held = (guard, permit);
            let tls =
                match tokio::time::timeout(ingress.handshake_timeout(), acceptor.accept(socket))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
            let limits = Arc::clone(&ingress);
            let activity = Arc::new(Activity::default());
            let busy = Arc::clone(&activity);
            let service = hyper::service::service_fn(move |request| {
                let (gateway, limits) = (Arc::clone(&gateway), Arc::clone(&limits));
                let request_in_flight = busy.begin();
                let activity = Arc::clone(&busy);
                async move {
                    let response = handle(&gateway, &limits, request, activity).await;
                    drop(request_in_flight);
                    Ok::<_, Infallible>(response)
                }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(ingress.header_read_timeout())
                .max_buf_size((ingress.max_header_bytes as usize).max(8192));
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_header_list_size(ingress.max_header_bytes)
                .keep_alive_interval(ingress.header_read_timeout())
                .keep_alive_timeout(ingress.write_timeout());
            let tls = WriteStall::new(tls, ingress.write_timeout(), Arc::clone(&activity));
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stop.fired() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
                () = activity.idle_for(ingress.idle_timeout()) => {
                    tracing::debug!(%remote, "connection closed: idle past ingress.idle_timeout_ms");
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
                () = activity.abandoned() => {
                    tracing::debug!(%remote, "connection reset: the client stopped reading an answer");
                    return;
                }
            };
            if let Err(e) = served {
                tracing::debug!(%remote, error = %e, "TCP connection ended");
            }
        });
    }
}

async fn handle(
    gateway: &Gateway,
    ingress: &IngressConfig,
    request: http::Request<Incoming>,
    activity: Arc<Activity>,
) -> http::Response<Body> {
    let (parts, body) = request.into_parts();
    let head = http::Request::from_parts(parts, ());
    let forwarded = match gateway.route(&head) {
        Err(unrouted) => gateway.not_found(unrouted),
        Ok(routed) => {
            let mut held = Held::default();
            let read = read_body(gateway, body, routed.body_limit, &mut held);
            match tokio::time::timeout(ingress.body_read_timeout(), read).await {
                Ok(Ok(body)) => gathered(gateway, gateway.forward(routed, head, body).await).await,
                Ok(Err(Unread::TooLarge)) => gateway.body_too_large(&routed),
                Ok(Err(Unread::OverBudget)) => gateway.body_over_budget(),
                Ok(Err(Unread::Broken)) => gateway.body_timed_out(),
                Err(_) => gateway.body_timed_out(),
            }
        }
    };
    to_hyper(forwarded, ingress.write_timeout(), activity)
}

/// The longest node answer read whole before its head goes out; the node streams what
/// is longer (from 64 KiB on), and sends no length then.
const GATHER_LIMIT: u64 = 64 * 1024;

/// A node's answer whose `content-length` says it is short is read whole here, so that
/// hyper sends it with its length in one write. Relayed as a stream, an HTTP/1.1 answer
/// went out chunked, in two TLS records and two writes (the last chunk on its own),
/// through a task and a channel of its own. One that breaks off or does not match its
/// length becomes a 502.
async fn gathered(gateway: &Gateway, forwarded: Forwarded) -> Forwarded {
    let length = forwarded
        .head
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .filter(|&length| length <= GATHER_LIMIT);
    let (length, head, mut stream) = match (length, forwarded) {
        (
            Some(length),
            Forwarded {
                head,
                body: ResponseBody::Node(stream),
            },
        ) => (length, head, stream),
        (_, forwarded) => return forwarded,
    };
    let within = Duration::from_millis(gateway.config.request_timeout_ms);
    match tokio::time::timeout(within, edge_net::client::read_to_end(&mut stream)).await {
        Ok(Ok(body)) if body.len() as u64 == length => Forwarded {
            head,
            body: ResponseBody::Full(body),
        },
        _ => {
            let request_id = head
                .headers()
                .get(edge_shared::wire::REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            gateway.error_response(GatewayError::BrokenAnswer, request_id)
        }
    }
}

/// Why a body was not read whole.
enum Unread {
    TooLarge,
    OverBudget,
    /// The client's stream failed.
    Broken,
}

/// Reads a request body under `limit`, covered by the gateway's body budget as it
/// arrives (in `held`).
async fn read_body(
    gateway: &Gateway,
    mut body: Incoming,
    limit: u64,
    held: &mut Held,
) -> Result<Bytes, Unread> {
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Unread::Broken)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let total = read.len() + data.len();
        if total as u64 > limit {
            return Err(Unread::TooLarge);
        }
        if !gateway.body_budget().cover(held, total) {
            return Err(Unread::OverBudget);
        }
        read.extend_from_slice(&data);
    }
    Ok(read.freeze())
}

/// Turns an answer into a hyper response, streaming a node's body through a channel; a
/// client that stops reading for `write_timeout` is abandoned: its connection is reset
/// (hyper no longer polls a body that HTTP/2 flow control holds back, so failing the
/// body alone would leave the stream stalled).
fn to_hyper(
    forwarded: Forwarded,
    write_timeout: Duration,
    activity: Arc<Activity>,
) -> http::Response<Body> {
    let Forwarded { head, body } = forwarded;
    let (mut parts, ()) = head.into_parts();
    // The head came from a node over HTTP/3; hyper writes the connection's own version.
    parts.version = http::Version::default();
    let body: Body = match body {
        ResponseBody::Full(bytes) => Full::new(bytes).map_err(|never| match never {}).boxed(),
        mut streamed => {
            let (mut sender, channel) =
                http_body_util::channel::Channel::<Bytes, std::io::Error>::new(4);
            tokio::spawn(async move {
                while let Some(chunk) = streamed.next_chunk().await {
                    match chunk {
                        Ok(bytes) => {
                            let sent = tokio::time::timeout(write_timeout, sender.send_data(bytes));
                            match sent.await {
                                Ok(Ok(())) => {}
                                // The client went: nothing to tell.
                                Ok(Err(_)) => return,
                                Err(_) => {
                                    activity.abandon();
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            sender.abort(std::io::Error::other(e));
                            return;
                        }
                    }
                }
            });
            channel.boxed()
        }
    };
    http::Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_do_not_wait_for_delayed_acks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(TcpStream::connect(addr));
        let (socket, _) = accept(&listener).await.unwrap();
        assert!(socket.nodelay().unwrap(), "TCP_NODELAY is set");
        // A plain accept leaves Nagle on: the test would catch its return.
        let _client = client.await.unwrap().unwrap();
        let other = tokio::spawn(TcpStream::connect(addr));
        let (plain, _) = listener.accept().await.unwrap();
        assert!(!plain.nodelay().unwrap());
        drop(other.await);
    }
}
