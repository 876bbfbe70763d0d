//! The runtime: builder, client, worker pool, timer, shutdown.
//!
//! # How the in-memory runtime works
//!
//! A semaphore of `capacity` permits admits jobs: each job holds one permit from `enqueue`
//! until it succeeds or dies, whether it is ready, scheduled, waiting to retry or running.
//! Ready jobs wait in a lock-free multi-consumer queue that the permits bound; delayed jobs and
//! retries wait in a timer task's heap, keyed by their start time. A retry therefore never
//! needs room it might not get (the seed's single consumer re-enqueueing into a full channel
//! deadlocks), and never makes a worker sleep.
//!
//! `concurrency` worker tasks each run one attempt at a time, polling it in place with
//! `catch_unwind` rather than spawning a task per attempt (spawning costs more than a no-op
//! job); the attempt is still isolated: a panic, an error or a timeout ends the attempt, never
//! the worker.

mod attempt;
mod batch;
mod builder;
mod cancel;
pub(crate) mod durable;
mod outcome;
mod ready;
pub(crate) mod shutdown;
mod timer;
#[cfg(feature = "postgres")]
mod transactional;
mod unique;
mod wait;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, TryAcquireError, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use builder::JobRuntimeBuilder;
pub use shutdown::ShutdownReport;

use crate::context::{DataMap, ScopedFactory};
use crate::dead_letter::{DeadLetter, DeadLetterHook, DeadLetterStore};
use crate::error::{
    CancelError, Cancellation, EnqueueError, QueryError, RequeueError, ResultError, WaitError,
};
use crate::job::{Job, JobId};
use crate::observe::health::{Health, HealthThresholds};
use crate::observe::metrics::{Counters, Stats};
use crate::observe::status::{JobState, JobStatus, StatusStore};
use crate::registry::{ErasedJob, Registry};
use crate::unique::Enqueued;
use builder::ShutdownHook;
use timer::Timed;

/// One admitted job.
pub(crate) struct Envelope {
    pub(crate) id: JobId,
    /// Attempts made so far.
    pub(crate) attempts: u32,
    pub(crate) kind: u16,
    pub(crate) job: Box<dyn ErasedJob>,
}

pub(crate) struct Inner {
    pub(crate) registry: Registry,
    /// Per kind, the scoped factories its attempts need.
    pub(crate) scoped: Vec<Vec<(std::any::TypeId, ScopedFactory)>>,
    pub(crate) data: Arc<DataMap>,
    pub(crate) capacity: usize,
    pub(crate) concurrency: usize,
    pub(crate) permits: Semaphore,
    pub(crate) ready: ready::ReadyQueue,
    pub(crate) timer_tx: mpsc::UnboundedSender<Timed>,
    pub(crate) status: StatusStore,
    pub(crate) counters: Counters,
    pub(crate) dead: DeadLetterStore,
    pub(crate) hooks: Vec<DeadLetterHook>,
    pub(crate) shutdown_hooks: Vec<ShutdownHook>,
    pub(crate) thresholds: HealthThresholds,
    pub(crate) payload_limit: Option<usize>,
    pub(crate) retry_panics: bool,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) cancel_grace: Duration,
    pub(crate) drain_queue: bool,
    pub(crate) stopping: AtomicBool,
    /// Workers stop taking jobs.
    pub(crate) stop_fetch: CancellationToken,
    /// Running attempts are asked to stop (their `JobContext` token is a child of it).
    pub(crate) job_cancel: CancellationToken,
    /// Per worker, the attempt it runs and its token: how a cancel by id reaches it.
    pub(crate) attempts: cancel::Attempts,
    /// The timer and the schedules stop.
    pub(crate) stop_background: CancellationToken,
    pub(crate) workers: TaskTracker,
    pub(crate) background: TaskTracker,
    pub(crate) worker_handles: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pub(crate) tally: shutdown::Tally,
    pub(crate) report: tokio::sync::OnceCell<ShutdownReport>,
    /// Set with a durable backend.
    pub(crate) durable: Option<durable::Durable>,
    /// Signalled when a job run in memory finished (a durable store's has its own).
    pub(crate) finished: wait::Finished,
    /// The schedules running on this runtime, for [`Client::schedules`].
    pub(crate) schedules: crate::schedule::Board,
    /// Cancelled once every worker has stopped (ends the lease heartbeat).
    pub(crate) workers_done: CancellationToken,
    /// Per in-memory worker: jobs it finished whose capacity permits it has not yet given
    /// back (it gives them back in batches of `release_batch`, and whenever it finds the
    /// queue empty). `depth` does not count them.
    pub(crate) unreleased: Box<[Unreleased]>,
    pub(crate) release_batch: usize,
    /// The in-memory runtime's uniqueness keys (a durable store keeps its own).
    pub(crate) uniques: unique::Uniques,
}

