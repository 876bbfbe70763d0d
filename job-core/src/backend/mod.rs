//! Durable backends: the adapter trait the runtime drives when jobs must outlive the process.
//!
//! Without a backend the runtime keeps typed values in memory (the fast default, at-most-once
//! across a crash). With one — [`JobRuntimeBuilder::backend`](crate::JobRuntimeBuilder::backend)
//! — the same jobs and the same workers run on serialized [`Envelope`]s the backend stores,
//! at least once:
//!
//! * [`reserve`](Backend::reserve) hands out jobs under a **lease**: a random token and an
//!   expiry. Only the holder of the current token can [`ack`](Backend::ack),
//!   [`retry`](Backend::retry), [`dead_letter`](Backend::dead_letter),
//!   [`extend`](Backend::extend) or [`release`](Backend::release) the job; a stale holder
//!   gets [`BackendError::LeaseLost`] and changes nothing (fencing). A write-back repeated
//!   with the token whose outcome was written last (its reply was lost) succeeds again and
//!   changes nothing; a write-back of another outcome with that token is a stale holder's.
//! * The runtime renews the leases of running jobs (heartbeat) and calls
//!   [`reap`](Backend::reap) periodically: a job whose lease expired (its worker died) goes
//!   back to its queue, counted as a *recovery*, apart from handler failures; after
//!   `max_recoveries` recoveries it is dead-lettered as a poison pill.
//! * Every state change must be atomic in the store (one Lua script, one SQL statement).
//!
//! # Writing a backend
//! Implement [`Backend`] (object-safe; methods return boxed futures) and run the shared
//! conformance suite in `tests/` against it. Queue and job names reaching a backend have been
//! checked against `[A-Za-z0-9_.-]{1,64}`.

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod announce;
mod arc;
#[cfg(feature = "azure")]
pub mod azure;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::dead_letter::DeadLetter;
use crate::job::JobId;
use crate::observe::status::{JobState, JobStatus};

/// A boxed, sendable future, as backend methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A job as durable backends store it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    /// The job's id.
    pub id: JobId,
    /// The job's registered name.
    pub job: String,
    /// Its queue.
    pub queue: String,
    /// Its arguments, as the JSON the client encoded.
    pub payload: Payload,
    /// Attempts started so far (the next reservation makes it `attempt + 1`).
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// Times its lease expired while it ran (worker crashes), apart from failures.
    #[serde(default)]
    pub recoveries: u32,
    /// When it was first enqueued, in milliseconds since the Unix epoch.
    pub enqueued_at: u64,
    /// Not to start before this time (ms since the Unix epoch), for delayed jobs and retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u64>,
    /// The current lease token, while reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseToken>,
}

/// A job's arguments as JSON text, encoded once by the client and carried as is: a backend
/// stores these bytes and hands the same bytes back, and the worker decodes the job from
/// them. (A `serde_json::Value` in between cost an allocation per field and two more passes
/// per job.)
///
/// ```
/// use job_core::backend::Payload;
///
/// let p = Payload::encode(&serde_json::json!({ "to": "a@example.com", "n": 2 })).unwrap();
/// assert_eq!(p.as_str(), r#"{"n":2,"to":"a@example.com"}"#);
/// // Stored text comes back as is, once checked to be JSON.
/// let back = Payload::from_json(p.as_str().to_owned()).unwrap();
/// assert_eq!(back, p);
/// assert!(Payload::from_json("{not json".to_owned()).is_err());
/// assert_eq!(p.to_value()["n"], 2);
/// ```
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Payload(Box<serde_json::value::RawValue>);

impl Payload {
    /// Encodes `value` as JSON.
    ///
    /// # Errors
    /// When `value`'s `Serialize` fails (a map with non-string keys, a failing custom impl).
    pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// Takes JSON text as stored, after checking that it is one well-formed JSON value.
    ///
    /// # Errors
    /// When `json` is not valid JSON.
    pub fn from_json(json: String) -> Result<Self, serde_json::Error> {
        serde_json::value::RawValue::from_string(json).map(Self)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.as_str().len()
    }

