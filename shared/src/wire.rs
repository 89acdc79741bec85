//! What the gateway and the node say to each other over HTTP/3, and what users see of it.

use std::fmt::Write as _;
use std::time::Duration;

/// Request header: the [`crate::manifest::DeploymentId`] to run.
pub const FUNCTION_HEADER: &str = "x-edge-function";
/// Request header: the request id, carried into the node's and the function's logs.
pub const REQUEST_ID_HEADER: &str = "x-edge-request-id";
/// Request header: milliseconds the node has left to answer.
pub const DEADLINE_HEADER: &str = "x-edge-deadline-ms";
/// Response header: why a node refused a request before running it.
pub const REFUSED_HEADER: &str = "x-edge-refused";
/// Response header: which node served the request.
pub const NODE_HEADER: &str = "x-edge-node";
/// Request header: the member name of the gateway that sent the request (nodes count
/// requests per gateway in their gossiped load).
pub const GATEWAY_HEADER: &str = "x-edge-gateway";
/// Request header of a deploy: the HTTP/3 addresses of nodes the gateway has loaded the
/// deployment on (comma-separated), which the node may ask for its compiled artifact
/// before gossip shows them warm. Only a hint: an artifact is taken only as its
/// compiling node signed it.
pub const HOLDERS_HEADER: &str = "x-edge-artifact-holders";
/// Most holders a deploy names (and a node reads).
pub const MAX_HOLDERS: usize = 8;

/// The holders named in a [`HOLDERS_HEADER`] value: its well-formed addresses, at most
/// [`MAX_HOLDERS`].
pub fn parse_holders(value: &str) -> Vec<std::net::SocketAddr> {
    value
        .split(',')
        .filter_map(|a| a.trim().parse().ok())
        .take(MAX_HOLDERS)
        .collect()
}
/// Request header: the route prefix that matched (CGI `SCRIPT_NAME`), empty for a host route.
pub const SCRIPT_NAME_HEADER: &str = "x-edge-script-name";
/// Request header: the version of the function to reach (`7` or `v7`), any version
/// taking traffic, one at 0% too. Response header: the version that answered.
pub const VERSION_HEADER: &str = "x-edge-version";
/// Request header: the key a function's traffic split hashes, so that one key always
/// reaches one version.
pub const VERSION_KEY_HEADER: &str = "x-edge-version-key";
/// Path prefix of the node's deploy endpoint: `PUT /_edge/v1/deployments/{deployment id}`;
/// the body is the [`crate::manifest::FunctionManifest`] as one line of JSON, a newline,
/// then the module's bytes (see [`encode_deploy_body`]), or nothing after the newline to
/// name the module by content id alone (refused [`Refusal::ModuleMissing`] by a node
/// without it). `DELETE` on the same path drops the deployment.
pub const DEPLOY_PATH: &str = "/_edge/v1/deployments/";
/// Path of the node's status endpoint (JSON).
pub const STATUS_PATH: &str = "/_edge/v1/status";
/// Path prefix of a node's stream of one function's calls and log lines, for `edge
/// tail`: `GET /_edge/v1/tail/{function name}`, answered with JSON lines.
pub const TAIL_PATH: &str = "/_edge/v1/tail/";
/// Path prefix of a node's compiled artifacts, for other nodes only: `GET
/// /_edge/v1/artifacts/{content id}?engine={engine key}`, answered with the artifact's
/// seal line and its bytes (see [`crate::artifact`]), or `404`.
pub const ARTIFACT_PATH: &str = "/_edge/v1/artifacts/";
/// Path of a node's usage meter: `GET /_edge/v1/usage[?since_ms=N]`, JSON.
pub const USAGE_PATH: &str = "/_edge/v1/usage";
/// TLS server name in node certificates, checked by the gateway: the node role.
pub const NODE_SERVER_NAME: &str = "edge-node";
/// The name in a gateway's cluster-member certificate: the gateway role. Nodes serve
/// only clients whose certificate carries it, so no other certificate of the cluster CA
/// (the public one users see, say) is a cluster credential.
pub const GATEWAY_MEMBER_NAME: &str = "edge-gateway";
/// ALPN protocol id of HTTP/3.
pub const ALPN_H3: &[u8] = b"h3";

/// Hop-by-hop headers (RFC 9110 7.6.1, and the older ones proxies still honour): they
/// describe one connection, never pass through a proxy, and nobody outside the gateway
/// sets them.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether a header name is the cluster's own once case and `_` are folded
/// (`X_Edge_Function` is `x-edge-function` to a CGI guest, which sees both as
/// `HTTP_X_EDGE_FUNCTION`).
fn is_cluster_header(name: &str) -> bool {
    name.len() >= 7
        && name.as_bytes()[..7]
            .iter()
            .map(|b| {
                if *b == b'_' {
                    b'-'
                } else {
                    b.to_ascii_lowercase()
                }
            })
            .eq(b"x-edge-".iter().copied())
}

