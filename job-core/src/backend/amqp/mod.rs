//! [`AmqpBackend`]: durable, at-least-once jobs on RabbitMQ (cargo feature `amqp`, lapin).
//!
//! ```no_run
//! use std::time::Duration;
//! use job_core::backend::amqp::AmqpBackend;
//! use job_core::prelude::*;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Clone, Serialize, Deserialize)]
//! # struct Resize { image: u64 }
//! # impl Job for Resize {
//! #     const NAME: &'static str = "resize";
//! #     type Error = std::io::Error;
//! #     type Output = ();
//! #     fn options() -> JobOptions { JobOptions::new().timeout(Duration::from_secs(60)) }
//! #     async fn run(&self, _cx: &JobContext) -> Result<(), Self::Error> { Ok(()) }
//! # }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = AmqpBackend::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .prefix("jobs")
//!     .prefetch(16)
//!     // The broker's consumer_timeout: every job needs a `timeout` no longer than this.
//!     .consumer_timeout(Duration::from_secs(30 * 60))
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
//! # What the broker does, and what this backend adds
//! Every job is one persistent message; the broker's own primitives carry the contract:
//! * **Enqueue** publishes on a channel in confirm mode and returns only once the broker
//!   confirmed the message (stored on a quorum of the queue's replicas). A refused (nack),
//!   unroutable or unconfirmed publish, or one on a closed connection, is
//!   [`BackendError::Unavailable`], which the runtime reports as `EnqueueError::Backend`:
//!   never a silent loss. While the broker is down an enqueue fails within
//!   [`connection_timeout`](AmqpBackendBuilder::connection_timeout).
//! * **Reserve** is a consumer per job queue with manual acks and a prefetch
//!   ([`prefetch`](AmqpBackendBuilder::prefetch)) bounding the deliveries one process holds.
//!   The lease is the delivery on its live connection: the token is the connection's
//!   generation and the delivery tag. When the connection dies (the process was killed, the
//!   broker restarted, `rabbitmqctl close_all_connections`), the broker takes every
//!   unacknowledged delivery back and delivers it again; an ack, retry or dead-letter with
//!   a token of the dead connection is [`BackendError::LeaseLost`] and changes nothing.
//! * **Leases** have no broker-side expiry: a delivery is held as long as its connection
//!   lives, up to the broker's `consumer_timeout` (30 minutes by default), after which the
//!   broker closes the channel and redelivers. The runtime refuses to start with a job
//!   whose `timeout` is longer, or that has none
//!   ([`Capabilities::max_attempt_duration`](crate::backend::Capabilities::max_attempt_duration),
//!   from [`consumer_timeout`](AmqpBackendBuilder::consumer_timeout)). Within that, this
//!   backend keeps the lease the runtime asks for, with slack: a held delivery whose lease
//!   went unrenewed for twice its length (its worker stalled) is given back to the broker by
//!   the reaper (`basic.nack` with requeue), which counts as a recovery.
//! * **Recoveries** are the broker's count: a quorum queue stamps every redelivery with
//!   `x-delivery-count`, and its `x-delivery-limit` (`max_recoveries - 1`, see
//!   [`max_recoveries`](AmqpBackendBuilder::max_recoveries)) makes the broker itself **park**
//!   a message whose holders died `max_recoveries` times, in `<prefix>.parked`, even when no
//!   process of ours is left to notice. The reaper turns parked messages into dead letters
//!   with a "poison pill" reason. A job's recoveries carry over from one message of it to
//!   the next (a retry publishes a new one) in a header, and a delivery whose total reaches
//!   the limit is parked at reservation. A delivery held but not yet started when its
//!   process died counts as a recovery too: the broker cannot tell it from a running one.
//! * **Delays and retries** without the delayed-message plugin: wait queues with a fixed
//!   per-queue TTL, one per power-of-two bucket from 64 ms to about 25 days
//!   (`<prefix>.wait.<ms>`, declared when first used), dead-lettering into the work
//!   exchange under the job's queue name. A message waits in the longest bucket not
//!   longer than its delay, so messages in one wait queue all expire in order and a short
//!   delay never waits behind a long one; when it comes out early, the consumer sends it to
//!   the bucket for the rest (at most one hop per bit of the delay), so a job starts at most
//!   ~64 ms after its time, later only when its queue has a backlog. Attempts, recoveries,
//!   the start time and the last error travel in headers.
//! * **Write-backs**: ack is `basic.ack`. Retry publishes the job's next message (to its
//!   wait bucket, confirmed) and then acks the delivery; release does the same without a
//!   start time (the job goes to the *back* of its queue); dead-letter publishes a record to
//!   `<prefix>.dead` and then acks. A crash between the two steps leaves both messages: the
//!   job runs once more (at least once, never lost). A write-back repeated with the token
//!   whose outcome was written last is recognised (this process remembers the last 65,536
//!   outcomes) and succeeds again without touching the broker.
//!
//! # What a broker cannot do
//! Declared in [`capabilities`](Backend::capabilities), so the runtime answers
//! `Unsupported` rather than faking it:
//! * **Status by id**: a queue cannot be searched by message, and a finished job leaves
//!   nothing behind. [`status`](Backend::status) answers [`BackendError::Unsupported`].
//! * **Exact depth**: [`stats`](Backend::stats) counts ready messages of the work queues
//!   this backend has used, waiting ones, and only *this process's* held deliveries as
//!   running (other consumers' unacked messages are not visible over AMQP). The capacity
//!   check at enqueue compares with the last count, so it is approximate.
//! * **Idempotent enqueue**: a message cannot be looked up by id, so enqueueing an id twice
//!   stores it twice; handlers must be idempotent (they must be anyway: at least once).
//! * **Ordering**: released and retried jobs go to the back of their queue, redelivered ones
//!   to the front; no FIFO promise.
//!
//! Dead letters are real, at a cost: [`dead_letters`](Backend::dead_letters) reads records
//! off the head of `<prefix>.dead` with `basic.get` on a side channel and gives them back
//! by closing it (O(limit)); [`requeue`](Backend::requeue) reads from the head until it finds
//! the id (O(dead letters) round trips). Two processes browsing at once each see only what
//! the other does not hold at that moment. Retention is the broker's: the dead-letter queue
//! has `x-max-length` ([`dead_letter_capacity`](AmqpBackendBuilder::dead_letter_capacity),
//! the oldest dropped beyond it) and `x-message-ttl`
//! ([`dead_letter_retention`](AmqpBackendBuilder::dead_letter_retention)).
//!
//! # Topology
//! Declared idempotently: the exchanges and the parking and dead-letter queues when a
//! connection opens, a work queue when its job queue is first used, a wait queue when its
//! bucket is. Every name starts with the prefix; queue and job names are checked against
//! `[A-Za-z0-9_.-]{1,64}` first.
//!
//! | name | kind | holds |
//! |---|---|---|
//! | `<p>.work` | direct exchange | routes a job to its work queue by queue name |
//! | `<p>.wait` | headers exchange | routes a delayed job to its bucket (header `jobs-wait`) |
//! | `<p>.q.<queue>` | queue | jobs ready to run; `x-delivery-limit`, dead-letters to `<p>.parked` |
//! | `<p>.wait.<ms>` | queue | jobs waiting; `x-message-ttl` = ms, dead-letters to `<p>.work` |
//! | `<p>.parked` | queue | messages the broker parked past their delivery limit |
//! | `<p>.dead` | queue | dead-letter records (JSON), oldest first |
//!
//! Queues are quorum queues by default: replicated, with delivery counts and limits, and
//! their dead-lettering (wait queue → work queue, work queue → parked) is
//! `at-least-once` (which needs `x-overflow: reject-publish`). [`QueueType::Classic`] is
//! there for brokers without quorum queues, and costs: a classic queue has no delivery
//! count (a redelivery counts as one recovery whatever its history, and nothing parks
//! poison pills whose holders keep dying before they are reserved again) and its
//! dead-lettering is at-most-once, so a delayed job or retry can be lost if the broker
//! crashes while it moves from its wait queue to its work queue.
//!
//! # Connections
//! One connection at a time, opened lazily (a runtime starts while the broker is down)
//! with a couple of quick retries (`backon`), with a confirm-mode channel for publishing and
//! a channel for the consumers. When the broker closes it (restart, `stop_app`,
//! `close_all_connections`) the next call opens a new one and restarts the consumers; the
//! runtime keeps retrying with its own backoff, so workers never stop. lapin's own
//! automatic recovery is not used: its recovered deliveries would carry new tags under old
//! leases.
//!
//! Without TLS support compiled in (lapin's TLS features are off), `amqps://` URLs fail to
//! connect.

