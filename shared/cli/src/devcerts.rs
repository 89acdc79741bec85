//! Development certificates: a cluster CA; the certificate users see (for `localhost`,
//! `127.0.0.1` and the function domain); the nodes' certificate (for `edge-node`); and the
//! gateway's cluster-member certificate, which it presents to nodes (mutual TLS). All are
//! issued by that CA. Existing files are kept, so a browser or curl that trusts the CA
//! keeps trusting it across `edge up` runs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use edge_shared::wire::{GATEWAY_MEMBER_NAME, NODE_SERVER_NAME};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// Where the development certificates (and the gossip cluster key) are.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// CA certificate (trust this to call the gateway, and the gateway trusts it for nodes).
    pub ca: PathBuf,
    /// Gateway certificate and key.
    pub gateway_cert: PathBuf,
    /// Gateway private key.
    pub gateway_key: PathBuf,
    /// Node certificate.
    pub node_cert: PathBuf,
    /// Node private key.
    pub node_key: PathBuf,
    /// Certificate the gateway presents to nodes.
    pub member_cert: PathBuf,
    /// Its private key.
    pub member_key: PathBuf,
    /// The cluster key that signs gossip (32 random bytes, hex).
    pub gossip_key: PathBuf,
}

impl DevCerts {
    /// Creates the certificates in `dir` unless they are all there already.
    pub fn ensure(dir: &Path, domain: &str) -> anyhow::Result<DevCerts> {
        let certs = DevCerts {
            ca: dir.join("ca.pem"),
            gateway_cert: dir.join("gateway.pem"),
            gateway_key: dir.join("gateway.key"),
            node_cert: dir.join("node.pem"),
            node_key: dir.join("node.key"),
            member_cert: dir.join("member.pem"),
            member_key: dir.join("member.key"),
            gossip_key: dir.join("gossip.key"),
        };
        let all = [
            &certs.ca,
            &certs.gateway_cert,
            &certs.gateway_key,
            &certs.node_cert,
            &certs.node_key,
            &certs.member_cert,
            &certs.member_key,
            &certs.gossip_key,
        ];
        let secrets = [
            &certs.gateway_key,
            &certs.node_key,
            &certs.member_key,
            &certs.gossip_key,
        ];
        if all.iter().all(|p| p.is_file()) {
            // Written by an older edge up with the umask's modes: ours to tighten.
            for secret in secrets {
                set_mode(secret, 0o600)?;
            }
            return Ok(certs);
        }
        private_dir(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "edge development CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, cert: &Path, key: &Path| -> anyhow::Result<()> {
            let key_pair = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params
                .distinguished_name
                .push(DnType::CommonName, "edge development");
            let signed = params.signed_by(&key_pair, &issuer)?;
            write(cert, &signed.pem())?;
            write_secret(key, &key_pair.serialize_pem())
        };
        leaf(
            vec![
                "localhost".into(),
                "127.0.0.1".into(),
                "::1".into(),
                domain.to_string(),
                format!("*.{domain}"),
            ],
            &certs.gateway_cert,
            &certs.gateway_key,
        )?;
        leaf(
            vec![NODE_SERVER_NAME.into()],
            &certs.node_cert,
            &certs.node_key,
        )?;
        leaf(
            vec![GATEWAY_MEMBER_NAME.into()],
            &certs.member_cert,
            &certs.member_key,
        )?;
        let mut gossip_key = [0u8; 32];
        getrandom::fill(&mut gossip_key).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
        write_secret(&certs.gossip_key, &hex::encode(gossip_key))?;
        write(&certs.ca, &ca_cert.pem())?;
        Ok(certs)
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes a secret only its owner may read (0600), from its creation on.
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Creates `dir` (and its parents) if missing, and makes it its owner's alone (0700).
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    set_mode(dir, 0o700)
}
