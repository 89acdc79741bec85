//! Stops guests at their deadline, whatever they are doing.
//!
//! Fuel bounds a guest's CPU, but only roughly (one to two times its timeout), and a
//! loop of cheap host calls or of bulk memory operations burns little fuel for a long
//! time. The wall-clock deadline must therefore be enforced on the guest itself, not
//! only on the answer.
//!
//! How: at the deadline the watchdog empties the guest's fuel. The metering compiled
//! into every guest checks its remaining fuel at each branch, call and block end, and
//! traps there on its own once none is left, so a guest is stopped only at a point of
//! its own code where stopping is safe. Host code is never disturbed: a guest in a host
//! call finishes it (the long waits, `poll_oneoff`'s sleep and a full stream, end at the
//! deadline themselves) and traps at its next check.
//!
//! Why not wasmer's `Store::interrupter()` (feature `experimental-host-interrupt`): it
//! signals the thread, and the handler unwinds the guest wherever the signal finds the
//! thread on the guest's stack. wasmer's own glue runs there too, right after each host
//! call returns, holding a borrow of its thread-local store context; an interrupt
//! landing in that window leaked the borrow, and the next call on that worker thread
//! panicked inside an `extern "C"` frame and aborted the node. A guest making short
//! host calls in a loop hit it within a few hundred deadlines
//! (`guests_in_short_host_calls_at_their_deadline_are_stopped_cleanly`).
//!
//! The guest's own metering writes its fuel back after each check, so an emptying that
//! lands between its read and its write is lost; the watchdog therefore empties the fuel
//! again every [`TICK`] until the run ends.
//!
//! One watchdog thread serves the whole node. It looks at the watched runs every
//! [`TICK`] rather than being woken for each: watching a run on the request path is a
//! map insert and remove under a lock, with no thread wake-up. A guest is therefore
//! stopped within [`TICK`] of its deadline.
//!
//! The crate's third `unsafe` module (with [`super::engine`] and [`super::memories`]):
//! the watchdog writes a guest's fuel global through a pointer, from its own thread.
//! The invariants:
//! - **Lifetime.** A [`FuelGauge`] points into an instance's globals, which live as long
//!   as the instance's store; the gauge is kept beside that store, and the watchdog
//!   holds its pointer only while [`Watchdog::watch`] runs, which borrows the gauge and
//!   removes the pointer (under the lock the watchdog writes under) before returning,
//!   on unwinding too.
//! - **Atomicity.** The global is an aligned `i64` (wasmer aligns every global
//!   definition to 16 bytes). The watchdog writes it with an atomic store; the guest's
//!   compiled code reads and writes it with plain aligned 8-byte moves, which the
//!   hardware performs whole, so the guest sees either its own value or zero.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use wasmer::sys::vm::VMExtern;
use wasmer::{AsStoreMut, Extern, Global, Store};

/// How often the watchdog looks at the watched runs; a stopped guest's fuel is emptied
/// again as often until it has stopped.
pub const TICK: Duration = Duration::from_millis(10);

/// Where one instance keeps its remaining fuel, for the watchdog to empty.
pub struct FuelGauge {
    remaining: NonNull<u64>,
}

// SAFETY: the gauge is only a location; it is written only atomically (see the module's
// invariants), from whichever thread.
unsafe impl Send for FuelGauge {}

impl FuelGauge {
    /// Where `fuel`, the remaining-fuel global ([`super::metering::REMAINING_POINTS`]) of
    /// an instance in `store`, lives; `None` if it is not a global of `store`.
    pub fn of(store: &mut Store, fuel: &Global) -> Option<FuelGauge> {
        let VMExtern::Global(handle) = Extern::Global(fuel.clone()).to_vm_extern().unwrap_sys()
        else {
            return None;
        };
        let definition = handle.get(store.objects_mut().as_sys()).vmglobal();
        Some(FuelGauge {
            remaining: definition.cast(),
        })
    }
}

