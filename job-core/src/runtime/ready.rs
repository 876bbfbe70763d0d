//! The in-memory ready queue: a lock-free unbounded queue of admitted jobs and a
//! [`Notify`](tokio::sync::Notify) for idle workers.
//!
//! It replaces a multi-consumer channel whose every send took the lock of its listener list
//! (which idle workers take too, to register and unregister): here a send with no worker
//! waiting costs one compare-and-swap on the notifier, and a worker registers only when the
//! queue is still empty after it has looked twice.

use concurrent_queue::{ConcurrentQueue, PopError};
use tokio::sync::Notify;

use super::Envelope;

/// The largest capacity whose queue is a ring allocated at start (48 bytes a slot: 12 MiB at
/// most). The unbounded queue allocates a block every 31 jobs, which makes glibc's malloc
/// consolidate its fast bins each time.
const RING_LIMIT: usize = 1 << 18;

/// Why [`ReadyQueue::try_pop`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Empty {
    /// Nothing queued right now.
    Now,
    /// Closed and drained: nothing will come.
    ForGood,
}

pub(crate) struct ReadyQueue {
    queue: ConcurrentQueue<Envelope>,
    /// One permit per push (coalesced while nobody waits); every close wakes all waiters.
    notify: Notify,
}

impl ReadyQueue {
    /// A queue for at most `capacity` jobs (the capacity permits bound what is queued): a
    /// ring allocated once up to [`RING_LIMIT`] slots, beyond that a list of blocks that
    /// grows and shrinks with the queue.
    pub(crate) fn new(capacity: usize) -> Self {
        let queue = if capacity <= RING_LIMIT {
            ConcurrentQueue::bounded(capacity.max(1))
        } else {
            ConcurrentQueue::unbounded()
        };
        Self {
            queue,
            notify: Notify::new(),
        }
    }

    /// Queues a job; gives it back once the queue is closed.
    pub(crate) fn push(&self, envelope: Envelope) -> Result<(), Envelope> {
        match self.queue.push(envelope) {
            Ok(()) => {
                self.notify.notify_one();
                Ok(())
            }
            // Full cannot happen (the permits bound the queue), but gives the job back too.
            Err(e) => Err(e.into_inner()),
        }
    }

    /// The next job, if one is queued. After [`close`](Self::close) the jobs still queued
    /// come out before [`Empty::ForGood`].
    pub(crate) fn try_pop(&self) -> Result<Envelope, Empty> {
        match self.queue.pop() {
            Ok(envelope) => Ok(envelope),
            Err(PopError::Empty) => Err(Empty::Now),
            Err(PopError::Closed) => Err(Empty::ForGood),
        }
    }

    /// Waits for the next job; `None` once the queue is closed and drained.
    ///
    /// Cancel safe: a job is taken only in the poll that returns it.
    pub(crate) async fn pop(&self) -> Option<Envelope> {
        loop {
            match self.try_pop() {
                Ok(envelope) => return Some(envelope),
                Err(Empty::ForGood) => return None,
                Err(Empty::Now) => {}
            }
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered from here on: a push or close after this check wakes us.
            notified.as_mut().enable();
            match self.try_pop() {
                Ok(envelope) => return Some(envelope),
                Err(Empty::ForGood) => return None,
                Err(Empty::Now) => notified.await,
            }
        }
    }

    /// Refuses further pushes and wakes every waiting worker.
    pub(crate) fn close(&self) {
        self.queue.close();
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobId;
    use crate::registry::ErasedJob;

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Nothing;

    impl crate::Job for Nothing {
        const NAME: &'static str = "nothing";
        type Error = std::convert::Infallible;
        type Output = ();
        async fn run(&self, _: &crate::JobContext) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    fn envelope() -> Envelope {
        Envelope {
            id: JobId::new(),
            attempts: 0,
            kind: 0,
            job: Box::new(Nothing) as Box<dyn ErasedJob>,
        }
    }

    #[tokio::test]
    async fn close_drains_then_ends_and_wakes_waiters() {
        let q = std::sync::Arc::new(ReadyQueue::new(16));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await.is_none() }
        });
        tokio::task::yield_now().await;
        let first = envelope();
        let id = first.id;
        assert!(q.push(first).is_ok());
        q.close();
        assert!(q.push(envelope()).is_err(), "closed");
        // The waiter either took the job or was woken by the close with nothing left.
        let took_it = !waiter.await.unwrap();
        if !took_it {
            assert_eq!(q.try_pop().map(|e| e.id).ok(), Some(id));
        }
        assert_eq!(q.try_pop().err(), Some(Empty::ForGood));
        assert!(q.pop().await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_push_reaches_a_waiting_worker() {
        let q = std::sync::Arc::new(ReadyQueue::new(10_000));
        let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (q, got) = (q.clone(), got.clone());
                tokio::spawn(async move {
                    while q.pop().await.is_some() {
                        got.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for i in 0..10_000 {
            assert!(q.push(envelope()).is_ok());
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.load(std::sync::atomic::Ordering::Relaxed) < 10_000 {
            assert!(tokio::time::Instant::now() < deadline, "a push was lost");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        q.close();
        for w in workers {
            w.await.unwrap();
        }
    }
}
