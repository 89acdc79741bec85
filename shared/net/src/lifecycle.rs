//! One lifecycle for every process: a [`Shutdown`] signal that reaches every loop, and a
//! count of [`InFlight`] requests to drain before leaving.
//!
//! On the first SIGTERM or Ctrl-C, [`Shutdown::on_signals`] fires: servers stop
//! accepting, loops end, requests in flight get their grace period. A second signal
//! exits the process at once.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// The exit status after a second signal (128 + SIGINT, as shells report Ctrl-C).
pub const FORCED_EXIT: i32 = 130;

/// A shutdown signal, cloned into every loop that must end with the process.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Fires a [`Shutdown`] by hand (tests, and the node's drain sequence).
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

impl Trigger {
    /// Fires the signal; every clone of its [`Shutdown`] sees it.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// A signal fired only by its [`Trigger`].
    pub fn manual() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger(tx), Shutdown(rx))
    }

    /// A signal that fires on the first SIGTERM or SIGINT; the second exits the process
    /// with [`FORCED_EXIT`]. Call it inside the runtime.
    pub fn on_signals() -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (trigger, shutdown) = Shutdown::manual();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("shutting down (a second signal exits at once)");
            trigger.fire();
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal: exiting now");
            std::process::exit(FORCED_EXIT);
        });
        Ok(shutdown)
    }

    /// Whether it has fired.
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once it has fired (at once if it already has).
    pub fn fired(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            // An error means every trigger is gone: it can no longer fire.
            if rx.wait_for(|fired| *fired).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Requests in flight, counted by the guards they hold, so a server can wait until none
/// is left (or its grace period ends).
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Counter>);

#[derive(Debug, Default)]
struct Counter {
    count: AtomicUsize,
    idle: Notify,
}

/// One request counted while it is alive.
#[derive(Debug)]
pub struct Guard(Arc<Counter>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl InFlight {
    /// Counts one more request until the guard is dropped.
    pub fn start(&self) -> Guard {
        self.0.count.fetch_add(1, Ordering::AcqRel);
        Guard(Arc::clone(&self.0))
    }

    /// Requests in flight now.
    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }

    /// Waits until no request is in flight, at most `grace`; returns how many still were
    /// at the end.
    pub async fn drained(&self, grace: Duration) -> usize {
        let wait = async {
            loop {
                let idle = self.0.idle.notified();
                if self.count() == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(grace, wait).await;
        self.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn draining_waits_for_the_last_guard_or_the_grace_period() {
        let in_flight = InFlight::default();
        assert_eq!(in_flight.drained(Duration::from_secs(1)).await, 0);
        let first = in_flight.start();
        let second = in_flight.start();
        let waiter = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move { in_flight.drained(Duration::from_secs(60)).await })
        };
        drop(first);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "one request is still in flight");
        drop(second);
        assert_eq!(waiter.await.unwrap(), 0);
        let _stuck = in_flight.start();
        assert_eq!(in_flight.drained(Duration::from_secs(5)).await, 1);
    }

    #[tokio::test]
    async fn a_shutdown_reaches_every_clone_even_late_ones() {
        let (trigger, shutdown) = Shutdown::manual();
        let early = shutdown.clone();
        let waiting = tokio::spawn(early.fired());
        assert!(!shutdown.is_fired());
        trigger.fire();
        waiting.await.unwrap();
        shutdown.clone().fired().await;
        assert!(shutdown.is_fired());
    }
}
