//! The bounded pool of threads that run guest code, never on the async runtime's threads.
//!
//! Admission ([`crate::admission`]) decides what may run; a job then runs on one of the
//! worker threads with that thread's ready instances ([`ReadyInstances`]). A worker
//! answers first and only then drops what the job left behind (the spent instance), and
//! when no job waits it makes ready instances for the next requests: all of that work
//! stays off the request path.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use edge_shared::config::SchedulingPolicy;
use edge_shared::manifest::DeploymentId;
use tokio::sync::oneshot;

use crate::admission::Admitter;
use crate::pool::{InstancePool, ReadyInstances, SCAN_EVERY};

type Job = Box<dyn FnOnce(&mut ReadyInstances) + Send>;

/// The job panicked (a bug in the host, never the guest's doing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the job panicked")]
pub struct Panicked;

/// The result of a job [`WorkerPool::submit`] queued.
pub struct Submitted<R>(oneshot::Receiver<Result<R, Panicked>>);

impl<R> std::future::Future for Submitted<R> {
    type Output = Result<R, Panicked>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Panicked)))
    }
}

/// Worker threads fed from one queue of jobs, each with its own queue of new pools.
pub struct WorkerPool {
    jobs: Sender<Job>,
    /// One per worker: a new pool must reach every worker, not whichever is free.
    announcements: Vec<Sender<Arc<InstancePool>>>,
}

impl WorkerPool {
    /// Starts `size` worker threads whose ready instances reserve memory from
    /// `admitter`; they stop when the pool is dropped.
    pub fn new(size: usize, admitter: &Arc<Admitter<DeploymentId>>) -> WorkerPool {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let mut announcements = Vec::with_capacity(size);
        for i in 0..size {
            let queue = queue.clone();
            let (announce, pools) = crossbeam_channel::unbounded();
            announcements.push(announce);
            let admitter = Arc::clone(admitter);
            std::thread::Builder::new()
                .name(format!("edge-worker-{i}"))
                .spawn(move || {
                    // Guests run under Linux's default policy, whichever thread made
                    // the pool (a thread inherits its maker's, and the network's are
                    // `SCHED_BATCH`): they are what the network must not preempt.
                    if let Err(e) = edge_net::runtime::apply(SchedulingPolicy::Normal) {
                        tracing::warn!(error = %e, "cannot set a worker's scheduling policy");
                    }
                    work(&queue, &pools, ReadyInstances::new(admitter))
                })
                .expect("spawning a worker thread");
        }
        WorkerPool {
            jobs,
            announcements,
        }
    }

    /// Number of threads.
    pub fn size(&self) -> usize {
        self.announcements.len()
    }

    /// Runs `job` on a worker thread. The job returns its result and its leftovers;
    /// the result is delivered first, the leftovers dropped after, on the worker.
    pub async fn run<R: Send + 'static, L: 'static>(
        &self,
        job: impl FnOnce(&mut ReadyInstances) -> (R, L) + Send + 'static,
    ) -> Result<R, Panicked> {
        self.submit(job).await
    }

    /// Queues `job` as [`WorkerPool::run`] does; its result comes from the returned
    /// future, which owns nothing of the pool.
    pub fn submit<R: Send + 'static, L: 'static>(
        &self,
        job: impl FnOnce(&mut ReadyInstances) -> (R, L) + Send + 'static,
    ) -> Submitted<R> {
        let (done, result) = oneshot::channel();
        let boxed: Job = Box::new(move |ready| {
            match std::panic::catch_unwind(AssertUnwindSafe(|| job(ready))) {
                Ok((value, leftovers)) => {
                    let _ = done.send(Ok(value));
                    drop(leftovers);
                }
                Err(_) => {
                    let _ = done.send(Err(Panicked));
                }
            }
        });
        // A pool that stopped drops the job, and with it `done`: the result is then
        // `Panicked`.
        let _ = self.jobs.send(boxed);
        Submitted(result)
    }

    /// Tells the workers about a new pool, so that idle ones fill it before its first
    /// request.
    pub fn announce(&self, pool: &Arc<InstancePool>) {
        for worker in &self.announcements {
            let _ = worker.send(Arc::clone(pool));
        }
    }
}

/// A worker's loop: jobs first; when none waits, the pools announced to it, then one
/// step of refilling; when there is nothing to refill either, sleep until a job comes or
/// [`SCAN_EVERY`] passes (when it looks at all its pools: how idle ones get emptied).
fn work(queue: &Receiver<Job>, pools: &Receiver<Arc<InstancePool>>, mut ready: ReadyInstances) {
    loop {
        match queue.try_recv() {
            Ok(job) => {
                job(&mut ready);
                continue;
            }
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {}
        }
        if let Ok(pool) = pools.try_recv() {
            ready.register(&pool);
            continue;
        }
        if ready.refill_one() {
            continue;
        }
        match queue.recv_timeout(SCAN_EVERY) {
            Ok(job) => job(&mut ready),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_off_the_runtime_and_drops_leftovers_after_answering() {
        let pool = WorkerPool::new(1, &Admitter::new(1, 1 << 30));
        let name = pool
            .run(|_| (std::thread::current().name().map(String::from), ()))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("edge-worker-0"));

        // The leftovers are dropped after the answer went out, on the worker thread.
        struct Leftover(std::sync::mpsc::Sender<Option<String>>);
        impl Drop for Leftover {
            fn drop(&mut self) {
                let _ = self.0.send(std::thread::current().name().map(String::from));
            }
        }
        let (dropped, seen) = std::sync::mpsc::channel();
        assert_eq!(pool.run(move |_| (7, Leftover(dropped))).await.unwrap(), 7);
        assert_eq!(seen.recv().unwrap().as_deref(), Some("edge-worker-0"));

        assert_eq!(
            pool.run(|_| -> ((), ()) { panic!("bug") })
                .await
                .unwrap_err(),
            Panicked
        );
        assert_eq!(pool.run(|_| (8, ())).await.unwrap(), 8);
    }

    #[tokio::test]
    async fn guests_run_under_the_default_policy_whatever_thread_made_the_pool() {
        // Made on a network thread (SCHED_BATCH), whose policy a thread inherits.
        let pool = std::thread::spawn(|| {
            edge_net::runtime::apply(SchedulingPolicy::Batch).unwrap();
            assert_eq!(edge_net::runtime::current(), Some(SchedulingPolicy::Batch));
            WorkerPool::new(1, &Admitter::new(1, 1 << 30))
        })
        .join()
        .unwrap();
        let policy = pool.run(|_| (edge_net::runtime::current(), ()));
        assert_eq!(policy.await.unwrap(), Some(SchedulingPolicy::Normal));
    }
}
