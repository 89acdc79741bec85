//! The admin API's client, for `edge deploy`, `edge functions`, `edge versions`, `edge
//! traffic`, `edge rollback`, `edge rm` and `edge cluster`: one HTTPS (HTTP/1.1) call per
//! command, with the bearer token, or a stream of JSON lines (`edge tail`); and the tables
//! those commands print.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// A client of one gateway's admin API.
pub struct AdminClient {
    addr: SocketAddr,
    host: String,
    tls: tokio_rustls::TlsConnector,
    token: String,
}

/// What a call answered.
#[derive(Debug)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its JSON body (`null` when empty).
    pub body: serde_json::Value,
}

impl AdminClient {
    /// A client of the admin API at `url` (`https://HOST:PORT`), trusting `ca`, with the
    /// token in `token_file`.
    pub fn new(url: &str, ca: &Path, token_file: &Path) -> anyhow::Result<AdminClient> {
        let uri: http::Uri = url.parse().with_context(|| format!("admin URL {url:?}"))?;
        if uri.scheme_str() != Some("https") {
            bail!("admin URL {url:?}: the admin API is https://");
        }
        let host = uri.host().context("admin URL without a host")?;
        let host = host.trim_matches(['[', ']']).to_string();
        let port = uri.port_u16().unwrap_or(443);
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let tls = edge_net::tls::client_config(ca, None, &[b"http/1.1"])
            .with_context(|| format!("CA certificate {}", ca.display()))?;
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading the admin token {}", token_file.display()))?;
        Ok(AdminClient {
            addr,
            host,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            token: token.trim().to_string(),
        })
    }

