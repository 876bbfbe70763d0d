//! The [`Job`] trait, [`JobId`] and [`JobOptions`].

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::{Dependencies, JobContext};
use crate::error::{BoxError, Classify, EnqueueError};
use crate::retry::Backoff;
use crate::runtime::Client;

/// A unit of background work: a serializable value plus what to do with it.
///
/// Most jobs are written with the [`#[job]`](crate::job) attribute on an `async fn`, which
/// generates this impl. Implement it by hand when you want full control; register
/// hand-written jobs with [`JobRuntimeBuilder::register`](crate::JobRuntimeBuilder::register).
///
/// `run` borrows the job: the runtime keeps the value for later attempts and for the
/// dead-letter record, so nothing is cloned or serialized on the way to a worker.
///
/// # Examples
///
/// ```
/// use job_core::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct Resize { image: u64 }
///
/// impl Job for Resize {
///     const NAME: &'static str = "resize";
///     type Error = std::io::Error;
///     type Output = ();
///     fn options() -> JobOptions { JobOptions::new().queue("images").max_attempts(5) }
///     async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
///         tracing::info!(image = self.image, attempt = cx.attempt(), "resizing");
///         Ok(())
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let runtime = JobRuntime::builder().register::<Resize>().start()?;
/// let id = runtime.client().enqueue(Resize { image: 7 }).await?;
/// # runtime.shutdown().await;
/// # let _ = id; Ok(()) }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + Sync + Sized + 'static {
    /// The stable wire name of the job. It is what durable backends store, so renaming the
    /// Rust type must not change it. Must match `[A-Za-z0-9_.-]{1,64}`.
    const NAME: &'static str;

    /// The error an attempt can fail with. [`Classify`] decides whether it is retried.
    type Error: Classify + Into<BoxError> + Send + 'static;

    /// What a successful attempt produces: kept with the job's status (as JSON, at most
    /// [`RESULT_LIMIT`](crate::RESULT_LIMIT) bytes) and read back, typed, with
    /// [`Client::result`]. `()` keeps nothing. `#[job]` takes it from the fn's return type
    /// (`Result<T, E>` makes it `T`).
    type Output: JobOutput;

    /// Queue, attempts, backoff and timeout. Read once, when the job is registered.
    fn options() -> JobOptions {
        JobOptions::default()
    }

    /// The recurring schedule the job declares (`#[job(cron = "..", timezone = "..")]`):
    /// every runtime the job is registered on runs it, as if given to
    /// [`JobRuntimeBuilder::schedule`](crate::JobRuntimeBuilder::schedule). `None` (the
    /// default): the job runs when enqueued.
    fn recurring() -> Option<Recurring<Self>>
    where
        Self: Sized,
    {
        None
    }

    /// The job's uniqueness key (`#[job(unique(by = [..], for = ".."))]`): while another
    /// job holds it, [`Client::enqueue`](crate::Client::enqueue) enqueues nothing and returns
    /// that job's id (see [`unique`](crate::unique)). `None` (the default): every enqueue is
    /// a new job.
    fn unique(&self) -> Option<crate::Unique> {
        None
    }

    /// Declares the injected values `run` needs, so the runtime can refuse to start when one
    /// is missing instead of failing when the job first runs.
    fn dependencies(deps: &mut Dependencies) {
        let _ = deps;
    }

    /// Runs one attempt; `Ok` carries the job's [`Output`](Self::Output).
    fn run(
        &self,
        cx: &JobContext,
    ) -> impl Future<Output = Result<Self::Output, Self::Error>> + Send;

    /// Enqueues this job on the ambient runtime (the one most recently started) and returns
    /// its id at once; waits while the runtime is at capacity.
    ///
    /// # Errors
    /// See [`Client::enqueue`]; [`EnqueueError::NoRuntime`] when no runtime is running.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it completes, the job was not enqueued.
    fn enqueue(self) -> impl Future<Output = Result<JobId, EnqueueError<Self>>> + Send {
        async move {
            match Client::ambient() {
                Some(client) => client.enqueue(self).await,
                None => Err(EnqueueError::NoRuntime(self)),
            }
        }
    }

    /// Enqueues this job on the ambient runtime without waiting.
    ///
    /// # Errors
    /// [`EnqueueError::QueueFull`] with the job when the runtime is at capacity; see
    /// [`Client::try_enqueue`].
    fn try_enqueue(self) -> Result<JobId, EnqueueError<Self>> {
        match Client::ambient() {
            Some(client) => client.try_enqueue(self),
            None => Err(EnqueueError::NoRuntime(self)),
        }
    }

    /// Enqueues this job on the ambient runtime without waiting for room, on every backend
    /// (a durable store's round trip, but no wait while it is full).
    ///
    /// # Errors
    /// See [`Client::enqueue_if_room`]; [`EnqueueError::NoRuntime`] when no runtime is
    /// running.
    fn enqueue_if_room(self) -> impl Future<Output = Result<JobId, EnqueueError<Self>>> + Send {
        async move {
            match Client::ambient() {
                Some(client) => client.enqueue_if_room(self).await,
                None => Err(EnqueueError::NoRuntime(self)),
            }
        }
    }

    /// Enqueues this job on the ambient runtime to start no earlier than `delay` from now.
    ///
    /// # Errors
    /// See [`Client::enqueue_in`].
    fn enqueue_in(
        self,
        delay: Duration,
    ) -> impl Future<Output = Result<JobId, EnqueueError<Self>>> + Send {
        async move {
            match Client::ambient() {
                Some(client) => client.enqueue_in(self, delay).await,
                None => Err(EnqueueError::NoRuntime(self)),
            }
        }
    }

    /// Enqueues this job on the ambient runtime with the caller's Postgres transaction: it
    /// runs if and only if the transaction commits. See [`Client::enqueue_tx`].
    ///
    /// # Errors
    /// See [`Client::enqueue_tx`].
    #[cfg(feature = "postgres")]
    fn enqueue_tx<C>(
        self,
        tx: &mut C,
    ) -> impl Future<Output = Result<JobId, EnqueueError<Self>>> + Send
    where
        C: AsMut<sqlx::PgConnection> + Send + ?Sized,
    {
        async move {
            match Client::ambient() {
                Some(client) => client.enqueue_tx(tx, self).await,
                None => Err(EnqueueError::NoRuntime(self)),
            }
        }
    }

    /// Enqueues this job on the ambient runtime to start no earlier than `at`.
    ///
    /// # Errors
    /// See [`Client::enqueue_at`].
    fn enqueue_at(
        self,
        at: SystemTime,
    ) -> impl Future<Output = Result<JobId, EnqueueError<Self>>> + Send {
        async move {
            match Client::ambient() {
                Some(client) => client.enqueue_at(self, at).await,
                None => Err(EnqueueError::NoRuntime(self)),
            }
        }
    }
}

