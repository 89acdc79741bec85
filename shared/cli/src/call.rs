//! `edge call`, one HTTP/3 request as a user makes it, and the probe `edge deploy` makes
//! of a version it deployed.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use edge_net::client::{self, H3Client};
use edge_shared::wire;

/// Prints where a deployed version answers and how long after the deploy's answer it
/// first did: its first URL that resolves is asked over HTTP/3 (naming the version when
/// it is not promoted) until the answer comes from it, for at most 10 s.
pub fn report_answering(
    deployed: &serde_json::Value,
    promote: bool,
    ca: &Path,
) -> anyhow::Result<()> {
    const PATIENCE: Duration = Duration::from_secs(10);
    let version = deployed["version"].as_u64().unwrap_or_default();
    let urls: Vec<&str> = deployed["urls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str())
        .collect();
    let Some((url, addr)) = urls.iter().find_map(|url| {
        let uri: http::Uri = url.parse().ok()?;
        let host = uri.host()?.trim_matches(['[', ']']);
        let addr = (host, uri.port_u16()?).to_socket_addrs().ok()?.next()?;
        Some((*url, addr))
    }) else {
        println!("answers at {}", urls.join(", "));
        return Ok(());
    };
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Runtime::new().expect("starting the async runtime");
    let answered = runtime.block_on(async {
        let uri: http::Uri = url.parse()?;
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_string();
        let client = H3Client::connect(addr, &host, client::trusting(ca)?).await?;
        for _ in 0..(PATIENCE.as_millis() / 50) {
            let mut request =
                http::Request::get(url).header(http::header::USER_AGENT, "edge-deploy");
            if !promote {
                request = request.header(wire::VERSION_HEADER, version);
            }
            if let Ok(reply) = client.send(request.body(())?, Bytes::new()).await {
                let from = reply.headers.get(wire::VERSION_HEADER);
                if from.and_then(|v| v.to_str().ok()) == Some(&version.to_string()) {
                    return Ok::<_, anyhow::Error>(Some(reply.status));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(None)
    })?;
    match answered {
        Some(status) => println!(
            "{url}: version {version} answered {} after {} ms",
            status.as_u16(),
            started.elapsed().as_millis()
        ),
        None => println!("{url}: version {version} did not answer within {PATIENCE:?}"),
    }
    Ok(())
}

/// `edge call`: sends one request and prints the status, the headers and the body.
pub async fn call(
    url: &str,
    method: &str,
    headers: &[String],
    data: Option<&str>,
    ca: Option<PathBuf>,
    insecure: bool,
    connect: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let uri: http::Uri = url.parse().with_context(|| format!("URL {url:?}"))?;
    if uri.scheme_str() != Some("https") {
        bail!("URL {url:?}: HTTP/3 needs https://");
    }
    let host = uri
        .host()
        .context("URL without a host")?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let addr = match connect {
        Some(a) => a,
        None => (host.as_str(), port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?,
    };
    let tls = if insecure {
        client::insecure()
    } else {
        let ca = ca.unwrap_or_else(|| PathBuf::from(".edge/certs/ca.pem"));
        client::trusting(&ca).with_context(|| {
            format!(
                "CA certificate {} (or pass --ca FILE / --insecure)",
                ca.display()
            )
        })?
    };
    let mut request = http::Request::builder().method(method).uri(&uri);
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("header {h:?} is not NAME: VALUE"))?;
        request = request.header(name.trim(), value.trim());
    }
    let body = match data {
        Some(d) => match d.strip_prefix('@') {
            Some(file) => {
                Bytes::from(std::fs::read(file).with_context(|| format!("reading {file}"))?)
            }
            None => Bytes::from(d.to_string()),
        },
        None => Bytes::new(),
    };
    let client = H3Client::connect(addr, &host, tls).await?;
    let reply = client.send(request.body(())?, body).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "HTTP/3 {}", reply.status)?;
    for (name, value) in &reply.headers {
        writeln!(out, "{name}: {}", value.to_str().unwrap_or("<binary>"))?;
    }
    writeln!(out)?;
    out.write_all(&reply.body)?;
    out.flush()?;
    client.close().await;
    Ok(())
}
