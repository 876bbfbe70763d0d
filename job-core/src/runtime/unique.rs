//! Unique enqueues: [`Client::enqueue_unique`], [`Client::enqueue_checked`], and the key
//! table the in-memory runtime checks under its admission lock. (Semantics:
//! [`crate::unique`].)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::TryAcquireError;
use tokio::time::Instant;

use super::durable::{self, Durable};
use super::{Client, Inner};
use crate::backend::BackendError;
use crate::error::{EnqueueError, error_chain};
use crate::job::{Job, JobId};
use crate::unique::{Enqueued, Unique, UniqueKey, UniqueUntil};

impl Client {
    /// Enqueues `job` unless another job of its type holds the key `unique` (see
    /// [`unique`](crate::unique)): the answer says which. The key given here replaces the
    /// one the job declares, if any. For keys known only at run time, such as an HTTP
    /// request's `Idempotency-Key`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use job_core::prelude::*;
    /// use job_core::{Enqueued, Unique};
    /// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    /// # struct Receipt { order: u64 }
    /// # impl Job for Receipt {
    /// #     const NAME: &'static str = "receipt";
    /// #     type Error = std::io::Error;
    /// #     type Output = ();
    /// #     async fn run(&self, _: &JobContext) -> Result<(), Self::Error> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let runtime = JobRuntime::builder().register::<Receipt>().start()?;
    /// let client = runtime.client();
    /// let day = Duration::from_secs(24 * 3600);
    /// let first = client.enqueue_unique(Receipt { order: 42 }, Unique::new("order-42", day)).await?;
    /// let again = client.enqueue_unique(Receipt { order: 42 }, Unique::new("order-42", day)).await?;
    /// assert!(first.is_new());
    /// assert_eq!(again, Enqueued::Existing(first.id()));
    /// # runtime.shutdown().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue); [`EnqueueError::Unsupported`] on a backend that
    /// cannot keep keys ([`Capabilities::unique_keys`](crate::backend::Capabilities)).
    ///
    /// # Cancel safety
    /// As [`enqueue`](Self::enqueue).
    pub async fn enqueue_unique<J: Job>(
        &self,
        job: J,
        unique: Unique,
    ) -> Result<Enqueued, EnqueueError<J>> {
        self.keyed(job, unique, None, true, None).await
    }

    /// [`enqueue_unique`](Self::enqueue_unique) without waiting for room, as
    /// [`enqueue_if_room`](Self::enqueue_if_room): a full runtime or store answers
    /// [`EnqueueError::QueueFull`] at once (a duplicate is answered whether or not there is
    /// room). The call for request handlers.
    ///
    /// # Errors
    /// As [`enqueue_unique`](Self::enqueue_unique), and `QueueFull` instead of waiting.
    pub async fn enqueue_unique_if_room<J: Job>(
        &self,
        job: J,
        unique: Unique,
    ) -> Result<Enqueued, EnqueueError<J>> {
        self.keyed(job, unique, None, false, None).await
    }

    /// As [`enqueue`](Self::enqueue), and says whether the job was enqueued or another job
    /// holds the key the job declares (`#[job(unique(..))]`): `enqueue` returns the same id
    /// either way. A job without a declared key is always [`Enqueued::New`].
    ///
    /// # Errors
    /// As [`enqueue_unique`](Self::enqueue_unique).
    pub async fn enqueue_checked<J: Job>(&self, job: J) -> Result<Enqueued, EnqueueError<J>> {
        match job.unique() {
            Some(unique) => self.keyed(job, unique, None, true, None).await,
            None => self.enqueue(job).await.map(Enqueued::New),
        }
    }

    /// A unique enqueue: after `delay` when given; waiting for room when `wait_for_room`;
    /// under the id `id` when given (a schedule's tick).
    pub(crate) async fn keyed<J: Job>(
        &self,
        job: J,
        unique: Unique,
        delay: Option<Duration>,
        wait_for_room: bool,
        id: Option<JobId>,
    ) -> Result<Enqueued, EnqueueError<J>> {
        let kind = match self.inner.check::<J>(&job) {
            Ok(kind) => kind,
            Err(e) => return Err(e.with(job)),
        };
        let key = match unique.for_job(J::NAME) {
            Ok(key) => key,
            Err(message) => return Err(EnqueueError::Serialize { job, message }),
        };
        match self.durable() {
            Some(d) => stored(&self.inner, d, job, kind, &key, delay, wait_for_room, id).await,
            None => self.admitted(job, kind, key, delay, wait_for_room).await,
        }
    }