mod config;
mod conn;
mod dead;
mod decode;
mod held;
mod ops;
mod topology;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;

pub use self::config::{AmqpBackendBuilder, AmqpConfigError, QueueType};
use self::conn::{Link, lock};
use self::held::{Held, Settled};
use self::topology::Names;
use super::{
    Backend, BackendError, BackendStats, BoxFuture, Capabilities, Envelope, Extended, LeaseToken,
    Reaped, Reservation, Retry,
};
use crate::dead_letter::DeadLetter;
use crate::job::{JobId, is_valid_name};
use crate::observe::status::JobStatus;

/// Room kept for the headers and properties in a message of `max_message_size` bytes.
const HEADER_ROOM: usize = 16 * 1024;

/// The [`Backend`] contract on RabbitMQ. See the [module docs](self) for what the broker does,
/// what it cannot do, and the topology.
pub struct AmqpBackend {
    settings: AmqpBackendBuilder,
    names: Names,
    link: Mutex<Option<Arc<Link>>>,
    connecting: tokio::sync::Mutex<()>,
    generations: AtomicU64,
    /// Deliveries received and not yet handed out, per job queue, with their connection's
    /// generation.
    buffered: Mutex<HashMap<String, VecDeque<(u64, Delivery)>>>,
    /// Deliveries handed out, by lease token.
    held: Mutex<HashMap<u128, Held>>,
    settled: Mutex<Settled>,
    /// Job queues and wait buckets used (for stats).
    known: Mutex<BTreeSet<String>>,
    buckets: Mutex<BTreeSet<u64>>,
    /// Redeliveries seen since the last reaper pass, and poison pills parked at reservation.
    pending_recovered: Mutex<Vec<JobId>>,
    pending_dead: Mutex<Vec<DeadLetter>>,
    /// Jobs this process gave back at lease expiry (reported then, not again on redelivery).
    self_recovered: Mutex<HashSet<JobId>>,
    /// The depth the last stats call counted, moved by this process's enqueues and acks.
    depth: AtomicU64,
    warned_recoveries: AtomicBool,
}

