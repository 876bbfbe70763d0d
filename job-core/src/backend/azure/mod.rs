//! [`AzureQueueBackend`]: durable, at-least-once jobs on Azure Queue Storage (cargo feature
//! `azure`), tested against the Azurite emulator.
//!
//! ```no_run
//! use job_core::backend::azure::AzureQueueBackend;
//! use job_core::prelude::*;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Clone, Serialize, Deserialize)]
//! # struct Resize { image: u64 }
//! # impl Job for Resize {
//! #     const NAME: &'static str = "resize";
//! #     type Error = std::io::Error;
//! #     type Output = ();
//! #     async fn run(&self, _cx: &JobContext) -> Result<(), Self::Error> { Ok(()) }
//! # }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The emulator's account; in Azure, the storage account's connection string.
//! let backend = AzureQueueBackend::builder("UseDevelopmentStorage=true")
//!     .prefix("jobs")
//!     .build()?;
//! let runtime = JobRuntime::builder()
//!     .backend(backend) // the only line that changes
//!     .register::<Resize>()
//!     .start()?;
//! let id = runtime.client().enqueue(Resize { image: 7 }).await?;
//! # let _ = id;
//! runtime.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # How the runtime's contract maps onto the store
//! The store's own primitives carry the contract; nothing imitates Redis:
//!
//! | runtime | Azure Queue Storage |
//! |---|---|
//! | a job | one message in the Azure queue `<prefix>-<queue>` (see [`decode`](self) for the name rule): `<job id>:<base64 of a JSON record>` |
//! | reserve, lease | *Get Messages* with a visibility timeout of the lease (whole seconds, at least 1): the message is hidden from every other receiver until it runs out |
//! | lease token, fencing | the **pop receipt** the receive returned, with the queue and message id: [`LeaseToken::opaque`]. Delete and update are refused by the store for any other receipt, so a stale holder's write-back is [`BackendError::LeaseLost`] and changes nothing |
//! | heartbeat ([`extend`](Backend::extend)) | *Update Message* with a new visibility timeout. Every update issues a new pop receipt and spends the old one, so `extend` returns it in [`Extended::renewed`] and the runtime uses it for the job's later write-backs |
//! | ack | *Delete Message* with the receipt |
//! | retry, release | *Update Message* with new content (the attempt counts) and the retry's delay (0 for a release) as visibility timeout |
//! | delayed job | *Put Message* with a visibility timeout of the delay; the service takes at most 7 days, so a longer delay **hops**: the message carries its start time, and a delivery before it is put back out of sight for the rest (up to 7 days again), counted as neither an attempt nor a recovery |
//! | crash recovery | the message reappears when its visibility timeout runs out; the store counts deliveries itself (*dequeue count*) |
//! | poison pill | after `max_recoveries` recoveries the message moves to `<prefix>-<queue>-poison` (as Azure Functions names it) |
//!
//! **Telling a crash from a retry.** A retry or a release writes new content, and the
//! content records the dequeue count it was written at (`seen`; 0 for a put). A delivery
//! whose dequeue count is `seen + k` is the k-th since, and the `k - 1` deliveries before it
//! ended with no write-back at all: workers that died (or stalled past their lease). Those
//! are the job's recoveries (added to the ones the content already counts); every delivery
//! counts as an attempt started, as on the other backends. When a delivery finds the job
//! recovered `max_recoveries` times (the builder's count, default 3), the backend moves it
//! to the poison queue instead of handing it out, and the next [`reap`](Backend::reap)
//! reports it as dead (so the runtime's dead-letter hooks run). The store returns messages
//! itself, so `reap` returns nothing to the queue: it reports the leases of this process
//! that ran out (the store shows those jobs again), and the recoveries a delivery noticed
//! (a worker elsewhere died); a crash in another process is noticed at the next delivery,
//! not when its lease ends.
//!
//! # What this store cannot do, said in [`capabilities`](Backend::capabilities)
//! * **No status by id**: a message can only be received or peeked from the front; there is
//!   no lookup by id. `client.status(id)` answers `Unsupported`.
//! * **No exact depth**: the service reports an *approximate* message count per queue
//!   (visible and hidden alike). [`stats`](Backend::stats) sums them over the queues this
//!   backend has used; `running` is what this process holds, `ready` the rest, `scheduled`
//!   0 (a delayed message cannot be told from a leased one). The capacity check at enqueue
//!   uses that count, refreshed at most once a second unless the count it holds is near the
//!   capacity: it can let a few more jobs in than the capacity under concurrent producers.
//! * **No idempotent enqueue of a stored id**: messages are keyed by the store's ids; an
//!   enqueue repeated after a lost reply stores the job twice (it then runs twice; handlers
//!   are idempotent anyway under at-least-once).
//! * **No FIFO**: the service makes no ordering promise, and a released or retried message
//!   does not go to the front.
//! * **A repeated write-back is refused, not recognised**: a delete whose reply was lost
//!   cannot be told from a stale holder's, so it reports `LeaseLost` (the runtime logs it;
//!   the job is done).
//! * **Dead letters** can only be *peeked* from the poison queues, and a peek sees at most 32
//!   messages per queue: the backend declares `dead_letter_listing` false (the trait's
//!   [`dead_letters`](Backend::dead_letters) answers `Unsupported`), and
//!   [`peek_dead_letters`](AzureQueueBackend::peek_dead_letters) gives the partial view. A requeue by id
//!   receives the poison queue in pages of 32 until it finds the id (at most 1,024 messages
//!   looked at; those it passes over are made visible again at once).
//! * **Payloads** up to [`MAX_PAYLOAD`] bytes of JSON (64 KiB per message, base64): larger
//!   ones are refused at enqueue with `PayloadTooLarge`, never truncated
//!   (`Capabilities::max_payload`, so the runtime refuses them before the call).
//!
//! # Requests
//! Every operation is one REST request (see `conn.rs` for why not the SDK), bounded by the
//! request timeout; one whose connection could not be opened is retried with backoff
//! (`backon`), the rest fail as [`BackendError::Unavailable`] and the runtime retries them.
//! A stopped emulator never stops a worker, and an enqueue during the outage fails within
//! the timeout. [`wait_for_work`](Backend::wait_for_work) cannot block on the store (it has
//! no notifications): it waits for an enqueue in this process or the idle poll.
//!
//! [`Extended::renewed`]: crate::backend::Extended::renewed