/// Leaves the guest whose fuel is at `remaining` no fuel, so that it traps at its next
/// metering check; returns the fuel it had left.
///
/// # Safety
/// The instance `remaining` belongs to must still exist.
unsafe fn empty(remaining: NonNull<u64>) -> u64 {
    // SAFETY: the caller keeps the instance alive; the location is an aligned i64 (the
    // module's invariants).
    unsafe { AtomicU64::from_ptr(remaining.as_ptr()) }.swap(0, Ordering::Relaxed)
}

/// A watched run.
struct Run {
    /// When to empty its fuel next.
    due: Instant,
    gauge: NonNull<u64>,
    /// Once its deadline has passed: the fuel it had left when it was first emptied.
    stopped: Option<u64>,
}

// SAFETY: a run's gauge is written only atomically, and only while its run is watched.
unsafe impl Send for Run {}

#[derive(Default)]
struct Watched {
    runs: BTreeMap<u64, Run>,
    next_id: u64,
}

/// The node's watchdog.
pub struct Watchdog {
    watched: Mutex<Watched>,
}

/// Removes a run from the watchdog when [`Watchdog::watch`] returns or unwinds.
struct Unwatch<'a> {
    watchdog: &'a Watchdog,
    id: u64,
}

impl Unwatch<'_> {
    /// Removes the run (if still watched); returns the fuel it had left if its
    /// deadline stopped it.
    fn remove(&self) -> Option<u64> {
        let run = self.watchdog.lock().runs.remove(&self.id);
        run.and_then(|r| r.stopped)
    }
}

impl Drop for Unwatch<'_> {
    fn drop(&mut self) {
        self.remove();
    }
}

impl Watchdog {
    /// The node's watchdog, its thread started on first use.
    pub fn get() -> Arc<Watchdog> {
        static WATCHDOG: OnceLock<Arc<Watchdog>> = OnceLock::new();
        Arc::clone(WATCHDOG.get_or_init(|| {
            let watchdog = Arc::new(Watchdog {
                watched: Mutex::default(),
            });
            let watching = Arc::clone(&watchdog);
            std::thread::Builder::new()
                .name("edge-watchdog".into())
                .spawn(move || watching.keep_watch())
                .expect("spawning the watchdog thread");
            watchdog
        }))
    }

    /// Runs `run`, the guest whose fuel `gauge` holds, emptying its fuel once
    /// `deadline` has passed (within a [`TICK`]) and again every [`TICK`] until `run`
    /// returns. Returns its result and, if the deadline stopped it, the fuel it had
    /// left at the deadline.
    pub fn watch<R>(
        &self,
        deadline: Instant,
        gauge: &FuelGauge,
        run: impl FnOnce() -> R,
    ) -> (R, Option<u64>) {
        let mut watched = self.lock();
        let id = watched.next_id;
        watched.next_id += 1;
        watched.runs.insert(
            id,
            Run {
                due: deadline,
                gauge: gauge.remaining,
                stopped: None,
            },
        );
        drop(watched);
        let unwatch = Unwatch { watchdog: self, id };
        let result = run();
        // Removing the run before `gauge`'s borrow ends is what keeps the pointer valid
        // (the module's invariants); the guard does it on unwinding too.
        let stopped = unwatch.remove();
        (result, stopped)
    }

    fn lock(&self) -> MutexGuard<'_, Watched> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keep_watch(&self) {
        loop {
            {
                let mut watched = self.lock();
                let now = Instant::now();
                for run in watched.runs.values_mut().filter(|r| r.due <= now) {
                    // SAFETY: a run is in the map only while `watch` borrows its gauge,
                    // whose instance lives at least as long; it is removed under this
                    // lock (the module's invariants).
                    let left = unsafe { empty(run.gauge) };
                    run.stopped.get_or_insert(left);
                    run.due = now + TICK;
                }
            }
            std::thread::sleep(TICK);
        }
    }
}