    /// Whether the text is empty (never, for a payload built by this type).
    pub fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }

    /// Parsed into a `serde_json::Value` (for dead letters and inspection).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.as_str()).unwrap_or_else(|_| {
            // Unreachable: the text was checked to be JSON when the payload was built.
            serde_json::Value::String(self.as_str().to_owned())
        })
    }
}

impl From<&serde_json::Value> for Payload {
    fn from(value: &serde_json::Value) -> Self {
        // A `Value` always encodes: its map keys are strings.
        Self::encode(value).unwrap_or_else(|_| Self(serde_json::value::RawValue::NULL.to_owned()))
    }
}

impl From<serde_json::Value> for Payload {
    fn from(value: serde_json::Value) -> Self {
        Self::from(&value)
    }
}

/// Byte for byte: two payloads are equal when their JSON text is.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Payload {}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lease token: proof of holding a reserved job.
///
/// Most backends make their own random token ([`random`](Self::random), a `u128` they store
/// beside the job); a store that issues its own proof of holding — an Azure pop receipt, a
/// broker's delivery on a channel — carries it as [`opaque`](Self::opaque) text. Tokens are
/// compared by value; a backend reads back only the kind it made. Where a store issues a new
/// token on every renewal, [`Backend::extend`] returns it in [`Extended::renewed`] and the
/// runtime uses it for every later write-back of that job.
///
/// ```
/// use job_core::backend::LeaseToken;
///
/// let t = LeaseToken::from_u128(7);
/// assert_eq!(t.as_u128(), Some(7));
/// assert_eq!(t.as_opaque(), None);
/// let receipt = LeaseToken::opaque("AgAAAAMAAAAAAAAA");
/// assert_eq!(receipt.as_opaque(), Some("AgAAAAMAAAAAAAAA"));
/// assert_ne!(receipt, t);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct LeaseToken(TokenRepr);

/// What a [`LeaseToken`] holds: serialized as a number or a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum TokenRepr {
    Random(u128),
    Opaque(Box<str>),
}

impl LeaseToken {
    /// A fresh random token.
    pub fn random() -> Self {
        Self(TokenRepr::Random(fastrand::u128(..)))
    }

    /// The token a backend stored as this number.
    pub const fn from_u128(value: u128) -> Self {
        Self(TokenRepr::Random(value))
    }

    /// The number, for a token made by [`random`](Self::random) or
    /// [`from_u128`](Self::from_u128).
    pub const fn as_u128(&self) -> Option<u128> {
        match self.0 {
            TokenRepr::Random(v) => Some(v),
            TokenRepr::Opaque(_) => None,
        }
    }

    /// A token the store issued (a pop receipt, say), kept as text.
    pub fn opaque(text: impl Into<Box<str>>) -> Self {
        Self(TokenRepr::Opaque(text.into()))
    }

    /// The text, for a token made by [`opaque`](Self::opaque).
    pub fn as_opaque(&self) -> Option<&str> {
        match &self.0 {
            TokenRepr::Random(_) => None,
            TokenRepr::Opaque(text) => Some(text),
        }
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            TokenRepr::Random(v) => write!(f, "{v:032x}"),
            TokenRepr::Opaque(text) => f.write_str(text),
        }
    }
}

/// What [`Backend::extend`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extended {
    /// Jobs whose lease was already lost: nothing was renewed for them.
    pub lost: Vec<JobId>,
    /// Jobs whose store issued a new token with the renewal: the old one is spent, and every
    /// later write-back must use this one. Empty for backends whose token stays the same.
    pub renewed: Vec<(JobId, LeaseToken)>,
    /// Jobs renewed whose cancel was requested ([`Backend::cancel`] answered
    /// [`CancelOutcome::Requested`]): the runtime fires their attempts' tokens and, when they
    /// return, writes them back with [`Backend::finish_cancelled`].
    pub cancelled: Vec<JobId>,
}