/// The largest result a job may keep, in bytes of JSON: a bigger one is not kept (the job
/// still succeeds, since its work is done; the runtime logs an error and
/// [`Client::result`] answers [`ResultError::NotKept`](crate::ResultError::NotKept)).
pub const RESULT_LIMIT: usize = 64 * 1024;

/// What a job's [`Output`](Job::Output) must be: a value that goes to JSON and back
/// (implemented for every such type; nothing to implement by hand).
#[diagnostic::on_unimplemented(
    message = "a job's result must be `Serialize + DeserializeOwned + Send + Sync + 'static`, and `{Self}` is not",
    label = "the `Ok` type of the job's `Result`",
    note = "add `#[derive(serde::Serialize, serde::Deserialize)]` to the result type, or return `Result<(), E>` to keep no result"
)]
pub trait JobOutput: Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> JobOutput for T {}

/// The id of one enqueued job: a UUIDv7, made at enqueue, ordered by creation time.
///
/// It is a field of the job's tracing span and the key of its status.
///
/// # Examples
/// ```
/// let id = job_core::JobId::new();
/// let parsed: job_core::JobId = id.to_string().parse().unwrap();
/// assert_eq!(id, parsed);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct JobId(uuid::Uuid);

impl JobId {
    /// A fresh UUIDv7 for the current time.
    ///
    /// After the 48-bit millisecond timestamp come 42 random bits, then a 32-bit sequence
    /// number (RFC 9562's counter method) that starts at a random point in each process: ids
    /// made one after the other differ there by small steps, which keeps the status store's
    /// accesses close together in memory, in the order the jobs run.
    pub fn new() -> Self {
        let millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let random = fastrand::u64(..).to_le_bytes();
        let mut bytes = [0u8; 10];
        bytes[..6].copy_from_slice(&random[..6]);
        bytes[6..].copy_from_slice(&next_sequence().to_be_bytes());
        Self(uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid())
    }

