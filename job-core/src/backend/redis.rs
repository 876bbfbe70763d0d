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
//! | `s` | state: absent while queued, else `scheduled`, `running`, `retrying`, `succeeded`, `dead` | every change |
//! | `a`, `r` | attempts started, crash recoveries (absent = 0) | reserve, reap, requeue |
//! | `nb` | not before (ms), for delayed jobs and retries | enqueue, retry |
//! | `u` | last change (ms, Redis clock; absent = `e`) | every change but enqueue |
//! | `l` | lease token, while reserved (the expiry is the job's score in `{p}:leased`); empty once succeeded | reserve, ack |
//! | `d` | the token whose outcome was written last, so a repeated write-back is recognised | ack, retry, dead-letter, release |
//! | `err` | last error | retry, dead-letter, reap |
//! | `dead`, `died` | the dead-letter record (JSON) and when it died | dead-letter, reap |
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
//! Each state change is one Lua script, loaded once and run with `EVALSHA` (falling back to
//! `EVAL` after a `SCRIPT FLUSH` or a restart): enqueue (one job or a batch, with the
//! capacity check), reserve (promotes due scheduled jobs, then pops and leases up to N jobs
//! with one `LPOP` per queue), ack (one job or a batch), retry, dead-letter,
//! extend, release (each fenced by the lease token: a mismatch changes nothing and reports
//! the lease lost), reap (expired leases back to the front of their queue with
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

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use ::redis::{AsyncConnectionConfig, Client, RedisError, Script, ScriptInvocation};
use backon::{ExponentialBuilder, Retryable};
use tokio::time::Instant;

use super::{
    Backend, BackendError, BackendStats, BoxFuture, Envelope, LeaseToken, Payload, Reaped,
    Reservation, Retry, from_unix_ms, unix_ms,
};
use crate::dead_letter::DeadLetter;
use crate::job::{JobId, is_valid_name};
use crate::observe::status::{JobState, JobStatus};

/// Due scheduled jobs promoted to ready per reservation (more wait for the next one).
const PROMOTE_BATCH: usize = 1000;
/// Expired leases, and expired dead letters, handled per reaper pass.
const REAP_BATCH: usize = 1000;
/// Time a reaper pass spends at most deleting expired finished records beyond its first batch.
const SWEEP_TIME: Duration = Duration::from_secs(2);
/// Jobs one `reserve` call returns at most (the trait allows fewer than asked).
const MAX_RESERVE: usize = 10_000;
/// Items per reserved job in the reserve script's flat reply.
const RESERVE_ROW: usize = 12;
/// Jobs stored per enqueue script call (a longer batch is split).
const ENQUEUE_BATCH: usize = 500;
/// Jobs acknowledged per ack script call (a longer batch is split).
const ACK_BATCH: usize = 500;
/// Idle dedicated connections kept for `wait_for_work`.
const MAX_IDLE_WAITERS: usize = 8;

/// Why a [`RedisBackendBuilder`] was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConfigError {
    /// The key prefix does not match `[A-Za-z0-9_.-]{1,64}`.
    #[error("invalid key prefix {0:?}: expected 1 to 64 characters from [A-Za-z0-9_.-]")]
    InvalidPrefix(String),
    /// The URL is not a Redis URL redis-rs accepts.
    #[error("invalid redis url")]
    InvalidUrl(#[source] RedisError),
    /// A duration that must be positive was zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
}

/// Settings for a [`RedisBackend`]; see [`RedisBackend::builder`].
#[derive(Clone)]
pub struct RedisBackendBuilder {
    url: String,
    prefix: String,
    dead_letter_capacity: usize,
    dead_letter_retention: Duration,
    finished_retention: Duration,
    connection_timeout: Duration,
    response_timeout: Duration,
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: it is left out.
        f.debug_struct("RedisBackendBuilder")
            .field("prefix", &self.prefix)
            .field("dead_letter_capacity", &self.dead_letter_capacity)
            .field("dead_letter_retention", &self.dead_letter_retention)
            .field("finished_retention", &self.finished_retention)
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBackendBuilder {
    /// The key prefix (default `jobs`): keys are `{prefix}:...`. Must match
    /// `[A-Za-z0-9_.-]{1,64}`; checked by [`build`](Self::build).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Dead letters kept (default 10,000); beyond it the oldest are evicted and logged.
    pub fn dead_letter_capacity(mut self, capacity: usize) -> Self {
        self.dead_letter_capacity = capacity;
        self
    }

    /// How long a dead letter is kept (default 7 days). Must be positive.
    pub fn dead_letter_retention(mut self, retention: Duration) -> Self {
        self.dead_letter_retention = retention;
        self
    }

    /// How long the status of a succeeded job is kept (default 10 minutes; zero deletes it at
    /// once, which also makes each acknowledgement cheaper).
    ///
    /// The record is deleted by the first acknowledgement or reaper pass (every
    /// `reap_interval` of each runtime) after the retention has passed, so it can outlive
    /// it by up to a reaper interval.
    ///
    /// A succeeded job's record (its payload emptied) takes about 300 bytes of Redis memory,
    /// so this costs about `jobs per second × retention × 300 B`: 180 MB at 1,000 jobs/s for
    /// 10 minutes, 1 GB for an hour. Redis refuses writes when full (`noeviction`), so size
    /// this to the throughput.
    pub fn finished_retention(mut self, retention: Duration) -> Self {
        self.finished_retention = retention;
        self
    }

    /// Limit on opening one connection (default 1 s). Must be positive.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Limit on waiting for one reply (default 2 s). Must be positive. Blocking waits get
    /// their own, longer deadline.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Checks the settings and builds the backend. Does not connect: the first call does,
    /// so a runtime can start while Redis is down (it retries and reports degraded health).
    ///
    /// # Errors
    /// An invalid prefix or URL, or a zero duration where one must be positive.
    pub fn build(self) -> Result<RedisBackend, RedisConfigError> {
        if !is_valid_name(&self.prefix) {
            return Err(RedisConfigError::InvalidPrefix(self.prefix));
        }
        for (name, d) in [
            ("dead_letter_retention", self.dead_letter_retention),
            ("connection_timeout", self.connection_timeout),
            ("response_timeout", self.response_timeout),
        ] {
            if d.is_zero() {
                return Err(RedisConfigError::ZeroDuration(name));
            }
        }
        let client = Client::open(self.url.as_str()).map_err(RedisConfigError::InvalidUrl)?;
        Ok(RedisBackend {
            client,
            manager: OnceLock::new(),
            waiters: Mutex::new(Vec::new()),
            keys: [
                "queues",
                "scheduled",
                "leased",
                "dead",
                "garbage",
                "live",
                "finished",
            ]
            .map(|k| format!("{{{}}}:{k}", self.prefix)),
            base: format!("{{{}}}:", self.prefix),
            scripts: Scripts::new(),
            settings: self,
        })
    }
}

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
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.settings.prefix)
            .finish_non_exhaustive()
    }
}