mod config;
mod conn;
mod decode;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use self::config::{
    AzureConfigError, AzureQueueBackendBuilder, ConnectionString, DEV_ACCOUNT, DEV_KEY,
    DEV_QUEUE_ENDPOINT,
};
use self::conn::{Fenced, MAX_BATCH, MAX_VISIBILITY, Message, Rest};
pub use self::decode::MAX_PAYLOAD;
use self::decode::{MESSAGE_MAX, Stored, StoredDead, azure_queue, poison_queue};
use super::{
    Backend, BackendError, BackendStats, BoxFuture, Capabilities, Envelope, Extended, LeaseToken,
    Reaped, Reservation, Retry, unix_ms,
};
use crate::dead_letter::DeadLetter;
use crate::job::{JobId, is_valid_name};
use crate::observe::status::JobStatus;

/// Messages a requeue looks at in the poison queue before it gives up.
const REQUEUE_SCAN: usize = 1024;
/// Concurrent requests of one `extend` or `ack_batch`.
const EXTEND_CONCURRENCY: usize = 16;

/// A job this process holds: what a retry or release must write back as new content.
struct Held {
    stored: Stored,
    dequeue_count: u32,
    /// When its lease ends, by the last reserve or extend (entries long past it are pruned).
    until: Instant,
    /// Whether a reaper pass already reported the lapse of this lease.
    lapse_reported: bool,
    /// The lease's current token (a renewal replaces it).
    token: LeaseToken,
}

/// The [`Backend`] contract on Azure Queue Storage. See the [module docs](self) for the
/// mapping and what the store cannot do.
pub struct AzureQueueBackend {
    rest: Rest,
    settings: AzureQueueBackendBuilder,
    /// The runtime's queues this backend has enqueued to or reserved from.
    known: Mutex<BTreeSet<String>>,
    held: Mutex<HashMap<JobId, Held>>,
    /// Jobs moved to a poison queue by a reservation, for the next `reap` to report.
    poisoned: Mutex<Vec<DeadLetter>>,
    /// Jobs a reservation found crash-recovered, for the next `reap` to report.
    recovered: Mutex<Vec<JobId>>,
    /// The store's count of messages and when it was read, for the capacity check.
    depth: Mutex<Option<(Instant, u64)>>,
    enqueued: Notify,
    warned_recoveries: AtomicBool,
}

impl fmt::Debug for AzureQueueBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureQueueBackend")
            .field("rest", &self.rest)
            .field("prefix", &self.settings.prefix)
            .finish_non_exhaustive()
    }
}

impl AzureQueueBackend {
    /// Settings for a backend on the account of `connection_string` (see
    /// [`ConnectionString::parse`]), with the defaults: prefix `jobs`, 3 recoveries before
    /// the poison queue, 1 s to connect and 5 s per request.
    pub fn builder(connection_string: impl Into<String>) -> AzureQueueBackendBuilder {
        AzureQueueBackendBuilder::new(connection_string.into())
    }

