//! Members sign their own identity: a key holder can write only its own.
//!
//! The cluster key ([`super::auth`]) proves a datagram comes from some member; it cannot
//! say which. So each member also signs its identity (role, name, HTTP/3 address,
//! draining, incarnation: [`Claims`]) with the private key of its own certificate, and
//! publishes both. A receiver accepts a member's identity only if:
//!
//! - the certificate chains to the cluster CA, with the extended key usage of the role
//!   (nodes: TLS server; gateways: TLS client);
//! - it carries the role's name (`edge-node`, `edge-gateway`), and a node's its member
//!   name too (`NAME.node.edge`);
//! - the signature over claims and certificate verifies;
//! - the claims match the gossip id they arrive under (name, incarnation, address);
//! - and, for an incarnation already accepted, it was issued no earlier than the one
//!   accepted, so a replayed old identity (not yet draining, say) never undoes a newer
//!   one.
//!
//! Anything else is counted (`forged`) and the member's last accepted identity stands;
//! a member with none is not a member. A shadow incarnation (a higher generation under
//! another member's name) fails the same checks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chitchat::ChitchatId;
use edge_shared::artifact::{ArtifactClaims, SignedArtifact};
use edge_shared::gossip::{Claims, Role, SignedClaims, member_dns_name};
use edge_shared::manifest::ContentId;
use edge_shared::wire::{GATEWAY_MEMBER_NAME, NODE_SERVER_NAME};
use rustls::SignatureScheme;
use rustls::pki_types::SignatureVerificationAlgorithm;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};
use rustls::sign::SigningKey;
use webpki::{EndEntityCert, KeyUsage};

use crate::tls::{self, TlsError};

/// Signature schemes a member may sign its identity with, and how each is verified.
const SCHEMES: &[(SignatureScheme, &dyn SignatureVerificationAlgorithm)] = &[
    (
        SignatureScheme::ECDSA_NISTP256_SHA256,
        webpki::ring::ECDSA_P256_SHA256,
    ),
    (
        SignatureScheme::ECDSA_NISTP384_SHA384,
        webpki::ring::ECDSA_P384_SHA384,
    ),
    (SignatureScheme::ED25519, webpki::ring::ED25519),
    (
        SignatureScheme::RSA_PSS_SHA256,
        webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    ),
];

/// What a member signs with and verifies against: its own certificate and key, and the
/// cluster CA.
#[derive(Clone)]
pub struct Credentials {
    certificate: CertificateDer<'static>,
    key: Arc<dyn SigningKey>,
    anchors: Arc<Vec<TrustAnchor<'static>>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

impl Credentials {
    /// From PEM files: the cluster CA, and the member's certificate and key (a node's
    /// TLS certificate; a gateway's member certificate).
    pub fn from_files(ca: &Path, member: tls::Identity<'_>) -> Result<Credentials, TlsError> {
        let roots = tls::load_certs(ca)?;
        let chain = tls::load_certs(member.cert)?;
        let key = tls::load_key(member.key)?;
        Credentials::new(&roots, chain[0].clone(), &key).map_err(|reason| TlsError::Pem {
            path: member.cert.to_path_buf(),
            reason,
        })
    }

    /// From PEM text (simulations, which issue their members' certificates in memory).
    pub fn from_pem(ca: &str, cert: &str, key: &str) -> Result<Credentials, String> {
        let roots = CertificateDer::pem_slice_iter(ca.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let certificate =
            CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?;
        Credentials::new(&roots, certificate, &key)
    }

    fn new(
        roots: &[CertificateDer<'static>],
        certificate: CertificateDer<'static>,
        key: &PrivateKeyDer<'_>,
    ) -> Result<Credentials, String> {
        let anchors = roots
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("a CA certificate: {e}"))?;
        let key = rustls::crypto::ring::sign::any_supported_type(key)
            .map_err(|e| format!("the private key: {e}"))?;
        Ok(Credentials {
            certificate,
            key,
            anchors: Arc::new(anchors),
        })
    }

    /// The identity value for `claims`, signed.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        let signed = claims.to_be_signed(&self.certificate);
        let (scheme, signature) = self.sign_text(&signed)?;
        Ok(SignedClaims::encode(&signed, scheme, &signature))
    }

