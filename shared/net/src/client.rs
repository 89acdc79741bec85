//! The client side of HTTP/3: connecting, the request exchange every client of edge
//! uses (the gateway's node pool, the load tester, `edge call`), and [`H3Client`], a
//! small whole-response client for `edge call` and the tests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use edge_shared::wire;

use crate::{quic, tls};
use http::{HeaderMap, Request, StatusCode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request stream as a client sees it.
pub type ClientStream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;
/// Opens request streams on one connection.
pub type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// Opens an HTTP/3 connection to `addr` on `endpoint`, checking its certificate for
/// `server_name`; the connection's driver runs in a task of its own until it closes, and
/// `on_close` is called with the reason then. Returns what opens requests on it, and
/// the QUIC connection (to close it).
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
    on_close: impl FnOnce(String) + Send + 'static,
) -> anyhow::Result<(Sender, quinn::Connection)> {
    let conn = endpoint
        .connect(addr, server_name)?
        .await
        .with_context(|| format!("QUIC connection to {addr}"))?;
    let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn.clone())).await?;
    tokio::spawn(async move {
        let closed = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        on_close(closed.to_string());
    });
    Ok((sender, conn))
}

/// How one exchange failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct ExchangeError {
    /// The connection itself failed, not just this stream.
    pub connection: bool,
    /// This side gave the connection up (the gateway does for a node gossip holds
    /// down): connecting to the peer again at once is no use. A connection that went
    /// silent for its idle timeout is not lost in this sense: the peer may have
    /// restarted, and a new connection finds it.
    pub lost: bool,
    /// The request may have reached the server.
    pub sent: bool,
    /// What happened.
    pub reason: String,
}

/// Sends `request` with its whole `body` and waits for the response head; the body is
/// read from the returned stream.
pub async fn exchange(
    sender: &mut Sender,
    request: Request<()>,
    body: Bytes,
) -> Result<(http::Response<()>, ClientStream), ExchangeError> {
    let is_connection =
        |e: &h3::error::StreamError| matches!(e, h3::error::StreamError::ConnectionError { .. });
    // The variants are `non_exhaustive`: matched with `{ .. }`.
    let is_lost = |e: &h3::error::StreamError| {
        use h3::error::{ConnectionError, StreamError};
        let StreamError::ConnectionError {
            0:
                ConnectionError::Remote {
                    0: h3::quic::ConnectionErrorIncoming::Undefined(quic),
                    ..
                },
            ..
        } = e
        else {
            return false;
        };
        matches!(
            quic.downcast_ref::<quinn::ConnectionError>(),
            Some(quinn::ConnectionError::LocallyClosed)
        )
    };
    let mut stream = sender
        .send_request(request)
        .await
        .map_err(|e| ExchangeError {
            connection: is_connection(&e),
            lost: is_lost(&e),
            sent: false,
            reason: e.to_string(),
        })?;
    let sent = async {
        if !body.is_empty() {
            stream.send_data(body).await?;
        }
        stream.finish().await
    }
    .await;
    // A server may answer before reading the whole request and stop it (RFC 9114 4.1):
    // the response, when there is one, counts more than the send error.
    match stream.recv_response().await {
        Ok(response) => Ok((response, stream)),
        Err(e) => {
            let error = sent.err().unwrap_or(e);
            Err(ExchangeError {
                connection: is_connection(&error),
                lost: is_lost(&error),
                sent: true,
                reason: error.to_string(),
            })
        }
    }
}

/// Reads the rest of a response body.
pub async fn read_to_end(stream: &mut ClientStream) -> Result<Bytes, h3::error::StreamError> {
    let mut body = BytesMut::new();
    while let Some(mut chunk) = stream.recv_data().await? {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    Ok(body.freeze())
}

/// One HTTP/3 connection.
pub struct H3Client {
    endpoint: quinn::Endpoint,
    sender: Sender,
}

impl H3Client {
    /// Connects to `addr`, checking its certificate for `server_name`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: rustls::ClientConfig,
    ) -> anyhow::Result<H3Client> {
        let endpoint = quic::client(quic::any_local(addr), tls, &quic::CLIENT)?;
        let (sender, _) = connect(&endpoint, addr, server_name, |_| {}).await?;
        Ok(H3Client { endpoint, sender })
    }

    /// Sends `request` with `body` and reads the whole response.
    pub async fn send(&self, request: Request<()>, body: Bytes) -> anyhow::Result<Reply> {
        let (head, mut stream) = exchange(&mut self.sender.clone(), request, body).await?;
        let body = read_to_end(&mut stream)
            .await
            .context("reading the response body")?;
        let (parts, ()) = head.into_parts();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> anyhow::Result<Reply> {
        self.send(Request::get(url).body(())?, Bytes::new()).await
    }

    /// Closes the connection.
    pub async fn close(self) {
        quic::close(&self.endpoint, "done", std::time::Duration::from_secs(5)).await;
    }
}

/// A client configuration trusting the CA certificate in `ca`.
pub fn trusting(ca: &Path) -> anyhow::Result<rustls::ClientConfig> {
    Ok(tls::client_config(ca, None, &[wire::ALPN_H3])?)
}

/// A client configuration that accepts any server certificate (`edge call --insecure`):
/// the connection is encrypted, but the server is not authenticated.
pub fn insecure() -> rustls::ClientConfig {
    let provider = tls::provider();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![wire::ALPN_H3.to_vec()];
    config
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
