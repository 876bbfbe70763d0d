//! [`Client::enqueue_many`]: many jobs of one type in as few backend calls as possible.

use super::Client;
use super::durable::{self, BatchFailure};
use crate::backend::Envelope;
use crate::error::{EnqueueError, EnqueueManyError};
use crate::job::{Job, JobId};

/// Jobs serialized and sent to a durable backend per call, at most.
const CHUNK: usize = 500;

impl Client {
    /// Enqueues many jobs of one type, in order, and returns their ids in the same order.
    ///
    /// In memory this is [`enqueue`](Self::enqueue) in a loop. On a durable backend the jobs
    /// are stored in batches (500 per call to the backend; one Lua script per batch on
    /// Redis), which is many times faster than one `enqueue` per job; a batch that does not
    /// fit under the runtime's capacity is stored in part, and the call waits for room for
    /// the rest, like `enqueue`.
    ///
    /// # Errors
    /// Stops at the first job that cannot be enqueued, for the reasons
    /// [`enqueue`](Self::enqueue) gives; the error holds the ids of the jobs enqueued before
    /// it, that job, and the jobs after it, so nothing is lost.
    ///
    /// # Cancel safety
    /// Not cancel safe on a durable backend: dropping the future mid-way can leave a prefix
    /// of the jobs enqueued, and their ids are lost with the future.
    ///
    /// ```
    /// # use job_core::prelude::*;
    /// # #[derive(Debug, serde::Serialize, serde::Deserialize)]
    /// # struct Ping { n: u64 }
    /// # impl Job for Ping {
    /// #     const NAME: &'static str = "ping";
    /// #     type Error = std::convert::Infallible;
    /// #     type Output = ();
    /// #     async fn run(&self, _: &JobContext) -> Result<(), Self::Error> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let runtime = JobRuntime::builder().register::<Ping>().start().unwrap();
    /// let ids = runtime
    ///     .client()
    ///     .enqueue_many((0..100).map(|n| Ping { n }))
    ///     .await
    ///     .unwrap();
    /// assert_eq!(ids.len(), 100);
    /// runtime.shutdown().await;
    /// # }
    /// ```
    pub async fn enqueue_many<J, I>(&self, jobs: I) -> Result<Vec<JobId>, EnqueueManyError<J>>
    where
        J: Job,
        I: IntoIterator<Item = J>,
    {
        let mut jobs = jobs.into_iter().peekable();
        let mut ids = Vec::with_capacity(jobs.size_hint().0);
        // A job with a uniqueness key is checked and stored one at a time (a batch would
        // have to answer per job which key another job holds).
        let keyed = jobs.peek().is_some_and(|j| j.unique().is_some());
        let Some(d) = self.durable().filter(|_| !keyed) else {
            while let Some(job) = jobs.next() {
                match self.enqueue(job).await {
                    Ok(id) => ids.push(id),
                    Err(error) => return Err(stop(ids, error, jobs)),
                }
            }
            return Ok(ids);
        };
        loop {
            // Serialize a chunk; keep the jobs until they are stored, to give back on failure.
            let mut chunk: Vec<J> = Vec::with_capacity(CHUNK);
            let mut envelopes: Vec<Envelope> = Vec::with_capacity(CHUNK);
            let mut rejected = None;
            let mut kind = 0;
            for job in jobs.by_ref() {
                let checked = self.inner.check::<J>(&job).and_then(|k| {
                    kind = k;
                    durable::envelope_for(&self.inner, &job, k, None)
                });
                match checked {
                    Ok(envelope) => {
                        envelopes.push(envelope);
                        chunk.push(job);
                    }
                    Err(r) => {
                        rejected = Some(r.with(job));
                        break;
                    }
                }
                if chunk.len() == CHUNK {
                    break;
                }
            }
            if !envelopes.is_empty() {
                if let Err((stored, failure)) =
                    durable::enqueue_batch(&self.inner, d, kind, &envelopes).await
                {
                    ids.extend(envelopes.iter().take(stored).map(|e| e.id));
                    let mut unsent = chunk.into_iter().skip(stored);
                    let Some(job) = unsent.next() else {
                        return Ok(ids);
                    };
                    let error = match failure {
                        BatchFailure::ShuttingDown => EnqueueError::ShuttingDown(job),
                        BatchFailure::Backend(message) => EnqueueError::Backend { job, message },
                    };
                    let mut remaining: Vec<J> = unsent.collect();
                    if let Some(r) = rejected {
                        remaining.push(r.into_inner());
                    }
                    remaining.extend(jobs);
                    return Err(EnqueueManyError {
                        enqueued: ids,
                        error,
                        remaining,
                    });
                }
                ids.extend(envelopes.iter().map(|e| e.id));
            }
            if let Some(error) = rejected {
                return Err(stop(ids, error, jobs));
            }
            // A chunk shorter than CHUNK means the iterator ran out.
            if envelopes.len() < CHUNK {
                break;
            }
        }
        Ok(ids)
    }
}

fn stop<J>(
    enqueued: Vec<JobId>,
    error: EnqueueError<J>,
    rest: impl Iterator<Item = J>,
) -> EnqueueManyError<J> {
    EnqueueManyError {
        enqueued,
        error,
        remaining: rest.collect(),
    }
}