    /// The seal of an artifact this node compiled: `claims` signed with its key.
    pub fn sign_artifact(&self, claims: &ArtifactClaims) -> Result<String, String> {
        let signed = claims.to_be_signed(&self.certificate);
        let (scheme, signature) = self.sign_text(&signed)?;
        Ok(SignedArtifact::encode(&signed, scheme, &signature))
    }

    fn sign_text(&self, text: &str) -> Result<(u16, Vec<u8>), String> {
        let offered: Vec<SignatureScheme> = SCHEMES.iter().map(|(s, _)| *s).collect();
        let signer = self
            .key
            .choose_scheme(&offered)
            .ok_or("the private key is of a kind no member can verify")?;
        let signature = signer
            .sign(text.as_bytes())
            .map_err(|e| format!("signing: {e}"))?;
        Ok((u16::from(signer.scheme()), signature))
    }

    /// The claims in `text` if it is a valid identity for the member gossip knows as
    /// `id`; else why not.
    pub fn verify(&self, text: &str, id: &ChitchatId) -> Result<Claims, &'static str> {
        let signed = SignedClaims::decode(text).ok_or("malformed")?;
        let claims = &signed.claims;
        if claims.generation != id.generation_id
            || claims.gossip != id.gossip_advertise_addr
            || *id.node_id != *node_id(&claims.name, claims.gossip)
        {
            return Err("claims another member's gossip id");
        }
        self.check_signature(
            &signed.certificate,
            claims.role,
            &claims.name,
            (signed.scheme, &signed.signed, &signed.signature),
        )?;
        Ok(signed.claims)
    }

    /// The claims of an artifact's `seal` if it is valid for `artifact`, the compiled
    /// module `content_id` for engine key `engine`: signed by a node of the cluster CA
    /// under the name it claims, over these very bytes. Else why not. Checked before
    /// anything deserializes the artifact.
    pub fn verify_artifact(
        &self,
        seal: &str,
        content_id: &ContentId,
        engine: &str,
        artifact: &[u8],
    ) -> Result<ArtifactClaims, &'static str> {
        let signed = SignedArtifact::decode(seal).ok_or("a malformed seal")?;
        let claims = &signed.claims;
        if claims.content_id != *content_id {
            return Err("a seal for another module");
        }
        if claims.engine != engine {
            return Err("a seal for another engine");
        }
        self.check_signature(
            &signed.certificate,
            Role::Node,
            &claims.node,
            (signed.scheme, &signed.signed, &signed.signature),
        )?;
        if edge_shared::artifact::digest(artifact) != claims.digest {
            return Err("bytes that are not the ones signed");
        }
        Ok(signed.claims)
    }

    /// Checks that `certificate` chains to the cluster CA for `role` and names `name`
    /// (nodes), and that `signature` (scheme, text, bytes) is its key's over the text.
    fn check_signature(
        &self,
        certificate: &[u8],
        role: Role,
        name: &str,
        (scheme, text, signature): (u16, &str, &[u8]),
    ) -> Result<(), &'static str> {
        let der = CertificateDer::from(certificate);
        let cert = EndEntityCert::try_from(&der).map_err(|_| "a malformed certificate")?;
        let algorithms: Vec<_> = SCHEMES.iter().map(|(_, a)| *a).collect();
        let (usage, role_name) = match role {
            Role::Node => (KeyUsage::server_auth(), NODE_SERVER_NAME),
            Role::Gateway => (KeyUsage::client_auth(), GATEWAY_MEMBER_NAME),
        };
        cert.verify_for_usage(
            &algorithms,
            &self.anchors,
            &[],
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .map_err(|_| "a certificate the cluster CA did not issue for the role")?;
        let has_name = |name: &str| {
            ServerName::try_from(name)
                .is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_ok())
        };
        if !has_name(role_name) {
            return Err("a certificate without the role's name");
        }
        if role == Role::Node && !has_name(&member_dns_name(name)) {
            return Err("a certificate issued for another node's name");
        }
        let algorithm = SCHEMES
            .iter()
            .find(|(s, _)| u16::from(*s) == scheme)
            .map(|(_, a)| *a)
            .ok_or("an unknown signature scheme")?;
        cert.verify_signature(algorithm, text.as_bytes(), signature)
            .map_err(|_| "a signature that does not verify")
    }
}