impl fmt::Debug for AmqpBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBackend")
            .field("prefix", &self.settings.prefix)
            .field("queue_type", &self.settings.queue_type)
            .finish_non_exhaustive()
    }
}

impl AmqpBackend {
    /// Settings for a backend on the broker at `url` (`amqp://user:password@host:port/vhost`,
    /// the default vhost `/` spelt `%2f`), with the defaults: prefix `jobs`, quorum queues,
    /// 3 recoveries, prefetch 32, a 30-minute `consumer_timeout`, 10,000 dead letters kept 7
    /// days, 128 MiB messages, 2 s to connect.
    pub fn builder(url: impl Into<String>) -> AmqpBackendBuilder {
        AmqpBackendBuilder {
            url: url.into(),
            prefix: "jobs".to_owned(),
            queue_type: QueueType::Quorum,
            max_recoveries: 3,
            consumer_timeout: Duration::from_secs(30 * 60),
            prefetch: 32,
            dead_letter_capacity: 10_000,
            dead_letter_retention: Duration::from_secs(7 * 24 * 3600),
            max_message_size: 128 * 1024 * 1024,
            connection_timeout: Duration::from_secs(2),
        }
    }

    /// A backend on `url` with the default settings.
    ///
    /// # Errors
    /// An invalid URL.
    pub fn new(url: impl Into<String>) -> Result<Self, AmqpConfigError> {
        Self::builder(url).build()
    }

