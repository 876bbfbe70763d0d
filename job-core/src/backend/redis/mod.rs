//! [`RedisBackend`]: durable, at-least-once jobs on Redis (cargo feature `redis`).
//!
//! ```no_run
//! use std::time::Duration;
//! use job_core::backend::redis::RedisBackend;
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
//! let backend = RedisBackend::builder("redis://127.0.0.1:6379")
//!     .prefix("jobs")
//!     .finished_retention(Duration::from_secs(3600))
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
//! # What this backend guarantees, and what Redis guarantees
//! Every job whose [`enqueue`](Backend::enqueue) returned `Ok` runs at least once or ends
//! dead-lettered with a reason, **as long as Redis keeps the data it acknowledged**. A
//! worker killed mid-job loses nothing: its lease expires and the reaper puts the job back
//! at the front of its queue, counted as a *recovery*; after `max_recoveries` it is
//! dead-lettered as a poison pill. A worker that lost its lease cannot change the job (every
//! write is fenced by the lease token). Handlers must be idempotent: a job can run twice
//! (after a crash, or when a worker stalls longer than its lease).
//!
//! Redis itself is the weak link, and this backend cannot be more durable than it:
//! * Without persistence a restart loses everything. With RDB snapshots it loses the writes
//!   since the last snapshot. With `appendonly yes` and `appendfsync everysec` (the usual
//!   setting) it can lose about the last second of acknowledged writes on a crash of the
//!   machine; `appendfsync always` closes that window at a large cost in throughput.
//! * Replication is asynchronous: a write acknowledged by the primary may not have reached
//!   a replica when a failover promotes it, so **failover can lose acknowledged writes**
//!   (`WAIT` narrows the window but does not make Redis a consensus system; Jepsen's
//!   analysis of Redis Sentinel saw a majority of acknowledged writes lost in partitions).
//!   A lost enqueue is a lost job; a lost ack makes a job run again.
//! * Eviction destroys jobs: run with `maxmemory-policy noeviction`
//!   ([`connect`](Backend::connect) warns otherwise), so a full Redis refuses writes (which
//!   this backend reports as [`BackendError::Unavailable`]) instead of dropping keys.
//!
//! # Key layout
//! Every key starts with the configured prefix (default `jobs`) in a hash tag, `{jobs}:`,
//! so **all keys of one backend live in one Redis Cluster slot**. That is what lets every
//! state change be one Lua script even on a cluster, including the ones that touch several
//! queues (the capacity count is shared by every queue; a reservation may take jobs from several
//! queues; the scheduled, leased and dead sets are shared). The price is that one prefix is
//! served by one shard: to spread load over a cluster, give independent workloads different
//! prefixes (one backend each). Queue and job names are checked against
//! `[A-Za-z0-9_.-]{1,64}` ([`is_valid_name`]) before they become keys, so they cannot
//! contain `{`, `}` or `:`.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:job:<id>` | hash | the job record; fields below |
//! | `{p}:ready:<queue>` | list | ids ready to run, oldest first (released and recovered jobs go to the front) |
//! | `{p}:scheduled` | sorted set | delayed jobs and retries, scored by not-before (ms) |
//! | `{p}:leased` | sorted set | reserved jobs, scored by lease expiry (ms, Redis clock) |
//! | `{p}:dead` | sorted set | dead letters, scored by time of death (ms) |
//! | `{p}:queues` | set | queue names seen (for stats; it only grows) |
//! | `{p}:live` | string | jobs queued, scheduled or running, for the capacity check (kept by every script; recounted from the lists and sets by [`stats`](Backend::stats), which the runtime calls twice a second) |
//! | `{p}:signal:<queue>` | list | at most one wake-up token per queue, for [`wait_for_work`](Backend::wait_for_work) |
//! | `{p}:garbage` | list | ready-list entries that were not job ids (at most 1,000, newest first) |
//! | `{p}:finished` | list | succeeded jobs waiting for deletion: one entry per ack call, `<deadline ms> <id> <id> ...`, oldest first |
//! | `{p}:watched` | set | live jobs a [`Client::wait`](crate::Client::wait) waits for; the script that ends one removes it and publishes its id on the pub/sub channel `{p}:ended` (at most one entry per waited-for live job) |
//!
//! A job record's fields have one- or two-letter names, because Redis keeps a hash whose
//! fields and values are all short (at most 64 bytes each, by default) as one compact
//! *listpack* allocation, and a small job's record costs about a third of what it would as a
//! hash table:
//!
//! | field | holds | written by |
//! |---|---|---|
//! | `p` | the payload (the job's arguments) as JSON, exactly as the client serialized it | enqueue |
//! | `j`, `q` | job name, queue | enqueue |
//! | `m` | attempts allowed | enqueue |
//! | `e` | enqueued at (ms since the Unix epoch) | enqueue |
//! | `s` | state: absent while queued, else `scheduled`, `running`, `retrying`, `succeeded`, `dead`, `cancelled` | every change |
//! | `a`, `r` | attempts started, crash recoveries (absent = 0) | reserve, reap, requeue |
//! | `nb` | not before (ms), for delayed jobs and retries | enqueue, retry |
//! | `u` | last change (ms, Redis clock; absent = `e`) | every change but enqueue |
//! | `l` | lease token, while reserved (the expiry is the job's score in `{p}:leased`); empty once succeeded | reserve, ack |
//! | `d` | the token whose outcome was written last, so a repeated write-back is recognised | ack, retry, dead-letter, release |
//! | `o` | the outcome `d` wrote (`ack`, `retry`, `dead`, `release`, `cancel`): only a repeat of that outcome is one; another with that token is a lost lease (absent on records written before this field: the token alone decides, as it did then) | ack, retry, dead-letter, release |
//! | `err` | last error | retry, dead-letter, reap |
//! | `pg` | the progress the job reported last (JSON) | progress |
//! | `res` | the result of the job's successful attempt (JSON; absent for a job that keeps none) | ack |
//! | `cx` | a cancel was requested while the job was reserved: extend reports it to the holder; a retry, release or reap cancels the job instead | cancel |
//! | `dead`, `died` | the dead-letter record (JSON) and when it died | dead-letter, reap |
//!
//! [`reserve`](Backend::reserve) and [`status`](Backend::status) take a count or time that
//! is present but not a number for corruption, never for 0 or now: reserve returns the job
//! as [`Reservation::Malformed`] (the runtime dead-letters it with the reason; the record
//! keeps its fields, and a [`requeue`](Backend::requeue) clears the counts and the start
//! time), and status fails with [`BackendError::Corrupt`]. The dead-letter listing reads
//! such a field as 0 rather than fail for every dead letter.
//!
//! The payload is stored as the client wrote it and never re-encoded by a script (Lua's JSON
//! would turn `[]` into `{}` and round large integers). A succeeded job's record keeps an
//! empty payload (the ack empties it in the same `HSET` that records the success).
//!
//! Enqueueing an id that is already stored changes nothing and succeeds, so an enqueue
//! retried after a lost reply does not duplicate the job (ids are fresh UUIDv7s, so this
//! never happens otherwise).
//!
//! Leases are one sorted set scored by expiry rather than a processing list per worker: the
//! trait has no worker identity (and a reused worker id is a classic way to lose jobs,
//! apalis#504/#507), recovery is per job rather than per worker, renewing a lease is one
//! `ZADD`, and the reaper finds every expired lease with one `ZRANGEBYSCORE`.
//!
//! Retention keeps memory flat: a succeeded job's hash empties its payload and is deleted
//! once [`finished_retention`](RedisBackendBuilder::finished_retention) has passed, by the
//! first ack or reaper pass after that (each ack call deletes up to twice as many expired
//! records as it finishes, from `{p}:finished`; a job key carries no TTL of its own, which
//! keeps Redis's table of expiring keys small and every command on a job key cheaper); a
//! dead job's hash expires after
//! [`dead_letter_retention`](RedisBackendBuilder::dead_letter_retention), and beyond
//! [`dead_letter_capacity`](RedisBackendBuilder::dead_letter_capacity) the oldest dead
//! letters are evicted (and logged). Live jobs are bounded by the capacity the runtime
//! passes to `enqueue`.
//!
//! # Scripts
//! Each state change is one Lua script (in `scripts/*.lua`), loaded once and run with
//! `EVALSHA` (falling back to `EVAL` after a `SCRIPT FLUSH` or a restart): enqueue (one job
//! or a batch, with the capacity check), reserve (promotes due scheduled jobs, then pops and
//! leases up to N jobs with one `LPOP` per queue), ack (one job or a batch), retry,
//! dead-letter, extend, release (each fenced by the lease token: a mismatch changes nothing
//! and reports the lease lost, but for a token whose own outcome was written: a repeat of
//! that outcome succeeds, and an extend racing it reports nothing lost), reap (expired leases back to the front of their queue with
//! `recoveries + 1`, or dead as poison pills; prunes old dead letters and expired finished
//! records), sweep (more expired finished records, called by the reaper after a burst),
//! requeue, stats (which also recounts the capacity count) and the dead-letter listing.
//! Batches are split so that no script call handles more than 500 jobs: a script blocks
//! every other client of the server while it runs.
//!
//! Redis 6.2 or later is required ([`connect`](Backend::connect) refuses older servers).
//!
//! # Clocks
//! Lease expiry is computed and compared with Redis's own clock (`TIME` inside the scripts),
//! so workers on machines with skewed clocks agree on when a lease ran out; lease lengths
//! are durations, never client timestamps. Start times (`not_before` of delayed jobs and
//! retries) are client timestamps in ms since the Unix epoch, compared with Redis's clock
//! when jobs are promoted: a client clock that is off by *d* shifts delayed starts by *d*,
//! which never breaks the lease guarantees.
//!
//! # Connections
//! Scripts and commands go through one redis-rs `ConnectionManager` (multiplexed, reconnects
//! in the background), created lazily, so the backend can be built and the runtime started
//! while Redis is down. Every call is bounded by the connection and response timeouts; a
//! failure is [`BackendError::Unavailable`], never a panic, and the runtime retries with
//! backoff. A timed-out call may still have run on the server (Redis does not cancel it):
//! at worst a job is leased to nobody and comes back after its lease, or an ack is reported
//! failed and the retried ack finds the lease gone.
//!
//! [`wait_for_work`](Backend::wait_for_work) blocks with `BLPOP` on the queues' signal lists,
//! which the scripts that make work ready push a token onto. A blocking command on a shared
//! multiplexed connection would stall every command behind it (redis-rs#361), so the wait
//! runs on a **dedicated** connection that carries nothing else (redis-rs 1.x has only
//! multiplexed async connections; one used by a single blocking command at a time is
//! dedicated), with a client-side deadline longer than the server-side block
//! (apalis-redis#76). Idle wait connections are pooled; a wait that is cancelled or fails
//! drops its connection (so no stale blocked command is left in front of the next one), and
//! new ones are opened with exponential backoff (`backon`) within the wait's own timeout.

