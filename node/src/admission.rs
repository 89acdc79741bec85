//! The node's admission for async callers: [`Admitter`] runs the pure
//! [`edge_shared::admission::Admission`] on the real clock. A waiting request awaits a
//! wake-up until its deadline, and its [`Permit`] gives the capacity back when dropped,
//! wherever it is dropped (the worker thread that ran the function).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use edge_shared::admission::{Admission, Decision, FunctionLimits, Grants, Ticket, Usage};
use tokio::sync::oneshot;

/// Why a request got no capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("overloaded: no capacity within the queue limits")]
pub struct Overloaded;

struct Shared<K> {
    admission: Admission<K>,
    wakers: HashMap<Ticket, oneshot::Sender<()>>,
}

/// A request waiting in its queue; withdrawn if dropped before it is settled.
struct Waiting<'a, K: Clone + Eq + Hash> {
    admitter: &'a Arc<Admitter<K>>,
    function: &'a K,
    ticket: Ticket,
    woken: oneshot::Receiver<()>,
    settled: bool,
}

impl<K: Clone + Eq + Hash> Waiting<'_, K> {
    /// Leaves the queue. True if the request had been admitted meanwhile: the caller
    /// then holds that capacity.
    fn withdraw(&mut self) -> bool {
        self.settled = true;
        let mut shared = self.admitter.lock();
        let withdrawn = shared.admission.cancel(self.function, self.ticket);
        shared.wakers.remove(&self.ticket);
        !withdrawn && self.woken.try_recv().is_ok()
    }
}

impl<K: Clone + Eq + Hash> Drop for Waiting<'_, K> {
    fn drop(&mut self) {
        if !self.settled && self.withdraw() {
            drop(Permit {
                admitter: Arc::clone(self.admitter),
                function: self.function.clone(),
            });
        }
    }
}

/// [`Admission`] for async callers, on the real clock.
pub struct Admitter<K> {
    shared: Mutex<Shared<K>>,
}

/// Capacity held by one running request; dropping it gives the capacity back.
pub struct Permit<K: Clone + Eq + Hash> {
    admitter: Arc<Admitter<K>>,
    function: K,
}

impl<K: Clone + Eq + Hash> Admitter<K> {
    /// An admitter over `slots` slots and `memory_budget` bytes.
    pub fn new(slots: usize, memory_budget: u64) -> Arc<Admitter<K>> {
        Arc::new(Admitter {
            shared: Mutex::new(Shared {
                admission: Admission::new(slots, memory_budget),
                wakers: HashMap::new(),
            }),
        })
    }

    /// Waits for capacity for one request of `function`, up to its queue timeout.
    /// Returns the permit and the time spent waiting. Dropping the future while it
    /// waits withdraws the request.
    pub async fn admit(
        self: &Arc<Self>,
        function: &K,
        limits: FunctionLimits,
    ) -> Result<(Permit<K>, Duration), Overloaded> {
        let asked = Instant::now();
        let permit = || Permit {
            admitter: Arc::clone(self),
            function: function.clone(),
        };
        let mut waiting = {
            let mut shared = self.lock();
            match shared.admission.request(function, limits, asked) {
                Decision::Admitted => return Ok((permit(), Duration::ZERO)),
                Decision::Refused => return Err(Overloaded),
                Decision::Queued(ticket) => {
                    let (wake, woken) = oneshot::channel();
                    shared.wakers.insert(ticket, wake);
                    Waiting {
                        admitter: self,
                        function,
                        ticket,
                        woken,
                        settled: false,
                    }
                }
            }
        };
        let deadline = tokio::time::Instant::from_std(asked + limits.queue_timeout);
        let admitted = match tokio::time::timeout_at(deadline, &mut waiting.woken).await {
            Ok(result) => {
                waiting.settled = true;
                result.is_ok()
            }
            // At the deadline: withdraw, unless admitted just now (then run it rather
            // than waste the turn).
            Err(_) => waiting.withdraw(),
        };
        if admitted {
            Ok((permit(), asked.elapsed()))
        } else {
            Err(Overloaded)
        }
    }

    /// Reserves memory for an idle pooled instance, if the budget allows.
    pub fn reserve_idle(&self, bytes: u64) -> bool {
        self.lock().admission.reserve_idle(bytes)
    }

    /// Gives back an idle instance's reservation.
    pub fn release_idle(&self, bytes: u64) {
        let mut shared = self.lock();
        let grants = shared.admission.release_idle(bytes, Instant::now());
        Self::deliver(&mut shared, grants);
    }

    /// Node-wide counts.
    pub fn usage(&self) -> Usage {
        self.lock().admission.usage()
    }

    /// Running and waiting requests of `function`.
    pub fn function_usage(&self, function: &K) -> (usize, usize) {
        self.lock().admission.function_usage(function)
    }

    fn lock(&self) -> MutexGuard<'_, Shared<K>> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes the admitted waiters. A waiter always withdraws under the lock before it
    /// stops listening, so every admitted ticket has a listener.
    fn deliver(shared: &mut Shared<K>, grants: Grants) {
        for ticket in grants.expired {
            shared.wakers.remove(&ticket);
        }
        for ticket in grants.admitted {
            if let Some(wake) = shared.wakers.remove(&ticket) {
                let _ = wake.send(());
            }
        }
    }
}

impl<K: Clone + Eq + Hash> Drop for Permit<K> {
    fn drop(&mut self) {
        let mut shared = self.admitter.lock();
        let grants = shared.admission.release(&self.function, Instant::now());
        Admitter::deliver(&mut shared, grants);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn limits(max_concurrency: usize, queue_depth: usize) -> FunctionLimits {
        FunctionLimits {
            max_concurrency,
            queue_depth,
            queue_timeout: Duration::from_millis(100),
            memory: MIB,
        }
    }

    #[tokio::test]
    async fn permits_wake_waiters_and_deadlines_refuse() {
        let admitter = Admitter::new(1, 1024 * MIB);
        let (held, waited) = admitter.admit(&"f", limits(1, 4)).await.unwrap();
        assert_eq!(waited, Duration::ZERO);
        let waiter = {
            let admitter = Arc::clone(&admitter);
            tokio::spawn(async move {
                let mut l = limits(1, 4);
                l.queue_timeout = Duration::from_secs(30);
                admitter.admit(&"f", l).await.map(|(p, _)| drop(p))
            })
        };
        while admitter.usage().queued == 0 {
            tokio::task::yield_now().await;
        }
        drop(held);
        waiter.await.unwrap().unwrap();
        assert_eq!((admitter.usage().running, admitter.usage().queued), (0, 0));

        let (_held, _) = admitter.admit(&"f", limits(1, 4)).await.unwrap();
        let mut short = limits(1, 4);
        short.queue_timeout = Duration::from_millis(5);
        assert!(admitter.admit(&"f", short).await.is_err());
        assert_eq!(admitter.usage().queued, 0);
    }
}