    fn from_settings(settings: AmqpBackendBuilder) -> Self {
        Self {
            names: Names::new(&settings.prefix),
            settings,
            link: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            generations: AtomicU64::new(0),
            buffered: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            settled: Mutex::new(Settled::default()),
            known: Mutex::new(BTreeSet::new()),
            buckets: Mutex::new(BTreeSet::new()),
            pending_recovered: Mutex::new(Vec::new()),
            pending_dead: Mutex::new(Vec::new()),
            self_recovered: Mutex::new(HashSet::new()),
            depth: AtomicU64::new(0),
            warned_recoveries: AtomicBool::new(false),
        }
    }

    /// The name prefix.
    pub fn prefix(&self) -> &str {
        &self.settings.prefix
    }

    /// Publishes raw bytes as a message of `queue` with id `id` and none of the job headers
    /// (for tests of malformed messages: the runtime dead-letters them with the reason).
    ///
    /// # Errors
    /// The broker is unreachable or refuses the message.
    pub async fn insert_raw(&self, id: JobId, queue: &str, raw: &str) -> Result<(), BackendError> {
        ops::check_name("queue", queue)?;
        let link = self.link().await?;
        self.work_queue(&link, queue).await?;
        let props = lapin::BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.to_string().as_str().into());
        self.publish(
            &link,
            &self.names.work_exchange(),
            queue,
            raw.as_bytes(),
            props,
        )
        .await
    }

    /// Deletes this prefix's exchanges and queues with everything in them: the work queues
    /// of `queues` and of every job queue this backend used, the wait buckets it used, the
    /// parking and dead-letter queues. For tests and teardown.
    ///
    /// # Errors
    /// The broker is unreachable or refuses a deletion.
    pub async fn delete_topology(&self, queues: &[&str]) -> Result<(), BackendError> {
        let link = self.link().await?;
        let mut names: BTreeSet<String> = lock(&self.known).clone();
        names.extend(queues.iter().map(|q| (*q).to_owned()));
        let mut queues: Vec<String> = names.iter().map(|q| self.names.work_queue(q)).collect();
        // Every bucket: another process may have used one this one did not.
        queues.extend((6..=31).map(|exp| self.names.wait_queue(1u64 << exp)));
        queues.extend(
            lock(&self.buckets)
                .iter()
                .map(|b| self.names.wait_queue(*b)),
        );
        queues.push(self.names.parked_queue());
        queues.push(self.names.dead_queue());
        let ch = self.side_channel(&link).await?;
        for q in queues {
            ch.queue_delete(
                q.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await
            .map_err(conn::unavailable)?;
        }
        for x in [self.names.work_exchange(), self.names.wait_exchange()] {
            ch.exchange_delete(
                x.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await
            .map_err(conn::unavailable)?;
        }
        let _ = ch.close(200, "done".into()).await;
        Ok(())
    }

    async fn wait(&self, queues: &[String], timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let queues: Vec<String> = queues
            .iter()
            .filter(|q| is_valid_name(q))
            .cloned()
            .collect();
        let Ok(link) = self.link().await else {
            tokio::time::sleep_until(deadline).await;
            return;
        };
        for q in &queues {
            if self.consumer(&link, q).await.is_err() {
                tokio::time::sleep_until(deadline).await;
                return;
            }
        }
        self.drain_consumers(&link, &queues);
        let any_buffered = {
            let b = lock(&self.buffered);
            queues
                .iter()
                .any(|q| b.get(q).is_some_and(|d| !d.is_empty()))
        };
        if any_buffered {
            return;
        }
        let streams: Vec<_> = {
            let consumers = lock(&link.consumers);
            queues
                .iter()
                .filter_map(|q| consumers.get(q).map(|c| (q.clone(), c.clone())))
                .collect()
        };
        if streams.is_empty() {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        let nexts = streams.into_iter().map(|(q, mut c)| {
            Box::pin(async move {
                let next = c.next().await;
                (q, next)
            })
        });
        let first = futures_util::future::select_all(nexts);
        match tokio::time::timeout_at(deadline, first).await {
            Ok(((q, Some(Ok(d))), _, _)) => {
                lock(&self.buffered)
                    .entry(q)
                    .or_default()
                    .push_back((link.generation, d));
            }
            Ok(((q, _), _, _)) => {
                // The consumer ended: start it again at the next call.
                lock(&link.consumers).remove(&q);
            }
            Err(_) => {}
        }
    }

    /// Connects and declares the shared topology (at `connect`).
    async fn check(&self) -> Result<(), BackendError> {
        self.link().await.map(|_| ())
    }
}

impl Backend for AmqpBackend {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn connect(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.check())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            status_by_id: false,
            dead_letter_listing: true,
            requeue_by_id: true,
            exact_depth: false,
            idempotent_enqueue: false,
            ordered: false,
            max_payload: Some(self.settings.max_message_size.saturating_sub(HEADER_ROOM)),
            max_attempt_duration: Some(self.settings.consumer_timeout),
            batched_acks: true,
            // A message in a queue cannot be found by id, nor a delivery on another
            // consumer's channel told to stop.
            cancel_by_id: false,
            // No status by id: nowhere to show it.
            progress: false,
            results: false,
            // Nothing to wait on without a status by id.
            finish_wakeups: false,
            // A broker keeps messages, not keys: nowhere to hold one atomically with the
            // publish.
            unique_keys: false,
        }
    }

    fn enqueue(
        &self,
        envelope: Envelope,
        capacity: u64,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.do_enqueue(envelope, capacity))
    }

    fn enqueue_batch<'a>(
        &'a self,
        envelopes: &'a [Envelope],
        capacity: u64,
    ) -> BoxFuture<'a, Result<usize, BackendError>> {
        Box::pin(self.do_enqueue_batch(envelopes, capacity))
    }

    fn reserve<'a>(
        &'a self,
        queues: &'a [String],
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Reservation>, BackendError>> {
        Box::pin(self.do_reserve(queues, max, lease))
    }

    fn wait_for_work<'a>(&'a self, queues: &'a [String], timeout: Duration) -> BoxFuture<'a, ()> {
        Box::pin(self.wait(queues, timeout))
    }

    fn ack(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.do_ack(id, token))
    }

    /// The acks go out together (each `basic.ack` is one frame, with no reply to wait for),
    /// not one after the other: a success whose ack has not left the process when it is
    /// killed runs again.
    fn ack_batch<'a>(
        &'a self,
        acks: &'a [(JobId, LeaseToken)],
    ) -> BoxFuture<'a, Result<Vec<JobId>, BackendError>> {
        Box::pin(async move {
            let done = futures_util::future::join_all(
                acks.iter()
                    .map(|(id, token)| self.do_ack(*id, token.clone())),
            )
            .await;
            let mut lost = Vec::new();
            for r in done {
                match r {
                    Ok(()) => {}
                    Err(BackendError::LeaseLost(id)) => lost.push(id),
                    Err(e) => return Err(e),
                }
            }
            Ok(lost)
        })
    }

    fn retry(
        &self,
        id: JobId,
        token: LeaseToken,
        retry: Retry,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.do_retry(id, token, retry))
    }

    fn dead_letter(
        &self,
        id: JobId,
        token: LeaseToken,
        record: DeadLetter,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.do_dead_letter(id, token, record))
    }

    fn extend<'a>(
        &'a self,
        leases: &'a [(JobId, LeaseToken)],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Extended, BackendError>> {
        Box::pin(std::future::ready(Ok(self.do_extend(leases, lease))))
    }

    fn release(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.do_release(id, token))
    }

    fn reap(&self, max_recoveries: u32) -> BoxFuture<'_, Result<Reaped, BackendError>> {
        Box::pin(self.do_reap(max_recoveries))
    }

    fn status(&self, _id: JobId) -> BoxFuture<'_, Result<Option<JobStatus>, BackendError>> {
        Box::pin(std::future::ready(Err(BackendError::Unsupported(
            "status by id: a RabbitMQ queue cannot be searched by message id",
        ))))
    }

    fn stats(&self) -> BoxFuture<'_, Result<BackendStats, BackendError>> {
        Box::pin(self.do_stats())
    }

    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, BackendError>> {
        Box::pin(self.do_dead_letters(limit))
    }

    fn requeue(&self, id: JobId) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.do_requeue(id))
    }
}