/// Whether a user's request header is one a function never sees: the cluster's own
/// (`x-edge-*` in any case, with `_` or `-`), hop-by-hop ones, and `host` (given
/// separately). Headers a `Connection` header nominates are dropped too; see
/// [`connection_nominated`].
pub fn is_internal_request_header(name: &str) -> bool {
    is_cluster_header(name)
        || HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
        || name.eq_ignore_ascii_case("host")
}

/// The header names a `Connection` header's values nominate as hop-by-hop, lower-cased.
pub fn connection_nominated<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

/// Whether a response header is one a function may not set: the cluster's own
/// (`x-edge-*`, so no guest can speak for the node: refusals travel in
/// `x-edge-refused`), hop-by-hop ones, `content-length` (the node frames the body),
/// `server-timing` (the cluster's timings) and `alt-svc` (the gateway advertises its
/// own HTTP/3 endpoint).
pub fn is_reserved_response_header(name: &str) -> bool {
    is_cluster_header(name)
        || HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
        || ["content-length", "server-timing", "alt-svc"]
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
}

/// The body of a deploy request.
pub fn encode_deploy_body(manifest: &crate::manifest::FunctionManifest, module: &[u8]) -> Vec<u8> {
    let mut body = serde_json::to_vec(manifest).expect("a manifest always encodes");
    body.push(b'\n');
    body.extend_from_slice(module);
    body
}

/// Splits a deploy request body into its manifest and module.
pub fn decode_deploy_body(
    body: &[u8],
) -> Result<(crate::manifest::FunctionManifest, &[u8]), String> {
    let newline = body
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("deploy body has no manifest line")?;
    let manifest =
        serde_json::from_slice(&body[..newline]).map_err(|e| format!("deploy manifest: {e}"))?;
    Ok((manifest, &body[newline + 1..]))
}

/// Why a node refused a request before the function started. Always safe to retry
/// elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No free slot came up within the queue timeout.
    Overloaded,
    /// The node does not have this deployment loaded.
    NotFound,
    /// The node is shutting down.
    Draining,
    /// A deploy named its module by content id only, and the node does not hold it:
    /// send the module.
    ModuleMissing,
}

impl Refusal {
    /// The value of [`REFUSED_HEADER`].
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Overloaded => "overloaded",
            Refusal::NotFound => "not-found",
            Refusal::Draining => "draining",
            Refusal::ModuleMissing => "module-missing",
        }
    }

    /// Parses a [`REFUSED_HEADER`] value.
    pub fn parse(value: &str) -> Option<Refusal> {
        match value {
            "overloaded" => Some(Refusal::Overloaded),
            "not-found" => Some(Refusal::NotFound),
            "draining" => Some(Refusal::Draining),
            "module-missing" => Some(Refusal::ModuleMissing),
            _ => None,
        }
    }
}

/// A `server-timing` header value: named durations in milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerTiming {
    entries: Vec<(String, f64)>,
}

impl ServerTiming {
    /// Adds a metric.
    pub fn push(&mut self, name: &str, duration: Duration) {
        self.entries
            .push((name.to_string(), duration.as_secs_f64() * 1000.0));
    }

    /// Parses a header value, skipping entries it cannot read.
    pub fn parse(value: &str) -> ServerTiming {
        let entries = value
            .split(',')
            .filter_map(|entry| {
                let mut parts = entry.trim().split(';');
                let name = parts.next()?.trim();
                let dur = parts.find_map(|p| p.trim().strip_prefix("dur="))?;
                Some((name.to_string(), dur.parse().ok()?))
            })
            .collect();
        ServerTiming { entries }
    }

    /// One metric.
    pub fn of(name: &str, duration: Duration) -> ServerTiming {
        let mut timing = ServerTiming::default();
        timing.push(name, duration);
        timing
    }

    /// A header value of `first`'s entries, then `inner` (a value another member wrote,
    /// passed on as it is), then `last`'s.
    pub fn joined(first: &ServerTiming, inner: Option<&str>, last: &ServerTiming) -> String {
        let mut out = first.header_value();
        if let Some(inner) = inner.filter(|inner| !inner.trim().is_empty()) {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(inner);
        }
        last.write_to(&mut out);
        out
    }

    /// Every entry: its name and duration.
    pub fn entries(&self) -> impl Iterator<Item = (&str, Duration)> {
        self.entries
            .iter()
            .map(|(name, ms)| (name.as_str(), Duration::from_secs_f64(ms.max(0.0) / 1000.0)))
    }

