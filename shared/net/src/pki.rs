//! The cluster CA and the role certificates it issues.
//!
//! Roles are carried twice in each leaf certificate, and both are checked:
//!
//! - **a DNS name** for the role (`edge-node`, `edge-gateway`), which nodes and gateways
//!   check on their peers, and for a node its member name as well (`NAME.node.edge`),
//!   which binds the name it claims in gossip to its key;
//! - **the extended key usage**: member certificates are for TLS clients and servers
//!   (a gateway calls nodes and serves its status to members; a node serves gateways
//!   and other nodes, and calls other nodes for the compiled artifacts it lacks); the
//!   public certificate users see is for TLS servers only. So the public certificate,
//!   though issued by the same CA in development, fails as a client certificate at
//!   the handshake.
//!
//! `edge up` uses this for its development CA; a fleet's operator issues the same shape
//! of certificate with their own CA (see the README).

use edge_shared::gossip::{Role, member_dns_name};
use edge_shared::wire::{GATEWAY_MEMBER_NAME, NODE_SERVER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// What issuing a certificate can fail with.
pub use rcgen::Error as IssueError;

/// A certificate and its private key, as PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server only (the gateway's public endpoints).
    Server,
    /// A TLS client and server (member certificates: a gateway's towards nodes and on
    /// its status endpoint; a node's towards gateways and other nodes).
    ClientAndServer,
}

/// The cluster's certificate authority.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

const CA_NAME: &str = "edge cluster CA";

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

impl ClusterCa {
    /// A new CA with a fresh key.
    pub fn generate() -> Result<ClusterCa, rcgen::Error> {
        let key = KeyPair::generate()?;
        let params = ca_params()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(ClusterCa {
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    /// The CA whose certificate and key `generate` wrote before. Its subject and key
    /// are all that issuing needs, so certificates issued now chain to the same root.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, rcgen::Error> {
        Ok(ClusterCa {
            issuer: Issuer::new(ca_params()?, KeyPair::from_pem(key_pem)?),
            cert_pem: cert_pem.to_string(),
        })
    }

    /// The CA certificate (what members and users trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key: keep it off the members.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), for `usage`.
    pub fn issue(&self, names: Vec<String>, usage: Usage) -> Result<Issued, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "edge member");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::ClientAndServer => vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
        };
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A cluster member's certificate, a client and a server: a node's (`edge-node`
    /// and its member name) or a gateway's member certificate (`edge-gateway`).
    pub fn issue_member(&self, role: Role, name: &str) -> Result<Issued, rcgen::Error> {
        match role {
            Role::Node => self.issue(
                vec![NODE_SERVER_NAME.into(), member_dns_name(name)],
                Usage::ClientAndServer,
            ),
            Role::Gateway => self.issue(vec![GATEWAY_MEMBER_NAME.into()], Usage::ClientAndServer),
        }
    }
}

/// Whether `cert_pem` is a certificate of the CA `ca_pem` that authenticates a TLS
/// client. Node certificates issued before nodes fetched artifacts from each other are
/// for servers only: `edge up` issues those again.
pub fn authenticates_clients(ca_pem: &str, cert_pem: &str) -> bool {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    let (Ok(ca), Ok(cert)) = (
        CertificateDer::from_pem_slice(ca_pem.as_bytes()),
        CertificateDer::from_pem_slice(cert_pem.as_bytes()),
    ) else {
        return false;
    };
    let (Ok(anchor), Ok(leaf)) = (
        webpki::anchor_from_trusted_cert(&ca),
        webpki::EndEntityCert::try_from(&cert),
    ) else {
        return false;
    };
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_certificates_authenticate_clients_and_the_public_one_does_not() {
        let ca = ClusterCa::generate().unwrap();
        let node = ca.issue_member(Role::Node, "node-1").unwrap();
        let gateway = ca.issue_member(Role::Gateway, "gw").unwrap();
        let public = ca.issue(vec!["localhost".into()], Usage::Server).unwrap();
        assert!(authenticates_clients(ca.cert_pem(), &node.cert_pem));
        assert!(authenticates_clients(ca.cert_pem(), &gateway.cert_pem));
        assert!(!authenticates_clients(ca.cert_pem(), &public.cert_pem));
        let other = ClusterCa::generate().unwrap();
        assert!(!authenticates_clients(other.cert_pem(), &node.cert_pem));
    }
}
