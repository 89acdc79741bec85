//! Pools of pre-instantiated instances, one per warm deployment, refilled off the
//! request path.
//!
//! A request takes a ready instance (store, host functions and imports resolved, memory
//! allocated and initialized), runs it once and throws it away: no state survives from
//! one request to the next. wasmer stores do not change threads, so each worker thread
//! keeps its own ready instances ([`ReadyInstances`]) and makes new ones whenever it has
//! no request to run: as many as the function's recent peak concurrency
//! ([`PoolSizer`]) spread over the workers, within the node's memory budget. A function
//! idle for the pool's TTL has its instances dropped (scale to zero), while its compiled
//! module stays warm in the module cache.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use edge_shared::manifest::DeploymentId;

use crate::admission::Admitter;
use crate::runtime::invoke::{self, Prepared, Runnable};

/// How long a concurrency peak keeps counting towards a pool's size.
const PEAK_WINDOW: Duration = Duration::from_secs(10);

/// How many instances a pool should hold, from the function's recent concurrency.
///
/// The target is the highest concurrency seen in the current or the previous
/// 10-second window (at least one while the function is in use), capped at the pool's
/// maximum; zero once the function has been idle for the TTL.
#[derive(Debug)]
pub struct PoolSizer {
    max: usize,
    idle_ttl: Duration,
    last_request: Instant,
    window_start: Instant,
    peak: usize,
    previous_peak: usize,
}

impl PoolSizer {
    /// A sizer for a function deployed at `now`: one instance until it is idle for
    /// `idle_ttl`.
    pub fn new(max: usize, idle_ttl: Duration, now: Instant) -> PoolSizer {
        PoolSizer {
            max,
            idle_ttl,
            last_request: now,
            window_start: now,
            peak: 1,
            previous_peak: 0,
        }
    }

    /// A request started at `now` with `in_flight` requests of the function running.
    pub fn record(&mut self, in_flight: usize, now: Instant) {
        self.roll(now);
        self.last_request = now;
        self.peak = self.peak.max(in_flight);
    }

    /// The number of instances to hold at `now`.
    pub fn target(&mut self, now: Instant) -> usize {
        self.roll(now);
        if self.max == 0 || now.saturating_duration_since(self.last_request) >= self.idle_ttl {
            return 0;
        }
        self.peak.max(self.previous_peak).clamp(1, self.max)
    }

    /// How long since the last request, at `now`.
    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_request)
    }

    fn roll(&mut self, now: Instant) {
        while now.saturating_duration_since(self.window_start) >= PEAK_WINDOW {
            self.previous_peak = self.peak;
            self.peak = 0;
            self.window_start += PEAK_WINDOW;
            if now.saturating_duration_since(self.window_start) >= PEAK_WINDOW {
                // Idle across whole windows: nothing from them counts.
                self.previous_peak = 0;
                let windows = now.saturating_duration_since(self.window_start).as_nanos()
                    / PEAK_WINDOW.as_nanos();
                self.window_start += PEAK_WINDOW * u32::try_from(windows).unwrap_or(u32::MAX);
            }
        }
    }
}

/// Counters of one pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Requests that found a ready instance.
    pub hits: AtomicU64,
    /// Requests that instantiated on their own path.
    pub misses: AtomicU64,
    /// Instances made ahead of requests.
    pub refills: AtomicU64,
}

/// One warm deployment's pool: what its instances run, how many to keep, counters.
/// The instances themselves live on the worker threads ([`ReadyInstances`]): a wasmer
/// store never changes threads.
pub struct InstancePool {
    deployment: DeploymentId,
    runnable: Runnable,
    sizer: Mutex<PoolSizer>,
    workers: usize,
    ready: AtomicUsize,
    /// Its counters.
    pub stats: PoolStats,
}

impl InstancePool {
    /// A pool of `runnable`'s instances spread over `workers` worker threads.
    pub fn new(
        deployment: DeploymentId,
        runnable: Runnable,
        sizer: PoolSizer,
        workers: usize,
    ) -> InstancePool {
        InstancePool {
            deployment,
            runnable,
            sizer: Mutex::new(sizer),
            workers: workers.max(1),
            ready: AtomicUsize::new(0),
            stats: PoolStats::default(),
        }
    }

    /// The function these instances run.
    pub fn runnable(&self) -> &Runnable {
        &self.runnable
    }

    /// Notes a request starting with `in_flight` requests of the function running.
    pub fn record(&self, in_flight: usize) {
        lock(&self.sizer).record(in_flight, Instant::now());
    }

    /// How long since its last request (or its deploy).
    pub fn idle_for(&self) -> Duration {
        lock(&self.sizer).idle_for(Instant::now())
    }

    /// Ready instances now, over all worker threads.
    pub fn ready(&self) -> usize {
        self.ready.load(Ordering::Relaxed)
    }

    /// Instances each worker thread should hold now.
    fn per_worker_target(&self) -> usize {
        lock(&self.sizer)
            .target(Instant::now())
            .div_ceil(self.workers)
    }
}