    /// The duration of metric `name` in milliseconds.
    pub fn get_ms(&self, name: &str) -> Option<f64> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| *d)
    }

    /// Whether the answer met a cold start on its path: a deploy by the gateway or a
    /// load on the node (`deploy` or `cold` above 0).
    pub fn met_a_cold_start(&self) -> bool {
        ["cold", "deploy"]
            .iter()
            .any(|phase| self.get_ms(phase).is_some_and(|ms| ms > 0.0))
    }

    /// The header value.
    pub fn header_value(&self) -> String {
        let mut out = String::with_capacity(24 * self.entries.len());
        self.write_to(&mut out);
        out
    }

    /// Appends the entries to a header value being built in `out` (after a comma, if it
    /// holds some already), each to the microsecond: integer formatting, not a float's.
    pub fn write_to(&self, out: &mut String) {
        for (name, ms) in &self.entries {
            if !out.is_empty() {
                out.push_str(", ");
            }
            let micros = (ms.max(0.0) * 1000.0).round() as u64;
            let _ = write!(out, "{name};dur={}.{:03}", micros / 1000, micros % 1000);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_headers_are_known_in_any_spelling() {
        for name in [
            "x-edge-function",
            "X-Edge-Refused",
            "x_edge_function",
            "X_EDGE_node",
        ] {
            assert!(is_internal_request_header(name), "{name}");
            assert!(is_reserved_response_header(name), "{name}");
        }
        for name in ["x-edgy", "x-edge", "accept", "set-cookie", "x-custom"] {
            assert!(!is_internal_request_header(name), "{name}");
            assert!(!is_reserved_response_header(name), "{name}");
        }
        for name in ["Connection", "upgrade", "TE", "host"] {
            assert!(is_internal_request_header(name), "{name}");
        }
        for name in [
            "Server-Timing",
            "alt-svc",
            "content-length",
            "transfer-encoding",
        ] {
            assert!(is_reserved_response_header(name), "{name}");
        }
        assert_eq!(
            connection_nominated(["keep-alive, X-Secret", " ,close"]),
            ["keep-alive", "x-secret", "close"]
        );
    }

    #[test]
    fn server_timing_round_trips() {
        let mut t = ServerTiming::default();
        t.push("queue", Duration::from_micros(1500));
        t.push("run", Duration::from_millis(2));
        let text = t.header_value();
        assert_eq!(text, "queue;dur=1.500, run;dur=2.000");
        let parsed = ServerTiming::parse(&text);
        assert_eq!(parsed.get_ms("queue"), Some(1.5));
        assert_eq!(parsed.get_ms("run"), Some(2.0));
        assert_eq!(parsed.get_ms("cold"), None);
        assert_eq!(ServerTiming::parse("junk, a;dur=x").get_ms("a"), None);
        // A cold start is a deploy or a load above 0; a warm answer reports both at 0.
        assert!(!parsed.met_a_cold_start());
        assert!(!ServerTiming::parse("deploy;dur=0.000, cold;dur=0.000").met_a_cold_start());
        assert!(ServerTiming::parse("deploy;dur=0.000, cold;dur=12.5").met_a_cold_start());
        assert!(ServerTiming::parse("deploy;dur=576.3").met_a_cold_start());
        // Rounded to the microsecond; appended after a value already begun.
        let mut t = ServerTiming::default();
        t.push("total", Duration::from_nanos(12_345_678));
        t.push("zero", Duration::ZERO);
        let mut out = String::from("run;dur=0.136");
        t.write_to(&mut out);
        assert_eq!(out, "run;dur=0.136, total;dur=12.346, zero;dur=0.000");
        let deploy = ServerTiming::of("deploy", Duration::ZERO);
        for (inner, joined) in [
            (
                Some("run;dur=0.136"),
                "deploy;dur=0.000, run;dur=0.136, total;dur=12.346, zero;dur=0.000",
            ),
            (
                Some(" "),
                "deploy;dur=0.000, total;dur=12.346, zero;dur=0.000",
            ),
            (None, "deploy;dur=0.000, total;dur=12.346, zero;dur=0.000"),
        ] {
            assert_eq!(ServerTiming::joined(&deploy, inner, &t), joined);
        }
    }

    #[test]
    fn deploy_body_round_trips() {
        let manifest = crate::manifest::FunctionManifest {
            name: "f".into(),
            content_id: crate::manifest::ContentId::of(b"m\n"),
            routes: vec![],
            env: [("K".to_string(), "line1\nline2".to_string())].into(),
            secrets: Default::default(),
            limits: Default::default(),
        };
        let body = encode_deploy_body(&manifest, b"m\n");
        let (decoded, module) = decode_deploy_body(&body).unwrap();
        assert_eq!(decoded, manifest);
        assert_eq!(module, b"m\n");
        assert!(decode_deploy_body(b"no newline").is_err());
        assert!(
            decode_deploy_body(b"{}\nmodule")
                .unwrap_err()
                .contains("manifest")
        );
    }

    #[test]
    fn refusal_round_trips() {
        for r in [Refusal::Overloaded, Refusal::NotFound, Refusal::Draining] {
            assert_eq!(Refusal::parse(r.as_str()), Some(r));
        }
        assert_eq!(Refusal::parse("bored"), None);
    }

    #[test]
    fn a_holders_header_yields_its_well_formed_addresses_and_no_more_than_the_cap() {
        let holders = parse_holders(" 127.0.0.1:4001,junk,[::1]:4002,,10.0.0.1,:99 ");
        assert_eq!(
            holders,
            [
                "127.0.0.1:4001".parse().unwrap(),
                "[::1]:4002".parse().unwrap()
            ]
        );
        let many: Vec<String> = (0..100)
            .map(|p| format!("127.0.0.1:{}", 5000 + p))
            .collect();
        assert_eq!(parse_holders(&many.join(",")).len(), MAX_HOLDERS);
        assert!(parse_holders("").is_empty());
    }
}
