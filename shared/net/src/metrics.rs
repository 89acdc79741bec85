//! Prometheus metrics: a registry of a process's metrics, served as OpenMetrics text at
//! `GET /metrics` over plain HTTP/1.1 on a listener of its own (never the users' port;
//! it says nothing a user could act on, but it says how busy each function is, so it
//! binds to loopback by default).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::gossip::Gossip;
use crate::lifecycle::Shutdown;

/// The content type of OpenMetrics text.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Scrapes served at once; more are closed as they arrive.
const MAX_CONNECTIONS: usize = 16;
/// Longest a scrape's request may take to arrive.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The text of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String does not fail");
    text
}

/// Serves `registry` at `GET /metrics` on `listener` until `stop` fires.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, stop: Shutdown) {
    let scrapes = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let stopped = stop.fired();
    tokio::pin!(stopped);
    loop {
        let (socket, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stopped => return,
        };
        let Ok(permit) = Arc::clone(&scrapes).try_acquire_owned() else {
            continue;
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request: http::Request<_>| {
                let registry = Arc::clone(&registry);
                async move { Ok::<_, Infallible>(answer(&request, &registry)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(TokioIo::new(socket), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%remote, error = %e, "metrics connection ended");
            }
        });
    }
}

fn answer<B>(request: &http::Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, render(registry)),
        (_, "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into()),
        _ => (StatusCode::NOT_FOUND, "metrics are at /metrics\n".into()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if status == StatusCode::OK {
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(CONTENT_TYPE),
        );
    }
    response
}

/// Labels of one sample: (name, value) pairs.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// Writes one metric family read at scrape time: `name` of `kind` (a counter's name
/// gets `_total`), one sample per label set in `samples`.
pub fn write_family(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    samples: &[(Labels, u64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    // One sample without labels is written as `name value`, not `name{} value`.
    if let [(labels, value)] = samples
        && labels.is_empty()
    {
        return encode_sample(kind, *value, family);
    }
    for (labels, value) in samples {
        encode_sample(kind, *value, family.encode_family(labels)?)?;
    }
    Ok(())
}

fn encode_sample(kind: MetricType, value: u64, sample: MetricEncoder<'_>) -> std::fmt::Result {
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(sample),
        _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(sample),
    }
}

/// Writes one counter family of seconds read at scrape time (`name` gets `_total`).
pub fn write_seconds(
    encoder: &mut DescriptorEncoder,
    (name, help): (&str, &str),
    samples: &[(Labels, f64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Gossip, read at each scrape: members by state, bytes and datagrams each way, and
/// datagrams rejected by reason. Holds the agent weakly: it scrapes nothing once gone.
#[derive(Debug)]
pub struct GossipCollector(std::sync::Weak<Gossip>);

impl GossipCollector {
    /// A collector of `gossip`'s figures.
    pub fn new(gossip: &Arc<Gossip>) -> GossipCollector {
        GossipCollector(Arc::downgrade(gossip))
    }
}

impl Collector for GossipCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(gossip) = self.0.upgrade() else {
            return Ok(());
        };
        let s = gossip.stats();
        let e = &mut encoder;
        write_family(
            e,
            (
                "edge_gossip_members",
                "Other cluster members known to gossip, by state (live or down)",
                MetricType::Gauge,
            ),
            &[
                (&[("state", "live")], s.live_members as u64),
                (&[("state", "down")], s.down_members as u64),
            ],
        )?;
        write_family(
            e,
            (
                "edge_gossip_bytes",
                "Gossip bytes, signing tags included, by direction (received counts accepted datagrams only)",
                MetricType::Counter,
            ),
            &[
                (&[("direction", "sent")], s.sent_bytes),
                (&[("direction", "received")], s.received_bytes),
            ],
        )?;
        write_family(
            e,
            (
                "edge_gossip_datagrams",
                "Gossip datagrams, by direction (received counts accepted ones only)",
                MetricType::Counter,
            ),
            &[
                (&[("direction", "sent")], s.sent),
                (&[("direction", "received")], s.received),
            ],
        )?;
        write_family(
            e,
            (
                "edge_gossip_rejected",
                "Gossip datagrams or identities refused, by reason: unsigned or mis-signed, undecodable, stale or replayed, forged identity",
                MetricType::Counter,
            ),
            &[
                (&[("reason", "signature")], s.rejected),
                (&[("reason", "undecodable")], s.undecodable),
                (&[("reason", "replayed")], s.replayed),
                (&[("reason", "forged")], s.forged),
            ],
        )
    }
}

/// QUIC connections open on each of a process's endpoints, read at each scrape.
#[derive(Debug)]
pub struct QuicCollector(Vec<(&'static str, quinn::Endpoint)>);

impl QuicCollector {
    /// A collector of the endpoints named in `endpoints` (the name is the `endpoint`
    /// label: `users`, `members`, `nodes`...).
    pub fn new(endpoints: Vec<(&'static str, quinn::Endpoint)>) -> QuicCollector {
        QuicCollector(endpoints)
    }
}

impl Collector for QuicCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let open: Vec<([(&str, &str); 1], u64)> = self
            .0
            .iter()
            .map(|(name, endpoint)| ([("endpoint", *name)], endpoint.open_connections() as u64))
            .collect();
        let samples: Vec<(Labels, u64)> = open.iter().map(|(l, n)| (&l[..], *n)).collect();
        write_family(
            &mut encoder,
            (
                "edge_quic_connections",
                "QUIC connections open, by endpoint",
                MetricType::Gauge,
            ),
            &samples,
        )
    }
}
