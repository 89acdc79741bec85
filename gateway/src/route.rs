//! Which function and version a request goes to: the route table finds the function,
//! then the version the request names (`x-edge-version`), or the share of the traffic
//! split its key falls in.

use std::sync::Arc;

use edge_net::gossip::fingerprint;
use edge_shared::manifest::Route;
use edge_shared::routing::Rng as _;
use edge_shared::wire;
use http::Request;

use crate::functions::Function;
use crate::proxy::{Forwarded, Gateway, GatewayError, new_request_id};

/// Why a request has no function to go to.
#[derive(Debug, PartialEq, Eq)]
pub enum Unrouted {
    /// No function is routed at its host and path.
    NoRoute,
    /// The version it names (function, version) takes no traffic.
    NoVersion(String, String),
}

/// A request whose route has been resolved.
pub struct Routed {
    pub(crate) function: Arc<Function>,
    pub(crate) script_name: String,
    /// Largest body to accept for it.
    pub body_limit: u64,
}

impl Routed {
    /// A request for `function` at the route prefix `script_name` (empty for a host
    /// route).
    pub(crate) fn to(function: Arc<Function>, script_name: String) -> Routed {
        Routed {
            body_limit: function.limits.max_request_body_bytes,
            script_name,
            function,
        }
    }
}

impl Gateway {
    /// Resolves the function of a request, and its version: the one the request names
    /// in `x-edge-version` (any taking traffic, 0% too), else the share of the split
    /// its key falls in. The key is a hash of the function and `x-edge-version-key`,
    /// so one key always reaches one version; without that header it is random per
    /// request, drawn once: a retry stays on its version.
    pub fn route(&self, request: &Request<()>) -> Result<Routed, Unrouted> {
        let host = request.uri().host().or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let functions = self.functions.load();
        let m = functions
            .routes
            .resolve(host, request.uri().path())
            .ok_or(Unrouted::NoRoute)?;
        let served = &functions.list[m.function];
        let headers = request.headers();
        let function = if let Some(named) = headers.get(wire::VERSION_HEADER) {
            let named = named.to_str().unwrap_or_default();
            let number = named.strip_prefix('v').unwrap_or(named).parse::<u64>();
            number
                .ok()
                .and_then(|n| served.version(n))
                .ok_or_else(|| Unrouted::NoVersion(served.name.clone(), named.to_string()))?
        } else if served.shares.len() == 1 {
            served.primary()
        } else {
            let key = match headers.get(wire::VERSION_KEY_HEADER) {
                Some(key) => fingerprint(&format!(
                    "{}\0{}",
                    served.name,
                    String::from_utf8_lossy(key.as_bytes())
                )),
                None => self
                    .rng
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .next_u64(),
            };
            served.pick(key)
        };
        Ok(Routed::to(Arc::clone(function), m.script_name.to_string()))
    }

    /// The answer to a request [`Gateway::route`] found nothing for.
    pub fn not_found(&self, unrouted: Unrouted) -> Forwarded {
        let error = match unrouted {
            Unrouted::NoRoute => GatewayError::NoRoute,
            Unrouted::NoVersion(function, version) => GatewayError::NoVersion(function, version),
        };
        self.error_response(error, &new_request_id())
    }

    /// Where users reach `function`: an `https://` URL per route, at this gateway's
    /// address (`localhost` when it listens on every address).
    pub fn urls(&self, function: &Function) -> Vec<String> {
        let ip = self.config.listen.ip();
        let at = if ip.is_unspecified() {
            "localhost".to_string()
        } else if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        let port = self.port;
        function
            .manifest
            .routes
            .iter()
            .map(|route| match route {
                Route::Path(p) => format!("https://{at}:{port}{p}"),
                Route::Host(h) => format!("https://{h}:{port}/"),
            })
            .collect()
    }
}