/// One worker's count of finished jobs whose permits it still holds, alone on its cache
/// line (only that worker writes it).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Unreleased(pub(crate) std::sync::atomic::AtomicUsize);

/// A handle for enqueueing jobs and reading their status. Cheap to clone.
///
/// Get one from [`JobRuntime::client`]; `Job::enqueue` uses the ambient runtime's.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("capacity", &self.inner.capacity)
            .field("concurrency", &self.inner.concurrency)
            .field("depth", &self.inner.depth())
            .field("stopping", &self.inner.stopping.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The runtimes started and not yet shut down, oldest first: the last is ambient, and when
/// it shuts down the one started before it (if still running) is ambient again.
static AMBIENT: RwLock<Vec<Client>> = RwLock::new(Vec::new());

impl Client {
    /// The ambient client: that of the runtime started last and not yet shut down (when it
    /// shuts down, the runtime started before it, if that one still runs).
    pub fn ambient() -> Option<Client> {
        AMBIENT
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last()
            .cloned()
    }

    pub(crate) fn install_ambient(client: Client) {
        AMBIENT
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(client);
    }

    pub(crate) fn clear_ambient(inner: &Arc<Inner>) {
        AMBIENT
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|c| !Arc::ptr_eq(&c.inner, inner));
    }

    /// Enqueues a job and returns its id as soon as it is admitted; waits while the runtime
    /// is at capacity (backpressure).
    ///
    /// # Errors
    /// Gives the job back with [`EnqueueError::ShuttingDown`] once shutdown has begun (also
    /// while waiting), [`EnqueueError::NotRegistered`] for a type the runtime does not know,
    /// [`EnqueueError::PayloadTooLarge`] over the payload limit.
    ///
    /// # Cancel safety
    /// In memory, cancel safe: dropping the future before it completes leaves the job
    /// unenqueued (and loses the caller's place in line for capacity). On a durable backend,
    /// a job whose store call already went out may be stored even though the future was
    /// dropped (its id is lost with the future, the job runs).
    ///
    /// # Batching
    /// On a durable backend, enqueues that arrive while another is being stored wait for it
    /// and then go to the backend together, in one call: concurrent producers (request
    /// handlers) share round trips, and a lone producer's call goes out at once.
    pub async fn enqueue<J: Job>(&self, job: J) -> Result<JobId, EnqueueError<J>> {
        if let Some(unique) = job.unique() {
            return self
                .keyed(job, unique, None, true, None)
                .await
                .map(Enqueued::id);
        }
        let kind = match self.inner.check::<J>(&job) {
            Ok(kind) => kind,
            Err(e) => return Err(e.with(job)),
        };
        if let Some(d) = self.durable() {
            return durable::enqueue(&self.inner, d, job, kind, None, true).await;
        }
        if !self.inner.take_permit().await {
            return Err(EnqueueError::ShuttingDown(job));
        }
        self.inner.admit(job, kind, None)
    }

    /// Enqueues a job without waiting, in memory. A durable backend's store is a network
    /// round trip, which this synchronous call cannot make: there it answers
    /// [`EnqueueError::WouldBlock`]; use [`enqueue_if_room`](Self::enqueue_if_room), which
    /// does not wait for room on any backend.
    ///
    /// # Errors
    /// [`EnqueueError::QueueFull`] with the job when the runtime is at capacity;
    /// [`EnqueueError::WouldBlock`] on a durable backend; otherwise as
    /// [`enqueue`](Self::enqueue).
    pub fn try_enqueue<J: Job>(&self, job: J) -> Result<JobId, EnqueueError<J>> {
        if let Some(unique) = job.unique() {
            return self.try_enqueue_keyed(job, unique);
        }
        let kind = match self.inner.check::<J>(&job) {
            Ok(kind) => kind,
            Err(e) => return Err(e.with(job)),
        };
        if self.durable().is_some() {
            return Err(EnqueueError::WouldBlock(job));
        }
        match self.inner.permits.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => return Err(EnqueueError::QueueFull(job)),
            Err(TryAcquireError::Closed) => return Err(EnqueueError::ShuttingDown(job)),
        }
        self.inner.admit(job, kind, None)
    }

    /// Enqueues a job without waiting for room, on every backend: in memory it is
    /// [`try_enqueue`](Self::try_enqueue); on a durable backend it makes the store's round
    /// trip (shared with concurrent enqueues, as [`enqueue`](Self::enqueue) does) and answers
    /// [`EnqueueError::QueueFull`] at once when the store holds `capacity` jobs, instead of
    /// waiting for room. `Ok` means the store has the job: durability is the same as
    /// `enqueue`'s.
    ///
    /// This is the call for request handlers that must answer quickly ("503, retry later"
    /// rather than a request that hangs while the queue is full).
    ///
    /// # Errors
    /// [`EnqueueError::QueueFull`] with the job when the runtime (or its store) is at
    /// capacity; [`EnqueueError::Backend`] when the store cannot be reached; otherwise as
    /// [`enqueue`](Self::enqueue).
    ///
    /// # Cancel safety
    /// As [`enqueue`](Self::enqueue).
    ///
    /// # Examples
    /// ```
    /// # use job_core::prelude::*;
    /// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    /// # struct Ping;
    /// # impl Job for Ping {
    /// #     const NAME: &'static str = "ping";
    /// #     type Error = std::io::Error;
    /// #     type Output = ();
    /// #     async fn run(&self, _: &JobContext) -> Result<(), Self::Error> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let runtime = JobRuntime::builder().register::<Ping>().capacity(1).start()?;
    /// let client = runtime.client();
    /// client.enqueue_if_room(Ping).await?;
    /// // Full: answered at once, with the job given back.
    /// assert!(client.enqueue_if_room(Ping).await.unwrap_err().is_full());
    /// # runtime.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_if_room<J: Job>(&self, job: J) -> Result<JobId, EnqueueError<J>> {
        if let Some(unique) = job.unique() {
            return self
                .keyed(job, unique, None, false, None)
                .await
                .map(Enqueued::id);
        }
        let Some(d) = self.durable() else {
            return self.try_enqueue(job);
        };
        let kind = match self.inner.check::<J>(&job) {
            Ok(kind) => kind,
            Err(e) => return Err(e.with(job)),
        };
        durable::enqueue(&self.inner, d, job, kind, None, false).await
    }

    /// Enqueues a job to start no earlier than `delay` from now. The job holds its place in
    /// capacity while it waits; no worker waits with it.
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue).
    ///
    /// # Cancel safety
    /// As [`enqueue`](Self::enqueue).
    pub async fn enqueue_in<J: Job>(
        &self,
        job: J,
        delay: Duration,
    ) -> Result<JobId, EnqueueError<J>> {
        if let Some(unique) = job.unique() {
            return self
                .keyed(job, unique, Some(delay), true, None)
                .await
                .map(Enqueued::id);
        }
        let kind = match self.inner.check::<J>(&job) {
            Ok(kind) => kind,
            Err(e) => return Err(e.with(job)),
        };
        if let Some(d) = self.durable() {
            return durable::enqueue(&self.inner, d, job, kind, Some(delay), true).await;
        }
        if !self.inner.take_permit().await {
            return Err(EnqueueError::ShuttingDown(job));
        }
        self.inner.admit(job, kind, Some(delay))
    }

    /// Enqueues a job to start no earlier than the wall-clock time `at` (now, if `at` has
    /// passed).
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue).
    ///
    /// # Cancel safety
    /// As [`enqueue`](Self::enqueue).
    pub async fn enqueue_at<J: Job>(
        &self,
        job: J,
        at: SystemTime,
    ) -> Result<JobId, EnqueueError<J>> {
        let delay = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        self.enqueue_in(job, delay).await
    }

    /// The status of a job, while it is live and for the retention time after it finished
    /// (`Ok(None)`: no such job, or its status expired).
    ///
    /// # Errors
    /// [`QueryError::Backend`] when the store fails or cannot be reached;
    /// [`QueryError::Unsupported`] on a backend that cannot look a job up by id.
    pub async fn status(&self, id: JobId) -> Result<Option<JobStatus>, QueryError> {
        match self.durable() {
            None => Ok(self.inner.status.get(id).map(|st| {
                // A running attempt's latest report is in its worker's cell.
                match self.inner.attempts.progress_of(id) {
                    Some(p) if st.state == JobState::Running => {
                        st.with_progress(Some(p.to_value()))
                    }
                    _ => st,
                }
            })),
            Some(d) => {
                d.supports(d.caps.status_by_id, "status by id")?;
                d.backend.status(id).await.map_err(QueryError::Backend)
            }
        }
    }

    /// Health from load (admitted jobs against capacity).
    pub fn health(&self) -> Health {
        self.inner.health()
    }

    /// Counters and load.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// The dead letters kept, oldest first (on a durable backend, the oldest 10,000).
    ///
    /// # Errors
    /// [`QueryError::Backend`] when the store fails or cannot be reached;
    /// [`QueryError::Unsupported`] on a backend that cannot list its dead letters.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueryError> {
        match self.durable() {
            None => Ok(self.inner.dead.list()),
            Some(d) => {
                d.supports(d.caps.dead_letter_listing, "listing dead letters")?;
                d.backend
                    .dead_letters(10_000)
                    .await
                    .map_err(QueryError::Backend)
            }
        }
    }

    /// One dead letter by job id (`Ok(None)`: none kept with that id). On a durable backend
    /// the store looks it up by id ([`Backend::find_dead_letter`](crate::backend::Backend::find_dead_letter)),
    /// without listing the others.
    ///
    /// # Errors
    /// As [`dead_letters`](Self::dead_letters).
    pub async fn dead_letter(&self, id: JobId) -> Result<Option<DeadLetter>, QueryError> {
        match self.durable() {
            None => Ok(self.inner.dead.get(id)),
            Some(d) => {
                d.supports(d.caps.dead_letter_listing, "listing dead letters")?;
                d.backend
                    .find_dead_letter(id)
                    .await
                    .map_err(QueryError::Backend)
            }
        }
    }

    /// Requeues a dead job by id: decoded from its stored payload, with the same id and a
    /// fresh attempt budget. Does not wait for capacity.
    ///
    /// # Errors
    /// [`RequeueError`]: not found, no longer decodes, unknown job, full, shutting down. The
    /// dead letter stays in the store on every error.
    pub async fn requeue(&self, id: JobId) -> Result<JobId, RequeueError> {
        if self.is_stopping() {
            return Err(RequeueError::ShuttingDown);
        }
        match self.durable() {
            None => self.inner.requeue(id),
            Some(d) => durable::requeue(d, id).await,
        }
    }

    /// Waits until job `id` has finished (succeeded, dead or cancelled) and returns its final
    /// status, or gives up after `timeout`.
    ///
    /// The wait polls nothing. In memory it sleeps until a worker signals that a job ended.
    /// On a durable store the job may finish in another process: a store that declares
    /// [`finish_wakeups`](crate::backend::Capabilities::finish_wakeups) (Redis pub/sub,
    /// Postgres `LISTEN`/`NOTIFY`, `MemoryBackend`) is asked to announce the job's end, and
    /// the wait wakes on that announcement (or at once when this process writes the job
    /// back), reading the status again every 2 s at most in case one was lost. On a store
    /// without announcements the status is read again at a growing interval (5 ms,
    /// doubling, at most 250 ms). A job retrying is not finished: the wait goes on through
    /// its retries.
    ///
    /// ```
    /// # use job_core::prelude::*;
    /// #[job]
    /// async fn greet(name: String) -> Result<(), std::io::Error> {
    ///     println!("hello, {name}");
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let runtime = JobRuntime::builder().start()?;
    /// let client = runtime.client();
    /// let id = client.enqueue(Greet { name: "Ada".into() }).await?;
    /// let done = client.wait(id, std::time::Duration::from_secs(5)).await?;
    /// assert_eq!(done.state, JobState::Succeeded);
    /// runtime.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`WaitError::TimedOut`] with the status at the deadline; [`WaitError::NotFound`] for
    /// an id with no status (never enqueued, or finished longer ago than the retention);
    /// [`WaitError::Unsupported`] on a backend without status by id;
    /// [`WaitError::Query`] when the store fails.
    pub async fn wait(&self, id: JobId, timeout: Duration) -> Result<JobStatus, WaitError> {
        wait::wait(self, id, timeout).await
    }

    /// What job `id` produced: the `Ok` value of its successful attempt, typed as the job's
    /// [`Output`](crate::Job::Output), so asking for another type does not compile. Kept as
    /// JSON (at most [`RESULT_LIMIT`](crate::RESULT_LIMIT) bytes) with the job's status, for
    /// as long as the status is kept; shown as `result` in [`status`](Self::status) too.
    /// Combine it with [`wait`](Self::wait) to wait for the job first.
    ///
    /// ```
    /// # use job_core::prelude::*;
    /// # use std::time::Duration;
    /// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    /// struct Receipt { words: usize }
    ///
    /// #[job]
    /// async fn count_words(text: String) -> Result<Receipt, std::io::Error> {
    ///     Ok(Receipt { words: text.split_whitespace().count() })
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let runtime = JobRuntime::builder().start()?;
    /// let client = runtime.client();
    /// let id = client.enqueue(CountWords { text: "one two three".into() }).await?;
    /// client.wait(id, Duration::from_secs(5)).await?;
    /// let receipt: Receipt = client.result::<CountWords>(id).await?;
    /// assert_eq!(receipt, Receipt { words: 3 });
    /// runtime.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`ResultError::NotFinished`] before the job finished; [`ResultError::Failed`] for a
    /// job that ended dead or cancelled; [`ResultError::NotFound`] for an unknown id (or an
    /// expired status); [`ResultError::WrongJob`] when the id is another job type's;
    /// [`ResultError::NotKept`] when the result was over the limit or did not serialize;
    /// [`ResultError::Decode`] when the kept JSON no longer decodes as the output type;
    /// [`ResultError::Unsupported`] on a backend that keeps no results;
    /// [`ResultError::Query`] when the store fails.
    pub async fn result<J: Job>(&self, id: JobId) -> Result<J::Output, ResultError> {
        wait::result::<J>(self, id).await
    }

    /// Cancels job `id`. A job still waiting (queued, scheduled, or retrying) is taken out
    /// of line and ends `cancelled` ([`Cancellation::Removed`]); a running job's
    /// [`JobContext`](crate::JobContext) token fires, and when the attempt returns it ends
    /// `cancelled` ([`Cancellation::Requested`]): not retried, not dead-lettered, and not a
    /// success even if it returns `Ok` after its token fired. An attempt that does not
    /// return within the [`cancel_grace`](JobRuntimeBuilder::cancel_grace) after its token
    /// fired is dropped.
    ///
    /// On a durable store the cancel is recorded in the store, so it reaches a job running
    /// in another process too: that process sees it when it next renews the job's lease
    /// (within a third of the [`lease`](JobRuntimeBuilder::lease)). A job that process
    /// finishes before it sees the cancel ends as it ended (succeeded, or dead); a retry or
    /// a crash after the cancel ends it `cancelled`.
    ///
    /// ```
    /// # use job_core::prelude::*;
    /// # use job_core::Cancellation;
    /// #[job]
    /// async fn export(rows: u32, cx: &JobContext) -> Result<(), std::io::Error> {
    ///     for _ in 0..rows {
    ///         if cx.is_cancelled() {
    ///             return Ok(()); // stop at a safe point
    ///         }
    ///         tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    ///     }
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let runtime = JobRuntime::builder().concurrency(1).start()?;
    /// let client = runtime.client();
    /// let running = client.enqueue(Export { rows: 1_000 }).await?;
    /// let queued = client.enqueue(Export { rows: 1 }).await?;
    /// // Wait until the first job runs (the second waits behind it: one worker).
    /// while client.status(running).await?.map(|s| s.state) != Some(JobState::Running) {
    ///     tokio::task::yield_now().await;
    /// }
    /// assert_eq!(client.cancel(queued).await?, Cancellation::Removed);
    /// assert_eq!(client.cancel(running).await?, Cancellation::Requested);
    /// let done = client.wait(running, std::time::Duration::from_secs(5)).await?;
    /// assert_eq!(done.state, JobState::Cancelled);
    /// // Finished jobs stay as they finished.
    /// assert!(client.cancel(running).await.is_err());
    /// runtime.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`CancelError::Finished`] for a job that already finished (nothing changes);
    /// [`CancelError::NotFound`] for an unknown id; [`CancelError::Unsupported`] on a
    /// backend that cannot cancel by id (see
    /// [`Capabilities::cancel_by_id`](crate::backend::Capabilities::cancel_by_id));
    /// [`CancelError::Backend`] when the store fails.
    pub async fn cancel(&self, id: JobId) -> Result<Cancellation, CancelError> {
        cancel::cancel(self, id).await
    }

    /// True once shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// The schedules this client's runtime runs (from its builder, and those started on
    /// it with [`schedule::start`](crate::schedule::start)), each with its next run time.
    pub fn schedules(&self) -> Vec<crate::schedule::ScheduleInfo> {
        self.inner.schedules.list()
    }

    /// Whether a schedule's ticks are enqueued under ids the store dedups (see
    /// [`JobId::for_tick`]): on a durable backend that changes nothing when an id is stored
    /// already, every process running a schedule enqueues one job per tick between them.
    pub(crate) fn ticks_are_shared(&self) -> bool {
        self.durable().is_some_and(|d| d.caps.idempotent_enqueue)
    }

    /// The name of the durable backend, if any.
    pub(crate) fn backend_name(&self) -> Option<&'static str> {
        self.durable().map(|d| d.backend.name())
    }

    /// Enqueues a schedule's tick under its id `id`: on a durable backend an id already
    /// stored changes nothing (another process enqueued this tick); in memory, as
    /// [`enqueue`](Self::enqueue) with that id.
    pub(crate) async fn enqueue_tick<J: Job>(
        &self,
        job: J,
        id: JobId,
    ) -> Result<JobId, EnqueueError<J>> {
        if let Some(unique) = job.unique() {
            // One run at a time across processes, as the job asks: the tick's own id keeps
            // the tick once, the key keeps it out while another run holds the key.
            let tick = self.ticks_are_shared().then_some(id);
            return self
                .keyed(job, unique, None, true, tick)
                .await
                .map(Enqueued::id);
        }
        let kind = match self.inner.check::<J>(&job) {
            Ok(kind) => kind,
            Err(e) => return Err(e.with(job)),
        };
        match self.durable() {
            Some(d) => durable::enqueue_as(&self.inner, d, job, kind, id).await,
            None => self.enqueue(job).await,
        }
    }
}