/// What [`Backend::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was waiting (ready, scheduled or retrying): it is cancelled now and will not
    /// be reserved.
    Removed,
    /// The job is reserved: the request is recorded with it, the holder learns it from its
    /// next [`extend`](Backend::extend) and ends the job with
    /// [`finish_cancelled`](Backend::finish_cancelled). Until then a `retry` or `release` of
    /// it, or the reaper finding its lease expired, ends it cancelled instead; an `ack` or a
    /// `dead_letter` ends it as usual (the attempt finished before it saw the cancel).
    Requested,
    /// The job had already finished in this state: nothing changed.
    Finished(JobState),
}

/// What a backend can do, so that the runtime answers
/// [`Unsupported`](crate::QueryError::Unsupported) instead of faking it, and the conformance
/// suite checks each capability where it is declared. A store that cannot look a job up by
/// id (a broker) or counts its messages only approximately (Azure Queue Storage) says so
/// here; [`full`](Self::full) is everything, as the memory, Redis and Postgres backends do.
/// A backend names what it lacks and takes the rest from `full()`, so a field added later
/// defaults to what the runtime assumed before it existed:
///
/// ```
/// use job_core::backend::Capabilities;
///
/// let broker = Capabilities {
///     status_by_id: false,
///     idempotent_enqueue: false,
///     ..Capabilities::full()
/// };
/// assert!(broker.dead_letter_listing && !broker.status_by_id);
/// assert_eq!(broker.max_payload, None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// [`Backend::status`] finds a job by id.
    pub status_by_id: bool,
    /// [`Backend::dead_letters`] lists the dead letters kept.
    pub dead_letter_listing: bool,
    /// [`Backend::requeue`] moves a dead job back by id.
    pub requeue_by_id: bool,
    /// [`Backend::stats`] counts exactly, and `enqueue` enforces `capacity` exactly; without
    /// it the counts (and so health and the capacity check) are approximate.
    pub exact_depth: bool,
    /// An enqueue of an id already stored changes nothing (an enqueue repeated after a lost
    /// reply does not duplicate the job); without it a repeated enqueue stores the job twice
    /// and the handler's idempotency must absorb it.
    pub idempotent_enqueue: bool,
    /// Jobs of one queue are reserved in the order they were enqueued (FIFO), and a released
    /// job goes back to the front.
    pub ordered: bool,
    /// The store's hard limit on one stored job's payload, in bytes: the runtime refuses a
    /// bigger payload with [`PayloadTooLarge`](crate::EnqueueError::PayloadTooLarge) before
    /// it calls the store.
    pub max_payload: Option<usize>,
    /// The longest an attempt may hold its lease before the store takes the job back
    /// whatever the heartbeat does (RabbitMQ's `consumer_timeout`): the runtime refuses to
    /// start with a job whose `timeout` is longer, or that has none.
    pub max_attempt_duration: Option<Duration>,
    /// Acknowledgements are cheap to batch (one call for many): workers move on while a
    /// writer acknowledges their successes in batches. Without it (a store that deletes
    /// messages one request at a time, as Azure Queue Storage does) each worker writes its
    /// own acknowledgement before it takes its next job, so successes never pile up
    /// unacknowledged and a crash re-runs no more than the jobs it interrupted.
    pub batched_acks: bool,
    /// [`Backend::cancel`] finds a job by id and cancels it, and [`Backend::extend`] reports
    /// the cancels requested for held jobs. Without it [`Client::cancel`](crate::Client::cancel)
    /// answers [`Unsupported`](crate::CancelError::Unsupported).
    pub cancel_by_id: bool,
    /// [`Backend::record_progress`] keeps what running jobs report, and
    /// [`Backend::status`] shows it. Without it reports stay in the process (a store without
    /// status by id has nowhere to show them).
    pub progress: bool,
    /// [`Backend::ack_results`] keeps a job's result with its status, and
    /// [`Backend::status`] shows it, for the status retention. Without it
    /// [`Client::result`](crate::Client::result) answers
    /// [`Unsupported`](crate::ResultError::Unsupported) and results are not written.
    pub results: bool,
    /// [`Backend::watch_finish`] asks the store to announce a job's end to every process
    /// on it, and the signal it returns fires on those announcements:
    /// [`Client::wait`](crate::Client::wait) wakes as soon as a job ends, also when another
    /// process ran it. Without it a waiter reads the status again at a growing interval
    /// (every 250 ms at most).
    pub finish_wakeups: bool,
    /// [`Backend::enqueue_unique`] keeps uniqueness keys and checks them in the same atomic
    /// step as the enqueue. Without it a unique enqueue answers
    /// [`Unsupported`](crate::EnqueueError::Unsupported).
    pub unique_keys: bool,
}

