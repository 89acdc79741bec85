//! `GET /v1/functions/{name}/tail`: one function's calls and log lines from every node
//! as they happen, as JSON lines (`edge tail`). Each node streams its own events of the
//! function over the cluster's mutual TLS (`/_edge/v1/tail/{name}`); this gateway merges
//! them, adds the version each came from, and holds the stream to
//! `admin.tail_lines_per_second` (the rest are counted in a `dropped` line each
//! second). At most `admin.max_tails` streams are open at once. Nodes that join while it
//! runs are tailed from the next second on.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use edge_shared::wire;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::{Admin, AdminBody, error};
use crate::cluster::control_call;
use crate::proxy::Gateway;

/// Longest line taken from a node; a longer one ends that node's stream (a node's lines
/// are bounded well under it).
const MAX_LINE: usize = 256 << 10;
/// How often the nodes tailed are brought up to date, and dropped lines reported.
const TICK: Duration = Duration::from_secs(1);

/// Lines let through at `rate` a second, in bursts of up to a second's worth.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: u32, now: Instant) -> Bucket {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: now,
        }
    }

    /// Whether one more line may go at `now`.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Admin {
    /// Starts a tail of `name`, or says why not.
    pub(super) fn tail(&self, name: &str, remote: SocketAddr) -> Response<AdminBody> {
        if self.gateway.functions().named(name).is_none() {
            return error(StatusCode::NOT_FOUND, &format!("no function {name:?}"))
                .map(BodyExt::boxed);
        }
        let Ok(permit) = Arc::clone(&self.tails).try_acquire_owned() else {
            let max = self.gateway.config().admin.max_tails;
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("{max} tails are open already (admin.max_tails)"),
            )
            .map(BodyExt::boxed);
        };
        tracing::info!(%remote, function = name, "tail started");
        let (lines, body) = mpsc::channel::<Bytes>(64);
        tokio::spawn(merge(
            Arc::clone(&self.gateway),
            name.to_string(),
            lines,
            permit,
        ));
        let frames = futures::stream::unfold(body, |mut body| async move {
            let line = body.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(line)), body))
        });
        let mut answer = Response::new(StreamBody::new(frames).boxed());
        answer.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        answer
    }
}

/// A line from a node, or `None` once its stream ended.
type FromNode = (SocketAddr, Option<Bytes>);

/// Merges the nodes' lines of `function` into `out` until its reader goes away.
async fn merge(
    gateway: Arc<Gateway>,
    function: String,
    out: mpsc::Sender<Bytes>,
    _permit: OwnedSemaphorePermit,
) {
    let (to_merge, mut from_nodes) = mpsc::channel::<FromNode>(256);
    let mut tailed: HashSet<SocketAddr> = HashSet::new();
    let mut bucket = Bucket::new(gateway.config().admin.tail_lines_per_second, Instant::now());
    let mut dropped = 0u64;
    let mut tick = tokio::time::interval(TICK);
    loop {
        let line = tokio::select! {
            _ = tick.tick() => {
                for node in gateway.membership.snapshot().view.nodes.iter().filter(|n| n.usable()) {
                    if tailed.insert(node.addr) {
                        tokio::spawn(from_node(Arc::clone(&gateway), node.addr, function.clone(), to_merge.clone()));
                    }
                }
                if dropped == 0 {
                    // A blank line: how a reader gone away is noticed.
                    Bytes::from_static(b"\n")
                } else {
                    let line = serde_json::json!({ "kind": "dropped", "lines": dropped, "limit": "admin.tail_lines_per_second" });
                    dropped = 0;
                    Bytes::from(line.to_string() + "\n")
                }
            }
            Some((node, line)) = from_nodes.recv() => match line {
                None => {
                    tailed.remove(&node);
                    continue;
                }
                Some(line) if !bucket.take(Instant::now()) => {
                    drop(line);
                    dropped += 1;
                    continue;
                }
                Some(line) => with_version(&gateway, &line),
            },
            () = out.closed() => break,
        };
        if out.send(line).await.is_err() {
            break;
        }
    }
    tracing::info!(%function, "tail ended");
}

/// `line` (a node's event) with the version of the deployment it names.
fn with_version(gateway: &Gateway, line: &[u8]) -> Bytes {
    let Ok(serde_json::Value::Object(mut event)) = serde_json::from_slice(line) else {
        return Bytes::new();
    };
    let deployment = event.get("deployment").and_then(|d| d.as_str());
    let functions = gateway.functions();
    let version = functions
        .versions()
        .find(|f| Some(f.deployment.as_str()) == deployment)
        .map(|f| f.version);
    if let Some(version) = version {
        event.insert("version".into(), version.into());
    }
    Bytes::from(serde_json::Value::Object(event).to_string() + "\n")
}

/// Streams `node`'s lines of `function` into `to_merge` until either side ends, then
/// says so.
async fn from_node(
    gateway: Arc<Gateway>,
    node: SocketAddr,
    function: String,
    to_merge: mpsc::Sender<FromNode>,
) {
    let request = control_call(Method::GET, &format!("{}{function}", wire::TAIL_PATH));
    match gateway.nodes.send(node, request, Bytes::new()).await {
        Ok((head, mut stream)) if head.status() == StatusCode::OK => {
            // The node watches from before its answer's head: say so, so that a
            // caller knows from when calls there are seen.
            let snapshot = gateway.membership.snapshot();
            let name = snapshot
                .view
                .nodes
                .iter()
                .find(|n| n.addr == node)
                .map(|n| n.name.as_str());
            let tailing = serde_json::json!({ "kind": "tailing", "node": name.unwrap_or("?") });
            if to_merge
                .send((node, Some(Bytes::from(tailing.to_string()))))
                .await
                .is_err()
            {
                return;
            }
            let mut pending: Vec<u8> = Vec::new();
            while let Ok(Some(mut chunk)) = stream.recv_data().await {
                pending.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = &line[..end];
                    if !line.is_empty()
                        && to_merge
                            .send((node, Some(Bytes::copy_from_slice(line))))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                if pending.len() > MAX_LINE {
                    tracing::warn!(%node, "tail line over {MAX_LINE} bytes: node's stream dropped");
                    break;
                }
            }
        }
        Ok((head, _)) => tracing::warn!(%node, status = %head.status(), "node refused the tail"),
        Err(e) => tracing::debug!(%node, error = %e, "tailing the node failed"),
    }
    let _ = to_merge.send((node, None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_lets_a_seconds_worth_through_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10, t0);
        assert_eq!((0..50).filter(|_| bucket.take(t0)).count(), 10);
        let later = t0 + Duration::from_millis(500);
        assert_eq!((0..50).filter(|_| bucket.take(later)).count(), 5);
        // Idle for long, it holds no more than a second's worth.
        let much_later = t0 + Duration::from_secs(60);
        assert_eq!((0..50).filter(|_| bucket.take(much_later)).count(), 10);
    }
}
