//! Shared set-up of the integration tests: example functions built once, local clusters
//! of real processes on loopback ports chosen by the OS, HTTP/3 clients.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod load;

/// The lines `out` (a child's stdout) prints, on a channel, as they come (a reader
/// thread ends with the stream).
pub fn lines_of(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (said, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if said.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use edge_cli::cluster::{self, LocalCluster};
use edge_net::client::{self, H3Client};
pub use edge_shared::config::FunctionConfig;
use edge_shared::config::{ClusterConfig, IngressConfig};
use edge_shared::manifest::Limits;

/// The repository's root: the first folder above this crate holding `functions/`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("functions/Cargo.toml").is_file())
        .expect("the repository root above this crate")
        .to_path_buf()
}

/// Builds the example functions (once per test binary) and returns a module's path.
pub fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = std::process::Command::new(repo_root().join("scripts/build-functions.sh"))
            .status()
            .expect("running scripts/build-functions.sh");
        assert!(status.success(), "building the example functions failed");
    });
    repo_root().join(format!(
        "functions/target/wasm32-wasip1/release/{name}.wasm"
    ))
}

pub fn function(name: &str, limits: Limits) -> FunctionConfig {
    FunctionConfig {
        name: name.into(),
        module: example(name),
        limits,
        ..FunctionConfig::default()
    }
}

/// A cluster of `nodes` nodes serving `functions`, state in a fresh temporary folder.
pub fn start(nodes: usize, functions: Vec<FunctionConfig>) -> (LocalCluster, tempfile::TempDir) {
    start_with(nodes, functions, |_| {})
}

/// [`start`], with `spec` changed by `change` first.
pub fn start_with(
    nodes: usize,
    functions: Vec<FunctionConfig>,
    change: impl FnOnce(&mut ClusterConfig),
) -> (LocalCluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = ClusterConfig {
        nodes,
        node_worker_threads: 2,
        listen: "127.0.0.1:0".parse().unwrap(),
        domain: "edge.localhost".into(),
        functions,
        ..ClusterConfig::default()
    };
    change(&mut spec);
    let cluster = LocalCluster::start(&spec, dir.path(), &cluster::bin_dir().unwrap()).unwrap();
    (cluster, dir)
}

/// An HTTP/3 client to the cluster's gateway, checking its certificate for `server_name`.
/// A one-node cluster serving `hello`, with these ingress limits.
pub fn hello_with_ingress(ingress: IngressConfig) -> (LocalCluster, tempfile::TempDir) {
    start_with(1, vec![function("hello", Limits::default())], |spec| {
        spec.ingress = ingress;
    })
}

pub async fn client_for(cluster: &LocalCluster, server_name: &str) -> H3Client {
    let tls = client::trusting(&cluster.certs().ca).unwrap();
    H3Client::connect(cluster.gateway_addr(), server_name, tls)
        .await
        .unwrap()
}

pub async fn client(cluster: &LocalCluster) -> H3Client {
    client_for(cluster, "localhost").await
}

pub fn url(cluster: &LocalCluster, path: &str) -> String {
    format!("https://localhost:{}{path}", cluster.gateway_addr().port())
}

/// Polls `check` every 50 ms until it holds or `limit` passes: for tests off the async
/// runtime (async tests use [`eventually`]).
pub fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// Polls `check` every 20 ms, without blocking the runtime, until it holds or `limit`
/// passes; whether it held.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let until = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The status at `addr` (named `server_name`), which serves only cluster members: this
/// client presents the gateway's member certificate.
async fn member_status(
    cluster: &LocalCluster,
    addr: std::net::SocketAddr,
    server_name: &str,
) -> serde_json::Value {
    let certs = cluster.certs();
    let member = edge_net::tls::Identity {
        cert: &certs.member_cert,
        key: &certs.member_key,
    };
    let tls = edge_net::tls::client_config(&certs.ca, Some(member), &[edge_shared::wire::ALPN_H3])
        .unwrap();
    let status = H3Client::connect(addr, server_name, tls).await.unwrap();
    let url = format!("https://{server_name}{}", edge_shared::wire::STATUS_PATH);
    let reply = status.get(&url).await.unwrap();
    assert_eq!(reply.status, http::StatusCode::OK, "{url}");
    serde_json::from_slice(&reply.body).unwrap()
}

/// Node `i`'s status.
pub async fn node_status(cluster: &LocalCluster, i: usize) -> serde_json::Value {
    let addr = cluster.node_addrs()[i];
    member_status(cluster, addr, edge_shared::wire::NODE_SERVER_NAME).await
}