/// Errors found before admission; the caller attaches the job.
pub(crate) enum Rejected {
    NotRegistered,
    TooLarge { size: usize, limit: usize },
    Serialize(String),
}

impl Rejected {
    pub(crate) fn with<J>(self, job: J) -> EnqueueError<J> {
        match self {
            Self::NotRegistered => EnqueueError::NotRegistered(job),
            Self::TooLarge { size, limit } => EnqueueError::PayloadTooLarge { job, size, limit },
            Self::Serialize(message) => EnqueueError::Serialize { job, message },
        }
    }
}

impl Inner {
    fn check<J: Job>(&self, job: &J) -> Result<u16, Rejected> {
        let kind = self
            .registry
            .kind_of(std::any::TypeId::of::<J>())
            .ok_or(Rejected::NotRegistered)?;
        // A durable enqueue encodes the payload once and checks its size then
        // (`durable::envelope_for`); in memory the job is never encoded, only counted.
        if let Some(limit) = self.payload_limit
            && self.durable.is_none()
        {
            let size =
                ErasedJob::encoded_len(job).map_err(|e| Rejected::Serialize(e.to_string()))?;
            if size > limit {
                return Err(Rejected::TooLarge { size, limit });
            }
        }
        Ok(kind)
    }

    /// Takes one capacity permit for good, waiting while there is none; false once the
    /// permits are closed (shutdown). A free permit is taken without building the waiting
    /// future (the common case when the runtime is below capacity).
    ///
    /// Cancel safe: the permit is taken in the poll that returns.
    async fn take_permit(&self) -> bool {
        // As the semaphore's own future would: a producer that never waits still yields to
        // the scheduler once its task's budget is spent. Before taking the permit, so that
        // dropping the future while it yields leaks nothing.
        tokio::task::consume_budget().await;
        match self.permits.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::Closed) => return false,
            Err(TryAcquireError::NoPermits) => match self.permits.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return false,
            },
        }
        true
    }

    /// Admits a job whose permit is already taken.
    fn admit<J: Job>(
        &self,
        job: J,
        kind: u16,
        delay: Option<Duration>,
    ) -> Result<JobId, EnqueueError<J>> {
        let id = JobId::new();
        let entry = self.registry.kind(kind);
        let state = if delay.is_some() {
            JobState::Scheduled
        } else {
            JobState::Queued
        };
        self.status.insert(id, kind, state);
        let envelope = Envelope {
            id,
            attempts: 0,
            kind,
            job: Box::new(job),
        };
        let sent = match delay {
            None => self.ready.push(envelope),
            Some(delay) => self
                .timer_tx
                .send(Timed::new(delay, envelope))
                .map_err(|e| e.0.envelope),
        };
        if let Err(envelope) = sent {
            // Shutdown closed the way in between admission and hand-over: give the job back.
            self.status.forget(id);
            self.permits.add_permits(1);
            let job = downcast::<J>(envelope.job);
            return match job {
                Some(job) => Err(EnqueueError::ShuttingDown(job)),
                None => Ok(id),
            };
        }
        Counters::bump(&self.counters.enqueued);
        entry.metrics.enqueued.increment(1);
        entry.metrics.depth.increment(1.0);
        Ok(id)
    }

    pub(crate) fn depth(&self) -> usize {
        match &self.durable {
            Some(d) => usize::try_from(d.depth.load(Ordering::Relaxed)).unwrap_or(usize::MAX),
            None => {
                let unreleased: usize = self
                    .unreleased
                    .iter()
                    .map(|s| s.0.load(Ordering::Relaxed))
                    .sum();
                self.capacity
                    .saturating_sub(self.permits.available_permits())
                    .saturating_sub(unreleased)
            }
        }
    }

    fn health(&self) -> Health {
        let mut health = self.thresholds.judge(
            self.depth(),
            self.capacity,
            self.stopping.load(Ordering::Acquire),
        );
        if let Some(d) = &self.durable
            && !d.reachable.load(Ordering::Acquire)
            && health.status == crate::HealthStatus::Healthy
        {
            health.status = crate::HealthStatus::Degraded;
        }
        health
    }

    fn stats(&self) -> Stats {
        let c = &self.counters;
        let stopping = self.stopping.load(Ordering::Acquire);
        Stats {
            enqueued: c.enqueued.load(),
            started: c.started.load(),
            succeeded: c.succeeded.load(),
            failed: c.failed.load(),
            retried: c.retried.load(),
            dead_lettered: c.dead_lettered.load(),
            lease_lost: c.lease_lost.load(),
            recovered: c.recovered.load(),
            cancelled: c.cancelled.load(),
            depth: self.depth(),
            capacity: self.capacity,
            in_flight: c.in_flight(),
            is_running: !stopping,
            is_stopping: stopping,
        }
    }

    fn requeue(&self, id: JobId) -> Result<JobId, RequeueError> {
        let dead = self.dead.take(id).ok_or(RequeueError::NotFound(id))?;
        let Some(entry) = self.registry.by_name(&dead.job) else {
            let err = RequeueError::UnknownJob {
                id,
                job: dead.job.clone(),
            };
            self.dead.put_back(dead);
            return Err(err);
        };
        let job = match (entry.ty.decode)(&dead.payload) {
            Ok(job) => job,
            Err(e) => {
                let err = RequeueError::Decode {
                    id,
                    job: dead.job.clone(),
                    message: e.to_string(),
                };
                self.dead.put_back(dead);
                return Err(err);
            }
        };
        match self.permits.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(e) => {
                self.dead.put_back(dead);
                return Err(match e {
                    TryAcquireError::NoPermits => RequeueError::QueueFull,
                    TryAcquireError::Closed => RequeueError::ShuttingDown,
                });
            }
        }
        self.status.requeued(id, entry.kind);
        let envelope = Envelope {
            id,
            attempts: 0,
            kind: entry.kind,
            job,
        };
        if self.ready.push(envelope).is_err() {
            self.permits.add_permits(1);
            self.dead.put_back(dead);
            return Err(RequeueError::ShuttingDown);
        }
        Counters::bump(&self.counters.enqueued);
        entry.metrics.enqueued.increment(1);
        entry.metrics.depth.increment(1.0);
        tracing::info!(job_id = %id, job = entry.ty.name, "dead job requeued");
        Ok(id)
    }
}

