//! The bounded pool of threads that run guest code, never on the async runtime's threads.
//!
//! A request first takes one of the node's execution slots (waiting up to the queue
//! timeout, in FIFO order: tokio's semaphore is fair), then its job runs on a worker
//! thread and the slot is returned when the job ends, however it ends.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, oneshot};

type Job = Box<dyn FnOnce() + Send>;

/// Why a job did not produce its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// No slot came free within the queue timeout.
    #[error("no execution slot free within the queue timeout")]
    Overloaded,
    /// The job panicked (a bug in the host, never the guest's doing).
    #[error("the job panicked")]
    Panicked,
}

/// Worker threads plus the slots that admit work to them.
pub struct WorkerPool {
    jobs: mpsc::Sender<Job>,
    slots: Arc<Semaphore>,
    size: usize,
}

impl WorkerPool {
    /// Starts `size` worker threads.
    pub fn new(size: usize) -> WorkerPool {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..size {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("edge-worker-{i}"))
                .spawn(move || {
                    loop {
                        let job = queue.lock().map(|q| q.recv());
                        match job {
                            Ok(Ok(job)) => job(),
                            _ => break,
                        }
                    }
                })
                .expect("spawning a worker thread");
        }
        WorkerPool {
            jobs,
            slots: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// Number of slots (and threads).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Slots taken right now.
    pub fn busy(&self) -> usize {
        self.size - self.slots.available_permits()
    }

    /// Runs `job` on a worker once a slot is free, waiting at most `queue_timeout`.
    /// Returns its result and the time spent waiting for the slot.
    pub async fn run<R: Send + 'static>(
        &self,
        queue_timeout: Duration,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Result<(R, Duration), PoolError> {
        let queued = Instant::now();
        let permit = tokio::time::timeout(queue_timeout, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| PoolError::Overloaded)?
            .expect("the slot semaphore is never closed");
        let waited = queued.elapsed();
        let (done, result) = oneshot::channel();
        let boxed: Job = Box::new(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(job));
            drop(permit);
            let _ = done.send(outcome);
        });
        self.jobs.send(boxed).map_err(|_| PoolError::Panicked)?;
        match result.await {
            Ok(Ok(value)) => Ok((value, waited)),
            _ => Err(PoolError::Panicked),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_off_the_runtime_and_refuses_when_full() {
        let pool = Arc::new(WorkerPool::new(1));
        let (name, _) = pool
            .run(Duration::from_secs(5), || {
                std::thread::current().name().map(String::from)
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("edge-worker-0"));

        let (release, hold) = std::sync::mpsc::channel::<()>();
        let busy = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                pool.run(Duration::from_secs(5), move || hold.recv().ok())
                    .await
            })
        };
        while pool.busy() == 0 {
            tokio::task::yield_now().await;
        }
        let refused = pool.run(Duration::from_millis(10), || ()).await;
        assert_eq!(refused.unwrap_err(), PoolError::Overloaded);
        release.send(()).unwrap();
        assert!(busy.await.unwrap().is_ok());
        assert_eq!(
            pool.run(Duration::from_secs(5), || panic!("bug"))
                .await
                .unwrap_err(),
            PoolError::Panicked
        );
        assert_eq!(pool.run(Duration::from_secs(5), || 7).await.unwrap().0, 7);
    }
}