impl Capabilities {
    /// Everything, with no store limits.
    pub const fn full() -> Self {
        Self {
            status_by_id: true,
            dead_letter_listing: true,
            requeue_by_id: true,
            exact_depth: true,
            idempotent_enqueue: true,
            ordered: true,
            max_payload: None,
            max_attempt_duration: None,
            batched_acks: true,
            cancel_by_id: true,
            progress: true,
            results: true,
            finish_wakeups: true,
            unique_keys: true,
        }
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::full()
    }
}

/// One reserved job.
#[derive(Debug, Clone)]
pub enum Reservation {
    /// A job that decoded as an [`Envelope`].
    Job {
        /// The envelope (its `attempt` already counts this reservation).
        envelope: Envelope,
        /// The lease.
        token: LeaseToken,
    },
    /// Stored bytes that are not an envelope: the runtime dead-letters them with the reason.
    Malformed {
        /// The id under which they were stored.
        id: JobId,
        /// The lease.
        token: LeaseToken,
        /// The queue it was reserved from.
        queue: String,
        /// The raw bytes, lossily as text.
        raw: String,
        /// Why they do not decode.
        reason: String,
    },
}

impl Reservation {
    /// The reserved job's id.
    pub fn id(&self) -> JobId {
        match self {
            Self::Job { envelope, .. } => envelope.id,
            Self::Malformed { id, .. } => *id,
        }
    }

    /// The lease token.
    pub fn token(&self) -> &LeaseToken {
        match self {
            Self::Job { token, .. } | Self::Malformed { token, .. } => token,
        }
    }
}

/// Where a reserved job goes when its attempt fails and may be retried.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Start no earlier than this.
    pub at: SystemTime,
    /// The failure, as `error: source: source`.
    pub error: String,
}

/// What one reaper pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reaped {
    /// Jobs whose lease had expired, back in their queue.
    pub recovered: Vec<JobId>,
    /// Jobs dead-lettered because they had been recovered too often (poison pills).
    pub dead: Vec<DeadLetter>,
}

/// Counts a backend reports, for stats and health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Jobs ready to run.
    pub ready: u64,
    /// Jobs waiting for a start time (delayed or retrying).
    pub scheduled: u64,
    /// Jobs reserved (running somewhere).
    pub running: u64,
    /// Dead letters kept.
    pub dead: u64,
}

impl BackendStats {
    /// Jobs admitted and not finished.
    pub fn depth(&self) -> u64 {
        self.ready + self.scheduled + self.running
    }
}