/// One worker thread's ready instances of one pool.
struct Local {
    pool: Weak<InstancePool>,
    ready: Vec<(Prepared, u64)>,
    broken: bool,
}

/// The ready instances a worker thread holds, by pool, with their memory reserved
/// from the node's budget.
pub struct ReadyInstances {
    admitter: Arc<Admitter<DeploymentId>>,
    pools: Vec<Local>,
}

impl ReadyInstances {
    /// None yet; reservations go to `admitter`.
    pub fn new(admitter: Arc<Admitter<DeploymentId>>) -> ReadyInstances {
        ReadyInstances {
            admitter,
            pools: Vec::new(),
        }
    }

    /// A ready instance of `pool`, if this thread holds one; its reservation is handed
    /// back. Either way the pool is known here from now on, and refilled when idle.
    pub fn take(&mut self, pool: &Arc<InstancePool>) -> Option<Prepared> {
        let local = match self
            .pools
            .iter()
            .position(|l| l.pool.as_ptr() == Arc::as_ptr(pool))
        {
            Some(i) => &mut self.pools[i],
            None => {
                self.pools.push(Local {
                    pool: Arc::downgrade(pool),
                    ready: Vec::new(),
                    broken: false,
                });
                self.pools.last_mut().expect("just pushed")
            }
        };
        match local.ready.pop() {
            Some((prepared, bytes)) => {
                self.admitter.release_idle(bytes);
                pool.ready.fetch_sub(1, Ordering::Relaxed);
                pool.stats.hits.fetch_add(1, Ordering::Relaxed);
                Some(prepared)
            }
            None => {
                pool.stats.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Knows `pool` from now on (to fill it when idle).
    pub fn register(&mut self, pool: &Arc<InstancePool>) {
        if !self
            .pools
            .iter()
            .any(|l| l.pool.as_ptr() == Arc::as_ptr(pool))
        {
            self.pools.push(Local {
                pool: Arc::downgrade(pool),
                ready: Vec::new(),
                broken: false,
            });
        }
    }

    /// Does one step towards every pool's target: makes one instance, drops one over
    /// the target, or forgets a pool whose deployment turned cold. False when there is
    /// nothing to do. Blocks: the worker calls it only when it has no request to run.
    pub fn refill_one(&mut self) -> bool {
        for i in 0..self.pools.len() {
            let local = &mut self.pools[i];
            let Some(pool) = local.pool.upgrade() else {
                let gone = self.pools.swap_remove(i);
                for (spent, bytes) in gone.ready {
                    drop(spent);
                    self.admitter.release_idle(bytes);
                }
                return true;
            };
            let target = pool.per_worker_target();
            if local.ready.len() > target {
                if let Some((spent, bytes)) = local.ready.pop() {
                    drop(spent);
                    self.admitter.release_idle(bytes);
                    pool.ready.fetch_sub(1, Ordering::Relaxed);
                }
                return true;
            }
            if local.ready.len() == target || local.broken {
                continue;
            }
            let prepared = match invoke::prepare(&pool.runnable) {
                Ok(prepared) => prepared,
                Err(e) => {
                    tracing::warn!(deployment = %pool.deployment, error = %e, "cannot pre-instantiate");
                    local.broken = true;
                    continue;
                }
            };
            let bytes = prepared.memory_bytes();
            if !self.admitter.reserve_idle(bytes) {
                continue;
            }
            local.ready.push((prepared, bytes));
            pool.ready.fetch_add(1, Ordering::Relaxed);
            pool.stats.refills.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

impl Drop for ReadyInstances {
    fn drop(&mut self) {
        for local in self.pools.drain(..) {
            for (spent, bytes) in local.ready {
                drop(spent);
                self.admitter.release_idle(bytes);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizer_follows_recent_peak_concurrency_and_scales_to_zero() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut sizer = PoolSizer::new(8, Duration::from_secs(60), t0);
        // Freshly deployed: one instance ready for the first request.
        assert_eq!(sizer.target(t0), 1);
        sizer.record(5, s(1));
        assert_eq!(sizer.target(s(2)), 5);
        // More than the maximum is capped.
        sizer.record(20, s(3));
        assert_eq!(sizer.target(s(3)), 8);
        // The peak counts for the current and the next window, then decays.
        sizer.record(2, s(12));
        assert_eq!(sizer.target(s(15)), 8);
        sizer.record(2, s(25));
        assert_eq!(sizer.target(s(25)), 2);
        // Traffic stops: at least one instance until the TTL, then none.
        assert_eq!(sizer.target(s(80)), 1);
        assert_eq!(sizer.target(s(85)), 0);
        // Traffic again.
        sizer.record(3, s(200));
        assert_eq!(sizer.target(s(200)), 3);
    }

    #[test]
    fn a_pool_of_size_zero_stays_empty() {
        let t0 = Instant::now();
        let mut sizer = PoolSizer::new(0, Duration::from_secs(60), t0);
        sizer.record(4, t0);
        assert_eq!(sizer.target(t0), 0);
    }
}
