//! Compiled artifacts shared between nodes: what the node that compiled one signs, and
//! how it travels. Pure: the signing and checking against the cluster CA is
//! `edge_net::gossip::Credentials`'.
//!
//! A compiled artifact is native code that a node loads without further checks, so a
//! node takes one from a peer only with the signature of the node that compiled it: a
//! certificate of the cluster CA for the node role and that node's name, over the
//! content id, the engine key (compiler, target, CPU features) and the SHA-256 of the
//! artifact's bytes. The receiver checks all of that, and the bytes against the digest,
//! before it deserializes anything.
//!
//! Seal (the first line of an artifact's answer): `edge-artifact/1 CONTENT_ID ENGINE
//! DIGEST NODE CERT | SCHEME SIGNATURE`, the certificate (DER), the digest and the
//! signature in hex; the signature covers everything before ` | `. The artifact's bytes
//! follow the line's `\n`.

use sha2::{Digest, Sha256};

use crate::manifest::ContentId;

/// The tag a seal starts with: the format's version.
const ARTIFACT_FORMAT: &str = "edge-artifact/1";
/// The longest seal accepted (a certificate of a few hundred bytes, in hex).
pub const MAX_SEAL_BYTES: usize = 16 * 1024;

/// What the node that compiled an artifact says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactClaims {
    /// The module it was compiled from.
    pub content_id: ContentId,
    /// The engine key of the node that compiled it (see [`engine_key`]): a node loads
    /// artifacts of its own engine key only.
    pub engine: String,
    /// SHA-256 of the artifact's bytes, in hex.
    pub digest: String,
    /// The name of the node that compiled it.
    pub node: String,
}

/// A seal as it travels: the claims, the certificate and the signature over both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedArtifact {
    /// What it claims.
    pub claims: ArtifactClaims,
    /// The signer's certificate (DER).
    pub certificate: Vec<u8>,
    /// The text the signature covers.
    pub signed: String,
    /// The TLS signature scheme (its IANA number).
    pub scheme: u16,
    /// The signature.
    pub signature: Vec<u8>,
}

/// The engine key a host is known by in gossip and in artifact seals: 16 hex digits of
/// the SHA-256 of its full description (compiler, target, CPU features).
pub fn engine_key(host: &str) -> String {
    hex::encode(&Sha256::digest(host.as_bytes())[..8])
}

/// SHA-256 of an artifact's bytes, in hex.
pub fn digest(artifact: &[u8]) -> String {
    hex::encode(Sha256::digest(artifact))
}

impl ArtifactClaims {
    /// The claims of `artifact`, compiled from `content_id` by the node `node` of
    /// engine key `engine`.
    pub fn of(content_id: &ContentId, engine: &str, node: &str, artifact: &[u8]) -> ArtifactClaims {
        ArtifactClaims {
            content_id: content_id.clone(),
            engine: engine.to_string(),
            digest: digest(artifact),
            node: node.to_string(),
        }
    }

    /// The text the compiling node signs: its claims and its certificate.
    pub fn to_be_signed(&self, certificate: &[u8]) -> String {
        format!(
            "{ARTIFACT_FORMAT} {} {} {} {} {}",
            self.content_id,
            self.engine,
            self.digest,
            self.node,
            hex::encode(certificate)
        )
    }
}

impl SignedArtifact {
    /// The seal: `signed` (from [`ArtifactClaims::to_be_signed`]) with its signature.
    pub fn encode(signed: &str, scheme: u16, signature: &[u8]) -> String {
        format!("{signed} | {scheme} {}", hex::encode(signature))
    }

    /// Parses a seal (input from the network); `None` if malformed. The signature is
    /// not checked here.
    pub fn decode(text: &str) -> Option<SignedArtifact> {
        if text.len() > MAX_SEAL_BYTES {
            return None;
        }
        let (signed, signature) = text.split_once(" | ")?;
        let (scheme, signature) = signature.split_once(' ')?;
        let mut fields = signed.split(' ');
        let mut next = || fields.next();
        if next()? != ARTIFACT_FORMAT {
            return None;
        }
        let content_id = ContentId::try_from(next()?.to_string()).ok()?;
        let engine = next()?.to_string();
        let digest = next()?.to_string();
        let node = next()?.to_string();
        let certificate = hex::decode(next()?).ok()?;
        if next().is_some() || digest.len() != 64 || engine.is_empty() || node.is_empty() {
            return None;
        }
        Some(SignedArtifact {
            claims: ArtifactClaims {
                content_id,
                engine,
                digest,
                node,
            },
            certificate,
            signed: signed.to_string(),
            scheme: scheme.parse().ok()?,
            signature: hex::decode(signature).ok()?,
        })
    }

    /// Splits an artifact's answer into its seal and the artifact's bytes; `None` if it
    /// has no seal line.
    pub fn split(body: &[u8]) -> Option<(&str, &[u8])> {
        let end = body
            .iter()
            .take(MAX_SEAL_BYTES + 1)
            .position(|&b| b == b'\n')?;
        let seal = std::str::from_utf8(&body[..end]).ok()?;
        Some((seal, &body[end + 1..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_round_trip_and_malformed_ones_are_refused() {
        let id = ContentId::of(b"module");
        let claims = ArtifactClaims::of(&id, &engine_key("host"), "node-1", b"code");
        let signed = claims.to_be_signed(&[1, 2, 3]);
        let seal = SignedArtifact::encode(&signed, 0x0403, &[9, 9]);
        let decoded = SignedArtifact::decode(&seal).unwrap();
        assert_eq!(decoded.claims, claims);
        assert_eq!(
            (decoded.certificate, decoded.scheme),
            (vec![1, 2, 3], 0x0403)
        );
        assert_eq!(decoded.signed, signed);

        let mut body = seal.clone().into_bytes();
        body.push(b'\n');
        body.extend_from_slice(b"code\nwith lines");
        assert_eq!(
            SignedArtifact::split(&body),
            Some((seal.as_str(), &b"code\nwith lines"[..]))
        );
        assert_eq!(SignedArtifact::split(b"no seal line"), None);

        for bad in [
            String::new(),
            signed.clone(),
            seal.replace(ARTIFACT_FORMAT, "edge-artifact/2"),
            seal.replace(&claims.digest, "abc"),
            seal.replace(" node-1 ", " node-1 extra "),
            seal.replace(" 1027 ", " x "),
            "a".repeat(MAX_SEAL_BYTES + 1),
        ] {
            assert_eq!(SignedArtifact::decode(&bad), None, "{bad}");
        }
    }
}
