//! Admission control: who runs now, who waits, who is refused.
//!
//! [`Admission`] is the pure state machine (no clock, no threads: `now` is an argument,
//! so its tests are deterministic). It admits a request when the node has a free
//! execution slot, the function is under its `max_concurrency`, and the request's memory
//! reservation (the function's memory limit) fits the node's budget together with
//! everything already running and pooled. Otherwise the request waits in its function's
//! bounded FIFO queue with a deadline, or is refused when that queue is full.
//!
//! When capacity frees up, waiting functions take turns (round robin across functions,
//! FIFO within one): a flood of one function queues behind its own limit and cannot keep
//! another function's requests waiting for more than one turn.
//!
//! [`Admitter`] wraps it for async callers: a waiting request awaits a wake-up until its
//! deadline, and its [`Permit`] gives the capacity back when dropped, wherever it is
//! dropped (the worker thread that ran the function).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// What a function's requests are admitted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionLimits {
    /// Most of its requests running at once.
    pub max_concurrency: usize,
    /// Most of its requests waiting.
    pub queue_depth: usize,
    /// Longest one of its requests waits.
    pub queue_timeout: Duration,
    /// Bytes a running request reserves from the node's memory budget.
    pub memory: u64,
}

/// Identifies a waiting request.
pub type Ticket = u64;

/// The answer to a request for capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Runs now.
    Admitted,
    /// Waits; [`Admission::release`] names it when it may run.
    Queued(Ticket),
    /// Refused at once: its function's queue is full (or it may not wait at all).
    Refused,
}

/// What capacity coming free did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Waiting requests that may run now, in the order they were admitted.
    pub admitted: Vec<Ticket>,
    /// Waiting requests found past their deadline and dropped from their queue.
    pub expired: Vec<Ticket>,
}

/// One function's running count and queue.
#[derive(Debug)]
struct Lane {
    limits: FunctionLimits,
    running: usize,
    waiting: VecDeque<(Ticket, Instant)>,
}

/// Counts for the node's load snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Requests running.
    pub running: usize,
    /// Requests waiting.
    pub queued: usize,
    /// Bytes reserved by running requests and idle pooled instances.
    pub memory_reserved: u64,
    /// The most bytes ever reserved at once.
    pub peak_memory_reserved: u64,
}

/// The admission state of one node.
#[derive(Debug)]
pub struct Admission<K> {
    slots: usize,
    memory_budget: u64,
    running: usize,
    memory_running: u64,
    memory_idle: u64,
    memory_peak: u64,
    lanes: HashMap<K, Lane>,
    /// Functions with waiting requests, in the order they get their next turn.
    turns: VecDeque<K>,
    next_ticket: Ticket,
}

impl<K: Clone + Eq + Hash> Admission<K> {
    /// A node with `slots` execution slots and `memory_budget` bytes for instances.
    pub fn new(slots: usize, memory_budget: u64) -> Admission<K> {
        Admission {
            slots,
            memory_budget,
            running: 0,
            memory_running: 0,
            memory_idle: 0,
            memory_peak: 0,
            lanes: HashMap::new(),
            turns: VecDeque::new(),
            next_ticket: 0,
        }
    }