/// Stored form of a dead letter written by [`Backend::dead_letter`] (ms timestamps; the id
/// is the key's).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredDead {
    job: String,
    queue: String,
    payload: serde_json::Value,
    attempts: u32,
    error: Vec<String>,
    enqueued_at: u64,
    died_at: u64,
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

    fn manager(&self) -> Result<ConnectionManager, BackendError> {
        if let Some(m) = self.manager.get() {
            return Ok(m.clone());
        }
        let s = &self.settings;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.connection_timeout))
            .set_response_timeout(Some(s.response_timeout))
            // Fail fast while Redis is down: the runtime has its own backoff, and a command
            // waiting on a long reconnect would hold a worker. The next command reconnects.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(unavailable)?;
        Ok(self.manager.get_or_init(|| manager).clone())
    }

    /// An upper bound on one call through the manager: a reconnect (two connection attempts
    /// and a backoff pause) plus a reply.
    fn call_deadline(&self) -> Duration {
        let s = &self.settings;
        s.connection_timeout * 2 + s.response_timeout + Duration::from_millis(1500)
    }

    /// A script call with the shared keys declared and the key base as `ARGV[1]`.
    fn invocation<'s>(&self, script: &'s Script) -> ScriptInvocation<'s> {
        let mut inv = script.prepare_invoke();
        for key in &self.keys {
            inv.key(key);
        }
        inv.arg(&self.base);
        inv
    }

    async fn run_script<T: ::redis::FromRedisValue>(
        &self,
        inv: ScriptInvocation<'_>,
    ) -> Result<T, BackendError> {
        let mut conn = self.manager()?;
        match tokio::time::timeout(self.call_deadline(), inv.invoke_async(&mut conn)).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(timed_out()),
        }
    }

    async fn run_cmd<T: ::redis::FromRedisValue>(
        &self,
        cmd: &::redis::Cmd,
    ) -> Result<T, BackendError> {
        let mut conn = self.manager()?;
        match tokio::time::timeout(self.call_deadline(), cmd.query_async(&mut conn)).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(timed_out()),
        }
    }

    fn job_key(&self, id: JobId) -> String {
        format!("{}job:{id}", self.base)
    }

    fn retention_ms(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs one fenced script that answers 1 (done) or 0 (lease lost).
    async fn fenced(&self, id: JobId, inv: ScriptInvocation<'_>) -> Result<(), BackendError> {
        match self.run_script::<i64>(inv).await? {
            1 => Ok(()),
            _ => Err(BackendError::LeaseLost(id)),
        }
    }

    /// A dedicated connection for a blocking wait: an idle one, or a new one opened with
    /// backoff before `deadline`.
    async fn waiter(&self, deadline: Instant) -> Option<MultiplexedConnection> {
        if let Some(conn) = self.idle_waiters().pop() {
            return Some(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.connection_timeout))
            // The wait sets its own deadline, longer than the server-side block.
            .set_response_timeout(None);
        let open = || async {
            self.client
                .get_multiplexed_async_connection_with_config(&config)
                .await
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_secs(1))
            .with_jitter()
            .without_max_times();
        let opening = open
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .notify(|e: &RedisError, pause| {
                tracing::debug!(error = %e, retry_in = ?pause, "opening a Redis connection for blocking waits failed");
            });
        match tokio::time::timeout_at(deadline, opening).await {
            Ok(Ok(conn)) => Some(conn),
            _ => None,
        }
    }

    fn idle_waiters(&self) -> std::sync::MutexGuard<'_, Vec<MultiplexedConnection>> {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn put_back_waiter(&self, conn: MultiplexedConnection) {
        let mut idle = self.idle_waiters();
        if idle.len() < MAX_IDLE_WAITERS {
            idle.push(conn);
        }
    }

    async fn wait(&self, queues: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let keys: Vec<String> = queues
            .iter()
            .filter(|q| is_valid_name(q))
            .map(|q| format!("{}signal:{q}", self.base))
            .collect();
        if keys.is_empty() {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        loop {
            let Some(mut conn) = self.waiter(deadline).await else {
                break;
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let ms = remaining.as_millis();
            if ms == 0 {
                self.put_back_waiter(conn);
                return;
            }
            // BLPOP's timeout is in seconds (decimals since Redis 6); 0 would block forever.
            let block = format!("{}.{:03}", ms / 1000, ms % 1000);
            let mut cmd = ::redis::cmd("BLPOP");
            cmd.arg(&keys).arg(block);
            let limit = remaining + self.settings.response_timeout;
            // If this future is dropped mid-wait, `conn` is dropped with it: the server sees
            // the connection close and the next wait starts on a clean connection.
            let reply = tokio::time::timeout(limit, cmd.query_async::<::redis::Value>(&mut conn));
            match reply.await {
                Ok(Ok(_)) => {
                    self.put_back_waiter(conn);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "blocking wait for work failed; reconnecting");
                }
                Err(_) => {
                    tracing::debug!("blocking wait for work got no reply in time; reconnecting");
                }
            }
            drop(conn);
            // Never spin: an error that repeats at once (a refused command) waits a little.
            let pause = Duration::from_millis(100);
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        tokio::time::sleep_until(deadline).await;
    }

    async fn check(&self) -> Result<(), BackendError> {
        let pong: String = self.run_cmd(&::redis::cmd("PING")).await?;
        if pong != "PONG" {
            return Err(BackendError::Unavailable(
                format!("unexpected reply to PING: {pong:?}").into(),
            ));
        }
        let mut info = ::redis::cmd("INFO");
        info.arg("server");
        if let Ok(info) = self.run_cmd::<String>(&info).await {
            let version = info
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .map(str::trim);
            let mut parts = version.unwrap_or_default().split('.');
            let major = parts.next().and_then(|v| v.parse::<u32>().ok());
            let minor = parts.next().and_then(|v| v.parse::<u32>().ok());
            if let (Some(major), Some(minor)) = (major, minor)
                && (major, minor) < (6, 2)
            {
                return Err(BackendError::Unavailable(
                    format!(
                        "Redis {} is too old: this backend needs Redis 6.2 or later (LPOP with a count, decimal BLPOP timeouts)",
                        version.unwrap_or_default()
                    )
                    .into(),
                ));
            }
        }
        let mut cmd = ::redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        match self.run_cmd::<HashMap<String, String>>(&cmd).await {
            Ok(config) => match config.get("maxmemory-policy") {
                Some(policy) if policy == "noeviction" => {}
                Some(policy) => tracing::warn!(
                    policy = %policy,
                    "Redis maxmemory-policy is not `noeviction`: when Redis is full it may evict job keys and lose jobs; set `maxmemory-policy noeviction`"
                ),
                None => tracing::warn!(
                    "could not read Redis maxmemory-policy; make sure it is `noeviction` or jobs may be evicted"
                ),
            },
            Err(e) => tracing::warn!(
                error = %error_chain(&e),
                "could not read Redis maxmemory-policy (CONFIG may be forbidden); make sure it is `noeviction` or jobs may be evicted"
            ),
        }
        let mut conn = self.manager()?;
        for script in self.scripts.all() {
            let load = script.load_async(&mut conn);
            match tokio::time::timeout(self.call_deadline(), load).await {
                Ok(r) => {
                    r.map_err(unavailable)?;
                }
                Err(_) => return Err(timed_out()),
            }
        }
        Ok(())
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
                        inv.arg(envelope.id.to_string())
                            .arg(payload(envelope)?)
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
            inv.arg(Self::retention_ms(self.settings.finished_retention));
            for (id, token) in chunk {
                inv.arg(id.to_string()).arg(token.to_string());
            }
            let ids: Vec<String> = self.run_script(inv).await?;
            for id in ids {
                lost.push(parse_id(&id)?);
            }
        }
        Ok(lost)
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
            .arg(self.settings.dead_letter_capacity);
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
        cmd.arg(self.job_key(id))
            .arg(&["s", "j", "q", "a", "err", "e", "u"]);
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
        if f.iter().all(Option::is_none) {
            return Ok(None);
        }
        let text = |i: usize| {
            f.get(i)
                .and_then(Option::as_ref)
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let state = match text(0).as_deref() {
            None | Some("queued") => JobState::Queued,
            Some("scheduled") => JobState::Scheduled,
            Some("running") => JobState::Running,
            Some("retrying") => JobState::Retrying,
            Some("succeeded") => JobState::Succeeded,
            Some("dead") => JobState::Dead,
            Some(other) => {
                return Err(BackendError::Corrupt(format!(
                    "job {id} has an unknown state {other:?}"
                )));
            }
        };
        let updated = text(6).and_then(|s| s.parse::<u64>().ok());
        let enqueued = text(5).and_then(|s| s.parse::<u64>().ok()).or(updated);
        let now = unix_ms(SystemTime::now());
        Ok(Some(JobStatus {
            job_id: id,
            job: text(1).unwrap_or_default().into(),
            queue: text(2).unwrap_or_default().into(),
            state,
            attempts: text(3).and_then(|s| s.parse().ok()).unwrap_or(0),
            last_error: text(4),
            enqueued_at: from_unix_ms(enqueued.unwrap_or(now)),
            updated_at: from_unix_ms(updated.unwrap_or(now)),
        }))
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
                .arg(retry.error);
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
    ) -> BoxFuture<'a, Result<Vec<JobId>, BackendError>> {
        Box::pin(async move {
            if leases.is_empty() {
                return Ok(Vec::new());
            }
            let mut inv = self.invocation(&self.scripts.extend);
            inv.arg(Self::retention_ms(lease).max(1));
            for (id, token) in leases {
                inv.arg(id.to_string()).arg(token.to_string());
            }
            let lost: Vec<String> = self.run_script(inv).await?;
            lost.iter().map(|id| parse_id(id)).collect()
        })
    }

    fn release(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let mut inv = self.invocation(&self.scripts.release);
            inv.arg(id.to_string()).arg(token.to_string());
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

fn unavailable(e: RedisError) -> BackendError {
    BackendError::Unavailable(Box::new(e))
}

fn timed_out() -> BackendError {
    BackendError::Unavailable("no reply from Redis in time".into())
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

fn parse_id(s: &str) -> Result<JobId, BackendError> {
    s.parse()
        .map_err(|_| BackendError::Corrupt(format!("stored job id {s:?} is not a UUID")))
}

fn field(row: &[Vec<u8>], i: usize) -> &[u8] {
    row.get(i).map_or(&[][..], Vec::as_slice)
}

fn text(row: &[Vec<u8>], i: usize) -> String {
    String::from_utf8_lossy(field(row, i)).into_owned()
}

fn number<T: std::str::FromStr + Default>(row: &[Vec<u8>], i: usize) -> T {
    text(row, i).parse().unwrap_or_default()
}

/// Decodes one reserve row: `job, id, token, has_payload, payload, job_name, queue, attempt,
/// recoveries, not_before, max_attempts, enqueued`.
fn reservation(row: &[Vec<u8>]) -> Result<Reservation, BackendError> {
    let id = parse_id(&text(row, 1))?;
    let token = u128::from_str_radix(&text(row, 2), 16)
        .map(LeaseToken)
        .map_err(|_| BackendError::Corrupt("reserve returned a malformed lease token".into()))?;
    let payload = field(row, 4);
    let queue = text(row, 6);
    let malformed = |reason: &str| Reservation::Malformed {
        id,
        token,
        queue: queue.clone(),
        raw: String::from_utf8_lossy(payload).into_owned(),
        reason: format!("stored record is not a job envelope: {reason}"),
    };
    if field(row, 3) != b"1" {
        return Ok(malformed("it has no payload"));
    }
    let job = text(row, 5);
    if job.is_empty() {
        return Ok(malformed("it names no job"));
    }
    let Ok(max_attempts) = text(row, 10).parse::<u32>() else {
        return Ok(malformed("it has no attempt limit"));
    };
    let text_payload = match std::str::from_utf8(payload) {
        Ok(t) => t.to_owned(),
        Err(e) => return Ok(malformed(&format!("the payload is not UTF-8: {e}"))),
    };
    let payload = match Payload::from_json(text_payload) {
        Ok(p) => p,
        Err(e) => return Ok(malformed(&format!("the payload is not JSON: {e}"))),
    };
    let envelope = Envelope {
        id,
        job,
        queue: queue.clone(),
        payload,
        attempt: number(row, 7),
        max_attempts,
        recoveries: number(row, 8),
        enqueued_at: text(row, 11)
            .parse()
            .unwrap_or_else(|_| unix_ms(SystemTime::now())),
        not_before: text(row, 9).parse().ok(),
        lease: Some(token),
    };
    Ok(Reservation::Job { envelope, token })
}

/// Decodes one dead-letter row: `id, has_dead, dead, payload, job, queue, attempt, enqueued,
/// died, last_error`. A record written by `dead_letter` is returned as written; a poison
/// pill dead-lettered by the reaper is rebuilt from the job record.
fn dead_letter_from_row(row: &[Vec<u8>]) -> Result<DeadLetter, BackendError> {
    let job_id = parse_id(&text(row, 0))?;
    if field(row, 1) == b"1"
        && let Ok(d) = serde_json::from_slice::<StoredDead>(field(row, 2))
    {
        return Ok(DeadLetter {
            job_id,
            job: d.job,
            queue: d.queue,
            payload: d.payload,
            attempts: d.attempts,
            error: d.error,
            enqueued_at: from_unix_ms(d.enqueued_at),
            died_at: from_unix_ms(d.died_at),
        });
    }
    let died_at = from_unix_ms(number(row, 8));
    let payload = serde_json::from_slice(field(row, 3))
        .unwrap_or_else(|_| serde_json::Value::String(text(row, 3)));
    Ok(DeadLetter {
        job_id,
        job: text(row, 4),
        queue: text(row, 5),
        payload,
        attempts: number(row, 6),
        error: vec![text(row, 9)],
        enqueued_at: text(row, 7)
            .parse()
            .map_or(died_at, |ms: u64| from_unix_ms(ms)),
        died_at,
    })
}

/// The Lua scripts, each one state change. `KEYS` = queues, scheduled, leased, dead,
/// garbage; `ARGV[1]` = the key base `{prefix}:`.
struct Scripts {
    enqueue: Script,
    reserve: Script,
    ack: Script,
    retry: Script,
    dead_letter: Script,
    extend: Script,
    release: Script,
    reap: Script,
    requeue: Script,
    stats: Script,
    dead_letters: Script,
    insert_raw: Script,
    sweep: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{LUA_PRELUDE}\n{body}"));
        Self {
            enqueue: s(LUA_ENQUEUE),
            reserve: s(LUA_RESERVE),
            ack: s(LUA_ACK),
            retry: s(LUA_RETRY),
            dead_letter: s(LUA_DEAD_LETTER),
            extend: s(LUA_EXTEND),
            release: s(LUA_RELEASE),
            reap: s(LUA_REAP),
            requeue: s(LUA_REQUEUE),
            stats: s(LUA_STATS),
            dead_letters: s(LUA_DEAD_LETTERS),
            insert_raw: s(LUA_INSERT_RAW),
            sweep: s(LUA_SWEEP),
        }
    }

    fn all(&self) -> [&Script; 13] {
        [
            &self.enqueue,
            &self.reserve,
            &self.ack,
            &self.retry,
            &self.dead_letter,
            &self.extend,
            &self.release,
            &self.reap,
            &self.requeue,
            &self.stats,
            &self.dead_letters,
            &self.insert_raw,
            &self.sweep,
        ]
    }
}

const LUA_PRELUDE: &str = r#"
local B = ARGV[1]
local K_QUEUES, K_SCHEDULED, K_LEASED, K_DEAD, K_GARBAGE, K_LIVE, K_FINISHED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local function jk(id) return B .. 'job:' .. id end
local function rk(q) return B .. 'ready:' .. q end
local function num(n) return string.format('%.0f', n) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- HMGET that answers nil, instead of failing the script, when the key holds another type.
local function fields(k, ...)
  local f = redis.pcall('HMGET', k, ...)
  if f['err'] then return nil end
  return f
end
-- 'held' when `token` is the job's lease; 'done' when it is the token whose outcome was
-- written last (a write-back repeated because its reply was lost, after a killed connection
-- or a timeout, succeeds again without changing anything instead of being refused as a
-- lost lease); 'lost' otherwise.
local function fence(k, token)
  local f = fields(k, 'l', 'd')
  if not f then return 'lost' end
  if f[2] == token then return 'done' end
  if f[1] == token then return 'held' end
  return 'lost'
end
local function signal(q)
  local k = B .. 'signal:' .. q
  redis.call('LPUSH', k, '1')
  redis.call('LTRIM', k, 0, 0)
end
-- Makes a job ready; wakes a waiting worker when the queue was empty (a worker waits only
-- after finding every queue it serves empty).
local function ready(q, id, front)
  local n
  if front then n = redis.call('LPUSH', rk(q), id) else n = redis.call('RPUSH', rk(q), id) end
  if n == 1 then signal(q) end
end
-- Adjusts the count of live jobs (queued, scheduled, running, retrying) behind the capacity
-- check; `stats` recounts it from the lists and sets, so it cannot drift for long.
local function live_add(n)
  if n ~= 0 and redis.call('INCRBY', K_LIVE, n) < 0 then redis.call('SET', K_LIVE, 0) end
end
local function expire(k, ms)
  if ms <= 0 then redis.call('DEL', k) else redis.call('PEXPIRE', k, ms) end
end
local function garbage(entry)
  redis.call('LPUSH', K_GARBAGE, entry)
  redis.call('LTRIM', K_GARBAGE, 0, 999)
end
-- Deletes the records of succeeded jobs whose retention has passed, oldest first, at most
-- about `budget` of them. `{p}:finished` holds one entry per ack call, in the order of the
-- calls: the deadline (ms, Redis clock), then the ids it acknowledged, space-separated. A
-- succeeded record never changes again (every write-back is fenced, and enqueueing a stored
-- id changes nothing), so the listed keys are deleted without being read. An entry whose
-- deadline has not come stops the sweep: later entries were written later (a process with a
-- longer retention can hold back one with a shorter one; records are then kept longer, never
-- shorter). Returns true when it stopped for the budget (more may be due).
local function sweep(now, budget)
  while budget > 0 do
    local head = redis.call('LINDEX', K_FINISHED, 0)
    if not head then return false end
    local sp = string.find(head, ' ', 1, true)
    local deadline = sp and tonumber(string.sub(head, 1, sp - 1))
    if deadline and deadline > now then return false end
    redis.call('LPOP', K_FINISHED)
    if deadline then
      local keys = {}
      for id in string.gmatch(string.sub(head, sp + 1), '%S+') do keys[#keys + 1] = jk(id) end
      for i = 1, #keys, 400 do
        redis.call('DEL', unpack(keys, i, math.min(i + 399, #keys)))
      end
      budget = budget - #keys
    else
      -- Not an entry this crate writes: dropped.
      budget = budget - 1
    end
  end
  return true
end
-- A job id as this crate writes it: 36 bytes of lowercase hex in groups of 8-4-4-4-12.
-- (Plain finds for the hyphens and one anchored character-set scan: 0.6 µs a call here,
-- against 1.3 µs for a pattern of 32 `%x` items and an uppercase scan, once per reserved job.)
local function valid_id(id)
  return #id == 36
    and string.find(id, '-', 1, true) == 9
    and string.find(id, '-', 10, true) == 14
    and string.find(id, '-', 15, true) == 19
    and string.find(id, '-', 20, true) == 24
    and string.find(id, '-', 25, true) == nil
    and string.find(id, '^[0-9a-f%-]*$') ~= nil
end
-- ZADD/ZREM with many members, in slices (Lua's unpack has a limit).
local function zmany(cmd, key, args)
  for i = 1, #args, 400 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 399, #args)))
  end
end
-- Oldest dead letters beyond `capacity` are dropped with their records.
local function evict(capacity, evicted)
  local over = redis.call('ZCARD', K_DEAD) - capacity
  if over > 0 then
    local popped = redis.call('ZPOPMIN', K_DEAD, over)
    for i = 1, #popped, 2 do
      local k = jk(popped[i])
      local f = fields(k, 's')
      if f and f[1] == 'dead' then redis.call('DEL', k) end
      evicted[#evicted + 1] = popped[i]
    end
  end
end
-- id, has_dead, dead, payload, job, queue, attempt, enqueued, died, last_error
local function dead_row(id, k)
  local f = fields(k, 'dead', 'p', 'j', 'q', 'a', 'e', 'died', 'err') or {}
  local has = '0'
  if f[1] then has = '1' end
  return {id, has, f[1] or '', f[2] or '', f[3] or '', f[4] or '', f[5] or '0', f[6] or '', f[7] or '0', f[8] or ''}
end
"#;

/// ARGV: base, capacity, then either 'each' and per job: id, payload, job, queue,
/// max_attempts, attempt, recoveries, enqueued, not_before ('' = none); or 'same', job,
/// queue, max_attempts, and per job: id, payload, enqueued (fresh jobs of one type, ready at
/// once). Stores jobs in order while capacity allows; an id already stored changes nothing
/// and counts as stored. Returns {stored, status}: 'ok', 'full' (the rest did not fit), or
/// 'corrupt' (the next job's key holds another type).
const LUA_ENQUEUE: &str = r#"
local cap = tonumber(ARGV[2])
local live = tonumber(redis.call('GET', K_LIVE) or '0')
local now = nil
local stored, added, status = 0, 0, 'ok'
-- Whether the job under key `k` is 'new' (its room under capacity is taken), 'stored'
-- already (nothing to do), or stops the batch: 'corrupt' (another type under the key) or
-- 'full'.
local function admit(k)
  if redis.call('EXISTS', k) == 1 then
    if redis.call('TYPE', k)['ok'] ~= 'hash' then return 'corrupt' end
    return 'stored'
  end
  if live + added >= cap then return 'full' end
  added = added + 1
  return 'new'
end
if ARGV[3] == 'same' then
  -- Fresh jobs of one type: one RPUSH for all of them (in slices), at the end.
  local job, q, m = ARGV[4], ARGV[5], ARGV[6]
  local ready = {}
  for i = 7, #ARGV, 3 do
    local id = ARGV[i]
    local k = jk(id)
    local verdict
    if live + added >= cap then
      -- No room: only an id stored already passes ('stored', 'corrupt' or 'full').
      verdict = admit(k)
    else
      -- One command instead of EXISTS then HSET: a fresh id gets all five fields, so HSET
      -- counts five new ones. Fewer means the id was stored already (this batch again,
      -- after its reply was lost): the fields just written hold the bytes they held, and
      -- only a payload that a finished job's ack had emptied needs emptying again.
      local n = redis.pcall('HSET', k, 'p', ARGV[i + 1], 'j', job, 'q', q, 'm', m, 'e', ARGV[i + 2])
      if type(n) == 'table' then
        verdict = 'corrupt'
      elseif n == 5 then
        added = added + 1
        verdict = 'new'
      else
        if redis.call('HGET', k, 's') == 'succeeded' then redis.call('HSET', k, 'p', '') end
        verdict = 'stored'
      end
    end
    if verdict == 'corrupt' or verdict == 'full' then
      status = verdict
      break
    end
    if verdict == 'new' then ready[#ready + 1] = id end
    stored = stored + 1
  end
  if #ready > 0 then
    local rq, len = rk(q), 0
    for i = 1, #ready, 400 do
      len = redis.call('RPUSH', rq, unpack(ready, i, math.min(i + 399, #ready)))
    end
    if len == #ready then
      -- The queue was empty: make sure it is known (the set only grows), and wake a worker.
      redis.call('SADD', K_QUEUES, q)
      signal(q)
    end
  end
  live_add(added)
  return {stored, status}
end
for i = 4, #ARGV, 9 do
  local id, p, job, q, m, a, r, e, nb = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
  local k = jk(id)
  local verdict = admit(k)
  if verdict == 'corrupt' or verdict == 'full' then
    status = verdict
    break
  end
  if verdict == 'new' then
    redis.call('HSET', k, 'p', p, 'j', job, 'q', q, 'm', m, 'e', e)
    if a ~= '0' then redis.call('HSET', k, 'a', a) end
    if r ~= '0' then redis.call('HSET', k, 'r', r) end
    local at = tonumber(nb)
    if at then
      now = now or now_ms()
      redis.call('HSET', k, 'nb', nb)
    end
    if at and at > now then
      redis.call('HSET', k, 's', 'scheduled')
      redis.call('SADD', K_QUEUES, q)
      redis.call('ZADD', K_SCHEDULED, at, id)
    elseif redis.call('RPUSH', rk(q), id) == 1 then
      -- The queue was empty: make sure it is known (the set only grows), and wake a worker.
      redis.call('SADD', K_QUEUES, q)
      signal(q)
    end
  end
  stored = stored + 1
end
live_add(added)
return {stored, status}
"#;

/// ARGV: base, max, lease_ms, promote_limit, n, queue_1..queue_n, token_1..token_max.
/// Returns one flat list of rows: 'job', id, token, has_payload, payload, job, queue,
/// attempt, recoveries, not_before, max_attempts, enqueued (12 items); 'garbage', entry (2).
const LUA_RESERVE: &str = r#"
local max, lease, limit, nq = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local out = {}
local due = redis.call('ZRANGEBYSCORE', K_SCHEDULED, '-inf', now, 'LIMIT', 0, limit)
if #due > 0 then
  zmany('ZREM', K_SCHEDULED, due)
  for _, id in ipairs(due) do
    local f = fields(jk(id), 'q')
    if f and f[1] then
      ready(f[1], id, false)
    else
      garbage(id)
      out[#out + 1] = 'garbage'
      out[#out + 1] = id
    end
  end
end
local expiry = now + lease
local sexpiry, snow = num(expiry), num(now)
local leased, members = 0, {}
local first_token = 6 + nq
for i = 1, nq do
  local q = ARGV[5 + i]
  while leased < max do
    local want = max - leased
    local ids = redis.call('LPOP', rk(q), want)
    if not ids then break end
    for _, id in ipairs(ids) do
      local k = jk(id)
      if not valid_id(id) then
        garbage(id)
        out[#out + 1] = 'garbage'
      out[#out + 1] = id
      else
        local f = fields(k, 's', 'p', 'j', 'q', 'a', 'r', 'nb', 'm', 'e')
        if not f then
          -- A foreign value under a job key: keep its bytes as the payload of a record with
          -- no job name, so it comes back as malformed and is dead-lettered with a reason.
          local kind = redis.call('TYPE', k)['ok']
          local raw = '<redis ' .. kind .. ' value>'
          if kind == 'string' then raw = redis.call('GET', k) end
          redis.call('DEL', k)
          redis.call('HSET', k, 'p', raw, 'q', q)
          f = {false, raw, false, q, false, false, false, false, false}
        end
        local st = f[1]
        if not (f[1] or f[2] or f[3] or f[4] or f[5] or f[6] or f[7] or f[8] or f[9])
          and redis.call('EXISTS', k) == 0 then
          -- No record (a finished job's record expired under a stale entry): set aside.
          garbage(id)
          out[#out + 1] = 'garbage'
      out[#out + 1] = id
        elseif st ~= 'running' and st ~= 'succeeded' and st ~= 'dead' then
          -- (An id that is running or finished is a stale duplicate entry: dropped.)
          local token = ARGV[first_token + leased]
          leased = leased + 1
          -- A first attempt needs no number formatting (tostring costs ~0.7 µs a call).
          local attempt = '1'
          if f[5] then attempt = tostring((tonumber(f[5]) or 0) + 1) end
          redis.call('HSET', k, 's', 'running', 'a', attempt, 'l', token, 'u', snow)
          if not f[4] then redis.call('HSET', k, 'q', q) end
          members[#members + 1] = sexpiry
          members[#members + 1] = id
          local has = '0'
          if f[2] then has = '1' end
          local n = #out
          out[n + 1], out[n + 2], out[n + 3], out[n + 4] = 'job', id, token, has
          out[n + 5], out[n + 6], out[n + 7], out[n + 8] = f[2] or '', f[3] or '', q, attempt
          out[n + 9], out[n + 10], out[n + 11], out[n + 12] = f[6] or '0', f[7] or '', f[8] or '', f[9] or ''
        end
      end
    end
    if #ids < want then break end
  end
  -- Jobs left behind: wake another waiting worker.
  if leased >= max and redis.call('LLEN', rk(q)) > 0 then signal(q) end
end
if #members > 0 then zmany('ZADD', K_LEASED, members) end
return out
"#;

/// ARGV: base, retention_ms, then pairs id, token. Returns the ids whose lease is not held.
const LUA_ACK: &str = r#"
local retention = tonumber(ARGV[2])
local t = now_ms()
local now = num(t)
local lost, done = {}, {}
for i = 3, #ARGV - 1, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local k = jk(id)
  local state = fence(k, token)
  if state == 'held' then
    done[#done + 1] = id
    if retention <= 0 then
      redis.call('DEL', k)
    else
      -- The lease and the payload are emptied in the same HSET rather than deleted by an
      -- HDEL (one command less per job; an empty lease matches no token, and nothing reads
      -- a finished job's payload). No PEXPIRE: the record is listed in K_FINISHED below
      -- and deleted by a later sweep (a TTL per job cost a command per job, and every
      -- command on a job key then looked the key up in Redis's table of expiring keys,
      -- which holds every finished job).
      redis.call('HSET', k, 's', 'succeeded', 'u', now, 'd', token, 'l', '', 'p', '')
    end
  elseif state == 'lost' then
    lost[#lost + 1] = id
  end
end
if #done > 0 then
  zmany('ZREM', K_LEASED, done)
  live_add(-#done)
  if retention > 0 then
    redis.call('RPUSH', K_FINISHED, num(t + retention) .. ' ' .. table.concat(done, ' '))
  end
end
-- Deletes up to twice as many expired records as this call finished (and a few more), so
-- the sweep keeps pace with the acks; the reaper sweeps too, when no acks come.
sweep(t, 2 * #done + 16)
return lost
"#;

/// ARGV: base, id, token, at_ms, error. Returns 1, or 0 when the lease is not held.
const LUA_RETRY: &str = r#"
local id, token, at = ARGV[2], ARGV[3], tonumber(ARGV[4])
local k = jk(id)
local state = fence(k, token)
if state == 'done' then return 1 end
if state ~= 'held' then return 0 end
local q = redis.call('HGET', k, 'q')
local now = now_ms()
redis.call('ZREM', K_LEASED, id)
redis.call('HSET', k, 's', 'retrying', 'err', ARGV[5], 'nb', ARGV[4], 'u', num(now), 'd', token)
redis.call('HDEL', k, 'l')
redis.call('ZADD', K_SCHEDULED, at, id)
if q and at <= now then signal(q) end
return 1
"#;

/// ARGV: base, id, token, dead_json, error_message, retention_ms, capacity.
/// Returns {1, evicted ids...}, or {0} when the lease is not held.
const LUA_DEAD_LETTER: &str = r#"
local id, token = ARGV[2], ARGV[3]
local k = jk(id)
local state = fence(k, token)
if state == 'done' then return {'1'} end
if state ~= 'held' then return {'0'} end
local now = num(now_ms())
redis.call('ZREM', K_LEASED, id)
redis.call('HSET', k, 's', 'dead', 'dead', ARGV[4], 'err', ARGV[5], 'died', now, 'u', now, 'd', token)
redis.call('HDEL', k, 'l')
redis.call('ZADD', K_DEAD, now, id)
expire(k, tonumber(ARGV[6]))
live_add(-1)
local out = {'1'}
local evicted = {}
evict(tonumber(ARGV[7]), evicted)
for _, e in ipairs(evicted) do out[#out + 1] = e end
return out
"#;

/// ARGV: base, lease_ms, then pairs id, token. Returns the ids whose lease is not held.
const LUA_EXTEND: &str = r#"
local expiry = num(now_ms() + tonumber(ARGV[2]))
local lost, members = {}, {}
for i = 3, #ARGV - 1, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local k = jk(id)
  local f = fields(k, 'l')
  if f and f[1] == token then
    members[#members + 1] = expiry
    members[#members + 1] = id
  else
    lost[#lost + 1] = id
  end
end
if #members > 0 then zmany('ZADD', K_LEASED, members) end
return lost
"#;

/// ARGV: base, id, token. Returns 1, or 0 when the lease is not held.
const LUA_RELEASE: &str = r#"
local id, token = ARGV[2], ARGV[3]
local k = jk(id)
local state = fence(k, token)
if state == 'done' then return 1 end
if state ~= 'held' then return 0 end
local f = redis.call('HMGET', k, 'a', 'q')
local attempt = (tonumber(f[1]) or 0) - 1
if attempt < 0 then attempt = 0 end
local q = f[2]
-- reserve gives every leased record a queue; checked before any write all the same.
if not q then return 0 end
redis.call('ZREM', K_LEASED, id)
redis.call('HSET', k, 'a', num(attempt), 'u', num(now_ms()), 'd', token)
redis.call('HDEL', k, 's', 'l')
redis.call('SADD', K_QUEUES, q)
ready(q, id, true)
return 1
"#;

/// ARGV: base, max_recoveries, reason, batch, dead_retention_ms, dead_capacity.
/// Returns {recovered ids, dead rows, evicted ids, more}: `more` is '1' when the sweep of
/// finished records stopped at `batch` with more possibly due.
const LUA_REAP: &str = r#"
local max_rec, reason, batch = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local retention, capacity = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local snow = num(now)
local recovered, dead, evicted = {}, {}, {}
local expired = redis.call('ZRANGEBYSCORE', K_LEASED, '-inf', now, 'LIMIT', 0, batch)
if #expired > 0 then zmany('ZREM', K_LEASED, expired) end
for _, id in ipairs(expired) do
  local k = jk(id)
  local f = fields(k, 'l', 'p', 'j', 'q', 'r')
  if f and f[1] then
    local q = f[4]
    local rec = (tonumber(f[5]) or 0) + 1
    redis.call('HDEL', k, 'l')
    redis.call('HSET', k, 'r', num(rec), 'u', snow)
    if q and f[2] and f[3] and rec < max_rec then
      redis.call('HDEL', k, 's')
      ready(q, id, true)
      recovered[#recovered + 1] = id
    else
      redis.call('HSET', k, 's', 'dead', 'err', reason, 'died', snow)
      redis.call('ZADD', K_DEAD, now, id)
      expire(k, retention)
      dead[#dead + 1] = dead_row(id, k)
      live_add(-1)
    end
  end
end
evict(capacity, evicted)
local more = '0'
if sweep(now, batch) then more = '1' end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_DEAD, '-inf', now - retention, 'LIMIT', 0, batch)) do
  redis.call('ZREM', K_DEAD, id)
  local k = jk(id)
  local f = fields(k, 's')
  if f and f[1] == 'dead' then redis.call('DEL', k) end
end
return {recovered, dead, evicted, more}
"#;

/// ARGV: base, budget. Sweeps expired finished records; returns 1 when more may be due.
const LUA_SWEEP: &str = r#"
if sweep(now_ms(), tonumber(ARGV[2])) then return 1 end
return 0
"#;

/// ARGV: base, id. Returns 1, or 0 when no dead letter has this id.
const LUA_REQUEUE: &str = r#"
local id = ARGV[2]
local k = jk(id)
if not redis.call('ZSCORE', K_DEAD, id) then return 0 end
redis.call('ZREM', K_DEAD, id)
local f = fields(k, 'q')
if not f or not f[1] then return 0 end
local q = f[1]
redis.call('PERSIST', k)
redis.call('HSET', k, 'u', num(now_ms()))
redis.call('HDEL', k, 's', 'a', 'r', 'nb', 'l', 'err', 'dead', 'died', 'd')
redis.call('SADD', K_QUEUES, q)
ready(q, id, false)
live_add(1)
return 1
"#;

/// ARGV: base. Returns {ready, scheduled, running, dead}, and resets the live count to
/// ready + scheduled + running.
const LUA_STATS: &str = r#"
local ready = 0
for _, name in ipairs(redis.call('SMEMBERS', K_QUEUES)) do
  ready = ready + redis.call('LLEN', rk(name))
end
local scheduled, running = redis.call('ZCARD', K_SCHEDULED), redis.call('ZCARD', K_LEASED)
-- Recount the live jobs behind the capacity check (see live_add).
redis.call('SET', K_LIVE, ready + scheduled + running)
return {ready, scheduled, running, redis.call('ZCARD', K_DEAD)}
"#;

/// ARGV: base, limit. Returns up to `limit` dead rows, oldest first, dropping entries whose
/// record has expired.
const LUA_DEAD_LETTERS: &str = r#"
local limit = tonumber(ARGV[2])
local page = math.min(limit, 500)
local out, stale = {}, {}
local start = 0
while #out < limit do
  local ids = redis.call('ZRANGE', K_DEAD, start, start + page - 1)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    if #out >= limit then break end
    local k = jk(id)
    if redis.call('EXISTS', k) == 1 then out[#out + 1] = dead_row(id, k) else stale[#stale + 1] = id end
  end
  start = start + #ids
end
for _, id in ipairs(stale) do redis.call('ZREM', K_DEAD, id) end
return out
"#;

/// ARGV: base, id, queue, raw. Stores raw bytes as the payload of a ready record that names
/// no job.
const LUA_INSERT_RAW: &str = r#"
local id, q = ARGV[2], ARGV[3]
local k = jk(id)
redis.call('DEL', k)
redis.call('HSET', k, 'p', ARGV[4], 'q', q, 'u', num(now_ms()))
redis.call('SADD', K_QUEUES, q)
ready(q, id, false)
live_add(1)
return 1
"#;

/// An error and its sources as one line (kept local: this module uses only job-core's
/// public API, so it can move to a crate of its own).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
