//! Scenarios: what to load, how hard and for how long, from a TOML file (through the
//! `config` crate, with `EDGE_LOADTEST_*` environment overrides) or from command-line
//! flags, flags winning.
//!
//! ```toml
//! target = "https://localhost:4433"     # base of every request's path
//! connect = "127.0.0.1:4433"            # optional: skip resolving the target's host
//! duration = "30s"
//! warmup = "5s"                         # load sent first, not measured
//! rate = 2000                           # open loop, requests per second...
//! ramp_to = 4000                        # ...optionally ramping linearly to this rate
//! # connections = 4                     # closed loop instead of `rate`
//! # streams = 8
//!
//! [[requests]]
//! name = "hello"
//! path = "/hello?name=load"
//! weight = 9                            # share of the mix
//! expect_status = 200
//!
//! [[requests]]
//! name = "echo"
//! method = "POST"
//! path = "/echo"
//! headers = { content-type = "text/plain" }
//! body = "some text"                    # or body_file = "payload.bin"
//! weight = 1
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use edge_shared::config::{ConfigError, ConfigFile};
use serde::Deserialize;

use crate::parse_duration;

/// How the load is applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// A fixed number of requests in flight: `streams` on each of `connections`.
    Closed {
        /// QUIC connections.
        connections: usize,
        /// Requests in flight per connection.
        streams: usize,
    },
    /// Requests sent at scheduled times whatever the answers do; latency counts from
    /// each request's scheduled time.
    Open {
        /// Requests per second at the start.
        rate: f64,
        /// Requests per second at the end (linear ramp); `None` keeps `rate`.
        ramp_to: Option<f64>,
        /// QUIC connections the requests are spread over.
        connections: usize,
    },
}

/// One kind of request in the mix.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// Its name in reports.
    pub name: String,
    /// Method.
    pub method: http::Method,
    /// Full URL.
    pub uri: http::Uri,
    /// Extra headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Its share of the mix.
    pub weight: u32,
    /// The status that counts as success; any when `None`.
    pub expect: Option<http::StatusCode>,
}

/// A whole run's description.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Where to connect.
    pub connect: Option<SocketAddr>,
    /// Other gateways serving the same names: connections are spread over all, and an
    /// idempotent request whose gateway is lost goes to the next.
    pub failover: Vec<SocketAddr>,
    /// TLS server name and `:authority`.
    pub server_name: String,
    /// The measured part's length.
    pub duration: Duration,
    /// Unmeasured load before it.
    pub warmup: Duration,
    /// How hard.
    pub load: Load,
    /// Longest wait for one answer.
    pub timeout: Duration,
    /// Most requests in all (closed loop).
    pub max_requests: u64,
    /// The mix.
    pub requests: Vec<RequestSpec>,
    /// A local process whose CPU time to count over the measured window, as the
    /// generator's own is (`--cpu-of`).
    pub cpu_of: Option<u32>,
}

impl Scenario {
    /// The same scenario sent to `addr` as `localhost` (a local cluster or baseline
    /// server started for the run): same paths, same mix, same load.
    pub fn aimed_at(&self, addr: SocketAddr) -> anyhow::Result<Scenario> {
        let mut aimed = self.clone();
        aimed.connect = Some(addr);
        aimed.server_name = "localhost".into();
        for request in &mut aimed.requests {
            let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
            request.uri = format!("https://localhost:{}{path}", addr.port()).parse()?;
        }
        Ok(aimed)
    }

    /// The address to connect to: `connect`, else the target host resolved.
    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        use std::net::ToSocketAddrs;
        if let Some(addr) = self.connect {
            return Ok(addr);
        }
        let uri = &self.requests[0].uri;
        let port = uri.port_u16().unwrap_or(443);
        (self.server_name.as_str(), port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{} has no address", self.server_name))
    }
}

/// A scenario file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScenarioFile {
    /// Base URL of the requests' paths.
    pub target: Option<String>,
    /// Address to connect to.
    pub connect: Option<String>,
    /// Measured length (`30s`).
    pub duration: Option<String>,
    /// Warm-up length.
    pub warmup: Option<String>,
    /// Open-loop rate.
    pub rate: Option<f64>,
    /// Open-loop rate at the end.
    pub ramp_to: Option<f64>,
    /// Connections.
    pub connections: Option<usize>,
    /// Closed-loop streams per connection.
    pub streams: Option<usize>,
    /// Answer timeout.
    pub timeout: Option<String>,
    /// The mix.
    pub requests: Vec<RequestFile>,
}

