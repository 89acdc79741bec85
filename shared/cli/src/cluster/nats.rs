//! The shared registry's `nats-server` of a local cluster: JetStream on a loopback port
//! it picks, mutual TLS with the development CA.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::START_TIMEOUT;
use crate::devcerts::DevCerts;

/// A `nats-server` with JetStream, its store in the state folder.
pub(super) struct Nats {
    pub(super) child: Child,
    pub(super) url: String,
}

impl Nats {
    /// Starts `nats-server` on a loopback port it picks, and reads which from its ports
    /// file. Clients need a certificate of the cluster CA with the client usage that
    /// names the gateway role (the gateways' member certificate): mutual TLS, verified by
    /// the server, the certificate's DNS name mapped to its one user.
    pub(super) fn start(dir: &Path, certs: &DevCerts) -> anyhow::Result<Nats> {
        Nats::start_on(dir, certs, "-1")
    }

    /// [`Nats::start`] on `port` (`-1`: one it picks).
    pub(super) fn start_on(dir: &Path, certs: &DevCerts, port: &str) -> anyhow::Result<Nats> {
        let own = certs.registry()?;
        let ports = dir.join("nats");
        std::fs::create_dir_all(&ports)?;
        for stale in std::fs::read_dir(&ports)? {
            let stale = stale?.path();
            if stale.extension().is_some_and(|e| e == "ports") {
                std::fs::remove_file(stale)?;
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("nats.log"))?;
        // Mutual TLS, and of the cluster CA's client certificates only those naming
        // the gateway role map to a user: a node's certificate (a TLS client too, towards
        // other nodes) is refused.
        let config = ports.join("nats.conf");
        let quoted = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify_and_map: true\n}}\n\
                 authorization {{\n  users = [ {{ user: \"{}\" }} ]\n}}\n",
                quoted(&own.cert),
                quoted(&own.key),
                quoted(&certs.ca),
                edge_shared::wire::GATEWAY_MEMBER_NAME,
            ),
        )?;
        let mut child = Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .args(["-js", "-a", "127.0.0.1", "-p", port, "-sd"])
            .arg(ports.join("store"))
            .arg("--ports_file_dir")
            .arg(&ports)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "starting nats-server for the shared registry (scripts/install-test-deps.sh \
                 installs it; or apt-get install nats-server)",
            )?;
        let deadline = Instant::now() + START_TIMEOUT;
        let file = ports.join(format!("nats-server_{}.ports", child.id()));
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(ports) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = ports["nats"][0].as_str()
            {
                return Ok(Nats {
                    url: url.to_string(),
                    child,
                });
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "nats-server exited at start ({status}); see {}",
                    dir.join("nats.log").display()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "nats-server did not write {} within {START_TIMEOUT:?}",
                    file.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