fn downcast<J: Job>(job: Box<dyn ErasedJob>) -> Option<J> {
    let any: Box<dyn std::any::Any> = job.into_any();
    any.downcast::<J>().ok().map(|b| *b)
}

/// A running job runtime: workers, timer, status, dead letters. Stop it with
/// [`shutdown`](Self::shutdown); dropping the handle does not stop it.
#[derive(Clone, Debug)]
pub struct JobRuntime {
    client: Client,
}

impl JobRuntime {
    /// A builder with the defaults: capacity 100, concurrency = available parallelism,
    /// shutdown timeout 25 s, health thresholds 75% / 95%, payload limit 256 KiB.
    pub fn builder() -> JobRuntimeBuilder {
        JobRuntimeBuilder::default()
    }

    /// A client for this runtime.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The status of a job.
    ///
    /// # Errors
    /// See [`Client::status`].
    pub async fn status(&self, id: JobId) -> Result<Option<JobStatus>, QueryError> {
        self.client.status(id).await
    }

    /// Health from load.
    pub fn health(&self) -> Health {
        self.client.health()
    }

    /// Counters and load.
    pub fn stats(&self) -> Stats {
        self.client.stats()
    }

    /// The dead letters kept, oldest first.
    ///
    /// # Errors
    /// See [`Client::dead_letters`].
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueryError> {
        self.client.dead_letters().await
    }