/// The gossip id of the member named `name` gossiping at `gossip`: its name alone. The
/// gossip layer tells members apart by name, incarnation and address together, and every
/// digest lists every member's id each round, so a short one keeps gossip small.
pub fn node_id(name: &str, _gossip: std::net::SocketAddr) -> String {
    name.to_string()
}

/// Now, in Unix milliseconds (what [`Claims::issued_ms`] counts).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// The identities accepted so far, by gossip id: each value is verified once, when it
/// changes.
#[derive(Default)]
pub struct Accepted {
    by_id: HashMap<ChitchatId, Entry>,
}

#[derive(Default)]
struct Entry {
    /// The value last seen, valid or not.
    seen: String,
    /// The last valid identity, and its claims.
    accepted: Option<Claims>,
}

impl Accepted {
    /// The identity of the member `id` whose gossiped value is `text`, if it has a valid
    /// one. A value that fails verification, or is older than the one accepted, leaves
    /// the accepted one in place and calls `forged` with the reason.
    pub fn check(
        &mut self,
        credentials: &Credentials,
        id: &ChitchatId,
        text: &str,
        forged: impl FnOnce(&'static str),
    ) -> Option<&Claims> {
        let entry = self.by_id.entry(id.clone()).or_default();
        if entry.seen != text {
            entry.seen = text.to_string();
            match credentials.verify(text, id) {
                Ok(claims)
                    if entry
                        .accepted
                        .as_ref()
                        .is_none_or(|c| claims.issued_ms >= c.issued_ms) =>
                {
                    entry.accepted = Some(claims);
                }
                Ok(_) => forged("older than the identity accepted"),
                Err(reason) => forged(reason),
            }
        }
        entry.accepted.as_ref()
    }

    /// Forgets members gossip no longer has.
    pub fn retain(&mut self, known: impl Fn(&ChitchatId) -> bool) {
        self.by_id.retain(|id, _| known(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{ClusterCa, Usage};

    fn credentials(ca: &ClusterCa, issued: crate::pki::Issued) -> Credentials {
        Credentials::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap()
    }

    fn node(ca: &ClusterCa, name: &str) -> Credentials {
        credentials(ca, ca.issue_member(Role::Node, name).unwrap())
    }

    fn claims(name: &str, generation: u64) -> (Claims, ChitchatId) {
        let gossip: std::net::SocketAddr = "127.0.0.1:7946".parse().unwrap();
        let claims = Claims {
            role: Role::Node,
            name: name.into(),
            quic: "127.0.0.1:5000".parse().unwrap(),
            version: "0.1.0".into(),
            draining: false,
            generation,
            gossip,
            issued_ms: 1000,
        };
        let id = ChitchatId::new(node_id(name, gossip), generation, gossip);
        (claims, id)
    }

    #[test]
    fn a_member_can_sign_only_its_own_identity() {
        let ca = ClusterCa::generate().unwrap();
        let n1 = node(&ca, "node-1");
        let n2 = node(&ca, "node-2");
        let (mine, id) = claims("node-1", 7);
        let text = n1.sign(&mine).unwrap();
        assert_eq!(n2.verify(&text, &id), Ok(mine.clone()));

        // node-2, a key holder, writes node-1's identity (draining, elsewhere).
        let forged = Claims {
            draining: true,
            quic: "10.9.9.9:1".parse().unwrap(),
            ..mine.clone()
        };
        let by_n2 = n2.sign(&forged).unwrap();
        assert_eq!(
            n1.verify(&by_n2, &id),
            Err("a certificate issued for another node's name")
        );
        // A shadow incarnation under node-1's name, or node-1's own identity replayed
        // under it, is refused too.
        let (_, shadow) = claims("node-1", 8);
        assert_eq!(
            n2.verify(&text, &shadow),
            Err("claims another member's gossip id")
        );
        // Tampering with a signed identity breaks its signature.
        let tampered = text.replacen(" 0 7 ", " 1 7 ", 1);
        assert_eq!(
            n2.verify(&tampered, &id),
            Err("a signature that does not verify")
        );

        // A certificate of another CA; the public certificate (no role); a gateway's
        // member certificate claiming a node.
        let other = ClusterCa::generate().unwrap();
        let stranger = credentials(&other, other.issue_member(Role::Node, "node-1").unwrap());
        let public = credentials(
            &ca,
            ca.issue(
                vec!["localhost".into(), "node-1.node.edge".into()],
                Usage::Server,
            )
            .unwrap(),
        );
        let gateway = credentials(&ca, ca.issue_member(Role::Gateway, "gw").unwrap());
        for (who, reason) in [
            (
                &stranger,
                "a certificate the cluster CA did not issue for the role",
            ),
            (&public, "a certificate without the role's name"),
            (&gateway, "a certificate without the role's name"),
        ] {
            assert_eq!(n1.verify(&who.sign(&mine).unwrap(), &id), Err(reason));
        }
        assert_eq!(n1.verify("edge-identity/1 node", &id), Err("malformed"));
    }

    #[test]
    fn a_replayed_older_identity_never_undoes_a_newer_one() {
        let ca = ClusterCa::generate().unwrap();
        let n1 = node(&ca, "node-1");
        let (serving, id) = claims("node-1", 7);
        let draining = Claims {
            draining: true,
            issued_ms: 2000,
            ..serving.clone()
        };
        let old = n1.sign(&serving).unwrap();
        let new = n1.sign(&draining).unwrap();
        let mut accepted = Accepted::default();
        let mut refusals = Vec::new();
        let mut check = |text: &str| {
            accepted
                .check(&n1, &id, text, |r| refusals.push(r))
                .map(|c| c.draining)
        };
        assert_eq!(check(&old), Some(false));
        assert_eq!(check(&new), Some(true));
        assert_eq!(check(&old), Some(true), "the replay is refused");
        assert_eq!(check("garbage"), Some(true), "a forgery is refused");
        assert_eq!(check("garbage"), Some(true), "and verified once");
        assert_eq!(refusals, ["older than the identity accepted", "malformed"]);
        let mut fresh = Accepted::default();
        assert!(fresh.check(&n1, &id, "garbage", |_| ()).is_none());
    }

    #[test]
    fn an_artifact_is_taken_only_as_its_compiling_node_signed_it() {
        use edge_shared::artifact::{ArtifactClaims, engine_key};
        let ca = ClusterCa::generate().unwrap();
        let n1 = node(&ca, "node-1");
        let n2 = node(&ca, "node-2");
        let id = ContentId::of(b"module");
        let engine = engine_key("this host");
        let artifact = b"native code".to_vec();
        let claims = ArtifactClaims::of(&id, &engine, "node-1", &artifact);
        let seal = n1.sign_artifact(&claims).unwrap();
        assert_eq!(
            n2.verify_artifact(&seal, &id, &engine, &artifact),
            Ok(claims.clone())
        );

        // One byte changed after signing; another module; another engine.
        let mut tampered = artifact.clone();
        tampered[0] ^= 1;
        let other_id = ContentId::of(b"other");
        for (id, engine, bytes, reason) in [
            (
                &id,
                engine.as_str(),
                &tampered,
                "bytes that are not the ones signed",
            ),
            (
                &other_id,
                engine.as_str(),
                &artifact,
                "a seal for another module",
            ),
            (
                &id,
                "0000000000000000",
                &artifact,
                "a seal for another engine",
            ),
        ] {
            assert_eq!(n2.verify_artifact(&seal, id, engine, bytes), Err(reason));
        }
        // node-2 signing as node-1; a gateway's or a stranger CA's certificate; a seal
        // whose claims were changed after signing.
        let gateway = credentials(&ca, ca.issue_member(Role::Gateway, "gw").unwrap());
        let other = ClusterCa::generate().unwrap();
        let stranger = credentials(&other, other.issue_member(Role::Node, "node-1").unwrap());
        for (who, reason) in [
            (&n2, "a certificate issued for another node's name"),
            (&gateway, "a certificate without the role's name"),
            (
                &stranger,
                "a certificate the cluster CA did not issue for the role",
            ),
        ] {
            let seal = who.sign_artifact(&claims).unwrap();
            assert_eq!(
                n1.verify_artifact(&seal, &id, &engine, &artifact),
                Err(reason)
            );
        }
        let forged = seal.replace(&claims.digest, &edge_shared::artifact::digest(&tampered));
        assert_eq!(
            n2.verify_artifact(&forged, &id, &engine, &tampered),
            Err("a signature that does not verify")
        );
        assert_eq!(
            n2.verify_artifact("junk", &id, &engine, &artifact),
            Err("a malformed seal")
        );
    }
}
