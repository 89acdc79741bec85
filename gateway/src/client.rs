//! A small HTTP/3 client: `edge call`, and the tests' way to talk to a gateway.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use bytes::{Buf, Bytes, BytesMut};
use edge_shared::{tls, wire};
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

/// One HTTP/3 connection.
pub struct H3Client {
    endpoint: quinn::Endpoint,
    sender: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
}

impl H3Client {
    /// Connects to `addr`, checking its certificate for `server_name`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: rustls::ClientConfig,
    ) -> anyhow::Result<H3Client> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let local: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let mut endpoint = quinn::Endpoint::client(local)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(std::time::Duration::from_secs(10).try_into()?));
        config.transport_config(Arc::new(transport));
        endpoint.set_default_client_config(config);
        let conn = endpoint
            .connect(addr, server_name)?
            .await
            .with_context(|| format!("QUIC connection to {addr}"))?;
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(H3Client { endpoint, sender })
    }

    /// Sends `request` with `body` and reads the whole response.
    pub async fn send(&self, request: Request<()>, body: Bytes) -> anyhow::Result<Reply> {
        let mut sender = self.sender.clone();
        let mut stream = sender.send_request(request).await?;
        let sent = async {
            if !body.is_empty() {
                stream.send_data(body).await?;
            }
            stream.finish().await
        }
        .await;
        // A server may answer before reading the whole request and stop it (RFC 9114
        // 4.1): the response, when there is one, counts more than the send error.
        let head = match stream.recv_response().await {
            Ok(head) => head,
            Err(e) => return Err(sent.err().map_or_else(|| e.into(), Into::into)),
        };
        let mut body = BytesMut::new();
        while let Some(mut chunk) = stream
            .recv_data()
            .await
            .context("reading the response body")?
        {
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        let (parts, ()) = head.into_parts();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.freeze(),
        })
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> anyhow::Result<Reply> {
        self.send(Request::get(url).body(())?, Bytes::new()).await
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.endpoint.close(0u32.into(), b"done");
        self.endpoint.wait_idle().await;
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