/// One `[[requests]]` entry as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestFile {
    /// Name in reports (default: the path).
    pub name: Option<String>,
    /// HTTP method (default GET).
    pub method: Option<String>,
    /// Path under the target, or a full URL.
    pub path: String,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// Body text.
    pub body: Option<String>,
    /// Body from a file (relative to the scenario file).
    pub body_file: Option<PathBuf>,
    /// Share of the mix (default 1).
    pub weight: Option<u32>,
    /// Status that counts as success.
    pub expect_status: Option<u16>,
}

impl ConfigFile for ScenarioFile {
    const ENV_PREFIX: &'static str = "EDGE_LOADTEST";

    fn resolve_paths(&mut self, base: &Path) {
        for r in &mut self.requests {
            if let Some(file) = &mut r.body_file
                && file.is_relative()
            {
                *file = base.join(&*file);
            }
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, value) in [
            ("duration", &self.duration),
            ("warmup", &self.warmup),
            ("timeout", &self.timeout),
        ] {
            if let Some(Err(e)) = value.as_deref().map(parse_duration) {
                problems.push(format!("{key}: {e}"));
            }
        }
        if let Some(target) = &self.target
            && let Err(e) = target.parse::<http::Uri>()
        {
            problems.push(format!("target: {target:?}: {e}"));
        }
        if let Some(Err(e)) = self.connect.as_deref().map(str::parse::<SocketAddr>) {
            problems.push(format!("connect: {e}"));
        }
        for (key, rate) in [("rate", self.rate), ("ramp_to", self.ramp_to)] {
            if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                problems.push(format!(
                    "{key}: must be a positive number of requests per second"
                ));
            }
        }
        if self.ramp_to.is_some() && self.rate.is_none() {
            problems.push("ramp_to: needs rate (the open loop's starting rate)".into());
        }
        if self.rate.is_some() && self.streams.is_some() {
            problems.push("streams: closed-loop setting, but rate asks for an open loop".into());
        }
        for (key, n) in [("connections", self.connections), ("streams", self.streams)] {
            if n == Some(0) {
                problems.push(format!("{key}: must be at least 1"));
            }
        }
        for (i, r) in self.requests.iter().enumerate() {
            let at = format!("requests[{i}]");
            if r.path.is_empty() {
                problems.push(format!("{at}.path: required"));
            }
            if let Some(m) = &r.method
                && http::Method::from_bytes(m.as_bytes()).is_err()
            {
                problems.push(format!("{at}.method: {m:?} is not an HTTP method"));
            }
            if r.weight == Some(0) {
                problems.push(format!("{at}.weight: must be at least 1"));
            }
            if r.body.is_some() && r.body_file.is_some() {
                problems.push(format!("{at}: body and body_file both set"));
            }
            if let Some(file) = &r.body_file
                && !file.is_file()
            {
                problems.push(format!("{at}.body_file: {} not found", file.display()));
            }
            if let Some(code) = r.expect_status
                && http::StatusCode::from_u16(code).is_err()
            {
                problems.push(format!("{at}.expect_status: {code} is not a status"));
            }
            for (name, value) in &r.headers {
                if http::HeaderName::try_from(name.as_str()).is_err()
                    || http::HeaderValue::try_from(value.as_str()).is_err()
                {
                    problems.push(format!("{at}.headers: {name:?} is not a valid header"));
                }
            }
        }
        problems
    }
}

/// Reads a scenario file (every problem named with its key, or the parse error).
pub fn load(file: &Path) -> Result<ScenarioFile, ConfigError> {
    edge_shared::config::load(file)
}

/// What the command line says, each `None` leaving the file's value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// URLs to load, replacing the file's requests (equal weights).
    pub urls: Vec<http::Uri>,
    /// Address to connect to.
    pub connect: Option<SocketAddr>,
    /// Other gateways to fail over to.
    pub failover: Vec<SocketAddr>,
    /// Measured length.
    pub duration: Option<Duration>,
    /// Warm-up length.
    pub warmup: Option<Duration>,
    /// Open-loop rate.
    pub rate: Option<f64>,
    /// Open-loop final rate.
    pub ramp_to: Option<f64>,
    /// Connections.
    pub connections: Option<usize>,
    /// Closed-loop streams.
    pub streams: Option<usize>,
    /// Most requests.
    pub max_requests: Option<u64>,
    /// Extra headers for every request.
    pub headers: http::HeaderMap,
}