    /// A backend on `connection_string` with the default settings.
    ///
    /// # Errors
    /// An invalid connection string.
    pub fn new(connection_string: impl Into<String>) -> Result<Self, AzureConfigError> {
        Self::builder(connection_string).build()
    }

    fn from_settings(
        conn: ConnectionString,
        settings: AzureQueueBackendBuilder,
    ) -> Result<Self, AzureConfigError> {
        let rest = Rest::new(conn, settings.connect_timeout, settings.request_timeout)
            .map_err(AzureConfigError::Client)?;
        Ok(Self {
            rest,
            settings,
            known: Mutex::new(BTreeSet::new()),
            held: Mutex::new(HashMap::new()),
            poisoned: Mutex::new(Vec::new()),
            recovered: Mutex::new(Vec::new()),
            depth: Mutex::new(None),
            enqueued: Notify::new(),
            warned_recoveries: AtomicBool::new(false),
        })
    }

    /// The queue-name prefix.
    pub fn prefix(&self) -> &str {
        &self.settings.prefix
    }

    /// The Azure queue that holds the runtime's queue `queue`.
    pub fn azure_queue_name(&self, queue: &str) -> String {
        azure_queue(&self.settings.prefix, queue)
    }

    /// Puts `raw` into `queue` under `id` as if it were a job record that does not decode,
    /// bypassing every check: for tests and tools exercising the bad-record path (it comes
    /// back from `reserve` as [`Reservation::Malformed`]).
    ///
    /// # Errors
    /// The store cannot be reached; an invalid queue name.
    pub async fn insert_raw(&self, id: JobId, queue: &str, raw: &str) -> Result<(), BackendError> {
        check_name("queue", queue)?;
        self.know(queue);
        let text = decode::encode_raw(id, raw.as_bytes());
        self.rest
            .put(&self.azure_queue_name(queue), &text, 0)
            .await?;
        Ok(())
    }

    /// Deletes every Azure queue whose name starts with this backend's prefix and `-` (its
    /// queues and their poison queues): for tests and tools. Returns how many it deleted.
    ///
    /// # Errors
    /// The store cannot be reached.
    pub async fn delete_all_queues(&self) -> Result<usize, BackendError> {
        let names = self
            .rest
            .list_queues(&format!("{}-", self.settings.prefix))
            .await?;
        for name in &names {
            self.rest.delete_queue(name).await?;
        }
        Ok(names.len())
    }

    /// Messages in the poison queue of `queue`, by the store's approximate count.
    ///
    /// # Errors
    /// The store cannot be reached; an invalid queue name.
    pub async fn poison_count(&self, queue: &str) -> Result<u64, BackendError> {
        check_name("queue", queue)?;
        self.rest
            .approximate_count(&poison_queue(&self.azure_queue_name(queue)))
            .await
    }

    fn know(&self, queue: &str) {
        let mut known = lock(&self.known);
        if !known.contains(queue) {
            known.insert(queue.to_owned());
        }
    }

    fn known_queues(&self) -> Vec<String> {
        lock(&self.known).iter().cloned().collect()
    }

    /// Whether `adding` more jobs fit under `capacity`, by the store's approximate count
    /// (read again when the one held is over a second old or near the capacity).
    async fn room(&self, capacity: u64, adding: u64) -> Result<bool, BackendError> {
        {
            let mut depth = lock(&self.depth);
            if let Some((at, count)) = depth.as_mut()
                && at.elapsed() < Duration::from_secs(1)
                && *count + adding <= capacity / 2
            {
                *count += adding;
                return Ok(true);
            }
        }
        let total = self.count_all().await?;
        let fits = total + adding <= capacity;
        *lock(&self.depth) = Some((Instant::now(), if fits { total + adding } else { total }));
        Ok(fits)
    }

    /// The approximate count of messages in every known queue.
    async fn count_all(&self) -> Result<u64, BackendError> {
        let mut total = 0;
        for q in self.known_queues() {
            total += self
                .rest
                .approximate_count(&self.azure_queue_name(&q))
                .await?;
        }
        Ok(total)
    }

    async fn do_enqueue(&self, envelope: Envelope, capacity: u64) -> Result<(), BackendError> {
        check_name("queue", &envelope.queue)?;
        check_name("job", &envelope.job)?;
        if envelope.payload.len() > MAX_PAYLOAD {
            return Err(too_large(envelope.payload.len()));
        }
        let text = decode::encode(envelope.id, &Stored::from_envelope(&envelope))
            .map_err(|e| BackendError::Corrupt(format!("the job record does not encode: {e}")))?;
        if text.len() > MESSAGE_MAX {
            return Err(too_large(envelope.payload.len()));
        }
        self.know(&envelope.queue);
        if !self.room(capacity, 1).await? {
            return Err(BackendError::Full);
        }
        let delay = envelope
            .not_before
            .map_or(0, |nb| secs_until(nb, unix_ms(SystemTime::now())));
        self.rest
            .put(&self.azure_queue_name(&envelope.queue), &text, delay)
            .await?;
        self.enqueued.notify_waiters();
        Ok(())
    }

