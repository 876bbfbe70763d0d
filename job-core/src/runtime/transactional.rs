//! Enqueue inside the caller's own Postgres transaction (cargo feature `postgres`).

use std::sync::atomic::Ordering;

use sqlx::PgConnection;

use super::Client;
use super::durable::{counted, envelope_for};
use crate::backend::BackendError;
use crate::error::{EnqueueError, error_chain};
use crate::job::{Job, JobId};

impl Client {
    /// Enqueues a job with the caller's transaction (or connection): the job is stored by
    /// the enqueue statement run on `tx`, so workers see it only when the caller commits,
    /// and after a rollback it never runs. The returned id is the job's either way.
    /// Listeners are woken on commit (Postgres delivers notifications then), never before.
    ///
    /// `tx` is a `sqlx::Transaction<'_, Postgres>` (`&mut tx`), a `PgConnection` or a pooled
    /// connection, on the database the runtime's [`PostgresBackend`] uses (the backend's
    /// schema must exist there: the runtime creates it at start).
    ///
    /// ```no_run
    /// # #![allow(dead_code)]
    /// # use job_core::prelude::*;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Clone, Serialize, Deserialize)]
    /// # struct Welcome { email: String }
    /// # impl Job for Welcome {
    /// #     const NAME: &'static str = "welcome";
    /// #     type Error = std::io::Error;
    /// #     type Output = ();
    /// #     async fn run(&self, _cx: &JobContext) -> Result<(), Self::Error> { Ok(()) }
    /// # }
    /// # async fn signup(pool: sqlx::PgPool, client: Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("INSERT INTO users (email) VALUES ($1)").bind("ada@example.com").execute(&mut *tx).await?;
    /// client.enqueue_tx(&mut tx, Welcome { email: "ada@example.com".into() }).await?;
    /// tx.commit().await?; // the user and the job, or neither
    /// # Ok(()) }
    /// ```
    ///
    /// A job with a uniqueness key (`#[job(unique(..))]`) takes it in the same transaction
    /// (a savepoint in the caller's): a rollback frees the key with the job, and until the
    /// caller commits, another enqueue of that key waits for the outcome.
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue), except that a full store answers
    /// [`EnqueueError::QueueFull`] at once (waiting would hold the caller's transaction
    /// open); [`EnqueueError::Unsupported`] when the runtime does not run on the Postgres
    /// backend; [`EnqueueError::Backend`] when the statement fails, which, as any failed
    /// statement does, aborts the caller's transaction.
    ///
    /// [`PostgresBackend`]: crate::backend::postgres::PostgresBackend
    pub async fn enqueue_tx<J, C>(&self, tx: &mut C, job: J) -> Result<JobId, EnqueueError<J>>
    where
        J: Job,
        C: AsMut<PgConnection> + Send + ?Sized,
    {
        let kind = match self.inner.check::<J>(&job) {
            Ok(kind) => kind,
            Err(e) => return Err(e.with(job)),
        };
        if self.inner.stopping.load(Ordering::Acquire) {
            return Err(EnqueueError::ShuttingDown(job));
        }
        let Some((d, pg)) = self
            .durable()
            .and_then(|d| d.backend.postgres().map(|pg| (d, pg)))
        else {
            let on = self
                .durable()
                .map_or("the in-memory runtime", |d| d.backend.name());
            return Err(EnqueueError::Unsupported {
                job,
                message: format!(
                    "enqueue_tx needs the runtime to run on the Postgres backend, not on {on}"
                ),
            });
        };
        let envelope = match envelope_for(&self.inner, &job, kind, None) {
            Ok(e) => e,
            Err(rejected) => return Err(rejected.with(job)),
        };
        let id = envelope.id;
        if let Some(unique) = job.unique() {
            let key = match unique.for_job(J::NAME) {
                Ok(key) => key,
                Err(message) => return Err(EnqueueError::Serialize { job, message }),
            };
            return match pg
                .enqueue_unique_on(tx.as_mut(), &envelope, d.capacity(), &key)
                .await
            {
                Ok(outcome) => {
                    if outcome.is_new() {
                        counted(&self.inner, kind, 1);
                    }
                    Ok(outcome.id())
                }
                Err(BackendError::Full) => Err(EnqueueError::QueueFull(job)),
                Err(e) => Err(EnqueueError::Backend {
                    job,
                    message: error_chain(&e),
                }),
            };
        }
        match pg
            .enqueue_on(tx.as_mut(), std::slice::from_ref(&envelope), d.capacity())
            .await
        {
            Ok(1) => {
                counted(&self.inner, kind, 1);
                Ok(id)
            }
            Ok(_) => Err(EnqueueError::QueueFull(job)),
            Err(e) => Err(EnqueueError::Backend {
                job,
                message: error_chain(&e),
            }),
        }
    }
}