/// The scenario of `file` (or none) with `flags` over it.
pub fn build(file: Option<ScenarioFile>, flags: &Overrides) -> anyhow::Result<Scenario> {
    let file = file.unwrap_or_default();
    let seconds = |text: &Option<String>| text.as_deref().map(parse_duration).transpose();
    let duration = flags
        .duration
        .or(seconds(&file.duration).map_err(anyhow::Error::msg)?)
        .unwrap_or(Duration::from_secs(10));
    let warmup = flags
        .warmup
        .or(seconds(&file.warmup).map_err(anyhow::Error::msg)?)
        .unwrap_or_default();
    let timeout = seconds(&file.timeout)
        .map_err(anyhow::Error::msg)?
        .unwrap_or(Duration::from_secs(10));
    let connections = flags.connections.or(file.connections).unwrap_or(4);
    let rate = flags.rate.or(if flags.streams.is_some() {
        None
    } else {
        file.rate
    });
    let load = match rate {
        Some(rate) => Load::Open {
            rate,
            ramp_to: flags.ramp_to.or(file.ramp_to),
            connections,
        },
        None => Load::Closed {
            connections,
            streams: flags.streams.or(file.streams).unwrap_or(8),
        },
    };
    let mut requests = Vec::new();
    if flags.urls.is_empty() {
        let target: Option<http::Uri> = file.target.as_deref().map(str::parse).transpose()?;
        for r in &file.requests {
            let uri: http::Uri = if r.path.starts_with("https://") {
                r.path.parse()?
            } else {
                let base = target.as_ref().ok_or_else(|| {
                    anyhow::anyhow!(
                        "requests[].path {:?} needs `target` (or a full URL)",
                        r.path
                    )
                })?;
                format!(
                    "{}://{}{}",
                    base.scheme_str().unwrap_or("https"),
                    base.authority().map_or("", |a| a.as_str()),
                    r.path
                )
                .parse()?
            };
            let mut headers = flags.headers.clone();
            for (k, v) in &r.headers {
                headers.insert(
                    http::HeaderName::try_from(k.as_str())?,
                    http::HeaderValue::try_from(v.as_str())?,
                );
            }
            let body = match (&r.body, &r.body_file) {
                (Some(text), _) => Bytes::from(text.clone()),
                (None, Some(file)) => Bytes::from(std::fs::read(file)?),
                (None, None) => Bytes::new(),
            };
            requests.push(RequestSpec {
                name: r.name.clone().unwrap_or_else(|| r.path.clone()),
                method: http::Method::from_bytes(r.method.as_deref().unwrap_or("GET").as_bytes())?,
                uri,
                headers,
                body,
                weight: r.weight.unwrap_or(1),
                expect: r
                    .expect_status
                    .map(http::StatusCode::from_u16)
                    .transpose()?,
            });
        }
    } else {
        for uri in &flags.urls {
            requests.push(RequestSpec {
                name: uri.path().to_string(),
                method: http::Method::GET,
                uri: uri.clone(),
                headers: flags.headers.clone(),
                body: Bytes::new(),
                weight: 1,
                expect: None,
            });
        }
    }
    anyhow::ensure!(
        !requests.is_empty(),
        "nothing to load: give a URL or a scenario with [[requests]]"
    );
    let authority = requests[0].uri.authority().cloned();
    anyhow::ensure!(
        requests
            .iter()
            .all(|r| r.uri.authority() == authority.as_ref()),
        "every request must go to the same host and port"
    );
    anyhow::ensure!(
        requests.iter().all(|r| r.uri.scheme_str() == Some("https")),
        "every URL must be https:// (HTTP/3)"
    );
    let server_name = requests[0]
        .uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("URL without a host"))?
        .to_string();
    let connect = match flags.connect {
        Some(addr) => Some(addr),
        None => file.connect.as_deref().map(str::parse).transpose()?,
    };
    Ok(Scenario {
        connect,
        failover: flags.failover.clone(),
        server_name,
        duration,
        warmup,
        load,
        timeout,
        max_requests: flags.max_requests.unwrap_or(u64::MAX),
        requests,
        cpu_of: None,
    })
}

