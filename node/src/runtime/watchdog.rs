//! Stops guests at their deadline, whatever they are doing.
//!
//! Fuel bounds a guest's CPU, but only roughly (one to two times its timeout), and a
//! loop of cheap host calls or of bulk memory operations burns little fuel for a long
//! time. The wall-clock deadline must therefore be enforced on the guest itself, not
//! only on the answer: wasmer's `Store::interrupter()` (feature
//! `experimental-host-interrupt`) signals the thread running the store, and the guest
//! traps with `HostInterrupt`. An interrupt that lands in a host call unwinds host code
//! (see [`HostWait`]), so the watchdog holds it while a guest waits in one. wasmer asks
//! embedders to repeat an interrupt until the run is seen to end, so the watchdog
//! repeats it every [`TICK`] until the run disarms it.
//!
//! One watchdog thread serves the whole node. It looks at the armed runs every [`TICK`]
//! rather than being woken for each: arming and disarming a run on the request path is
//! a map insert and remove under a lock, with no thread wake-up. A guest is therefore
//! stopped within [`TICK`] of its deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use wasmer::Interrupter;

/// How often the watchdog looks at the armed runs; an interrupt is repeated as often
/// until the guest has stopped.
pub const TICK: Duration = Duration::from_millis(10);

/// A guest waiting in a host call (asleep in `poll_oneoff`, or writing to a full
/// stream) while [`HostWait`] lives: the watchdog holds its interrupt meanwhile.
///
/// Why: wasmer 7.4 unwinds an interrupted guest whenever the signal finds the thread on
/// the guest's stack, and host calls run on that stack too. An interrupt landing in a
/// host call unwinds host code mid-way and leaks what it held (seen: a `RefCell` borrow
/// of wasmer's store context, which aborted the node at the next call). The waits end
/// by themselves at the deadline, and the next tick interrupts a guest that goes on.
/// Short host calls are not covered, so the window is narrowed, not closed: closing it
/// needs a deadline check in the compiled code instead of a signal.
pub struct HostWait<'a>(&'a AtomicBool);

impl<'a> HostWait<'a> {
    /// The guest behind `waiting` waits in a host call until this is dropped.
    pub fn begin(waiting: &'a AtomicBool) -> HostWait<'a> {
        waiting.store(true, Ordering::Release);
        HostWait(waiting)
    }
}

impl Drop for HostWait<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[derive(Default)]
struct Armed {
    /// (when to interrupt next, id) → whom, and whether it waits in a host call.
    due: BTreeMap<(Instant, u64), (Interrupter, Arc<AtomicBool>)>,
    next_id: u64,
}

/// The node's watchdog.
pub struct Watchdog {
    armed: Mutex<Armed>,
}

/// A run being watched; dropping it (the run ended) disarms it.
pub struct Watched {
    watchdog: Arc<Watchdog>,
    id: u64,
}

impl Drop for Watched {
    fn drop(&mut self) {
        let mut armed = self.watchdog.lock();
        armed.due.retain(|&(_, id), _| id != self.id);
    }
}

impl Watchdog {
    /// The node's watchdog, its thread started on first use.
    pub fn get() -> Arc<Watchdog> {
        static WATCHDOG: OnceLock<Arc<Watchdog>> = OnceLock::new();
        Arc::clone(WATCHDOG.get_or_init(|| {
            let watchdog = Arc::new(Watchdog {
                armed: Mutex::default(),
            });
            let watching = Arc::clone(&watchdog);
            std::thread::Builder::new()
                .name("edge-watchdog".into())
                .spawn(move || watching.watch())
                .expect("spawning the watchdog thread");
            watchdog
        }))
    }

    /// Interrupts the store behind `interrupter` once `deadline` has passed (within a
    /// [`TICK`]), and again every [`TICK`], until the returned guard is dropped; never
    /// while `waiting` says its guest waits in a host call ([`HostWait`]).
    pub fn arm(
        self: &Arc<Self>,
        deadline: Instant,
        interrupter: Interrupter,
        waiting: Arc<AtomicBool>,
    ) -> Watched {
        let mut armed = self.lock();
        let id = armed.next_id;
        armed.next_id += 1;
        armed.due.insert((deadline, id), (interrupter, waiting));
        drop(armed);
        Watched {
            watchdog: Arc::clone(self),
            id,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Armed> {
        self.armed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watch(&self) {
        loop {
            {
                let mut armed = self.lock();
                let now = Instant::now();
                let due: Vec<(Instant, u64)> = armed
                    .due
                    .range(..(now, u64::MAX))
                    .map(|(k, _)| *k)
                    .collect();
                for key in due {
                    if let Some((interrupter, waiting)) = armed.due.remove(&key) {
                        if !waiting.load(Ordering::Acquire) {
                            interrupter.interrupt();
                        }
                        armed
                            .due
                            .insert((now + TICK, key.1), (interrupter, waiting));
                    }
                }
            }
            std::thread::sleep(TICK);
        }
    }
}
