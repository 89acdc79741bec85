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

use std::collections::{HashMap, VecDeque};
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
    /// In [`ReadyInstances::due`].
    due: bool,
}

/// Identifies a pool on a worker thread: its address, which stays its own while the
/// thread holds a [`Weak`] to it.
type PoolKey = usize;

fn key(pool: &Arc<InstancePool>) -> PoolKey {
    Arc::as_ptr(pool) as PoolKey
}

/// The ready instances a worker thread holds, by pool, with their memory reserved
/// from the node's budget.
///
/// Refilling costs the same whatever the number of pools: a pool that served a request
/// (or was announced) is due for a look, and every pool is looked at once per
/// [`SCAN_EVERY`] for the targets that moved on their own (a peak passing, the TTL).
pub struct ReadyInstances {
    admitter: Arc<Admitter<DeploymentId>>,
    pools: HashMap<PoolKey, Local>,
    /// Pools to look at, in turn.
    due: VecDeque<PoolKey>,
    last_scan: Instant,
}

/// How often a worker looks at all its pools.
pub const SCAN_EVERY: Duration = Duration::from_secs(1);

/// What one look at a pool did.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Made, dropped or forgot something.
    Worked,
    /// Nothing to do there.
    Idle,
}

impl ReadyInstances {
    /// None yet; reservations go to `admitter`.
    pub fn new(admitter: Arc<Admitter<DeploymentId>>) -> ReadyInstances {
        ReadyInstances {
            admitter,
            pools: HashMap::new(),
            due: VecDeque::new(),
            last_scan: Instant::now(),
        }
    }