    async fn do_reserve(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Reservation>, BackendError> {
        for q in queues {
            check_name("queue", q)?;
            self.know(q);
        }
        let visibility = lease_secs(lease);
        let mut out = Vec::new();
        let mut failed = None;
        for q in queues {
            let aq = self.azure_queue_name(q);
            while out.len() < max {
                let want = (max - out.len()).min(MAX_BATCH);
                let got = match self.rest.receive(&aq, want, visibility).await {
                    Ok(got) => got,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                let short = got.len() < want;
                for m in got {
                    match self.admit(q, &aq, m, lease).await {
                        Ok(Some(r)) => out.push(r),
                        Ok(None) => {}
                        // The message stays where it is and comes back after its timeout.
                        Err(e) => {
                            tracing::warn!(error = %e, queue = %q, "handling a received message failed")
                        }
                    }
                }
                if short {
                    break;
                }
            }
        }
        match failed {
            // Jobs already leased are handed out, not left leased to nobody.
            Some(e) if out.is_empty() => Err(e),
            Some(e) => {
                tracing::warn!(error = %e, reserved = out.len(), "reserving more jobs failed");
                Ok(out)
            }
            None => Ok(out),
        }
    }

    /// Turns one received message into a reservation, or moves it: out of sight again when
    /// it surfaced before its start time (a long delay's hop), to the poison queue when it
    /// was recovered `max_recoveries` times.
    async fn admit(
        &self,
        queue: &str,
        aq: &str,
        m: Message,
        lease: Duration,
    ) -> Result<Option<Reservation>, BackendError> {
        let (id, record) = decode::decode::<Stored>(&m.text, &m.id);
        let token = token_for(aq, &m.id, &m.pop);
        let stored = match record {
            Ok(stored) => stored,
            Err((raw, reason)) => {
                return Ok(Some(Reservation::Malformed {
                    id,
                    token,
                    queue: queue.to_owned(),
                    raw,
                    reason,
                }));
            }
        };
        let now = unix_ms(SystemTime::now());
        if let Some(nb) = stored.not_before.filter(|&nb| nb > now) {
            // Surfaced before its time: out of sight for the rest, not counted.
            let mut hop = stored.clone();
            hop.seen = m.dequeue_count;
            let text = encode_stored(id, &hop)?;
            self.rest
                .update(aq, &m.id, &m.pop, secs_until(nb, now), Some(&text))
                .await?;
            return Ok(None);
        }
        let mut envelope = stored.envelope(id, m.dequeue_count);
        if envelope.recoveries >= self.settings.max_recoveries {
            self.poison(aq, &m, &stored, &envelope).await?;
            return Ok(None);
        }
        let mut held = lock(&self.held);
        let reported = held.get(&id).is_some_and(|h| h.lapse_reported);
        if envelope.recoveries > stored.recoveries && !reported {
            lock(&self.recovered).push(id);
        }
        held.insert(
            id,
            Held {
                stored,
                dequeue_count: m.dequeue_count,
                until: Instant::now() + Duration::from_secs(lease_secs(lease)),
                lapse_reported: false,
                token: token.clone(),
            },
        );
        envelope.lease = Some(token.clone());
        Ok(Some(Reservation::Job { envelope, token }))
    }

    /// Moves a job recovered `max_recoveries` times to its poison queue: the record goes in
    /// first, then the message is deleted with the receipt this delivery holds (a crash in
    /// between leaves it in both: dead-lettered, and run once more).
    async fn poison(
        &self,
        aq: &str,
        m: &Message,
        stored: &Stored,
        envelope: &Envelope,
    ) -> Result<(), BackendError> {
        let reason = format!(
            "worker lost {} times while running this job (crash-recovered); dead-lettered as a poison pill",
            envelope.recoveries
        );
        let dead = DeadLetter::new(
            envelope.id,
            envelope.job.clone(),
            envelope.queue.clone(),
            envelope.payload.to_value(),
            envelope.attempt.saturating_sub(1),
            vec![reason],
            crate::backend::from_unix_ms(envelope.enqueued_at),
            SystemTime::now(),
        );
        self.put_dead(aq, &dead, stored.max_attempts).await?;
        match self.rest.delete(aq, &m.id, &m.pop).await? {
            Fenced::Done(()) => {}
            Fenced::Gone => {
                tracing::warn!(job_id = %envelope.id, "a poison pill was taken by another receiver while it was moved; it is dead-lettered and may run once more");
            }
        }
        lock(&self.poisoned).push(dead);
        Ok(())
    }

    /// Puts a dead-letter record into the poison queue of `aq`, shortening the error chain
    /// (never the payload of a job, which fitted a message already) when it does not fit.
    async fn put_dead(
        &self,
        aq: &str,
        dead: &DeadLetter,
        max_attempts: u32,
    ) -> Result<(), BackendError> {
        let mut record = StoredDead {
            job: dead.job.clone(),
            queue: dead.queue.clone(),
            payload: dead.payload.clone(),
            attempts: dead.attempts,
            max_attempts,
            error: dead.error.clone(),
            enqueued_at: unix_ms(dead.enqueued_at),
            died_at: unix_ms(dead.died_at),
        };
        let mut text = decode::encode(dead.job_id, &record)
            .map_err(|e| BackendError::Corrupt(format!("the dead letter does not encode: {e}")))?;
        if text.len() > MESSAGE_MAX {
            record.error = record
                .error
                .iter()
                .take(8)
                .map(|e| e.chars().take(512).collect())
                .collect();
            text = decode::encode(dead.job_id, &record).map_err(|e| {
                BackendError::Corrupt(format!("the dead letter does not encode: {e}"))
            })?;
        }
        if text.len() > MESSAGE_MAX {
            // Only the raw text of a malformed record can be this large: keep what fits.
            if let serde_json::Value::String(raw) = &record.payload {
                let keep = raw.chars().take(decode::RECORD_MAX / 4).collect::<String>();
                record.payload = serde_json::Value::String(keep);
                record
                    .error
                    .push("(raw record shortened to fit a message)".to_owned());
            }
            text = decode::encode(dead.job_id, &record).map_err(|e| {
                BackendError::Corrupt(format!("the dead letter does not encode: {e}"))
            })?;
        }
        if text.len() > MESSAGE_MAX {
            return Err(BackendError::Corrupt(format!(
                "the dead letter of job {} does not fit a message",
                dead.job_id
            )));
        }
        self.rest.put(&poison_queue(aq), &text, 0).await?;
        Ok(())
    }

    async fn do_ack(&self, id: JobId, token: &LeaseToken) -> Result<(), BackendError> {
        let (aq, mid, pop) = parse_token(id, token)?;
        match self.rest.delete(aq, mid, pop).await? {
            Fenced::Done(()) => {
                lock(&self.held).remove(&id);
                Ok(())
            }
            Fenced::Gone => Err(BackendError::LeaseLost(id)),
        }
    }

    /// The content a retry or release writes: the delivery's counts, `seen` at its dequeue
    /// count so the next delivery is not taken for a recovery.
    fn rewritten(&self, id: JobId, counted_attempt: bool) -> Option<Stored> {
        let held = lock(&self.held);
        let h = held.get(&id)?;
        let env = h.stored.envelope(id, h.dequeue_count);
        let mut next = h.stored.clone();
        next.attempt = if counted_attempt {
            env.attempt
        } else {
            env.attempt.saturating_sub(1)
        };
        next.recoveries = env.recoveries;
        next.seen = h.dequeue_count;
        next.not_before = None;
        Some(next)
    }

    async fn rewrite(
        &self,
        id: JobId,
        token: &LeaseToken,
        next: Option<Stored>,
        at: Option<u64>,
    ) -> Result<(), BackendError> {
        let (aq, mid, pop) = parse_token(id, token)?;
        // Not held here: not this process's lease (or long expired).
        let Some(mut next) = next else {
            return Err(BackendError::LeaseLost(id));
        };
        let now = unix_ms(SystemTime::now());
        let delay = at.map_or(0, |at| secs_until(at, now));
        next.not_before = at.filter(|&at| at > now);
        let text = encode_stored(id, &next)?;
        match self.rest.update(aq, mid, pop, delay, Some(&text)).await? {
            Fenced::Done(_) => {
                lock(&self.held).remove(&id);
                Ok(())
            }
            Fenced::Gone => Err(BackendError::LeaseLost(id)),
        }
    }

    async fn do_dead_letter(
        &self,
        id: JobId,
        token: &LeaseToken,
        record: DeadLetter,
    ) -> Result<(), BackendError> {
        let (aq, mid, pop) = parse_token(id, token)?;
        // Claim the message first (fenced), so a stale holder writes no dead letter.
        let pop = match self.rest.update(aq, mid, pop, 60, None).await? {
            Fenced::Done(p) => p,
            Fenced::Gone => return Err(BackendError::LeaseLost(id)),
        };
        let max_attempts = lock(&self.held)
            .get(&id)
            .map_or(0, |h| h.stored.max_attempts);
        self.put_dead(aq, &record, max_attempts).await?;
        match self.rest.delete(aq, mid, &pop).await? {
            Fenced::Done(()) => {
                lock(&self.held).remove(&id);
                Ok(())
            }
            Fenced::Gone => Err(BackendError::LeaseLost(id)),
        }
    }

    async fn do_extend(
        &self,
        leases: &[(JobId, LeaseToken)],
        lease: Duration,
    ) -> Result<Extended, BackendError> {
        let visibility = lease_secs(lease);
        // Every renewal is a request per job: one whose lease has more than three quarters
        // of it left is not renewed yet (its token stays); the runtime's heartbeat comes
        // every third of a lease, so the next one still finds 5/12 of it left.
        let now = Instant::now();
        let due: Vec<(JobId, LeaseToken)> = {
            let held = lock(&self.held);
            leases
                .iter()
                .filter(|(id, token)| {
                    // Only the current holder's lease is skipped; any other token goes to
                    // the store, which renews it or finds it stale.
                    held.get(id).is_none_or(|h| {
                        h.token != *token
                            || h.until.saturating_duration_since(now)
                                <= Duration::from_secs(visibility) * 3 / 4
                    })
                })
                .cloned()
                .collect()
        };
        let results: Vec<(JobId, Result<Fenced<String>, BackendError>, String)> =
            futures_util::stream::iter(due)
                .map(|(id, token)| async move {
                    match parse_token(id, &token) {
                        Ok((aq, mid, pop)) => {
                            let r = self.rest.update(aq, mid, pop, visibility, None).await;
                            (id, r, format!("{aq}/{mid}/"))
                        }
                        Err(e) => (id, Err(e), String::new()),
                    }
                })
                .buffer_unordered(EXTEND_CONCURRENCY)
                .collect()
                .await;
        let mut out = Extended::default();
        let mut first_error = None;
        let until = Instant::now() + Duration::from_secs(visibility);
        for (id, r, head) in results {
            match r {
                Ok(Fenced::Done(pop)) => {
                    let renewed = LeaseToken::opaque(format!("{head}{pop}"));
                    if let Some(h) = lock(&self.held).get_mut(&id) {
                        h.until = until;
                        h.token = renewed.clone();
                    }
                    out.renewed.push((id, renewed));
                }
                // A token this backend did not issue holds no lease.
                Ok(Fenced::Gone) | Err(BackendError::LeaseLost(_)) => out.lost.push(id),
                Err(e) => {
                    tracing::warn!(job_id = %id, error = %e, "renewing a lease failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        // A failure of every renewal is the call's; after a partial one, the renewed
        // receipts must reach the runtime (the old ones are spent).
        match first_error {
            Some(e) if out.renewed.is_empty() && out.lost.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    async fn do_reap(&self, max_recoveries: u32) -> Result<Reaped, BackendError> {
        if max_recoveries != self.settings.max_recoveries
            && !self.warned_recoveries.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                runtime = max_recoveries,
                backend = self.settings.max_recoveries,
                "the runtime's max_recoveries differs from the Azure backend's; the backend's applies (the store counts deliveries, and the backend reads the count when it receives a message): set it with AzureQueueBackend::builder(..).max_recoveries(n)"
            );
        }
        let now = Instant::now();
        let mut recovered = std::mem::take(&mut *lock(&self.recovered));
        {
            let mut held = lock(&self.held);
            held.retain(|_, h| h.until + Duration::from_secs(600) > now);
            // Leases of this process that ran out: the store shows those jobs again.
            for (id, h) in held.iter_mut() {
                if h.until <= now && !h.lapse_reported {
                    h.lapse_reported = true;
                    recovered.push(*id);
                }
            }
        }
        Ok(Reaped {
            recovered,
            dead: std::mem::take(&mut *lock(&self.poisoned)),
        })
    }

    async fn do_stats(&self) -> Result<BackendStats, BackendError> {
        let mut total = 0;
        let mut dead = 0;
        for q in self.known_queues() {
            let aq = self.azure_queue_name(&q);
            total += self.rest.approximate_count(&aq).await?;
            dead += self.rest.approximate_count(&poison_queue(&aq)).await?;
        }
        *lock(&self.depth) = Some((Instant::now(), total));
        let running = (lock(&self.held).len() as u64).min(total);
        Ok(BackendStats {
            ready: total - running,
            scheduled: 0,
            running,
            dead,
        })
    }

    /// The poison queues of this backend's prefix.
    async fn poison_queues(&self) -> Result<Vec<String>, BackendError> {
        let names = self
            .rest
            .list_queues(&format!("{}-", self.settings.prefix))
            .await?;
        Ok(names
            .into_iter()
            .filter(|n| n.ends_with("-poison"))
            .collect())
    }

    /// The dead letters the poison queues show, oldest first, at most `limit`: a partial
    /// view, since a peek sees at most the first 32 messages of each poison queue (which is
    /// why the backend does not declare `dead_letter_listing`, and the trait's
    /// [`dead_letters`](Backend::dead_letters) answers `Unsupported`). For tools and tests.
    ///
    /// # Errors
    /// The store cannot be reached.
    pub async fn peek_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        let mut out = Vec::new();
        for pq in self.poison_queues().await? {
            for m in self.rest.peek(&pq, MAX_BATCH).await? {
                if let (id, Ok(d)) = decode::decode::<StoredDead>(&m.text, &m.id) {
                    out.push(d.dead_letter(id));
                }
            }
        }
        out.sort_by_key(|d| d.died_at);
        out.truncate(limit);
        Ok(out)
    }

    async fn do_requeue(&self, id: JobId) -> Result<(), BackendError> {
        for pq in self.poison_queues().await? {
            let mut passed: Vec<Message> = Vec::new();
            let mut found = None;
            while found.is_none() && passed.len() < REQUEUE_SCAN {
                let got = self.rest.receive(&pq, MAX_BATCH, 30).await?;
                let short = got.len() < MAX_BATCH;
                for m in got {
                    match decode::decode::<StoredDead>(&m.text, &m.id) {
                        (mid, Ok(d)) if mid == id && found.is_none() => found = Some((m, d)),
                        _ => passed.push(m),
                    }
                }
                if short {
                    break;
                }
            }
            // What was looked at and is not the job is made visible again at once.
            for m in &passed {
                let _ = self.rest.update(&pq, &m.id, &m.pop, 0, None).await;
            }
            let Some((m, d)) = found else { continue };
            let envelope = Envelope {
                id,
                job: d.job,
                queue: d.queue,
                payload: crate::backend::Payload::from(&d.payload),
                attempt: 0,
                max_attempts: d.max_attempts.max(1),
                recoveries: 0,
                enqueued_at: d.enqueued_at,
                not_before: None,
                lease: None,
            };
            check_name("queue", &envelope.queue)?;
            let text = encode_stored(id, &Stored::from_envelope(&envelope))?;
            self.know(&envelope.queue);
            self.rest
                .put(&self.azure_queue_name(&envelope.queue), &text, 0)
                .await?;
            let _ = self.rest.delete(&pq, &m.id, &m.pop).await?;
            self.enqueued.notify_waiters();
            return Ok(());
        }
        Err(BackendError::NotFound(id))
    }

    async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.enqueued.notified()).await;
    }
}

impl Backend for AzureQueueBackend {
    fn name(&self) -> &'static str {
        "azure-queue"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            status_by_id: false,
            dead_letter_listing: false,
            requeue_by_id: true,
            exact_depth: false,
            idempotent_enqueue: false,
            ordered: false,
            max_payload: Some(MAX_PAYLOAD),
            // A delete per message: successes acknowledged in the background piled up
            // faster than they were deleted, and each SIGKILL ran them all again (T1: 930
            // duplicates of 2,000 jobs with 20 kills).
            batched_acks: false,
            // Azure Queue Storage finds a message only by its pop receipt, which only the
            // holder has: a job cannot be looked up by id.
            cancel_by_id: false,
            // No status by id: nowhere to show it.
            progress: false,
            results: false,
            // Nothing to wait on without a status by id.
            finish_wakeups: false,
            // A queue keeps messages, not keys; a key in another store (a table) could not
            // be taken in one atomic step with the message.
            unique_keys: false,
            ..Capabilities::full()
        }
    }

    fn connect(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            // One request that needs the account and the signature to be right.
            self.rest
                .list_queues(&format!("{}-", self.settings.prefix))
                .await?;
            Ok(())
        })
    }

    fn enqueue(
        &self,
        envelope: Envelope,
        capacity: u64,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.do_enqueue(envelope, capacity))
    }

    fn reserve<'a>(
        &'a self,
        queues: &'a [String],
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Reservation>, BackendError>> {
        Box::pin(self.do_reserve(queues, max, lease))
    }

    fn wait_for_work<'a>(&'a self, _queues: &'a [String], timeout: Duration) -> BoxFuture<'a, ()> {
        Box::pin(self.wait(timeout))
    }

    fn ack(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move { self.do_ack(id, &token).await })
    }

    /// One delete per job (the store has no batch delete), `EXTEND_CONCURRENCY` at a time:
    /// successes wait for their delete, and a worker killed with a backlog runs it again.
    fn ack_batch<'a>(
        &'a self,
        acks: &'a [(JobId, LeaseToken)],
    ) -> BoxFuture<'a, Result<Vec<JobId>, BackendError>> {
        Box::pin(async move {
            let results: Vec<(JobId, Result<(), BackendError>)> =
                futures_util::stream::iter(acks.iter().cloned())
                    .map(|(id, token)| async move {
                        let r = self.do_ack(id, &token).await;
                        (id, r)
                    })
                    .buffer_unordered(EXTEND_CONCURRENCY)
                    .collect()
                    .await;
            let mut lost = Vec::new();
            let mut failed = None;
            for (id, r) in results {
                match r {
                    Ok(()) => {}
                    Err(BackendError::LeaseLost(_)) => lost.push(id),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            // A failed delete fails the call, which the runtime repeats: the deletes that
            // were done then report their receipt spent (lost), harmlessly.
            match failed {
                Some(e) => Err(e),
                None => Ok(lost),
            }
        })
    }

    fn retry(
        &self,
        id: JobId,
        token: LeaseToken,
        retry: Retry,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let next = self.rewritten(id, true);
            self.rewrite(id, &token, next, Some(unix_ms(retry.at)))
                .await
        })
    }

    fn dead_letter(
        &self,
        id: JobId,
        token: LeaseToken,
        record: DeadLetter,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move { self.do_dead_letter(id, &token, record).await })
    }

    fn extend<'a>(
        &'a self,
        leases: &'a [(JobId, LeaseToken)],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Extended, BackendError>> {
        Box::pin(self.do_extend(leases, lease))
    }

    fn release(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let next = self.rewritten(id, false);
            self.rewrite(id, &token, next, None).await
        })
    }

    fn reap(&self, max_recoveries: u32) -> BoxFuture<'_, Result<Reaped, BackendError>> {
        Box::pin(self.do_reap(max_recoveries))
    }

    fn status(&self, _id: JobId) -> BoxFuture<'_, Result<Option<JobStatus>, BackendError>> {
        Box::pin(std::future::ready(Err(BackendError::Unsupported(
            "status by id: Azure Queue Storage cannot look a message up by id",
        ))))
    }

    fn stats(&self) -> BoxFuture<'_, Result<BackendStats, BackendError>> {
        Box::pin(self.do_stats())
    }

    fn dead_letters(&self, _limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, BackendError>> {
        Box::pin(std::future::ready(Err(BackendError::Unsupported(
            "dead-letter listing: a peek sees only the first 32 messages of a poison queue (AzureQueueBackend::peek_dead_letters gives that partial view)",
        ))))
    }

    fn requeue(&self, id: JobId) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.do_requeue(id))
    }
}

