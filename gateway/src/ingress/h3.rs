//! HTTP/3 ingress: the shared accept loop of [`edge_net::http3`], each request handed to
//! [`Gateway`].

use std::sync::Arc;
use std::time::Duration;

use edge_net::http3::{self, BodyError, Handler, ServerStream};
use http::Request;

use crate::proxy::{Forwarded, Gateway};

impl Handler for Gateway {
    async fn handle(self: Arc<Self>, request: Request<()>, mut stream: ServerStream) {
        let ingress = &self.config.ingress;
        let forwarded = match self.route(&request) {
            None => self.not_found(),
            Some(routed) => {
                let read = http3::read_body(&mut stream, routed.body_limit);
                match tokio::time::timeout(ingress.body_read_timeout(), read).await {
                    Ok(Ok(body)) => self.forward(routed, request, body).await,
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