    /// Sends `method path` with `body` as JSON; the answer's head, its body to read.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to the admin API at {}", self.addr))?;
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .context("TLS with the admin API")?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.host)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))?;
        Ok(sender.send_request(request).await?)
    }

    /// `method path` with `body` as JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<Reply> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let body = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body).context("the admin API's answer is not JSON")?
        };
        Ok(Reply { status, body })
    }

    /// `GET path`, a stream of JSON lines: each non-blank line goes to `line` until it
    /// says stop or the stream ends. An answer other than `200` is returned as it is.
    pub async fn lines(
        &self,
        path: &str,
        mut line: impl FnMut(&serde_json::Value) -> std::ops::ControlFlow<()>,
    ) -> anyhow::Result<Option<Reply>> {
        let response = self.send(Method::GET, path, None).await?;
        let status = response.status();
        let mut body = response.into_body();
        if status != StatusCode::OK {
            let bytes = body.collect().await?.to_bytes();
            let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            return Ok(Some(Reply { status, body }));
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let text: Vec<u8> = pending.drain(..=end).collect();
                if text.len() == 1 {
                    continue;
                }
                let value =
                    serde_json::from_slice(&text).context("a line of the stream is not JSON")?;
                if line(&value).is_break() {
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }
}

/// What `edge deploy` says of the function besides its module.
#[derive(Debug, Default, clap::Args)]
pub struct DeployOptions {
    /// A path route (repeatable); with no route or host, /NAME and NAME.<domain>.
    #[arg(long = "route")]
    pub routes: Vec<String>,
    /// A host route (repeatable).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// An environment variable, KEY=VALUE (repeatable).
    #[arg(long)]
    pub env: Vec<String>,
    /// A secret environment variable, KEY=VALUE (repeatable): never shown nor logged.
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    /// A 5-field cron schedule (UTC) to invoke it on, like "*/5 * * * *".
    #[arg(long)]
    pub schedule: Option<String>,
    /// Deploy the version at 0% beside the one serving (reach it with the header
    /// `x-edge-version: N`; `edge traffic` shifts traffic to it).
    #[arg(long)]
    pub no_promote: bool,
    /// Let the first request compile it, instead of its home node before it takes
    /// traffic.
    #[arg(long)]
    pub no_precompile: bool,
    /// Its timeout: 2s, 500ms.
    #[arg(long)]
    pub timeout: Option<String>,
    /// Its memory limit: 64MiB, 1GiB.
    #[arg(long)]
    pub memory: Option<String>,
    /// Most of its requests running at once on a node.
    #[arg(long)]
    pub max_concurrency: Option<u32>,
}

/// The body of `PUT /v1/functions/{name}` for `module` with `options`.
pub fn deploy_body(module: &Path, options: &DeployOptions) -> anyhow::Result<serde_json::Value> {
    let wasm = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    let mut routes: Vec<serde_json::Value> = options
        .routes
        .iter()
        .map(|p| serde_json::json!({ "path": p }))
        .collect();
    routes.extend(
        options
            .hosts
            .iter()
            .map(|h| serde_json::json!({ "host": h })),
    );
    let pairs = |flag: &str, pairs: &[String]| -> anyhow::Result<serde_json::Map<_, _>> {
        let mut map = serde_json::Map::new();
        for pair in pairs {
            let (key, value) = pair.split_once('=').with_context(|| match flag {
                // A secret's text is never echoed, not even a malformed one.
                "secret" => "--secret: KEY=VALUE".to_string(),
                _ => format!("--{flag} {pair:?}: KEY=VALUE"),
            })?;
            map.insert(key.to_string(), value.into());
        }
        Ok(map)
    };
    let env = pairs("env", &options.env)?;
    let secrets = pairs("secret", &options.secrets)?;
    let mut limits = serde_json::Map::new();
    if let Some(t) = &options.timeout {
        limits.insert("timeout_ms".into(), duration_ms(t)?.into());
    }
    if let Some(m) = &options.memory {
        limits.insert("memory_limit_mib".into(), mib(m)?.into());
    }
    if let Some(n) = options.max_concurrency {
        limits.insert("max_concurrency".into(), n.into());
    }
    let mut body = serde_json::json!({
        "module": base64::engine::general_purpose::STANDARD.encode(wasm),
        "routes": routes,
        "env": env,
        "secrets": secrets,
        "limits": limits,
        "promote": !options.no_promote,
        "precompile": !options.no_precompile,
    });
    if let Some(schedule) = &options.schedule {
        body["schedule"] = schedule.as_str().into();
    }
    Ok(body)
}

/// The body of `PUT /v1/functions/{name}/traffic` for shares written `v7=10` (or
/// `7=10`).
pub fn traffic_body(shares: &[String]) -> anyhow::Result<serde_json::Value> {
    let mut traffic = Vec::new();
    for share in shares {
        let bad = || anyhow::anyhow!("traffic {share:?}: like v7=10 (version=percent)");
        let (version, percent) = share.split_once('=').ok_or_else(bad)?;
        let version: u64 = version
            .strip_prefix('v')
            .unwrap_or(version)
            .parse()
            .map_err(|_| bad())?;
        let percent: u8 = percent.trim_end_matches('%').parse().map_err(|_| bad())?;
        traffic.push(serde_json::json!({ "version": version, "percent": percent }));
    }
    Ok(serde_json::json!({ "traffic": traffic }))
}

/// `2s`, `1.5s`, `500ms` or plain milliseconds, in milliseconds.
pub fn duration_ms(text: &str) -> anyhow::Result<u64> {
    let bad = || anyhow::anyhow!("--timeout {text:?}: like 2s, 500ms or 1500");
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.trim().parse().map_err(|_| bad());
    }
    if let Some(s) = text.strip_suffix('s') {
        let seconds: f64 = s.trim().parse().map_err(|_| bad())?;
        if !(seconds.is_finite() && seconds >= 0.0) {
            return Err(bad());
        }
        return Ok((seconds * 1000.0).round() as u64);
    }
    text.trim().parse().map_err(|_| bad())
}

/// `64MiB`, `1GiB` or plain MiB, in MiB.
pub fn mib(text: &str) -> anyhow::Result<u64> {
    let bad = || anyhow::anyhow!("--memory {text:?}: like 64MiB, 1GiB or 64");
    let (number, scale) = if let Some(n) = text.strip_suffix("GiB") {
        (n, 1024)
    } else if let Some(n) = text.strip_suffix("MiB") {
        (n, 1)
    } else {
        (text, 1)
    };
    let n: u64 = number.trim().parse().map_err(|_| bad())?;
    n.checked_mul(scale).ok_or_else(bad)
}

/// A function's traffic as people read it: `v7 10%, v6 90%`.
fn traffic_text(f: &serde_json::Value) -> String {
    let shares: Vec<String> = f["traffic"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| format!("v{} {}%", s["version"], s["percent"]))
        .collect();
    shares.join(", ")
}