/// The lease token of a delivery: `<azure queue>/<message id>/<pop receipt>` (queue names
/// and message ids have no `/`; a receipt may).
fn token_for(aq: &str, mid: &str, pop: &str) -> LeaseToken {
    LeaseToken::opaque(format!("{aq}/{mid}/{pop}"))
}

fn parse_token(id: JobId, token: &LeaseToken) -> Result<(&str, &str, &str), BackendError> {
    let mut parts = token.as_opaque().unwrap_or_default().splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(aq), Some(mid), Some(pop)) if !aq.is_empty() && !mid.is_empty() => Ok((aq, mid, pop)),
        // Not a token this backend issued: it holds no lease here.
        _ => Err(BackendError::LeaseLost(id)),
    }
}

fn encode_stored(id: JobId, stored: &Stored) -> Result<String, BackendError> {
    decode::encode(id, stored)
        .map_err(|e| BackendError::Corrupt(format!("the job record does not encode: {e}")))
}

/// A lease in whole seconds of visibility timeout, rounded up, at least 1.
fn lease_secs(lease: Duration) -> u64 {
    let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    ms.div_ceil(1000).clamp(1, MAX_VISIBILITY)
}

/// Whole seconds from `now` to `at` (ms), rounded up, at most 7 days (longer ones hop).
fn secs_until(at: u64, now: u64) -> u64 {
    at.saturating_sub(now).div_ceil(1000).min(MAX_VISIBILITY)
}

fn too_large(size: usize) -> BackendError {
    BackendError::Corrupt(format!(
        "payload of {size} bytes is over the {MAX_PAYLOAD} bytes an Azure queue message can carry"
    ))
}

fn check_name(what: &str, name: &str) -> Result<(), BackendError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(BackendError::InvalidName(format!(
            "invalid {what} name {name:?}: names must match [A-Za-z0-9_.-]{{1,64}}"
        )))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