    /// The id of a schedule's tick: the same for every process that runs the schedule
    /// `schedule` (its name) and reaches the tick due at `tick_ms` (milliseconds since the
    /// Unix epoch), so that a durable store, which keeps one job per id, holds one job for
    /// the tick however many processes enqueue it. A UUIDv7 whose time is the tick's and
    /// whose other bits come from a SHA-1 hash of the schedule's name and the tick (the
    /// name-based UUIDv5 construction, under a namespace of this crate's).
    ///
    /// ```
    /// use job_core::JobId;
    ///
    /// let a = JobId::for_tick("report every 1h", 1_767_225_600_000);
    /// assert_eq!(a, JobId::for_tick("report every 1h", 1_767_225_600_000));
    /// assert_ne!(a, JobId::for_tick("report every 1h", 1_767_229_200_000));
    /// assert_ne!(a, JobId::for_tick("digest every 1h", 1_767_225_600_000));
    /// let at = a.time().unwrap();
    /// assert_eq!(at, std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_767_225_600_000));
    /// ```
    pub fn for_tick(schedule: &str, tick_ms: u64) -> Self {
        /// The namespace of tick ids (a random UUID fixed for this crate).
        const TICK_NAMESPACE: uuid::Uuid =
            uuid::Uuid::from_u128(0x6c1f_5a0e_93d4_4b27_a8e2_0d5b_7f41_c93e);
        let name = format!("{schedule}\n{tick_ms}");
        let hashed = uuid::Uuid::new_v5(&TICK_NAMESPACE, name.as_bytes());
        let mut bytes = [0u8; 10];
        bytes.copy_from_slice(&hashed.as_bytes()[6..]);
        Self(uuid::Builder::from_unix_timestamp_millis(tick_ms, &bytes).into_uuid())
    }

    /// The time the id carries: when [`JobId::new`] made it, or the tick a schedule
    /// enqueued the job for ([`JobId::for_tick`]); `None` for an id that is not a UUIDv7.
    pub fn time(&self) -> Option<SystemTime> {
        self.unix_ms()
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }

    /// The low bits of the id, used to spread ids over shards.
    pub(crate) fn shard_key(&self) -> u64 {
        self.0.as_u64_pair().1
    }

    /// The Unix time in milliseconds a UUIDv7 carries (the time [`JobId::new`] read); `None`
    /// for an id of another version.
    pub(crate) fn unix_ms(&self) -> Option<u64> {
        (self.0.get_version_num() == 7).then(|| self.0.as_u64_pair().0 >> 16)
    }
}

