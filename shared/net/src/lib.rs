//! The IO that edge's gateway, node, CLI and load tester share, written once: the pure
//! decisions are in [`edge_shared`]; this crate moves bytes.
//!
//! - [`quic`]: QUIC server and client endpoints, and the transport settings of each
//!   kind of link (users → gateway, gateway → node);
//! - [`http3`]: the HTTP/3 accept loop every server runs (one task per request, GOAWAY
//!   and drain on shutdown) and bounded body reading;
//! - [`client`]: connecting, the request exchange, and a small whole-response client;
//! - [`tls`]: PEM loading and rustls configurations (ring provider, TLS 1.3 for QUIC);
//! - [`pki`]: the cluster CA and the role certificates it issues;
//! - [`gossip`]: the gossip agent (chitchat over UDP, every datagram signed with the
//!   cluster key, every identity with its member's key) and an in-memory network to
//!   simulate clusters;
//! - [`lifecycle`]: the shutdown signal that reaches every loop, and the count of
//!   requests in flight a server drains before it leaves;
//! - [`logging`]: the process's `tracing` subscriber;
//! - [`runtime`]: the async runtime a server runs on, its threads under the configured
//!   scheduling policy.

pub mod client;
pub mod gossip;
pub mod http3;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod pki;
pub mod quic;
pub mod runtime;
pub mod tls;
