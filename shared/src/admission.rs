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
//! The node's `Admitter` wraps it for async callers on the real clock.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

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

/// Seconds a refused client should wait before trying again: the time the requests
/// running and waiting would take to drain over `slots` at the recent run time `ewma`,
/// from one second to a minute.
pub fn retry_after_secs(ewma: Duration, waiting: usize, slots: usize) -> u64 {
    let waiting = u32::try_from(waiting).unwrap_or(u32::MAX);
    let slots = u32::try_from(slots.max(1)).unwrap_or(u32::MAX);
    (ewma.saturating_mul(waiting) / slots)
        .as_secs()
        .clamp(1, 60)
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
    fn retry_after_is_the_drain_time_within_one_second_and_a_minute() {
        let ms = Duration::from_millis;
        assert_eq!(retry_after_secs(ms(10), 0, 4), 1, "never zero");
        assert_eq!(retry_after_secs(ms(500), 40, 4), 5);
        assert_eq!(
            retry_after_secs(ms(500), 40, 0),
            20,
            "no slots counts as one"
        );
        assert_eq!(retry_after_secs(Duration::from_secs(10), 100, 1), 60);
        assert_eq!(retry_after_secs(Duration::MAX, usize::MAX, 1), 60);
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
}
