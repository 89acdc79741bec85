//! An in-memory datagram network for cluster simulations: ports by address, links that
//! can be cut and healed, a delay on every link, members that can be isolated. Run under
//! tokio's paused clock, a simulation of a hundred members takes seconds, not minutes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

type Datagram = (Vec<u8>, SocketAddr);

#[derive(Default)]
struct State {
    ports: HashMap<SocketAddr, mpsc::UnboundedSender<Datagram>>,
    cut: HashSet<(SocketAddr, SocketAddr)>,
    isolated: HashSet<SocketAddr>,
    delay: Duration,
}

/// A simulated network. Cloning shares it.
#[derive(Clone, Default)]
pub struct Network(Arc<Mutex<State>>);

fn pair(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b { (a, b) } else { (b, a) }
}

impl Network {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A port at `addr`; an address can be bound again once its port is dropped.
    pub fn bind(&self, addr: SocketAddr) -> anyhow::Result<Port> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.state();
        if state.ports.get(&addr).is_some_and(|p| !p.is_closed()) {
            anyhow::bail!("{addr} is already bound on the simulated network");
        }
        state.ports.insert(addr, tx);
        Ok(Port {
            addr,
            network: self.clone(),
            inbox: rx,
        })
    }

    /// Datagrams between `a` and `b` are lost, both ways, until [`Network::heal`].
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        self.state().cut.insert(pair(a, b));
    }

    /// Restores the link between `a` and `b`.
    pub fn heal(&self, a: SocketAddr, b: SocketAddr) {
        self.state().cut.remove(&pair(a, b));
    }

    /// Every datagram to or from `addr` is lost (a crashed or partitioned member), until
    /// [`Network::rejoin`].
    pub fn isolate(&self, addr: SocketAddr) {
        self.state().isolated.insert(addr);
    }

    /// Ends [`Network::isolate`].
    pub fn rejoin(&self, addr: SocketAddr) {
        self.state().isolated.remove(&addr);
    }

    /// Every datagram arrives `delay` late.
    pub fn delay_all(&self, delay: Duration) {
        self.state().delay = delay;
    }

    fn send(&self, datagram: Vec<u8>, from: SocketAddr, to: SocketAddr) {
        let state = self.state();
        if state.cut.contains(&pair(from, to))
            || state.isolated.contains(&from)
            || state.isolated.contains(&to)
        {
            return;
        }
        let Some(port) = state.ports.get(&to).cloned() else {
            return;
        };
        let delay = state.delay;
        drop(state);
        if delay.is_zero() {
            let _ = port.send((datagram, from));
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = port.send((datagram, from));
            });
        }
    }
}

/// One member's end of a [`Network`].
pub struct Port {
    addr: SocketAddr,
    network: Network,
    inbox: mpsc::UnboundedReceiver<Datagram>,
}

impl Port {
    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends a datagram; lost silently if the link is cut or nobody is bound at `to`.
    pub fn send_to(&self, datagram: Vec<u8>, to: SocketAddr) {
        self.network.send(datagram, self.addr, to);
    }

    /// The next datagram and its sender; `None` once the network is gone.
    pub async fn recv(&mut self) -> Option<Datagram> {
        self.inbox.recv().await
    }
}
