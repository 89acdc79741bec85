//! The limits of the gateway's ingress: what one user's connections may hold, and for how
//! long, before the gateway lets go of them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[ingress]` in the gateway's file (and `edge up`'s cluster file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// Most connections open at once on each transport (TCP, and QUIC); more are closed
    /// as they arrive.
    pub max_connections: usize,
    /// Longest a TLS handshake (TCP) or QUIC handshake may take, in ms.
    pub handshake_timeout_ms: u64,
    /// Longest a request's headers may take to arrive, in ms (HTTP/1.1, and each HTTP/3
    /// request stream).
    pub header_read_timeout_ms: u64,
    /// Longest a request's whole body may take to arrive, in ms; then `408`.
    pub body_read_timeout_ms: u64,
    /// Longest one write of an answer may wait for a client that does not read, in ms;
    /// then the answer is abandoned.
    pub write_timeout_ms: u64,
    /// Longest a connection may stay open with no request in flight, in ms (HTTP/1.1
    /// keep-alive and HTTP/2 on TCP; a QUIC connection with no packets either way).
    pub idle_timeout_ms: u64,
    /// Largest header block of one request, in bytes (HTTP/3 field section, HTTP/2
    /// header list, HTTP/1.1 head): larger ones are refused before they are buffered.
    pub max_header_bytes: u32,
    /// Request bodies the gateway holds in memory at once, over all requests, in bytes;
    /// a request whose body would pass it gets `503` with `Retry-After`.
    pub max_buffered_body_bytes: u64,
}

impl Default for IngressConfig {
    fn default() -> IngressConfig {
        IngressConfig {
            max_connections: 10_000,
            handshake_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            write_timeout_ms: 30_000,
            idle_timeout_ms: 30_000,
            max_header_bytes: 64 << 10,
            max_buffered_body_bytes: 256 << 20,
        }
    }
}

impl IngressConfig {
    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The header-read timeout.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// The body-read timeout.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub(crate) fn problems(&self, problems: &mut Vec<String>) {
        if !(1..=1_000_000).contains(&self.max_connections) {
            problems.push("ingress.max_connections: from 1 to 1000000".into());
        }
        for (key, value) in [
            ("ingress.handshake_timeout_ms", self.handshake_timeout_ms),
            (
                "ingress.header_read_timeout_ms",
                self.header_read_timeout_ms,
            ),
            ("ingress.body_read_timeout_ms", self.body_read_timeout_ms),
            ("ingress.write_timeout_ms", self.write_timeout_ms),
            ("ingress.idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if !(1..=3_600_000).contains(&value) {
                problems.push(format!("{key}: from 1 to 3600000"));
            }
        }
        if self.max_buffered_body_bytes < 1024 {
            problems.push("ingress.max_buffered_body_bytes: at least 1024".into());
        }
        if !(1024..=(1 << 20)).contains(&self.max_header_bytes) {
            problems.push("ingress.max_header_bytes: from 1024 to 1048576".into());
        }
    }
}
