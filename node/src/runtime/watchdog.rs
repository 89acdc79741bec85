//! Stops guests at their deadline, whatever they are doing.
//!
//! Fuel bounds a guest's CPU, but only roughly (one to two times its timeout), and a
//! loop of cheap host calls or of bulk memory operations burns little fuel for a long
//! time. The wall-clock deadline must therefore be enforced on the guest itself, not
//! only on the answer: wasmer's `Store::interrupter()` (feature
//! `experimental-host-interrupt`) signals the thread running the store, and the guest
//! traps with `HostInterrupt` as soon as it runs wasm code again (an interrupt that
//! lands in a host function takes effect when it returns). wasmer asks embedders to
//! repeat an interrupt until the run is seen to end, so the watchdog repeats it every
//! [`TICK`] until the run disarms it.
//!
//! One watchdog thread serves the whole node. It looks at the armed runs every [`TICK`]
//! rather than being woken for each: arming and disarming a run on the request path is
//! a map insert and remove under a lock, with no thread wake-up. A guest is therefore
//! stopped within [`TICK`] of its deadline.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use wasmer::Interrupter;

/// How often the watchdog looks at the armed runs; an interrupt is repeated as often
/// until the guest has stopped.
pub const TICK: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Armed {
    /// (when to interrupt next, id) → whom.
    due: BTreeMap<(Instant, u64), Interrupter>,
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
    /// [`TICK`]), and again every [`TICK`], until the returned guard is dropped.
    pub fn arm(self: &Arc<Self>, deadline: Instant, interrupter: Interrupter) -> Watched {
        let mut armed = self.lock();
        let id = armed.next_id;
        armed.next_id += 1;
        armed.due.insert((deadline, id), interrupter);
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
                    if let Some(interrupter) = armed.due.remove(&key) {
                        interrupter.interrupt();
                        armed.due.insert((now + TICK, key.1), interrupter);
                    }
                }
            }
            std::thread::sleep(TICK);
        }
    }
}