    /// A ready instance of `pool`, if this thread holds one; its reservation is handed
    /// back. Either way the pool is known here from now on, and due for a refill.
    pub fn take(&mut self, pool: &Arc<InstancePool>) -> Option<Prepared> {
        let key = self.know(pool);
        let local = self.pools.get_mut(&key).expect("known now");
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

    /// Knows `pool` from now on, and looks at it next time it is idle.
    pub fn register(&mut self, pool: &Arc<InstancePool>) {
        self.know(pool);
    }

    /// Knows `pool` and makes it due; its key.
    fn know(&mut self, pool: &Arc<InstancePool>) -> PoolKey {
        let key = key(pool);
        let local = self.pools.entry(key).or_insert_with(|| Local {
            pool: Arc::downgrade(pool),
            ready: Vec::new(),
            broken: false,
            due: false,
        });
        if !local.due {
            local.due = true;
            self.due.push_back(key);
        }
        key
    }

    /// Does one step towards the pools' targets: makes one instance, drops one over the
    /// target, or forgets a pool whose deployment turned cold. False when there is
    /// nothing to do. Blocks: the worker calls it only when it has no request to run.
    pub fn refill_one(&mut self) -> bool {
        if self.last_scan.elapsed() >= SCAN_EVERY {
            self.last_scan = Instant::now();
            for (key, local) in &mut self.pools {
                if !local.due {
                    local.due = true;
                    self.due.push_back(*key);
                }
            }
        }
        while let Some(key) = self.due.pop_front() {
            let (step, still_due) = self.step(key);
            if still_due {
                self.due.push_back(key);
            } else if let Some(local) = self.pools.get_mut(&key) {
                local.due = false;
            }
            if step == Step::Worked {
                return true;
            }
        }
        false
    }

    /// Pools waiting for a look.
    #[cfg(test)]
    fn due_count(&self) -> usize {
        self.due.len()
    }

    /// One step for one pool, and whether it is still due after it.
    fn step(&mut self, key: PoolKey) -> (Step, bool) {
        let local = self.pools.get_mut(&key).expect("a due pool is known");
        let Some(pool) = local.pool.upgrade() else {
            let gone = self.pools.remove(&key).expect("known");
            for (spent, bytes) in gone.ready {
                drop(spent);
                self.admitter.release_idle(bytes);
            }
            return (Step::Worked, false);
        };
        let target = pool.per_worker_target();
        if local.ready.len() > target {
            if let Some((spent, bytes)) = local.ready.pop() {
                drop(spent);
                self.admitter.release_idle(bytes);
                pool.ready.fetch_sub(1, Ordering::Relaxed);
            }
            return (Step::Worked, local.ready.len() > target);
        }
        if local.ready.len() == target || local.broken {
            return (Step::Idle, false);
        }
        let prepared = match invoke::prepare(&pool.runnable) {
            Ok(prepared) => prepared,
            Err(e) => {
                tracing::warn!(deployment = %pool.deployment, error = %e, "cannot pre-instantiate");
                local.broken = true;
                return (Step::Idle, false);
            }
        };
        let bytes = prepared.memory_bytes();
        if !self.admitter.reserve_idle(bytes) {
            return (Step::Idle, false);
        }
        local.ready.push((prepared, bytes));
        pool.ready.fetch_add(1, Ordering::Relaxed);
        pool.stats.refills.fetch_add(1, Ordering::Relaxed);
        (Step::Worked, local.ready.len() < target)
    }
}

impl Drop for ReadyInstances {
    fn drop(&mut self) {
        for (_, local) in self.pools.drain() {
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

    /// `count` pools of one small module, each wanting one instance per worker.
    fn pools(count: usize) -> Vec<Arc<InstancePool>> {
        use crate::runtime::{cache::ModuleCache, memories::MemoryPool};
        use edge_shared::manifest::ContentId;
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::open(dir.path(), 64 << 20, 1000, MemoryPool::new(0, 0)).unwrap();
        let wasm =
            wasmer::wat2wasm(b"(module (memory (export \"memory\") 1) (func (export \"_start\")))")
                .unwrap()
                .into_owned();
        let id = ContentId::of(&wasm);
        cache.store_blob(&id, &wasm).unwrap();
        let runnable = cache.load("f", &id, 16).unwrap().runnable;
        (0..count)
            .map(|i| {
                let deployment = DeploymentId::parse(&format!("f{i}@{i:016x}")).unwrap();
                let sizer = PoolSizer::new(1, Duration::from_secs(60), Instant::now());
                Arc::new(InstancePool::new(deployment, runnable.clone(), sizer, 1))
            })
            .collect()
    }

    #[test]
    fn a_worker_refills_what_served_without_looking_at_every_pool() {
        let pools = pools(200);
        let mut ready = ReadyInstances::new(Admitter::new(1, 1 << 30));
        for pool in &pools {
            ready.register(pool);
        }
        let mut steps = 0;
        while ready.refill_one() {
            steps += 1;
        }
        assert_eq!(steps, 200, "one instance made per pool");
        assert!(pools.iter().all(|p| p.ready() == 1));

        // A request takes pool 7's instance: refilling it is one step, and then the
        // worker has nothing to look at (not the 199 pools still full).
        assert!(ready.take(&pools[7]).is_some());
        assert_eq!(ready.due_count(), 1);
        assert!(ready.refill_one());
        assert_eq!(pools[7].ready(), 1);
        assert_eq!(ready.due_count(), 0);
        assert!(!ready.refill_one());

        // A miss counts, and is refilled the same way.
        assert!(ready.take(&pools[9]).is_some());
        assert!(ready.take(&pools[9]).is_none());
        assert_eq!(pools[9].stats.misses.load(Ordering::Relaxed), 1);
        assert!(ready.refill_one());
        assert!(!ready.refill_one());
        assert_eq!(pools[9].ready(), 1);

        // A pool whose deployment went away is forgotten at the next look.
        drop(pools);
        std::thread::sleep(SCAN_EVERY);
        let mut steps = 0;
        while ready.refill_one() {
            steps += 1;
        }
        assert_eq!(steps, 200, "every pool forgotten with its instance");
        assert_eq!(ready.pools.len(), 0);
    }

    #[test]
    fn a_pool_of_size_zero_stays_empty() {
        let t0 = Instant::now();
        let mut sizer = PoolSizer::new(0, Duration::from_secs(60), t0);
        sizer.record(4, t0);
        assert_eq!(sizer.target(t0), 0);
    }
}
