//! The gateway's status for cluster members, on a listener of its own (never the users'
//! port) that serves only clients presenting a certificate of the cluster CA: the nodes
//! as this gateway sees them, its requests in flight, and its gossip.

use std::sync::Arc;

use bytes::Bytes;
use edge_net::gossip::Role;
use edge_net::gossip::{Gossip, GossipStats};
use edge_net::http3::{self, Handler, Peer, ServerStream};
use edge_shared::wire;
use http::{HeaderValue, Request, Response, StatusCode};
use serde::Serialize;

use crate::proxy::Gateway;

/// One node as the gateway sees it.
#[derive(Debug, Serialize)]
pub struct NodeView {
    /// Its name.
    pub name: String,
    /// Where the gateway sends it requests.
    pub addr: String,
    /// `usable`, `draining` or `down`.
    pub state: &'static str,
    /// Whether the gateway failed to reach it moments ago.
    pub recently_failed: bool,
    /// Its slots, as it reported them.
    pub slots: usize,
    /// Its running and queued requests, as it reported them.
    pub reported_load: usize,
    /// This gateway's requests in flight there now.
    pub own_in_flight: usize,
    /// Deployments warm there.
    pub warm: usize,
}

/// The gateway's status.
#[derive(Debug, Serialize)]
pub struct GatewayStatus {
    /// Its member name.
    pub name: String,
    /// Functions it serves.
    pub functions: usize,
    /// The nodes of its current cluster snapshot.
    pub nodes: Vec<NodeView>,
    /// Its gossip traffic and membership.
    pub gossip: GossipStats,
}

/// Serves [`GatewayStatus`] at `GET /_edge/v1/status`.
pub struct StatusServer {
    /// The gateway described.
    pub gateway: Arc<Gateway>,
    /// Its gossip agent.
    pub gossip: Arc<Gossip>,
}

impl StatusServer {
    /// The status now.
    pub fn status(&self) -> GatewayStatus {
        let membership = &self.gateway.membership;
        let snapshot = membership.snapshot();
        let (own, failed) = membership.health(&snapshot);
        let nodes = snapshot
            .view
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeView {
                name: n.name.clone(),
                addr: n.addr.to_string(),
                state: match (n.up, n.draining) {
                    (false, _) => "down",
                    (true, true) => "draining",
                    (true, false) => "usable",
                },
                recently_failed: failed[i],
                slots: n.slots,
                reported_load: n.in_flight + n.queued,
                own_in_flight: own[i],
                warm: n.warm.len(),
            })
            .collect();
        GatewayStatus {
            name: self.gateway.name.clone(),
            functions: self.gateway.functions().list.len(),
            nodes,
            gossip: self.gossip.stats(),
        }
    }
}

impl Handler for StatusServer {
    /// Cluster members only: a gateway's or a node's certificate, not any of the CA's.
    fn admits(&self, peer: &quinn::Connection) -> Option<Peer> {
        [
            (wire::GATEWAY_MEMBER_NAME, Role::Gateway),
            (wire::NODE_SERVER_NAME, Role::Node),
        ]
        .into_iter()
        .find(|(name, _)| edge_net::tls::peer_has_name(peer, name))
        .map(|(_, role)| Peer::Member(role))
    }

    async fn handle(self: Arc<Self>, _peer: Peer, request: Request<()>, mut stream: ServerStream) {
        let (status, body) = if request.uri().path() == wire::STATUS_PATH {
            let json = serde_json::to_vec(&self.status()).unwrap_or_default();
            (StatusCode::OK, Bytes::from(json))
        } else {
            (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n"))
        };
        let mut head = Response::new(());
        *head.status_mut() = status;
        let content_type = if status == StatusCode::OK {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        head.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        if let Err(e) = http3::respond(&mut stream, head, body).await {
            tracing::debug!(error = %e, "sending the status failed");
        }
    }
}
