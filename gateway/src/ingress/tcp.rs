//! HTTP/1.1 and HTTP/2 ingress over TLS on TCP (ALPN picks), with hyper.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::proxy::{Forwarded, Gateway, ResponseBody};

type Body = BoxBody<Bytes, std::io::Error>;

/// Serves users on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    tokio::pin!(shutdown);
    loop {
        let (socket, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a TCP connection failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            let tls = match acceptor.accept(socket).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |request| {
                let gateway = Arc::clone(&gateway);
                async move { Ok::<_, Infallible>(handle(&gateway, request).await) }
            });
            let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%remote, error = %e, "TCP connection ended");
            }
        });
    }
}

async fn handle(gateway: &Gateway, request: http::Request<Incoming>) -> http::Response<Body> {
    let (parts, body) = request.into_parts();
    let head = http::Request::from_parts(parts, ());
    let forwarded = match gateway.route(&head) {
        None => gateway.not_found(),
        Some(routed) => {
            let limit = usize::try_from(routed.body_limit).unwrap_or(usize::MAX);
            match Limited::new(body, limit).collect().await {
                Ok(collected) => gateway.forward(routed, head, collected.to_bytes()).await,
                Err(_) => gateway.body_too_large(&routed),
            }
        }
    };
    to_hyper(forwarded)
}

/// Turns an answer into a hyper response, streaming a node's body through a channel.
fn to_hyper(forwarded: Forwarded) -> http::Response<Body> {
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
                            if sender.send_data(bytes).await.is_err() {
                                return;
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