mod config;
mod conn;
mod decode;
mod scripts;
mod watch;

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, MultiplexedConnection};
use ::redis::{Client, RedisError};
use tokio::sync::Notify;
use tokio::time::Instant;

pub use self::config::{RedisBackendBuilder, RedisConfigError};
use self::decode::{RESERVE_ROW, StoredDead, dead_letter_from_row, parse_id, reservation};
use self::scripts::Scripts;
use super::{
    Backend, BackendError, BackendStats, BoxFuture, CancelOutcome, Envelope, Extended, LeaseToken,
    Payload, Reaped, Reservation, Retry, reserve_in_calls, unix_ms,
};
use crate::dead_letter::DeadLetter;
use crate::job::{JobId, is_valid_name};
use crate::observe::status::{JobState, JobStatus};
use crate::unique::{Enqueued, UniqueKey, UniqueUntil};

/// Due scheduled jobs promoted to ready per reservation (more wait for the next one).
const PROMOTE_BATCH: usize = 1000;
/// Expired leases, and expired dead letters, handled per reaper pass.
const REAP_BATCH: usize = 1000;
/// Time a reaper pass spends at most deleting expired finished records beyond its first batch.
const SWEEP_TIME: Duration = Duration::from_secs(2);
/// Jobs leased per reserve script call (a script blocks the server while it runs); a
/// reservation of more runs the script again for the rest.
const MAX_RESERVE: usize = 10_000;
/// Jobs stored per enqueue script call (a longer batch is split).
const ENQUEUE_BATCH: usize = 500;
/// Jobs acknowledged per ack script call (a longer batch is split).
const ACK_BATCH: usize = 500;