/// Unix milliseconds as UTC, to the second.
/// A Unix-ms time as `2026-12-01 12:00:00` (UTC).
pub fn time_text(ms: &serde_json::Value) -> String {
    ms.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// A schedule as people read it: its cron, last run (tick and status) and next tick.
fn schedule_text(f: &serde_json::Value) -> String {
    let s = &f["schedule"];
    if s.is_null() {
        return "-".into();
    }
    let last = if s["last"].is_null() {
        "never".to_string()
    } else {
        format!(
            "{} ({})",
            time_text(&s["last"]["tick_ms"]),
            s["last"]["status"]
        )
    };
    format!(
        "{:?} last {last}, next {}, runs {} ({} failed)",
        s["cron"].as_str().unwrap_or_default(),
        time_text(&s["next_ms"]),
        s["runs"],
        s["failed"]
    )
}

/// The functions of `GET /v1/functions` as a table for people.
pub fn functions_table(functions: &serde_json::Value) -> String {
    let mut out = format!(
        "{:<20} {:<18} {:>8}  {:<32} {}\n",
        "NAME", "TRAFFIC", "VERSIONS", "ROUTES", "SCHEDULE"
    );
    for f in functions.as_array().into_iter().flatten() {
        let routes: Vec<String> = f["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["path"].as_str().or(r["host"].as_str()).map(String::from))
            .collect();
        out += &format!(
            "{:<20} {:<18} {:>8}  {:<32} {}\n",
            f["name"].as_str().unwrap_or_default(),
            traffic_text(f),
            f["versions"].as_array().map_or(0, Vec::len),
            routes.join(", "),
            schedule_text(f)
        );
    }
    out
}

/// The versions of one function (`GET /v1/functions/{name}`) as a table for people.
pub fn versions_table(f: &serde_json::Value) -> String {
    let mut out = format!(
        "{:>7} {:>7}  {:<12} {:<19} {:>8}  {}\n",
        "VERSION", "TRAFFIC", "CONTENT", "CREATED (UTC)", "RESTORES", "WARM ON"
    );
    let traffic = f["traffic"].as_array().cloned().unwrap_or_default();
    for v in f["versions"].as_array().into_iter().flatten().rev() {
        let share = traffic
            .iter()
            .find(|s| s["version"] == v["number"])
            .map_or_else(|| "-".to_string(), |s| format!("{}%", s["percent"]));
        let warm: Vec<&str> = v["warm_on"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
            .collect();
        let content = v["content_id"].as_str().unwrap_or_default();
        out += &format!(
            "{:>7} {:>7}  {:<12} {:<19} {:>8}  {}\n",
            v["number"].to_string(),
            share,
            &content[..content.len().min(12)],
            time_text(&v["created_ms"]),
            v["restores"]
                .as_u64()
                .map_or_else(|| "-".into(), |r| r.to_string()),
            warm.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_as_people_write_them() {
        assert_eq!(duration_ms("2s").unwrap(), 2000);
        assert_eq!(duration_ms("1.5s").unwrap(), 1500);
        assert_eq!(duration_ms("500ms").unwrap(), 500);
        assert_eq!(duration_ms("750").unwrap(), 750);
        for bad in ["two", "-1s", "s", "1m"] {
            assert!(duration_ms(bad).is_err(), "{bad}");
        }
        assert_eq!(mib("64MiB").unwrap(), 64);
        assert_eq!(mib("1GiB").unwrap(), 1024);
        assert_eq!(mib("32").unwrap(), 32);
        assert!(mib("lots").is_err());
    }

    #[test]
    fn traffic_reads_as_people_write_it_and_secrets_stay_out_of_errors() {
        let body = traffic_body(&["v7=10".into(), "6=90%".into()]).unwrap();
        assert_eq!(
            body,
            serde_json::json!({ "traffic": [
                { "version": 7, "percent": 10 },
                { "version": 6, "percent": 90 },
            ] })
        );
        for bad in ["v7", "vx=10", "v7=300"] {
            assert!(traffic_body(&[bad.into()]).is_err(), "{bad}");
        }
        let options = DeployOptions {
            secrets: vec!["TOKEN:hunter2".into()],
            ..DeployOptions::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("m.wasm");
        std::fs::write(&module, b"\0asm").unwrap();
        let err = deploy_body(&module, &options).unwrap_err().to_string();
        assert!(
            err.contains("--secret") && !err.contains("hunter2"),
            "{err}"
        );
        let options = DeployOptions {
            secrets: vec!["TOKEN=hunter2".into()],
            no_promote: true,
            ..DeployOptions::default()
        };
        let body = deploy_body(&module, &options).unwrap();
        assert_eq!(body["secrets"]["TOKEN"], "hunter2");
        assert_eq!(body["promote"], false);
    }
}
