//! Starting members of a local cluster again: on their old addresses, with their state
//! and caches, as a restart or an upgrade would, and as `edge up` does for a member that
//! exited.

use anyhow::{Context, bail};
use edge_shared::config::{GatewayConfig, NodeConfig};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::nats::Nats;
use super::{LocalCluster, Process, announced};

/// A member of a local cluster, as [`LocalCluster::exited`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Member {
    /// Gateway `i` (0 is the first).
    Gateway(usize),
    /// Node `i` (0-based).
    Node(usize),
    /// The shared registry's nats-server.
    Registry,
}

impl LocalCluster {
    /// Stops the gateway (SIGTERM, waiting for it to drain; at once if it is dead already)
    /// and starts it again on the same addresses, its state folder kept: what a restart
    /// or an upgrade does.
    pub fn restart_gateway(&mut self) -> anyhow::Result<()> {
        let running = self
            .gateway
            .as_mut()
            .is_some_and(|g| matches!(g.child.try_wait(), Ok(None)));
        if running {
            self.terminate_gateway();
        }
        if self.wait_gateway(Duration::from_secs(30)).is_none() {
            bail!("the gateway did not exit within 30 s of SIGTERM");
        }
        let config = self.dir.join("gateway.toml");
        let mut text: GatewayConfig = toml::from_str(&std::fs::read_to_string(&config)?)?;
        text.listen = self.gateway_addr();
        text.gossip.listen = self.seed;
        text.status_listen = self.status;
        text.admin.listen = self.admin;
        let metrics = self.dir.join("gateway.metrics");
        let gateway = on_old_metrics_port(
            &config,
            text,
            &metrics,
            |c| &mut c.metrics_listen,
            || self.launch_gateway("gateway", config.clone())?.serving(),
        )?;
        self.gateway = Some(gateway);
        Ok(())
    }

    /// The members that have exited, each with how (`node-1 exited (signal: 9
    /// (SIGKILL))`).
    pub fn exited(&mut self) -> Vec<(Member, String)> {
        let mut exited = Vec::new();
        let mut check = |member, p: &mut Process| {
            if let Ok(Some(status)) = p.child.try_wait() {
                exited.push((member, format!("{} exited ({status})", p.name)));
            }
        };
        if let Some(p) = self.gateway.as_mut() {
            check(Member::Gateway(0), p);
        }
        for (i, g) in self.others.iter_mut().enumerate() {
            check(Member::Gateway(i + 1), &mut g.process);
        }
        for (i, p) in self.nodes.iter_mut().enumerate() {
            check(Member::Node(i), p);
        }
        if let Some(nats) = &mut self.nats
            && let Ok(Some(status)) = nats.child.try_wait()
        {
            exited.push((Member::Registry, format!("nats-server exited ({status})")));
        }
        exited
    }

    /// Starts `member` again (killing it first if it still runs) on its old addresses,
    /// with its state and caches: what `edge up` does for a member that died.
    pub fn revive(&mut self, member: Member) -> anyhow::Result<()> {
        match member {
            Member::Gateway(0) => self.restart_gateway(),
            Member::Gateway(i) => self.restart_other_gateway(i - 1),
            Member::Node(i) => self.restart_node(i),
            Member::Registry => {
                let nats = self.nats.as_mut().context("the cluster has no registry")?;
                let _ = nats.child.kill();
                let _ = nats.child.wait();
                let port = nats.url.rsplit(':').next().unwrap_or_default().to_string();
                let revived = Nats::start_on(&self.dir, &self.certs, &port)?;
                self.nats = Some(revived);
                Ok(())
            }
        }
    }

    /// Starts gateway `i` after the first again, on its old user and admin addresses.
    fn restart_other_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        let other = &mut self.others[i];
        let _ = other.process.child.kill();
        let _ = other.process.child.wait();
        let (name, config) = (other.process.name.clone(), other.process.config.clone());
        let mut text: GatewayConfig = toml::from_str(&std::fs::read_to_string(&config)?)?;
        text.listen = other.process.addr;
        text.admin.listen = other.admin;
        std::fs::write(&config, toml::to_string(&text)?)?;
        let process = self.launch_gateway(&name, config)?.serving()?;
        self.others[i].process = process;
        Ok(())
    }

    /// Starts node `i` again on its old address, with its old cache folder.
    pub fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill_node(i);
        let (name, config, addr, cpus) = {
            let n = &self.nodes[i];
            (n.name.clone(), n.config.clone(), n.addr, n.cpus.clone())
        };
        let mut text: NodeConfig = toml::from_str(&std::fs::read_to_string(&config)?)?;
        text.listen = addr;
        let metrics = self.dir.join(format!("{name}.metrics"));
        let announce = metrics.to_string_lossy().to_string();
        self.nodes[i] = on_old_metrics_port(
            &config,
            text,
            &metrics,
            |c| &mut c.metrics_listen,
            || {
                self.launch(
                    "edge-node",
                    &name,
                    config.clone(),
                    cpus.clone(),
                    &["--announce-metrics", &announce],
                )?
                .serving()
            },
        )?;
        Ok(())
    }
}

/// Starts a member (`start`, reading `config`) on the metrics address it announced in
/// `metrics` before, so a scrape pointed at it keeps working. If something took that port
/// while the member was down (another process's outgoing connection can be handed any
/// free port), it starts again on a new port, announced in the same file.
fn on_old_metrics_port<C: serde::Serialize>(
    config: &Path,
    mut text: C,
    metrics: &Path,
    listen: impl Fn(&mut C) -> &mut SocketAddr,
    mut start: impl FnMut() -> anyhow::Result<Process>,
) -> anyhow::Result<Process> {
    if let Ok(at) = announced(metrics) {
        *listen(&mut text) = at;
    }
    std::fs::write(config, toml::to_string(&text)?)?;
    match start() {
        Err(e) if format!("{e:#}").contains("binding the metrics listener") => {
            listen(&mut text).set_port(0);
            std::fs::write(config, toml::to_string(&text)?)?;
            start()
        }
        started => started,
    }
}
