//! Stopping a local cluster's members: signals as a crash, a pause or an operator
//! would send them, and waiting for their exit.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use super::{LocalCluster, Process};

impl LocalCluster {
    /// Kills node `i` (0-based) with SIGKILL.
    pub fn kill_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let _ = node.child.kill();
        let _ = node.child.wait();
    }

    /// Kills the gateway (SIGKILL), as a crash would; [`LocalCluster::restart_gateway`]
    /// brings it back.
    pub fn kill_gateway(&mut self) {
        if let Some(gateway) = &mut self.gateway {
            let _ = gateway.child.kill();
            let _ = gateway.child.wait();
        }
    }

    /// The process id of node `i` (0-based).
    pub fn node_pid(&self, i: usize) -> u32 {
        self.nodes[i].child.id()
    }

    /// The process id of the (first) gateway, while it runs.
    pub fn gateway_pid(&self) -> Option<u32> {
        self.gateway.as_ref().map(|g| g.child.id())
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to node `i` (0-based): whether it was sent.
    pub fn signal_node(&self, i: usize, signal: &str) -> bool {
        i32::try_from(self.nodes[i].child.id()).is_ok_and(|pid| send(pid, signal))
    }

    /// Sends SIGTERM to node `i` (0-based): it says it is draining, then exits.
    pub fn terminate_node(&self, i: usize) {
        if let Ok(pid) = i32::try_from(self.nodes[i].child.id()) {
            terminate(pid);
        }
    }

    /// Sends SIGTERM to the gateway: it stops accepting, lets what is in flight finish,
    /// leaves gossip and exits.
    pub fn terminate_gateway(&self) {
        if let Some(pid) = self
            .gateway
            .as_ref()
            .and_then(|g| i32::try_from(g.child.id()).ok())
        {
            terminate(pid);
        }
    }

    /// Waits at most `within` for node `i` (0-based) to exit: its exit status, if it did.
    pub fn wait_node(&mut self, i: usize, within: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.nodes[i].child, within)
    }

    /// Waits at most `within` for the gateway to exit: its exit status, if it did.
    pub fn wait_gateway(&mut self, within: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.gateway.as_mut()?.child, within)
    }

    /// Sends SIGTERM to every process and waits up to `grace` for them to exit, then
    /// kills what is left.
    pub fn stop(&mut self, grace: Duration) {
        let all: Vec<&mut Process> = self
            .gateway
            .iter_mut()
            .chain(self.others.iter_mut().map(|g| &mut g.process))
            .chain(self.nodes.iter_mut())
            .collect();
        for p in &all {
            if let Ok(pid) = i32::try_from(p.child.id()) {
                terminate(pid);
            }
        }
        let deadline = Instant::now() + grace;
        for p in all {
            while Instant::now() < deadline && matches!(p.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        // The registry goes last: the gateways were still writing to it.
        if let Some(nats) = &mut self.nats {
            terminate_and_wait(&mut nats.child, grace);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let others = self.others.iter_mut().map(|g| &mut g.process);
        for p in self
            .gateway
            .iter_mut()
            .chain(others)
            .chain(self.nodes.iter_mut())
        {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if let Some(nats) = &mut self.nats {
            let _ = nats.child.kill();
            let _ = nats.child.wait();
        }
    }
}

/// SIGTERM to `child`, then SIGKILL if it has not exited within `grace`.
fn terminate_and_wait(child: &mut Child, grace: Duration) {
    if let Ok(pid) = i32::try_from(child.id()) {
        terminate(pid);
    }
    if wait_exit(child, grace).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Polls `child` every 20 ms until it exits or `within` passes.
fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM to `pid`.
fn terminate(pid: i32) {
    send(pid, "TERM");
}

/// Sends `signal` to process `pid`: whether it was sent.
fn send(pid: i32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}
