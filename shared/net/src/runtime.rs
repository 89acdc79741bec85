//! The async runtime a server's network work runs on: tokio's multi-threaded scheduler,
//! one thread per CPU, each thread put under the configured Linux scheduling policy as it
//! starts ([`SchedulingPolicy`]).
//!
//! Why a policy at all: on a node, every request crosses from a network thread to a
//! guest's worker thread and back, and each crossing wakes a thread. Under Linux's
//! default policy a woken network thread preempts whatever runs on its core, most often
//! a guest mid-run: about two preemptions of a worker and four wake-ups of a network
//! thread per request were counted on a loaded 2-core node. `SCHED_BATCH` keeps the
//! fair share of each thread and only gives up wake-up preemption, so a woken network
//! thread takes a free core or waits for the running thread's turn to end, and finds more
//! work to do at once when it runs.
//!
//! The crate's one `unsafe` module: `sched_setscheduler(2)` is a libc call.

#![allow(unsafe_code)]

use edge_shared::config::SchedulingPolicy;

/// A multi-threaded tokio runtime (IO and time enabled) whose threads run under
/// `scheduling`: its workers and its blocking pool; the calling thread keeps its own, and
/// so do the threads it starts (a node's guest workers). A thread whose policy cannot be
/// set logs a warning and runs under the default policy.
pub fn multi_thread(scheduling: SchedulingPolicy) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || {
            if let Err(e) = apply(scheduling) {
                tracing::warn!(?scheduling, error = %e, "cannot set the network thread's scheduling policy");
            }
        })
        .build()
}

/// Puts the calling thread under `scheduling`.
pub fn apply(scheduling: SchedulingPolicy) -> std::io::Result<()> {
    let policy = match scheduling {
        SchedulingPolicy::Batch => libc::SCHED_BATCH,
        SchedulingPolicy::Normal => libc::SCHED_OTHER,
    };
    // Both policies take priority 0; any user may switch between them.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread, and `param` is a valid sched_param that
    // outlives the call, which only reads it.
    let status = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling thread's policy, if it is one of the two edge sets.
pub fn current() -> Option<SchedulingPolicy> {
    // SAFETY: pid 0 is the calling thread; the call takes no pointer.
    match unsafe { libc::sched_getscheduler(0) } {
        libc::SCHED_BATCH => Some(SchedulingPolicy::Batch),
        libc::SCHED_OTHER => Some(SchedulingPolicy::Normal),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_threads_run_under_the_policy_and_others_do_not() {
        for (scheduling, expected) in [
            (SchedulingPolicy::Batch, Some(SchedulingPolicy::Batch)),
            (SchedulingPolicy::Normal, Some(SchedulingPolicy::Normal)),
        ] {
            let runtime = multi_thread(scheduling).unwrap();
            let (worker, blocking) = runtime.block_on(async {
                let worker = tokio::spawn(async { current() }).await.unwrap();
                let blocking = tokio::task::spawn_blocking(current).await.unwrap();
                (worker, blocking)
            });
            assert_eq!((worker, blocking), (expected, expected), "{scheduling:?}");
        }
        // The thread that built the runtimes keeps its own.
        assert_eq!(current(), Some(SchedulingPolicy::Normal));
        // A thread may go back to the default.
        std::thread::spawn(|| {
            apply(SchedulingPolicy::Batch).unwrap();
            apply(SchedulingPolicy::Normal).unwrap();
            assert_eq!(current(), Some(SchedulingPolicy::Normal));
        })
        .join()
        .unwrap();
    }
}