/// A backend failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The caller no longer holds the job's lease (it expired and the job was recovered,
    /// possibly by another worker). Nothing was changed.
    #[error("lease lost: job {0} is no longer held by this worker")]
    LeaseLost(JobId),
    /// The store is at its configured size limit.
    #[error("queue is full")]
    Full,
    /// No job with this id is where the operation expected it.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The store could not be reached or answered with an error.
    #[error("backend unavailable")]
    Unavailable(#[source] crate::error::BoxError),
    /// The store holds something this version cannot read.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A queue or job name that cannot become a key (`[A-Za-z0-9_.-]{1,64}`).
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// The store cannot do this (see [`Capabilities`]); the runtime does not call a method
    /// its backend declares unsupported.
    #[error("not supported by this backend: {0}")]
    Unsupported(&'static str),
}

/// The adapter between the runtime and a store. See the [module docs](self).
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs ("memory", "redis").
    fn name(&self) -> &'static str;

    /// Called once when the runtime starts: check the connection and settings (the Redis
    /// backend warns unless `maxmemory-policy` is `noeviction`).
    fn connect(&self) -> BoxFuture<'_, Result<(), BackendError>>;

    /// What this backend can do. Read once when the runtime starts, before
    /// [`connect`](Self::connect) has answered, so it must not depend on the connection; the
    /// default is [`Capabilities::full`].
    fn capabilities(&self) -> Capabilities {
        Capabilities::full()
    }

    /// Stores a new job: ready at once, or scheduled when `not_before` is in the future.
    /// Fails with [`BackendError::Full`] when `capacity` jobs (ready, scheduled and running)
    /// are already stored. An id already stored succeeds and changes nothing, also when the
    /// store is full (an enqueue repeated after a lost reply does not duplicate the job).
    fn enqueue(&self, envelope: Envelope, capacity: u64)
    -> BoxFuture<'_, Result<(), BackendError>>;

    /// Stores several new jobs in one call, in order, as many as fit under `capacity`: returns
    /// how many of the first envelopes are stored (an id already stored counts as stored and
    /// changes nothing). Fewer than all means the store is full; the caller waits and sends
    /// the rest again. The default calls [`enqueue`](Self::enqueue) for each envelope; a
    /// backend with a network round trip per call should do it in one.
    fn enqueue_batch<'a>(
        &'a self,
        envelopes: &'a [Envelope],
        capacity: u64,
    ) -> BoxFuture<'a, Result<usize, BackendError>> {
        Box::pin(async move {
            for (stored, envelope) in envelopes.iter().enumerate() {
                match self.enqueue(envelope.clone(), capacity).await {
                    Ok(()) => {}
                    Err(BackendError::Full) => return Ok(stored),
                    Err(e) => {
                        return if stored == 0 { Err(e) } else { Ok(stored) };
                    }
                }
            }
            Ok(envelopes.len())
        })
    }

    /// Stores a new job under a uniqueness key, in one atomic step with the check (see
    /// [`unique`](crate::unique)). When another job holds `unique.key` (it took the key less
    /// than its window ago and, under [`UniqueUntil::Finished`](crate::unique::UniqueUntil),
    /// has not finished), nothing changes and the answer is
    /// [`Enqueued::Existing`](crate::Enqueued) with that job's id. Otherwise the job is
    /// stored as [`enqueue`](Self::enqueue) stores it ([`BackendError::Full`] at `capacity`,
    /// and then the key is not taken), the key names it for `unique.window`, and the answer
    /// is `Enqueued::New`. An id already stored (this call repeated after a lost reply)
    /// answers `New` and changes nothing. The default answers
    /// [`BackendError::Unsupported`]; a backend that implements it declares
    /// [`Capabilities::unique_keys`].
    fn enqueue_unique<'a>(
        &'a self,
        envelope: Envelope,
        capacity: u64,
        unique: &'a crate::unique::UniqueKey,
    ) -> BoxFuture<'a, Result<crate::Enqueued, BackendError>> {
        let _ = (envelope, capacity, unique);
        Box::pin(async { Err(BackendError::Unsupported("unique keys")) })
    }

    /// Reserves up to `max` ready jobs from `queues` for `lease`, first moving due scheduled
    /// jobs to ready. Returns fewer than `max` only when no more are ready (an empty list
    /// when none is): the runtime then waits in [`wait_for_work`](Self::wait_for_work)
    /// before it asks again.
    fn reserve<'a>(
        &'a self,
        queues: &'a [String],
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Reservation>, BackendError>>;

    /// Waits until work may be ready in `queues` or `timeout` passes, whichever is first.
    /// Spurious wake-ups are fine; the runtime reserves after each.
    fn wait_for_work<'a>(&'a self, queues: &'a [String], timeout: Duration) -> BoxFuture<'a, ()>;

    /// The `timeout` the runtime gives [`wait_for_work`](Self::wait_for_work) when idle: how
    /// long it waits before it reserves again with no sign of work. The default, 200 ms,
    /// bounds how late a due delayed job or retry starts on a backend that signals only
    /// work that is ready now; a backend that also wakes its waiters when delayed work falls
    /// due (Postgres) returns a long fallback, so an idle runtime does not query in a loop.
    fn idle_poll(&self) -> Duration {
        Duration::from_millis(200)
    }

    /// The Postgres backend behind this one, for
    /// [`Client::enqueue_tx`](crate::Client::enqueue_tx) (`None` for every other backend).
    #[cfg(feature = "postgres")]
    fn postgres(&self) -> Option<&postgres::PostgresBackend> {
        None
    }

    /// The attempt succeeded: the job is finished.
    fn ack(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Acknowledges several finished jobs in one call; returns the ids whose lease was
    /// already lost (those changed nothing, as with [`ack`](Self::ack)). An `Err` means the
    /// call as a whole failed and may be repeated: acks are idempotent per lease token. The
    /// default calls [`ack`](Self::ack) for each.
    fn ack_batch<'a>(
        &'a self,
        acks: &'a [(JobId, LeaseToken)],
    ) -> BoxFuture<'a, Result<Vec<JobId>, BackendError>> {
        Box::pin(async move {
            let mut lost = Vec::new();
            for (id, token) in acks {
                match self.ack(*id, token.clone()).await {
                    Ok(()) => {}
                    Err(BackendError::LeaseLost(id)) => lost.push(id),
                    Err(e) => return Err(e),
                }
            }
            Ok(lost)
        })
    }

    /// As [`ack_batch`](Self::ack_batch), for successes with a result to keep (`(id, lease
    /// token, result as JSON)`): each job is finished and its result stored in one fenced
    /// write, shown by [`status`](Self::status) for as long as the status is kept. Repeated
    /// after a lost reply, it changes nothing. The runtime calls it only when
    /// [`results`](Capabilities::results) is declared; the default answers
    /// [`BackendError::Unsupported`].
    fn ack_results<'a>(
        &'a self,
        acks: &'a [(JobId, LeaseToken, Payload)],
    ) -> BoxFuture<'a, Result<Vec<JobId>, BackendError>> {
        let _ = acks;
        Box::pin(async { Err(BackendError::Unsupported("results")) })
    }

    /// The attempt failed and the job may be retried at `retry.at`.
    fn retry(
        &self,
        id: JobId,
        token: LeaseToken,
        retry: Retry,
    ) -> BoxFuture<'_, Result<(), BackendError>>;

    /// The job is dead: keep the record for listing and requeue.
    fn dead_letter(
        &self,
        id: JobId,
        token: LeaseToken,
        record: DeadLetter,
    ) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Renews leases: the ids whose lease was already lost, and the new tokens of jobs whose
    /// store issued one with the renewal (see [`Extended`]). The runtime runs no write-back
    /// of a job while an `extend` that includes it is in flight.
    fn extend<'a>(
        &'a self,
        leases: &'a [(JobId, LeaseToken)],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Extended, BackendError>>;

    /// Gives a reserved job back to the front of its queue without counting an attempt or a
    /// recovery (shutdown).
    fn release(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Returns jobs whose lease expired to their queue, dead-lettering those recovered
    /// `max_recoveries` times already.
    fn reap(&self, max_recoveries: u32) -> BoxFuture<'_, Result<Reaped, BackendError>>;

    /// The status of a job, if the backend still has it.
    fn status(&self, id: JobId) -> BoxFuture<'_, Result<Option<JobStatus>, BackendError>>;

    /// Counts for stats and health.
    fn stats(&self) -> BoxFuture<'_, Result<BackendStats, BackendError>>;

    /// Dead letters kept, oldest first, at most `limit`.
    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, BackendError>>;

    /// The dead letter of job `id`, if one is kept (`Ok(None)` otherwise). The runtime asks
    /// only a backend that declares
    /// [`dead_letter_listing`](Capabilities::dead_letter_listing). The default scans
    /// [`dead_letters`](Self::dead_letters)`(10_000)`, so it answers as that does (an
    /// `Unsupported` listing makes this `Unsupported` too) and misses a dead letter beyond
    /// the oldest 10,000; a store that can look a record up by id should do so (the Redis,
    /// Postgres and memory backends do).
    fn find_dead_letter(
        &self,
        id: JobId,
    ) -> BoxFuture<'_, Result<Option<DeadLetter>, BackendError>> {
        Box::pin(async move {
            let all = self.dead_letters(10_000).await?;
            Ok(all.into_iter().find(|d| d.job_id == id))
        })
    }

    /// Moves a dead job back to its queue with a fresh attempt budget.
    fn requeue(&self, id: JobId) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Cancels job `id` (see [`CancelOutcome`] for what each answer means);
    /// [`BackendError::NotFound`] for an id the store does not know. A cancelled job keeps
    /// a status (state [`JobState::Cancelled`]) for the status retention. The runtime calls
    /// it only when [`cancel_by_id`](Capabilities::cancel_by_id) is declared; the default
    /// answers [`BackendError::Unsupported`].
    fn cancel(&self, id: JobId) -> BoxFuture<'_, Result<CancelOutcome, BackendError>> {
        let _ = id;
        Box::pin(async { Err(BackendError::Unsupported("cancel by id")) })
    }

    /// Keeps the latest progress reported by held jobs (`(id, lease token, value)`), shown
    /// by [`status`](Self::status) from then on, also after the job finished. Fenced: an
    /// update whose token is not the job's lease changes nothing (and is not an error: a
    /// report racing its own write-back is simply dropped). The runtime calls it at most
    /// every 100 ms, with the reports of every worker of the process, and only when
    /// [`progress`](Capabilities::progress) is declared; the default answers
    /// [`BackendError::Unsupported`].
    fn record_progress<'a>(
        &'a self,
        updates: &'a [(JobId, LeaseToken, Payload)],
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        let _ = updates;
        Box::pin(async { Err(BackendError::Unsupported("progress")) })
    }

    /// The attempt of a reserved job whose cancel was requested has ended: the job is
    /// finished, cancelled. Fenced like every write-back (a stale holder gets
    /// [`BackendError::LeaseLost`]); also used for a reserved job whose cancel this process
    /// learnt before the attempt started. The default answers
    /// [`BackendError::Unsupported`].
    fn finish_cancelled(
        &self,
        id: JobId,
        token: LeaseToken,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let _ = (id, token);
        Box::pin(async { Err(BackendError::Unsupported("cancel by id")) })
    }

    /// Job `id` is being waited for: asks the store to announce its end (succeeded, dead,
    /// cancelled, or its record deleted) to every process on the store, and returns the
    /// signal announcements fire ([`Notify::notify_waiters`]; one signal for every watched
    /// job: the waiter reads its job's status again). The signal also fires when
    /// announcements may have been missed (the listening connection was lost and is back),
    /// so a waiter that registered with [`Notify::notified`] before reading the status
    /// misses no end. Call it while the job is live: a job that has already finished is
    /// not announced again (its status says so). A watch costs the store a little until
    /// the job ends, and nothing for jobs nobody watches. [`BackendError::NotFound`] for an
    /// id the store does not know. The runtime calls it only when
    /// [`finish_wakeups`](Capabilities::finish_wakeups) is declared; the default answers
    /// [`BackendError::Unsupported`].
    fn watch_finish(&self, id: JobId) -> BoxFuture<'_, Result<Arc<Notify>, BackendError>> {
        let _ = id;
        Box::pin(async { Err(BackendError::Unsupported("finish wake-ups")) })
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The inverse of [`unix_ms`].
pub fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// Reserves up to `max` jobs in calls of at most `per_call` each, until `max` are leased or a
/// call comes back short: the trait returns fewer than `max` only when no more are ready
/// (the runtime reads a short answer as "drained" and waits), so a backend whose one call
/// is capped must call again for the rest. When a later call fails, the jobs already leased
/// are returned, not left leased to nobody.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) async fn reserve_in_calls<F, Fut>(
    max: usize,
    per_call: usize,
    mut call: F,
) -> Result<Vec<Reservation>, BackendError>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<Vec<Reservation>, BackendError>>,
{
    let mut out = Vec::new();
    while out.len() < max {
        let want = (max - out.len()).min(per_call.max(1));
        match call(want).await {
            Ok(chunk) => {
                let short = chunk.len() < want;
                out.extend(chunk);
                if short {
                    break;
                }
            }
            Err(e) if out.is_empty() => return Err(e),
            Err(e) => {
                tracing::warn!(error = ?e, reserved = out.len(), "reserving more jobs failed");
                break;
            }
        }
    }
    Ok(out)
}