/// The gateway's status: the nodes as it sees them, and its gossip.
pub async fn gateway_status(cluster: &LocalCluster) -> serde_json::Value {
    member_status(cluster, cluster.gateway_status_addr(), "edge-gateway").await
}

/// The state (`usable`, `draining`, `down`) the gateway gives node `name`, if it knows it.
pub async fn node_state(cluster: &LocalCluster, name: &str) -> Option<String> {
    let status = gateway_status(cluster).await;
    status["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .map(|n| n["state"].as_str().unwrap_or_default().to_string())
}

/// Running requests of function `name` on node `i`.
pub async fn running(cluster: &LocalCluster, i: usize, name: &str) -> u64 {
    let status = node_status(cluster, i).await;
    status["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["id"].as_str().unwrap().starts_with(&format!("{name}@")))
        .map(|d| d["running"].as_u64().unwrap())
        .sum()
}

/// A client of the cluster's admin API (the one `edge` uses).
pub fn admin(cluster: &LocalCluster) -> edge_cli::admin::AdminClient {
    let url = format!("https://127.0.0.1:{}", cluster.admin_addr().port());
    let certs = cluster.certs();
    edge_cli::admin::AdminClient::new(&url, &certs.ca, &certs.admin_token).unwrap()
}

/// A deploy body (`PUT /v1/functions/{name}`) for the example function `module`, with
/// these extra fields.
pub fn deploy_request(module: &str, extra: serde_json::Value) -> serde_json::Value {
    use base64::Engine as _;
    let wasm = std::fs::read(example(module)).unwrap();
    let mut body = serde_json::json!({
        "module": base64::engine::general_purpose::STANDARD.encode(wasm),
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

/// `method path` at the admin API, expecting `status`; the answer's body.
pub async fn admin_call(
    admin: &edge_cli::admin::AdminClient,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
    status: u16,
) -> serde_json::Value {
    let reply = admin
        .call(method.clone(), path, body.as_ref())
        .await
        .unwrap();
    assert_eq!(
        reply.status.as_u16(),
        status,
        "{method} {path}: {}",
        reply.body
    );
    reply.body
}

/// `count` GETs of `url` over `client`, 16 at a time, each with `headers`: how many
/// answers came from each version (`x-edge-version`); every answer must be 200.
pub async fn versions_answering(
    client: &std::sync::Arc<H3Client>,
    url: &str,
    count: usize,
    headers: &[(&str, String)],
) -> std::collections::BTreeMap<u64, usize> {
    let mut counts = std::collections::BTreeMap::new();
    let mut sent = 0;
    while sent < count {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..16.min(count - sent) {
            let (client, url) = (std::sync::Arc::clone(client), url.to_string());
            let mut request = http::Request::get(&url);
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            let request = request.body(()).unwrap();
            batch.spawn(async move { client.send(request, bytes::Bytes::new()).await });
            sent += 1;
        }
        while let Some(reply) = batch.join_next().await {
            let reply = reply.unwrap().unwrap();
            assert_eq!(reply.status, http::StatusCode::OK, "{:?}", reply.body);
            *counts.entry(answered_by(&reply)).or_insert(0) += 1;
        }
    }
    counts
}

/// The version that answered (`x-edge-version`).
pub fn answered_by(reply: &edge_net::client::Reply) -> u64 {
    reply.headers[edge_shared::wire::VERSION_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Every sample of the `/metrics` at `at`, as the OpenMetrics parser reads them:
/// `name{label="value",...}` (labels sorted) → value.
pub async fn scrape_at(at: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let text = tokio::process::Command::new("curl")
        .args(["-sf", "--max-time", "10"])
        .arg(format!("http://{at}/metrics"))
        .output()
        .await
        .unwrap();
    assert!(text.status.success(), "scraping http://{at}/metrics failed");
    let parse = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
samples = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        samples[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(samples))
"#;
    let mut parser = tokio::process::Command::new("python3")
        .args(["-c", parse])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt as _;
    let mut stdin = parser.stdin.take().unwrap();
    stdin.write_all(&text.stdout).await.unwrap();
    drop(stdin);
    let parsed = parser.wait_with_output().await.unwrap();
    assert!(
        parsed.status.success(),
        "not OpenMetrics text: {}\n{}",
        String::from_utf8_lossy(&parsed.stderr),
        String::from_utf8_lossy(&text.stdout)
    );
    serde_json::from_slice(&parsed.stdout).unwrap()
}
