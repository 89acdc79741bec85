//! QUIC endpoints, server and client, and the transport settings of each kind of link,
//! so that every endpoint of one kind is set up the same way (the load tester's bare
//! baseline server uses [`USERS`], exactly as the gateway's ingress does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Transport settings of one kind of QUIC link.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    /// Most request streams a peer may have open at once.
    pub max_streams: u32,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive pings, for connections that must not idle out between requests.
    pub keep_alive: Option<Duration>,
}

/// Users to a gateway (and the baseline server the load tester compares it with).
pub const USERS: Transport = Transport {
    max_streams: 256,
    idle_timeout: Duration::from_secs(30),
    keep_alive: None,
};

/// Gateways to a node, as the node serves them.
pub const MEMBERS: Transport = Transport {
    max_streams: 1024,
    idle_timeout: Duration::from_secs(30),
    keep_alive: None,
};

/// A gateway's pooled connections to nodes: pinged, so a dead node is noticed in
/// seconds and a live one's connection never idles out.
pub const NODE_POOL: Transport = Transport {
    max_streams: 100,
    idle_timeout: Duration::from_secs(3),
    keep_alive: Some(Duration::from_millis(500)),
};

/// A client's connections to several gateways, any of which may serve it (the load
/// tester's `--failover`): pinged, so a lost gateway is noticed in seconds.
pub const WATCHFUL_CLIENT: Transport = Transport {
    max_streams: 100,
    idle_timeout: Duration::from_secs(3),
    keep_alive: Some(Duration::from_millis(500)),
};

/// A client's connection to a gateway (`edge call`, the load tester, the tests).
pub const CLIENT: Transport = Transport {
    max_streams: 100,
    idle_timeout: Duration::from_secs(30),
    keep_alive: None,
};

impl Transport {
    fn config(&self) -> anyhow::Result<quinn::TransportConfig> {
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(self.max_streams.into());
        transport.max_idle_timeout(Some(self.idle_timeout.try_into()?));
        transport.keep_alive_interval(self.keep_alive);
        Ok(transport)
    }
}

/// A QUIC server endpoint on `addr` presenting `tls`.
pub fn server(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    transport: &Transport,
) -> anyhow::Result<quinn::Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport.config()?));
    Ok(quinn::Endpoint::server(config, addr)?)
}

/// A QUIC client endpoint bound to `local`, with `tls` as its default client
/// configuration.
pub fn client(
    local: SocketAddr,
    tls: rustls::ClientConfig,
    transport: &Transport,
) -> anyhow::Result<quinn::Endpoint> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport.config()?));
    let mut endpoint = quinn::Endpoint::client(local)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// The unspecified local address (any interface, any port) of `peer`'s family.
pub fn any_local(peer: SocketAddr) -> SocketAddr {
    if peer.is_ipv6() {
        SocketAddr::from(([0u16; 8], 0))
    } else {
        SocketAddr::from(([0, 0, 0, 0], 0))
    }
}

/// Closes `endpoint` (every connection gets `reason`) and waits until its peers have
/// been told, at most `within`.
pub async fn close(endpoint: &quinn::Endpoint, reason: &str, within: Duration) {
    endpoint.close(0u32.into(), reason.as_bytes());
    let _ = tokio::time::timeout(within, endpoint.wait_idle()).await;
}