/// The next number of the process-wide id sequence. Threads take it in blocks, so producers
/// on several threads do not contend on one counter for every id.
fn next_sequence() -> u32 {
    use std::cell::Cell;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};

    const BLOCK: u32 = 64;
    static NEXT_BLOCK: AtomicU32 = AtomicU32::new(0);
    static START: OnceLock<u32> = OnceLock::new();
    thread_local! {
        /// The next number and the end of this thread's block.
        static RANGE: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
    }
    RANGE.with(|range| {
        let (mut next, mut end) = range.get();
        if next == end {
            let start = *START.get_or_init(|| fastrand::u32(..));
            next = start.wrapping_add(NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed));
            end = next.wrapping_add(BLOCK);
        }
        range.set((next.wrapping_add(1), end));
        next
    })
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<uuid::Uuid> for JobId {
    fn from(value: uuid::Uuid) -> Self {
        Self(value)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

/// Per-job settings: queue, attempts, backoff and timeout.
///
/// Defaults: queue `"default"`, 3 attempts, backoff from 1 s doubling to at most 5 min with
/// 20% jitter, no timeout.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use job_core::{Backoff, JobOptions};
///
/// let options = JobOptions::new()
///     .queue("email")
///     .max_attempts(5)
///     .backoff(Backoff::new(Duration::from_secs(2), Duration::from_secs(60), 0.2))
///     .timeout(Duration::from_secs(30));
/// assert_eq!(options.queue, "email");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobOptions {
    /// Queue name, `[A-Za-z0-9_.-]{1,64}`.
    pub queue: &'static str,
    /// Attempts in all, the first included; at least 1.
    pub max_attempts: u32,
    /// Delay between attempts after a transient failure.
    pub backoff: Backoff,
    /// Longest one attempt may run; it then fails as transient. `None`: no limit.
    pub timeout: Option<Duration>,
}

impl JobOptions {
    /// The defaults.
    pub const fn new() -> Self {
        Self {
            queue: "default",
            max_attempts: 3,
            backoff: Backoff::DEFAULT,
            timeout: None,
        }
    }

    /// Sets the queue.
    pub const fn queue(mut self, queue: &'static str) -> Self {
        self.queue = queue;
        self
    }

    /// Sets the number of attempts in all (values below 1 are treated as 1).
    pub const fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = if max_attempts == 0 { 1 } else { max_attempts };
        self
    }

    /// Sets the backoff.
    pub const fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the per-attempt timeout.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl Default for JobOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Checks a queue or job name against `[A-Za-z0-9_.-]{1,64}`, the rule that keeps names
/// safe to use in Redis keys and Postgres channels.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A job's own recurring schedule (see [`Job::recurring`]): the [`Schedule`](crate::schedule::Schedule) and the
/// function that makes each tick's job.
///
/// ```
/// # use job_core::prelude::*;
/// use job_core::Recurring;
/// use job_core::schedule::Schedule;
///
/// #[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
/// struct Cleanup;
///
/// impl Job for Cleanup {
///     const NAME: &'static str = "cleanup";
///     type Error = std::io::Error;
///     type Output = ();
///     fn recurring() -> Option<Recurring<Self>> {
///         Some(Recurring::new(Schedule::cron("0 3 * * *").ok()?, Cleanup::default))
///     }
///     async fn run(&self, _: &JobContext) -> Result<(), Self::Error> { Ok(()) }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let runtime = JobRuntime::builder().register::<Cleanup>().start()?;
/// assert_eq!(runtime.client().schedules()[0].name, "cleanup cron `0 3 * * *`");
/// # runtime.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Recurring<J> {
    pub(crate) schedule: Result<crate::schedule::Schedule, String>,
    pub(crate) make: fn() -> J,
}

impl<J> Recurring<J> {
    /// `make()` at each tick of `schedule`.
    pub fn new(schedule: crate::schedule::Schedule, make: fn() -> J) -> Self {
        Self {
            schedule: Ok(schedule),
            make,
        }
    }

    /// What `#[job(cron = .., timezone = .., misfire = ..)]` expands to; the macro has
    /// checked the expression and the zone already, so an error here (a different `cron` or
    /// `chrono-tz` version at run time) becomes a problem `start()` reports.
    #[doc(hidden)]
    pub fn __declared(cron: &str, timezone: &str, run_once: bool, make: fn() -> J) -> Self {
        use crate::schedule::{Misfire, Schedule};
        let schedule = Schedule::cron(cron)
            .map_err(|e| e.to_string())
            .and_then(|s| s.timezone(timezone).map_err(|e| e.to_string()))
            .map(|s| {
                s.misfire(if run_once {
                    Misfire::RunOnce
                } else {
                    Misfire::Skip
                })
            });
        Self { schedule, make }
    }
}

impl<J> fmt::Debug for Recurring<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recurring")
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v7_and_round_trip() {
        let id = JobId::new();
        assert_eq!(id.as_uuid().get_version_num(), 7);
        assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
        assert!("not-a-uuid".parse::<JobId>().is_err());
    }

    #[test]
    fn unix_ms_is_the_creation_time() {
        let before = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ms = JobId::new().unix_ms().unwrap();
        let after = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(before <= ms && ms <= after, "{before} {ms} {after}");
        assert_eq!(JobId::from(uuid::Uuid::nil()).unix_ms(), None);
    }

    #[test]
    fn ids_made_in_a_row_are_in_sequence() {
        // A fresh thread starts a fresh block, so its first ids are consecutive.
        let (a, b) = std::thread::spawn(|| (JobId::new(), JobId::new()))
            .join()
            .unwrap();
        let seq = |id: JobId| id.as_uuid().as_u64_pair().1 as u32;
        assert_eq!(seq(b), seq(a).wrapping_add(1));
        assert_eq!(b.as_uuid().get_version_num(), 7);
    }

    #[test]
    fn ids_are_distinct() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| JobId::new()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn names() {
        assert!(is_valid_name("send_email.v2-x"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a:b"));
        assert!(!is_valid_name("{q}"));
        assert!(!is_valid_name(&"a".repeat(65)));
    }
}
