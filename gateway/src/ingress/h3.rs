//! HTTP/3 ingress: quinn + h3, one task per request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h3::server::RequestStream;

use crate::proxy::{Forwarded, Gateway};

type Stream = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// A QUIC endpoint for users on `addr`.
pub fn endpoint(addr: SocketAddr, tls: rustls::ServerConfig) -> anyhow::Result<quinn::Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(256u32.into());
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
    config.transport_config(Arc::new(transport));
    Ok(quinn::Endpoint::server(config, addr)?)
}

/// Serves users until `shutdown` resolves, then closes the endpoint.
pub async fn serve(
    endpoint: quinn::Endpoint,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let gateway = Arc::clone(&gateway);
                tokio::spawn(async move {
                    if let Err(e) = connection(incoming, gateway).await {
                        tracing::debug!(error = %e, "HTTP/3 connection ended");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    endpoint.close(0u32.into(), b"gateway shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
}

async fn connection(incoming: quinn::Incoming, gateway: Arc<Gateway>) -> anyhow::Result<()> {
    let conn = incoming.await?;
    let mut h3 = h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn)).await?;
    while let Some(resolver) = h3.accept().await? {
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            match resolver.resolve_request().await {
                Ok((request, stream)) => handle(&gateway, request, stream).await,
                Err(e) => tracing::debug!(error = %e, "malformed HTTP/3 request"),
            }
        });
    }
    Ok(())
}

async fn handle(gateway: &Gateway, request: http::Request<()>, mut stream: Stream) {
    let forwarded = match gateway.route(&request) {
        None => gateway.not_found(),
        Some(routed) => match read_body(&mut stream, routed.body_limit).await {
            Ok(body) => gateway.forward(routed, request, body).await,
            Err(BodyError::TooLarge) => gateway.body_too_large(&routed),
            Err(BodyError::Stream(e)) => {
                tracing::debug!(error = %e, "reading the request body failed");
                return;
            }
        },
    };
    if let Err(e) = respond(&mut stream, forwarded).await {
        tracing::debug!(error = %e, "sending the response failed");
    }
    // An answer given before the whole request was read (404, 413) asks the client to stop
    // sending without error (RFC 9114 4.1), rather than quinn's default reset code 0.
    stream.stop_sending(h3::error::Code::H3_NO_ERROR);
}

enum BodyError {
    TooLarge,
    Stream(h3::error::StreamError),
}

async fn read_body(stream: &mut Stream, limit: u64) -> Result<Bytes, BodyError> {
    let mut body = BytesMut::new();
    while let Some(mut chunk) = stream.recv_data().await.map_err(BodyError::Stream)? {
        if (body.len() + chunk.remaining()) as u64 > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    Ok(body.freeze())
}

/// Streams the answer; a body that breaks off resets the stream, so the user sees a
/// failed response rather than a truncated success.
async fn respond(stream: &mut Stream, forwarded: Forwarded) -> Result<(), h3::error::StreamError> {
    let Forwarded { head, mut body } = forwarded;
    stream.send_response(head).await?;
    while let Some(chunk) = body.next_chunk().await {
        match chunk {
            Ok(bytes) => stream.send_data(bytes).await?,
            Err(e) => {
                tracing::warn!(error = %e, "node response broke off");
                stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return Ok(());
            }
        }
    }
    stream.finish().await
}