    /// What a job produced. See [`Client::result`].
    ///
    /// # Errors
    /// See [`Client::result`].
    pub async fn result<J: Job>(&self, id: JobId) -> Result<J::Output, ResultError> {
        self.client.result::<J>(id).await
    }

    /// Cancels a job by id. See [`Client::cancel`].
    ///
    /// # Errors
    /// See [`Client::cancel`].
    pub async fn cancel(&self, id: JobId) -> Result<Cancellation, CancelError> {
        self.client.cancel(id).await
    }

    /// Requeues a dead job by id. See [`Client::requeue`].
    ///
    /// # Errors
    /// See [`Client::requeue`].
    pub async fn requeue(&self, id: JobId) -> Result<JobId, RequeueError> {
        self.client.requeue(id).await
    }

    /// Stops the runtime: refuses new jobs at once, stops starting queued ones (unless
    /// [`drain_queue_on_shutdown`](JobRuntimeBuilder::drain_queue_on_shutdown)), gives running
    /// attempts the shutdown timeout, then fires their cancellation tokens and, after the
    /// cancel grace, drops them. Returns a report naming every job left behind; the same
    /// report goes to the `on_shutdown` hooks and the log.
    ///
    /// Calling it again, or from several tasks, is harmless: all get the same report.
    pub async fn shutdown(&self) -> ShutdownReport {
        let inner = self.client.inner.clone();
        self.client
            .inner
            .report
            .get_or_init(|| shutdown::run(inner))
            .await
            .clone()
    }
}
