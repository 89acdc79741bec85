//! Development certificates, issued by a development cluster CA ([`edge_net::pki`]): the
//! certificate users see (for `localhost`, `127.0.0.1` and the function domain; a TLS
//! server's only); one certificate and key per node (`edge-node` and its member name);
//! the gateway's cluster-member certificate, which it presents to nodes (mutual TLS); and
//! the secrets: the gossip cluster key and the admin API's token. Existing files are kept,
//! so a browser or curl that trusts the CA keeps trusting it across `edge up` runs, and
//! the CA's key is kept (owner-only) to issue certificates for nodes added later.

use std::path::{Path, PathBuf};

use anyhow::Context;
use edge_net::gossip::Role;
use edge_net::pki::{ClusterCa, IssueError, Issued, Usage};

/// Where the development certificates (and the gossip cluster key) are.
#[derive(Debug, Clone)]
pub struct DevCerts {
    dir: PathBuf,
    /// CA certificate (trust this to call the gateway, and members trust it for each
    /// other).
    pub ca: PathBuf,
    /// The CA's private key.
    pub ca_key: PathBuf,
    /// The certificate users see.
    pub gateway_cert: PathBuf,
    /// Its private key.
    pub gateway_key: PathBuf,
    /// Certificate the gateway presents to nodes.
    pub member_cert: PathBuf,
    /// Its private key.
    pub member_key: PathBuf,
    /// The cluster key that signs gossip (32 random bytes, hex).
    pub gossip_key: PathBuf,
    /// The bearer token of the gateway's admin API (32 random bytes, hex).
    pub admin_token: PathBuf,
}

/// A certificate and key of one party: a node's, or the registry server's.
#[derive(Debug, Clone)]
pub struct OwnCerts {
    /// Its certificate (a node's: `edge-node`, `NAME.node.edge`).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl DevCerts {
    /// Creates the CA, the public and member certificates and the cluster key in `dir`
    /// unless they are all there already.
    pub fn ensure(dir: &Path, domain: &str) -> anyhow::Result<DevCerts> {
        let certs = DevCerts {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            gateway_cert: dir.join("gateway.pem"),
            gateway_key: dir.join("gateway.key"),
            member_cert: dir.join("member.pem"),
            member_key: dir.join("member.key"),
            gossip_key: dir.join("gossip.key"),
            admin_token: dir.join("admin.token"),
        };
        let secrets = [
            &certs.ca_key,
            &certs.gateway_key,
            &certs.member_key,
            &certs.gossip_key,
        ];
        let all = [&certs.ca, &certs.gateway_cert, &certs.member_cert];
        if all.iter().chain(&secrets).all(|p| p.is_file()) {
            // Written by an older edge up with the umask's modes: ours to tighten.
            private_dir(dir)?;
            for secret in secrets {
                set_mode(secret, 0o600)?;
            }
            if !certs.admin_token.is_file() {
                write_secret(&certs.admin_token, &random_hex()?)?;
            }
            return Ok(certs);
        }
        private_dir(dir)?;
        let ca = ClusterCa::generate()?;
        let public = ca.issue(
            vec![
                "localhost".into(),
                "127.0.0.1".into(),
                "::1".into(),
                domain.to_string(),
                format!("*.{domain}"),
            ],
            Usage::Server,
        )?;
        write_issued(&public, &certs.gateway_cert, &certs.gateway_key)?;
        // The gateway's member name is not its certificate's business: gateways are
        // told apart by their gossip id; the role is what nodes check.
        let member = ca.issue_member(Role::Gateway, "gateway")?;
        write_issued(&member, &certs.member_cert, &certs.member_key)?;
        write_secret(&certs.gossip_key, &random_hex()?)?;
        write_secret(&certs.admin_token, &random_hex()?)?;
        write_secret(&certs.ca_key, &ca.key_pem())?;
        // Nodes issued by an older CA would not chain to this one; and an older edge up
        // gave all nodes one key pair, in node.pem.
        let _ = std::fs::remove_dir_all(dir.join("nodes"));
        let _ = std::fs::remove_file(dir.join("node.pem"));
        let _ = std::fs::remove_file(dir.join("node.key"));
        write(&certs.ca, ca.cert_pem())?;
        Ok(certs)
    }

    /// Node `name`'s own certificate and key (in `nodes/`), issued now if missing.
    /// One issued by an older edge up for TLS servers only is issued again: nodes now
    /// call each other too.
    pub fn node(&self, name: &str) -> anyhow::Result<OwnCerts> {
        let dir = self.dir.join("nodes");
        let cert = dir.join(format!("{name}.pem"));
        if let (Ok(ca), Ok(pem)) = (
            std::fs::read_to_string(&self.ca),
            std::fs::read_to_string(&cert),
        ) && !edge_net::pki::authenticates_clients(&ca, &pem)
        {
            let _ = std::fs::remove_file(&cert);
        }
        self.issued_once(&self.dir.join("nodes"), name, |ca| {
            ca.issue_member(Role::Node, name)
        })
    }

    /// The shared registry's NATS server certificate and key (`registry.pem`): a TLS
    /// server for `127.0.0.1` and `localhost`, issued now if missing.
    pub fn registry(&self) -> anyhow::Result<OwnCerts> {
        self.registry_for(&[])
    }

    /// [`DevCerts::registry`], its certificate also naming `hosts` (the NATS server's
    /// addresses or names on a fleet) when it is issued.
    pub fn registry_for(&self, hosts: &[String]) -> anyhow::Result<OwnCerts> {
        self.issued_once(&self.dir, "registry", |ca| {
            let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
            names.extend(hosts.iter().cloned());
            ca.issue(names, Usage::Server)
        })
    }

    /// `dir/STEM.pem` and `dir/STEM.key`, issued by the CA with `issue` if missing.
    fn issued_once(
        &self,
        dir: &Path,
        stem: &str,
        issue: impl FnOnce(&ClusterCa) -> Result<Issued, IssueError>,
    ) -> anyhow::Result<OwnCerts> {
        let files = OwnCerts {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        if files.cert.is_file() && files.key.is_file() {
            set_mode(&files.key, 0o600)?;
            return Ok(files);
        }
        private_dir(dir)?;
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let ca = ClusterCa::from_pem(&read(&self.ca)?, &read(&self.ca_key)?)
            .with_context(|| format!("loading the CA in {}", self.dir.display()))?;
        write_issued(&issue(&ca)?, &files.cert, &files.key)?;
        Ok(files)
    }
}

/// 32 random bytes, in hex.
fn random_hex() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
    Ok(hex::encode(bytes))
}

fn write_issued(issued: &Issued, cert: &Path, key: &Path) -> anyhow::Result<()> {
    write(cert, &issued.cert_pem)?;
    write_secret(key, &issued.key_pem)
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