    /// Asks to run one request of `function` at `now`.
    pub fn request(&mut self, function: &K, limits: FunctionLimits, now: Instant) -> Decision {
        let fits = self.fits(function, &limits);
        let lane = self.lanes.entry(function.clone()).or_insert_with(|| Lane {
            limits,
            running: 0,
            waiting: VecDeque::new(),
        });
        lane.limits = limits;
        if lane.waiting.is_empty() && fits {
            self.start(function);
            return Decision::Admitted;
        }
        if lane.waiting.len() >= limits.queue_depth || limits.queue_timeout.is_zero() {
            return Decision::Refused;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        lane.waiting.push_back((ticket, now + limits.queue_timeout));
        if !self.turns.contains(function) {
            self.turns.push_back(function.clone());
        }
        Decision::Queued(ticket)
    }

    /// One request of `function` ended: gives its capacity to whoever waits.
    pub fn release(&mut self, function: &K, now: Instant) -> Grants {
        if let Some(lane) = self.lanes.get_mut(function) {
            lane.running -= 1;
            self.running -= 1;
            self.memory_running -= lane.limits.memory;
        }
        self.grant(now)
    }

    /// Withdraws a waiting request (its caller gave up). False if it is not waiting
    /// any more: it was admitted or expired meanwhile.
    pub fn cancel(&mut self, function: &K, ticket: Ticket) -> bool {
        let Some(lane) = self.lanes.get_mut(function) else {
            return false;
        };
        let before = lane.waiting.len();
        lane.waiting.retain(|(t, _)| *t != ticket);
        before != lane.waiting.len()
    }

    /// Reserves `bytes` for an idle pooled instance, if the budget allows it.
    pub fn reserve_idle(&mut self, bytes: u64) -> bool {
        if self.memory_running + self.memory_idle + bytes > self.memory_budget {
            return false;
        }
        self.memory_idle += bytes;
        self.note_peak();
        true
    }

    /// Gives back the reservation of an idle instance (taken to run, or dropped).
    pub fn release_idle(&mut self, bytes: u64, now: Instant) -> Grants {
        self.memory_idle -= bytes.min(self.memory_idle);
        self.grant(now)
    }

    /// The counts right now.
    pub fn usage(&self) -> Usage {
        Usage {
            running: self.running,
            queued: self.lanes.values().map(|l| l.waiting.len()).sum(),
            memory_reserved: self.memory_running + self.memory_idle,
            peak_memory_reserved: self.memory_peak,
        }
    }

    /// Requests of `function` running and waiting.
    pub fn function_usage(&self, function: &K) -> (usize, usize) {
        self.lanes
            .get(function)
            .map_or((0, 0), |l| (l.running, l.waiting.len()))
    }

    fn fits(&self, function: &K, limits: &FunctionLimits) -> bool {
        let running = self.lanes.get(function).map_or(0, |l| l.running);
        self.running < self.slots
            && running < limits.max_concurrency
            && self.memory_running + self.memory_idle + limits.memory <= self.memory_budget
    }

    fn start(&mut self, function: &K) {
        let lane = self.lanes.get_mut(function).expect("lane exists");
        lane.running += 1;
        self.running += 1;
        self.memory_running += lane.limits.memory;
        self.note_peak();
    }

    fn note_peak(&mut self) {
        self.memory_peak = self.memory_peak.max(self.memory_running + self.memory_idle);
    }

    /// Admits waiting requests while capacity lasts, one per function per turn.
    fn grant(&mut self, now: Instant) -> Grants {
        let mut grants = Grants::default();
        let mut without_progress = 0;
        while without_progress < self.turns.len() && self.running < self.slots {
            let function = self.turns.pop_front().expect("turns is not empty");
            let lane = self
                .lanes
                .get_mut(&function)
                .expect("a waiting lane exists");
            while lane
                .waiting
                .front()
                .is_some_and(|(_, deadline)| *deadline <= now)
            {
                let (ticket, _) = lane.waiting.pop_front().expect("front exists");
                grants.expired.push(ticket);
            }
            let Some(&(ticket, _)) = lane.waiting.front() else {
                continue;
            };
            let limits = lane.limits;
            if self.fits(&function, &limits) {
                let lane = self.lanes.get_mut(&function).expect("lane exists");
                lane.waiting.pop_front();
                let more = !lane.waiting.is_empty();
                self.start(&function);
                grants.admitted.push(ticket);
                without_progress = 0;
                if more {
                    self.turns.push_back(function);
                }
            } else {
                without_progress += 1;
                self.turns.push_back(function);
            }
        }
        grants
    }
}

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
            memory: 10 * MIB,
        }
    }

    #[test]
    fn admits_up_to_the_slots_then_queues_then_refuses() {
        let t0 = Instant::now();
        let mut a = Admission::new(2, 1024 * MIB);
        let l = limits(8, 2);
        assert_eq!(a.request(&"f", l, t0), Decision::Admitted);
        assert_eq!(a.request(&"f", l, t0), Decision::Admitted);
        assert_eq!(a.request(&"f", l, t0), Decision::Queued(0));
        assert_eq!(a.request(&"f", l, t0), Decision::Queued(1));
        assert_eq!(a.request(&"f", l, t0), Decision::Refused);
        let usage = a.usage();
        assert_eq!((usage.running, usage.queued), (2, 2));
        assert_eq!(usage.memory_reserved, 20 * MIB);
        // Waiters are served in the order they came.
        assert_eq!(a.release(&"f", t0).admitted, vec![0]);
        assert_eq!(a.release(&"f", t0).admitted, vec![1]);
        assert_eq!(a.usage().queued, 0);
    }

    #[test]
    fn a_function_never_runs_past_its_max_concurrency() {
        let t0 = Instant::now();
        let mut a = Admission::new(8, 1024 * MIB);
        assert_eq!(a.request(&"f", limits(1, 4), t0), Decision::Admitted);
        assert_eq!(a.request(&"f", limits(1, 4), t0), Decision::Queued(0));
        // Another function still has the free slots.
        assert_eq!(a.request(&"g", limits(1, 4), t0), Decision::Admitted);
        assert_eq!(a.function_usage(&"f"), (1, 1));
    }

    #[test]
    fn waiters_past_their_deadline_expire_instead_of_running() {
        let t0 = Instant::now();
        let mut a = Admission::new(1, 1024 * MIB);
        let l = limits(1, 4);
        assert_eq!(a.request(&"f", l, t0), Decision::Admitted);
        assert_eq!(a.request(&"f", l, t0), Decision::Queued(0));
        let later = t0 + Duration::from_millis(50);
        assert_eq!(a.request(&"f", l, later), Decision::Queued(1));
        // At t0 + 120 ms the first waiter (deadline t0 + 100) has expired, the second
        // (deadline t0 + 150) has not.
        let grants = a.release(&"f", t0 + Duration::from_millis(120));
        assert_eq!(grants.expired, vec![0]);
        assert_eq!(grants.admitted, vec![1]);
    }

    #[test]
    fn a_cancelled_waiter_leaves_the_queue() {
        let t0 = Instant::now();
        let mut a = Admission::new(1, 1024 * MIB);
        let l = limits(1, 4);
        a.request(&"f", l, t0);
        let Decision::Queued(ticket) = a.request(&"f", l, t0) else {
            panic!("expected to queue");
        };
        assert!(a.cancel(&"f", ticket));
        assert!(!a.cancel(&"f", ticket));
        assert_eq!(a.release(&"f", t0), Grants::default());
    }

    #[test]
    fn freed_slots_go_round_robin_across_functions() {
        let t0 = Instant::now();
        let mut a = Admission::new(2, 1024 * MIB);
        let l = limits(8, 100);
        a.request(&"flood", l, t0);
        a.request(&"flood", l, t0);
        for _ in 0..10 {
            a.request(&"flood", l, t0);
        }
        // One request of another function arrives after ten queued floods…
        let Decision::Queued(other) = a.request(&"other", l, t0) else {
            panic!("expected to queue");
        };
        // …and gets the second slot that comes free, not the twelfth.
        let first = a.release(&"flood", t0).admitted;
        let second = a.release(&"flood", t0).admitted;
        assert_eq!(first.len(), 1);
        assert_eq!(second, vec![other]);
    }

    #[test]
    fn memory_budget_bounds_running_and_idle_reservations() {
        let t0 = Instant::now();
        let mut a = Admission::new(8, 25 * MIB);
        let l = limits(8, 4);
        assert_eq!(a.request(&"f", l, t0), Decision::Admitted);
        assert_eq!(a.request(&"f", l, t0), Decision::Admitted);
        // 20 MiB running: a third 10 MiB reservation would pass the 25 MiB budget.
        assert_eq!(a.request(&"f", l, t0), Decision::Queued(0));
        assert!(a.reserve_idle(5 * MIB));
        assert!(!a.reserve_idle(MIB));
        // One release frees 10 MiB, but 5 are idle: 15 + 10 fits.
        assert_eq!(a.release(&"f", t0).admitted, vec![0]);
        assert_eq!(a.usage().memory_reserved, 25 * MIB);
        a.release(&"f", t0);
        assert_eq!(a.usage().peak_memory_reserved, 25 * MIB);
        assert_eq!(a.release_idle(5 * MIB, t0), Grants::default());
        assert_eq!(a.usage().memory_reserved, 10 * MIB);
    }

    #[test]
    fn a_request_that_may_not_wait_is_refused_when_full() {
        let t0 = Instant::now();
        let mut a = Admission::new(1, 1024 * MIB);
        let mut l = limits(1, 4);
        l.queue_timeout = Duration::ZERO;
        assert_eq!(a.request(&"f", l, t0), Decision::Admitted);
        assert_eq!(a.request(&"f", l, t0), Decision::Refused);
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