/// The [`Backend`] contract on Redis. See the [module docs](self) for the data model, the
/// guarantees and the connections.
pub struct RedisBackend {
    client: Client,
    manager: OnceLock<ConnectionManager>,
    waiters: Mutex<Vec<MultiplexedConnection>>,
    /// `{prefix}:`
    base: String,
    /// The keys every script declares: queues, scheduled, leased, dead, garbage, live,
    /// finished.
    keys: [String; 7],
    scripts: Scripts,
    settings: RedisBackendBuilder,
    /// The subscriber to job ends, for waiters.
    ended: watch::Ended,
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.ended.stop.cancel();
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.settings.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Settings for a backend on the server at `url` (`redis://[user:password@]host:port/db`),
    /// with the defaults: prefix `jobs`, 10,000 dead letters kept 7 days, finished statuses
    /// kept 10 minutes, 1 s connection and 2 s response timeouts.
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder {
            url: url.into(),
            prefix: "jobs".to_owned(),
            dead_letter_capacity: 10_000,
            dead_letter_retention: Duration::from_secs(7 * 24 * 3600),
            finished_retention: Duration::from_secs(600),
            connection_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
        }
    }

    /// A backend on `url` with the default settings.
    ///
    /// # Errors
    /// An invalid URL.
    pub fn new(url: impl Into<String>) -> Result<Self, RedisConfigError> {
        Self::builder(url).build()
    }

    /// The key prefix (without braces).
    pub fn prefix(&self) -> &str {
        &self.settings.prefix
    }

    /// Stores `raw` under `id` in `queue` as if it were a job record, bypassing the capacity
    /// check: a corrupted or foreign record, for tests and tools exercising the bad-record
    /// path (it comes back from `reserve` as [`Reservation::Malformed`]).
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when Redis cannot be reached; an invalid queue name.
    pub async fn insert_raw(&self, id: JobId, queue: &str, raw: &str) -> Result<(), BackendError> {
        check_name("queue", queue)?;
        let mut inv = self.invocation(&self.scripts.insert_raw);
        inv.arg(id.to_string()).arg(queue).arg(raw);
        let _: i64 = self.run_script(inv).await?;
        Ok(())
    }

    fn job_key(&self, id: JobId) -> String {
        format!("{}job:{id}", self.base)
    }

    fn retention_ms(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    async fn do_enqueue(&self, envelope: Envelope, capacity: u64) -> Result<(), BackendError> {
        match self
            .do_enqueue_batch(std::slice::from_ref(&envelope), capacity)
            .await?
        {
            1 => Ok(()),
            _ => Err(BackendError::Full),
        }
    }

    /// One script call: the key checked and, unless another job holds it, the job stored
    /// and the key taken (enqueue.lua, 'unique').
    async fn do_enqueue_unique(
        &self,
        envelope: Envelope,
        capacity: u64,
        unique: &UniqueKey,
    ) -> Result<Enqueued, BackendError> {
        check_name("queue", &envelope.queue)?;
        check_name("job", &envelope.job)?;
        let mut inv = self.invocation(&self.scripts.enqueue);
        inv.arg(capacity.to_string())
            .arg("unique")
            .arg(&unique.key)
            .arg(
                u64::try_from(unique.window.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .arg(match unique.until {
                UniqueUntil::Window => "window",
                UniqueUntil::Finished => "finished",
            });
        each_args(&mut inv, &envelope);
        let (stored, status, holder): (usize, String, String) = self.run_script(inv).await?;
        match (stored, status.as_str()) {
            (_, "existing") => holder.parse().map(Enqueued::Existing).map_err(|_| {
                BackendError::Corrupt(format!("unique key names `{holder}`, not a job id"))
            }),
            (1, "ok") => Ok(Enqueued::New(envelope.id)),
            (_, "full") => Err(BackendError::Full),
            _ => Err(BackendError::Corrupt(format!(
                "job {} cannot be stored: its key holds a value that is not a job record",
                envelope.id
            ))),
        }
    }

    async fn do_enqueue_batch(
        &self,
        envelopes: &[Envelope],
        capacity: u64,
    ) -> Result<usize, BackendError> {
        let mut stored = 0;
        // Bounded script calls: a long script blocks every other client of this Redis.
        for chunk in envelopes.chunks(ENQUEUE_BATCH) {
            let mut inv = self.invocation(&self.scripts.enqueue);
            inv.arg(capacity.to_string());
            fn payload(envelope: &Envelope) -> Result<&str, BackendError> {
                check_name("queue", &envelope.queue)?;
                check_name("job", &envelope.job)?;
                Ok(envelope.payload.as_str())
            }
            // The common case, a batch of fresh jobs of one type, sends what they share once.
            let fresh =
                |e: &Envelope| e.attempt == 0 && e.recoveries == 0 && e.not_before.is_none();
            match chunk.first() {
                Some(first)
                    if chunk.len() > 1
                        && chunk.iter().all(|e| {
                            fresh(e)
                                && e.job == first.job
                                && e.queue == first.queue
                                && e.max_attempts == first.max_attempts
                        }) =>
                {
                    inv.arg("same")
                        .arg(&first.job)
                        .arg(&first.queue)
                        .arg(first.max_attempts);
                    for envelope in chunk {
                        inv.arg(envelope.id.to_string())
                            .arg(payload(envelope)?)
                            .arg(envelope.enqueued_at);
                    }
                }
                _ => {
                    inv.arg("each");
                    for envelope in chunk {
                        payload(envelope)?; // the names checked
                        each_args(&mut inv, envelope);
                    }
                }
            }
            let (done, status): (usize, String) = self.run_script(inv).await?;
            stored += done;
            match status.as_str() {
                "ok" => {}
                "full" => return Ok(stored),
                _ => {
                    let id = envelopes.get(stored).map(|e| e.id.to_string());
                    return Err(BackendError::Corrupt(format!(
                        "job {} cannot be stored: its key holds a value that is not a job record",
                        id.unwrap_or_default()
                    )));
                }
            }
        }
        Ok(stored)
    }

    async fn do_reserve(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Reservation>, BackendError> {
        for q in queues {
            check_name("queue", q)?;
        }
        if max == 0 || queues.is_empty() {
            return Ok(Vec::new());
        }
        // One script call per `MAX_RESERVE` jobs (a call leases until it has its share or
        // the queues are empty), until `max` are leased or one is short.
        reserve_in_calls(max, MAX_RESERVE, |want| {
            self.reserve_chunk(queues, want, lease)
        })
        .await
    }

    /// One reserve script call for up to `max` (at most `MAX_RESERVE`) jobs.
    async fn reserve_chunk(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Reservation>, BackendError> {
        let max = max.min(MAX_RESERVE);
        let mut inv = self.invocation(&self.scripts.reserve);
        inv.arg(max)
            .arg(Self::retention_ms(lease).max(1))
            .arg(PROMOTE_BATCH)
            .arg(queues.len());
        for q in queues {
            inv.arg(q);
        }
        for _ in 0..max {
            inv.arg(LeaseToken::random().to_string());
        }
        let flat: Vec<Vec<u8>> = self.run_script(inv).await?;
        let mut out = Vec::with_capacity(flat.len() / RESERVE_ROW);
        let mut rest = flat.as_slice();
        loop {
            rest = match rest {
                [] => break,
                [tag, ..] if tag.as_slice() == b"job" && rest.len() >= RESERVE_ROW => {
                    let (row, tail) = rest.split_at(RESERVE_ROW);
                    out.push(reservation(row)?);
                    tail
                }
                [tag, entry, tail @ ..] if tag.as_slice() == b"garbage" => {
                    tracing::error!(
                        entry = %String::from_utf8_lossy(entry),
                        key = %self.keys[4],
                        "a ready list or the scheduled set held an entry that is not a stored job; moved aside"
                    );
                    tail
                }
                _ => return Err(BackendError::Corrupt("unexpected reply to reserve".into())),
            };
        }
        Ok(out)
    }

    async fn do_ack_batch(&self, acks: &[(JobId, LeaseToken)]) -> Result<Vec<JobId>, BackendError> {
        let mut lost = Vec::new();
        for chunk in acks.chunks(ACK_BATCH) {
            let mut inv = self.invocation(&self.scripts.ack);
            inv.arg(Self::retention_ms(self.settings.finished_retention))
                .arg(2);
            for (id, token) in chunk {
                inv.arg(id.to_string()).arg(token.to_string());
            }
            self.acked(inv, &mut lost).await?;
        }
        Ok(lost)
    }

    async fn do_ack_results(
        &self,
        acks: &[(JobId, LeaseToken, Payload)],
    ) -> Result<Vec<JobId>, BackendError> {
        let mut lost = Vec::new();
        for chunk in acks.chunks(ACK_BATCH) {
            let mut inv = self.invocation(&self.scripts.ack);
            inv.arg(Self::retention_ms(self.settings.finished_retention))
                .arg(3);
            for (id, token, result) in chunk {
                inv.arg(id.to_string())
                    .arg(token.to_string())
                    .arg(result.as_str());
            }
            self.acked(inv, &mut lost).await?;
        }
        Ok(lost)
    }

    /// Runs an ack script call and adds the ids it reports lost to `lost`.
    async fn acked(
        &self,
        inv: ::redis::ScriptInvocation<'_>,
        lost: &mut Vec<JobId>,
    ) -> Result<(), BackendError> {
        let ids: Vec<String> = self.run_script(inv).await?;
        for id in ids {
            lost.push(parse_id(&id)?);
        }
        Ok(())
    }

    async fn do_dead_letter(
        &self,
        id: JobId,
        token: LeaseToken,
        record: DeadLetter,
    ) -> Result<(), BackendError> {
        let stored = StoredDead {
            job: record.job.clone(),
            queue: record.queue.clone(),
            payload: record.payload.clone(),
            attempts: record.attempts,
            error: record.error.clone(),
            enqueued_at: unix_ms(record.enqueued_at),
            died_at: unix_ms(record.died_at),
        };
        let json = serde_json::to_string(&stored)
            .map_err(|e| BackendError::Corrupt(format!("dead letter does not serialize: {e}")))?;
        let mut inv = self.invocation(&self.scripts.dead_letter);
        inv.arg(id.to_string())
            .arg(token.to_string())
            .arg(json)
            .arg(record.error_message())
            .arg(Self::retention_ms(self.settings.dead_letter_retention))
            .arg(self.settings.dead_letter_capacity);
        let reply: Vec<String> = self.run_script(inv).await?;
        match reply.split_first() {
            Some((status, evicted)) if status == "1" => {
                log_evicted(evicted);
                Ok(())
            }
            _ => Err(BackendError::LeaseLost(id)),
        }
    }

    async fn do_reap(&self, max_recoveries: u32) -> Result<Reaped, BackendError> {
        let reason = format!(
            "worker lost {max_recoveries} times while running this job (crash-recovered); dead-lettered as a poison pill"
        );
        let mut inv = self.invocation(&self.scripts.reap);
        inv.arg(max_recoveries)
            .arg(reason)
            .arg(REAP_BATCH)
            .arg(Self::retention_ms(self.settings.dead_letter_retention))
            .arg(self.settings.dead_letter_capacity)
            .arg(Self::retention_ms(self.settings.finished_retention));
        type Reply = (Vec<String>, Vec<Vec<Vec<u8>>>, Vec<String>, String);
        let (recovered, dead, evicted, more): Reply = self.run_script(inv).await?;
        log_evicted(&evicted);
        if more == "1" {
            self.sweep_finished().await?;
        }
        let mut reaped = Reaped::default();
        for id in recovered {
            reaped.recovered.push(parse_id(&id)?);
        }
        for row in dead {
            reaped.dead.push(dead_letter_from_row(&row)?);
        }
        Ok(reaped)
    }

    /// Deletes the finished records whose retention has passed, `REAP_BATCH` keys or so per
    /// script call (a script blocks the server while it runs), for at most `SWEEP_TIME` per
    /// reaper pass. Acks sweep as they go; this catches up after a burst when no acks come,
    /// so memory comes back without waiting for new work.
    async fn sweep_finished(&self) -> Result<(), BackendError> {
        let until = Instant::now() + SWEEP_TIME;
        while Instant::now() < until {
            let mut inv = self.invocation(&self.scripts.sweep);
            inv.arg(REAP_BATCH);
            if self.run_script::<i64>(inv).await? == 0 {
                break;
            }
            // Other clients' commands go between two calls.
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    async fn do_status(&self, id: JobId) -> Result<Option<JobStatus>, BackendError> {
        let mut cmd = ::redis::cmd("HMGET");
        cmd.arg(self.job_key(id)).arg(&decode::STATUS_FIELDS);
        let f: Vec<Option<Vec<u8>>> = match self.run_cmd(&cmd).await {
            Ok(f) => f,
            Err(BackendError::Unavailable(e))
                if e.downcast_ref::<RedisError>()
                    .is_some_and(|e| e.code() == Some("WRONGTYPE")) =>
            {
                return Err(BackendError::Corrupt(format!(
                    "the key of job {id} holds a value that is not a job record"
                )));
            }
            Err(e) => return Err(e),
        };
        decode::status(id, &f)
    }

    async fn do_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut inv = self.invocation(&self.scripts.dead_letters);
        inv.arg(limit.min(i64::MAX as usize));
        let rows: Vec<Vec<Vec<u8>>> = self.run_script(inv).await?;
        rows.iter().map(|row| dead_letter_from_row(row)).collect()
    }

    /// One script call: the dead row of `id`, if the dead-letter set has it.
    async fn do_find_dead_letter(&self, id: JobId) -> Result<Option<DeadLetter>, BackendError> {
        let mut inv = self.invocation(&self.scripts.find_dead_letter);
        inv.arg(id.to_string());
        let row: Vec<Vec<u8>> = self.run_script(inv).await?;
        if row.is_empty() {
            return Ok(None);
        }
        dead_letter_from_row(&row).map(Some)
    }
}

impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn connect(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.check())
    }

    fn enqueue(
        &self,
        envelope: Envelope,
        capacity: u64,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.do_enqueue(envelope, capacity))
    }

    fn enqueue_unique<'a>(
        &'a self,
        envelope: Envelope,
        capacity: u64,
        unique: &'a UniqueKey,
    ) -> BoxFuture<'a, Result<Enqueued, BackendError>> {
        Box::pin(self.do_enqueue_unique(envelope, capacity, unique))
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

    fn enqueue_batch<'a>(
        &'a self,
        envelopes: &'a [Envelope],
        capacity: u64,
    ) -> BoxFuture<'a, Result<usize, BackendError>> {
        Box::pin(self.do_enqueue_batch(envelopes, capacity))
    }

    fn ack(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            if self.do_ack_batch(&[(id, token)]).await?.is_empty() {
                Ok(())
            } else {
                Err(BackendError::LeaseLost(id))
            }
        })
    }

    fn ack_batch<'a>(
        &'a self,
        acks: &'a [(JobId, LeaseToken)],
    ) -> BoxFuture<'a, Result<Vec<JobId>, BackendError>> {
        Box::pin(self.do_ack_batch(acks))
    }

    fn ack_results<'a>(
        &'a self,
        acks: &'a [(JobId, LeaseToken, Payload)],
    ) -> BoxFuture<'a, Result<Vec<JobId>, BackendError>> {
        Box::pin(self.do_ack_results(acks))
    }

    fn retry(
        &self,
        id: JobId,
        token: LeaseToken,
        retry: Retry,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let mut inv = self.invocation(&self.scripts.retry);
            inv.arg(id.to_string())
                .arg(token.to_string())
                .arg(unix_ms(retry.at))
                .arg(retry.error)
                .arg(Self::retention_ms(self.settings.finished_retention));
            self.fenced(id, inv).await
        })
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
        Box::pin(async move {
            if leases.is_empty() {
                return Ok(Extended::default());
            }
            let mut inv = self.invocation(&self.scripts.extend);
            inv.arg(Self::retention_ms(lease).max(1));
            for (id, token) in leases {
                inv.arg(id.to_string()).arg(token.to_string());
            }
            let (lost, cancelled): (Vec<String>, Vec<String>) = self.run_script(inv).await?;
            let ids = |v: Vec<String>| -> Result<Vec<JobId>, BackendError> {
                v.iter().map(|id| parse_id(id)).collect()
            };
            Ok(Extended {
                lost: ids(lost)?,
                renewed: Vec::new(),
                cancelled: ids(cancelled)?,
            })
        })
    }

    fn release(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let mut inv = self.invocation(&self.scripts.release);
            inv.arg(id.to_string())
                .arg(token.to_string())
                .arg(Self::retention_ms(self.settings.finished_retention));
            self.fenced(id, inv).await
        })
    }

    fn reap(&self, max_recoveries: u32) -> BoxFuture<'_, Result<Reaped, BackendError>> {
        Box::pin(self.do_reap(max_recoveries))
    }

    fn status(&self, id: JobId) -> BoxFuture<'_, Result<Option<JobStatus>, BackendError>> {
        Box::pin(self.do_status(id))
    }

    fn stats(&self) -> BoxFuture<'_, Result<BackendStats, BackendError>> {
        Box::pin(async move {
            let inv = self.invocation(&self.scripts.stats);
            let (ready, scheduled, running, dead): (u64, u64, u64, u64) =
                self.run_script(inv).await?;
            Ok(BackendStats {
                ready,
                scheduled,
                running,
                dead,
            })
        })
    }

    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, BackendError>> {
        Box::pin(self.do_dead_letters(limit))
    }

    fn find_dead_letter(
        &self,
        id: JobId,
    ) -> BoxFuture<'_, Result<Option<DeadLetter>, BackendError>> {
        Box::pin(self.do_find_dead_letter(id))
    }

    fn cancel(&self, id: JobId) -> BoxFuture<'_, Result<CancelOutcome, BackendError>> {
        Box::pin(async move {
            let mut inv = self.invocation(&self.scripts.cancel);
            inv.arg(id.to_string())
                .arg(Self::retention_ms(self.settings.finished_retention));
            let reply: String = self.run_script(inv).await?;
            match reply.as_str() {
                "removed" => Ok(CancelOutcome::Removed),
                "requested" => Ok(CancelOutcome::Requested),
                "missing" => Err(BackendError::NotFound(id)),
                "finished:succeeded" => Ok(CancelOutcome::Finished(JobState::Succeeded)),
                "finished:dead" => Ok(CancelOutcome::Finished(JobState::Dead)),
                "finished:cancelled" => Ok(CancelOutcome::Finished(JobState::Cancelled)),
                other => Err(BackendError::Corrupt(format!(
                    "cancel of job {id} answered {other:?}"
                ))),
            }
        })
    }

    fn record_progress<'a>(
        &'a self,
        updates: &'a [(JobId, LeaseToken, Payload)],
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            if updates.is_empty() {
                return Ok(());
            }
            let mut inv = self.invocation(&self.scripts.progress);
            for (id, token, value) in updates {
                inv.arg(id.to_string())
                    .arg(token.to_string())
                    .arg(value.as_str());
            }
            self.run_script::<i64>(inv).await.map(drop)
        })
    }

    fn watch_finish(&self, id: JobId) -> BoxFuture<'_, Result<Arc<Notify>, BackendError>> {
        Box::pin(self.watch(id))
    }

    fn finish_cancelled(
        &self,
        id: JobId,
        token: LeaseToken,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let mut inv = self.invocation(&self.scripts.cancelled);
            inv.arg(id.to_string())
                .arg(token.to_string())
                .arg(Self::retention_ms(self.settings.finished_retention));
            self.fenced(id, inv).await
        })
    }

    fn requeue(&self, id: JobId) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let mut inv = self.invocation(&self.scripts.requeue);
            inv.arg(id.to_string());
            match self.run_script::<i64>(inv).await? {
                1 => Ok(()),
                _ => Err(BackendError::NotFound(id)),
            }
        })
    }
}

/// One job's arguments as enqueue.lua's 'each' and 'unique' modes take them: id, payload,
/// job, queue, max_attempts, attempt, recoveries, enqueued, not_before ('' = none).
fn each_args(inv: &mut ::redis::ScriptInvocation<'_>, envelope: &Envelope) {
    inv.arg(envelope.id.to_string())
        .arg(envelope.payload.as_str())
        .arg(&envelope.job)
        .arg(&envelope.queue)
        .arg(envelope.max_attempts)
        .arg(envelope.attempt)
        .arg(envelope.recoveries)
        .arg(envelope.enqueued_at)
        .arg(
            envelope
                .not_before
                .map(|t| t.to_string())
                .unwrap_or_default(),
        );
}

fn check_name(what: &str, name: &str) -> Result<(), BackendError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(BackendError::InvalidName(format!(
            "invalid {what} name {name:?}: names must match [A-Za-z0-9_.-]{{1,64}} to become Redis keys"
        )))
    }
}

fn log_evicted(ids: &[String]) {
    for id in ids {
        tracing::warn!(job_id = %id, "dead-letter capacity reached: evicted the oldest dead letter");
    }
}