    /// [`try_enqueue`](Self::try_enqueue) of a job that declares a key.
    pub(crate) fn try_enqueue_keyed<J: Job>(
        &self,
        job: J,
        unique: Unique,
    ) -> Result<JobId, EnqueueError<J>> {
        let kind = match self.inner.check::<J>(&job) {
            Ok(kind) => kind,
            Err(e) => return Err(e.with(job)),
        };
        if self.durable().is_some() {
            return Err(EnqueueError::WouldBlock(job));
        }
        let key = match unique.for_job(J::NAME) {
            Ok(key) => key,
            Err(message) => return Err(EnqueueError::Serialize { job, message }),
        };
        if let Some(holder) = self.inner.uniques.holder(&key.key, &self.inner) {
            return Ok(holder);
        }
        match self.inner.permits.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => return Err(EnqueueError::QueueFull(job)),
            Err(TryAcquireError::Closed) => return Err(EnqueueError::ShuttingDown(job)),
        }
        self.inner
            .admit_keyed(job, kind, key, None)
            .map(Enqueued::id)
    }

    /// In memory: the key table is checked before waiting for room (a duplicate never
    /// waits) and again, with the admission, under its lock.
    async fn admitted<J: Job>(
        &self,
        job: J,
        kind: u16,
        key: UniqueKey,
        delay: Option<Duration>,
        wait_for_room: bool,
    ) -> Result<Enqueued, EnqueueError<J>> {
        let inner = &self.inner;
        if let Some(holder) = inner.uniques.holder(&key.key, inner) {
            return Ok(Enqueued::Existing(holder));
        }
        if wait_for_room {
            if !inner.take_permit().await {
                return Err(EnqueueError::ShuttingDown(job));
            }
        } else {
            match inner.permits.try_acquire() {
                Ok(permit) => permit.forget(),
                Err(TryAcquireError::NoPermits) => return Err(EnqueueError::QueueFull(job)),
                Err(TryAcquireError::Closed) => return Err(EnqueueError::ShuttingDown(job)),
            }
        }
        inner.admit_keyed(job, kind, key, delay)
    }
}

impl Inner {
    /// Admits a job whose permit is taken, unless another holds `key` (checked again under
    /// the table's lock, which the admission holds: two racing producers make one job).
    fn admit_keyed<J: Job>(
        &self,
        job: J,
        kind: u16,
        key: UniqueKey,
        delay: Option<Duration>,
    ) -> Result<Enqueued, EnqueueError<J>> {
        let mut table = self.uniques.lock();
        if let Some(holder) = table.holder(&key.key, self) {
            drop(table);
            self.permits.add_permits(1);
            return Ok(Enqueued::Existing(holder));
        }
        let id = self.admit(job, kind, delay)?;
        table.take(key, id);
        Ok(Enqueued::New(id))
    }
}

/// On a durable backend: the backend's atomic check-and-store.
#[allow(clippy::too_many_arguments)]
async fn stored<J: Job>(
    inner: &Inner,
    d: &Durable,
    job: J,
    kind: u16,
    key: &UniqueKey,
    delay: Option<Duration>,
    wait_for_room: bool,
    id: Option<JobId>,
) -> Result<Enqueued, EnqueueError<J>> {
    if !d.caps.unique_keys {
        return Err(unsupported(d, job));
    }
    let mut envelope = match durable::envelope_for(inner, &job, kind, delay) {
        Ok(e) => e,
        Err(rejected) => return Err(rejected.with(job)),
    };
    if let Some(id) = id {
        envelope.id = id;
    }
    let mut pause = Duration::from_millis(10);
    loop {
        if inner.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return Err(EnqueueError::ShuttingDown(job));
        }
        match d
            .backend
            .enqueue_unique(envelope.clone(), d.capacity(), key)
            .await
        {
            Ok(outcome) => {
                d.mark(true);
                match outcome {
                    Enqueued::New(_) => durable::counted(inner, kind, 1),
                    Enqueued::Existing(holder) => {
                        tracing::debug!(job = J::NAME, %holder, "a job holds the key: not enqueued");
                    }
                }
                return Ok(outcome);
            }
            Err(BackendError::Full) if wait_for_room => {
                durable::wait_for_room_in(&mut pause).await;
            }
            Err(BackendError::Full) => return Err(EnqueueError::QueueFull(job)),
            Err(BackendError::Unsupported(_)) => return Err(unsupported(d, job)),
            Err(e) => {
                d.mark(false);
                return Err(EnqueueError::Backend {
                    job,
                    message: error_chain(&e),
                });
            }
        }
    }
}

fn unsupported<J>(d: &Durable, job: J) -> EnqueueError<J> {
    EnqueueError::Unsupported {
        job,
        message: format!(
            "the {} backend cannot keep uniqueness keys (a unique job, or enqueue_unique): \
             it has no atomic check-and-store; run unique jobs on Redis, Postgres or in memory",
            d.backend.name()
        ),
    }
}

/// The in-memory runtime's keys: key → the job holding it, until when, and what else frees
/// it. Bounded by the keys taken within the longest window: expired keys are swept when
/// the table has doubled since the last sweep.
#[derive(Default)]
pub(crate) struct Uniques {
    table: Mutex<Table>,
}

pub(crate) struct Table {
    keys: HashMap<String, Held>,
    sweep_at: usize,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            keys: HashMap::new(),
            sweep_at: 1024,
        }
    }
}

struct Held {
    id: JobId,
    until: Instant,
    mode: UniqueUntil,
}

impl Uniques {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn holder(&self, key: &str, inner: &Inner) -> Option<JobId> {
        self.lock().holder(key, inner)
    }
}

impl Table {
    /// The job holding `key`, if one does.
    fn holder(&self, key: &str, inner: &Inner) -> Option<JobId> {
        let held = self.keys.get(key)?;
        if Instant::now() >= held.until {
            return None;
        }
        match held.mode {
            UniqueUntil::Window => Some(held.id),
            // A status gone (expired, or the job never admitted) is a finished job.
            UniqueUntil::Finished => inner
                .status
                .get(held.id)
                .filter(|st| !st.state.is_finished())
                .map(|_| held.id),
        }
    }

    fn take(&mut self, key: UniqueKey, id: JobId) {
        let now = Instant::now();
        if self.keys.len() >= self.sweep_at {
            self.keys.retain(|_, h| h.until > now);
            self.sweep_at = (self.keys.len() * 2).max(1024);
        }
        self.keys.insert(
            key.key,
            Held {
                id,
                until: now + key.window,
                mode: key.until,
            },
        );
    }
}
