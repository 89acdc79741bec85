//! HTTP/3 ingress: the shared accept loop of [`edge_net::http3`], each request handed to
//! [`Gateway`].

use std::sync::Arc;

use edge_net::http3::{self, BodyError, Handler, ServerStream};
use http::Request;

use crate::proxy::{Forwarded, Gateway};

impl Handler for Gateway {
    async fn handle(self: Arc<Self>, request: Request<()>, mut stream: ServerStream) {
        let forwarded = match self.route(&request) {
            None => self.not_found(),
            Some(routed) => match http3::read_body(&mut stream, routed.body_limit).await {
                Ok(body) => self.forward(routed, request, body).await,
                Err(BodyError::TooLarge(_)) => self.body_too_large(&routed),
                Err(e) => {
                    tracing::debug!(error = %e, "reading the request body failed");
                    return;
                }
            },
        };
        if let Err(e) = respond(&mut stream, forwarded).await {
            tracing::debug!(error = %e, "sending the response failed");
        }
        http3::stop_reading(&mut stream);
    }
}

/// Streams the answer; a body that breaks off resets the stream, so the user sees a
/// failed response rather than a truncated success.
async fn respond(
    stream: &mut ServerStream,
    forwarded: Forwarded,
) -> Result<(), h3::error::StreamError> {
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
