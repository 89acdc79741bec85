//! HTTP/3 ingress: the shared accept loop of [`edge_net::http3`], each request handed to
//! [`Gateway`].

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use edge_net::http3::{self, BodyError, Handler, Peer, ServerStream};
use http::Request;

use crate::budget::Held;
use crate::proxy::{Forwarded, Gateway};

impl Handler for Gateway {
    async fn handle(self: Arc<Self>, _peer: Peer, request: Request<()>, mut stream: ServerStream) {
        let ingress = &self.config.ingress;
        let forwarded = match self.route(&request) {
            Err(unrouted) => self.not_found(unrouted),
            Ok(routed) => {
                let mut held = Held::default();
                let read = read_body(&self, &mut stream, routed.body_limit, &mut held);
                match tokio::time::timeout(ingress.body_read_timeout(), read).await {
                    Ok(Ok(Some(body))) => self.forward(routed, request, body).await,
                    Ok(Ok(None)) => self.body_over_budget(),
                    Ok(Err(BodyError::TooLarge(_))) => self.body_too_large(&routed),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "reading the request body failed");
                        return;
                    }
                    Err(_) => self.body_timed_out(),
                }
            }
        };
        if let Err(e) = respond(&mut stream, forwarded, ingress.write_timeout()).await {
            tracing::debug!(error = %e, "sending the response failed");
        }
        http3::stop_reading(&mut stream);
    }
}

/// Reads a request body under `limit`, covered by the gateway's body budget as it
/// arrives (in `held`); `None` when the budget has no room for it.
async fn read_body(
    gateway: &Gateway,
    stream: &mut ServerStream,
    limit: u64,
    held: &mut Held,
) -> Result<Option<Bytes>, BodyError> {
    let mut body = BytesMut::new();
    while let Some(mut chunk) = stream.recv_data().await? {
        let total = body.len() + chunk.remaining();
        if total as u64 > limit {
            return Err(BodyError::TooLarge(limit));
        }
        if !gateway.body_budget().cover(held, total) {
            return Ok(None);
        }
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    Ok(Some(body.freeze()))
}

/// Streams the answer; a body that breaks off resets the stream, so the user sees a
/// failed response rather than a truncated success. A client that reads nothing for
/// `write_timeout` is abandoned the same way.
async fn respond(
    stream: &mut ServerStream,
    forwarded: Forwarded,
    write_timeout: Duration,
) -> Result<(), h3::error::StreamError> {
    let Forwarded { head, mut body } = forwarded;
    stream.send_response(head).await?;
    while let Some(chunk) = body.next_chunk().await {
        match chunk {
            Ok(bytes) => match tokio::time::timeout(write_timeout, stream.send_data(bytes)).await {
                Ok(sent) => sent?,
                Err(_) => {
                    tracing::debug!("client stopped reading: answer abandoned");
                    stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
                    return Ok(());
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "node response broke off");
                stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return Ok(());
            }
        }
    }
    stream.finish().await
}