/// Picks requests in proportion to their weights, deterministically: smooth weighted
/// round robin (the nginx algorithm), so a short run already has the exact mix.
#[derive(Debug, Clone)]
pub struct Mix {
    weights: Vec<i64>,
    current: Vec<i64>,
}

impl Mix {
    /// A mix of items with these weights.
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Mix {
        let weights: Vec<i64> = weights.into_iter().map(i64::from).collect();
        Mix {
            current: vec![0; weights.len()],
            weights,
        }
    }

    /// The index of the next item.
    pub fn next_index(&mut self) -> usize {
        let total: i64 = self.weights.iter().sum();
        for (c, w) in self.current.iter_mut().zip(&self.weights) {
            *c += w;
        }
        let (best, _) = self
            .current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .expect("a mix has items");
        self.current[best] -= total;
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("scenario.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_scenario_file_becomes_a_mix_with_flags_on_top() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("payload.txt"), "from a file").unwrap();
        let path = write(
            dir.path(),
            r#"
target = "https://localhost:4433"
connect = "127.0.0.1:4433"
duration = "20s"
warmup = "2s"
rate = 100
ramp_to = 200
[[requests]]
name = "hello"
path = "/hello"
weight = 3
expect_status = 200
[[requests]]
method = "POST"
path = "/echo"
body_file = "payload.txt"
headers = { content-type = "text/plain" }
"#,
        );
        let file = load(&path).unwrap();
        let s = build(Some(file), &Overrides::default()).unwrap();
        assert_eq!(s.duration, Duration::from_secs(20));
        assert_eq!(s.warmup, Duration::from_secs(2));
        assert_eq!(
            s.load,
            Load::Open {
                rate: 100.0,
                ramp_to: Some(200.0),
                connections: 4
            }
        );
        assert_eq!(s.requests[0].uri, "https://localhost:4433/hello");
        assert_eq!(s.requests[0].expect, Some(http::StatusCode::OK));
        assert_eq!(s.requests[1].name, "/echo");
        assert_eq!(&s.requests[1].body[..], b"from a file");
        assert_eq!(s.requests[1].headers["content-type"], "text/plain");
        assert_eq!(s.addr().unwrap(), "127.0.0.1:4433".parse().unwrap());

        // Flags win: closed loop and a shorter run.
        let flags = Overrides {
            streams: Some(2),
            duration: Some(Duration::from_secs(1)),
            ..Overrides::default()
        };
        let s = build(Some(load(&path).unwrap()), &flags).unwrap();
        assert_eq!(
            s.load,
            Load::Closed {
                connections: 4,
                streams: 2
            }
        );
        assert_eq!(s.duration, Duration::from_secs(1));
    }

    #[test]
    fn bad_scenario_files_are_refused_naming_each_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            r#"
duration = "soon"
rate = -5
streams = 4
[[requests]]
path = "/x"
method = "G E T"
weight = 0
body_file = "missing.bin"
"#,
        );
        let err = load(&path).unwrap_err().to_string();
        for key in [
            "scenario.toml",
            "duration",
            "rate",
            "streams",
            "requests[0].method",
            "requests[0].weight",
            "requests[0].body_file",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
        let unknown = write(dir.path(), "durration = \"5s\"\n");
        let err = load(&unknown).unwrap_err().to_string();
        assert!(err.contains("durration"), "{err}");
        let no_file = load(&dir.path().join("nope.toml")).unwrap_err().to_string();
        assert!(no_file.contains("not found"), "{no_file}");
    }

    #[test]
    fn the_example_scenario_loads() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/loadtest.toml");
        let s = build(Some(load(&example).unwrap()), &Overrides::default()).unwrap();
        assert_eq!(s.requests.len(), 3);
        assert!(matches!(s.load, Load::Open { .. }));
    }

    #[test]
    fn the_mix_follows_the_weights_exactly() {
        let mut mix = Mix::new([5, 1, 1]);
        let picks: Vec<usize> = (0..7).map(|_| mix.next_index()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 1);
        // Smooth: the heavy item is spread out, not sent five times in a row.
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }
}
