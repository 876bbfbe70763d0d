//! [`PostgresBackend`]: durable, at-least-once jobs on PostgreSQL (cargo feature `postgres`),
//! with enqueue inside the caller's own transaction.
//!
//! ```no_run
//! use job_core::backend::postgres::PostgresBackend;
//! use job_core::prelude::*;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Clone, Serialize, Deserialize)]
//! # struct Welcome { user: i64 }
//! # impl Job for Welcome {
//! #     const NAME: &'static str = "welcome";
//! #     type Error = std::io::Error;
//! #     type Output = ();
//! #     async fn run(&self, _cx: &JobContext) -> Result<(), Self::Error> { Ok(()) }
//! # }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/test").await?;
//! let runtime = JobRuntime::builder()
//!     .backend(PostgresBackend::from_pool(pool.clone())) // the application's own pool
//!     .register::<Welcome>()
//!     .start()?;
//!
//! // The job is stored by the caller's transaction: it runs if and only if this commits.
//! let mut tx = pool.begin().await?;
//! let user: i64 = sqlx::query_scalar("INSERT INTO users (email) VALUES ($1) RETURNING id")
//!     .bind("ada@example.com")
//!     .fetch_one(&mut *tx)
//!     .await?;
//! let id = runtime.client().enqueue_tx(&mut tx, Welcome { user }).await?;
//! tx.commit().await?;
//! # let _ = id;
//! runtime.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # What this backend guarantees
//! Every job whose enqueue returned `Ok` (and, for [`enqueue_tx`](crate::Client::enqueue_tx),
//! whose transaction committed) runs at least once or ends dead-lettered with a reason, as
//! long as Postgres keeps what it committed (with the default `synchronous_commit = on`, a
//! commit is on disk before it is acknowledged; with asynchronous replication a failover can
//! lose the last commits, as it can lose any other row). A worker killed mid-job loses nothing:
//! its lease expires on the database's clock and the reaper puts the job back at the front of
//! its queue, counted as a *recovery*; after `max_recoveries` it is dead-lettered as a poison
//! pill. A worker that lost its lease cannot change the job: every write-back is one
//! statement that matches the row by id **and** lease token, so a stale holder changes no row
//! and gets [`BackendError::LeaseLost`]. A write-back repeated with the same token after its
//! reply was lost succeeds again and changes nothing (the row keeps the token whose outcome
//! was written last, and which outcome it wrote); a write-back of another outcome with that
//! token is refused as a lost lease. Handlers must be idempotent: a job can run twice.
//!
//! # Data model
//! One schema (default `jobs`, [`schema`](PostgresBackendBuilder::schema)) holds:
//!
//! | table | holds |
//! |---|---|
//! | `jobs` | one row per job: payload (JSON text exactly as the client wrote it), state, attempts, recoveries, lease token and expiry, the last token written back and the outcome it wrote, last error, the dead-letter record |
//! | `counts` | jobs per state (ready, scheduled, running, dead) in 32 rows, kept by every statement that moves a job; `stats()` and the capacity check sum them, so neither ever scans `jobs` |
//! | `seq` | a sequence: the order of jobs enqueued at the same time |
//! | `schema_version` | the migrations applied |
//!
//! Every state change is **one statement** (a data-modifying `WITH` query, in `sql/*.sql`):
//! enqueue (a batch in one `INSERT ... SELECT FROM unnest(...)`, with the capacity check),
//! reserve (`FOR UPDATE SKIP LOCKED`, due delayed jobs and retries included), ack (a batch),
//! retry, dead letter, extend (a batch), release, reap, requeue. Each also adjusts one row of
//! `counts`, picked with `SKIP LOCKED`, so concurrent statements and open transactions that
//! enqueued do not wait for each other on one hot row. Rows locked by batch statements are
//! locked in id order, so two batches never deadlock.
//!
//! Indexes are partial: waiting jobs by `(queue, run_at, seq)`, leases by expiry, succeeded
//! and dead rows by time. A reservation reads the head of one index per queue; the table can
//! hold millions of finished rows without slowing it. Succeeded rows drop their payload at
//! once and are deleted, 1,000 at a time, by the reaper once
//! [`finished_retention`](PostgresBackendBuilder::finished_retention) has passed; dead rows
//! after [`dead_letter_retention`](PostgresBackendBuilder::dead_letter_retention) or beyond
//! [`dead_letter_capacity`](PostgresBackendBuilder::dead_letter_capacity). The table is
//! created with aggressive autovacuum settings, because a queue table churns; and since
//! autovacuum looks at a table only once a `autovacuum_naptime` (a minute by default), the
//! reaper also vacuums it itself once 50,000 rows have churned (at most every 5 s, in the
//! background, `SKIP_LOCKED`), so the table stops growing and reserves do not walk the dead
//! index entries of jobs already run (1,000,000 jobs through: 505 MB without it, 35 MB with).
//!
//! # Schema and migrations
//! [`connect`](Backend::connect) (and the first call of any kind) creates the schema or
//! migrates it, in one transaction under an advisory lock, so processes that start at once
//! apply each version once. A database whose schema is newer than this build knows is refused
//! with [`BackendError::Corrupt`] saying so; nothing is changed.
//!
//! # Clocks
//! Lease expiry is computed and compared with the database's clock (`now()`), never a
//! client's. Start times of delayed jobs and retries are client timestamps (ms since the
//! Unix epoch), compared with the database's clock: a client clock off by *d* shifts delayed
//! starts by *d*, which never breaks the lease guarantees.
//!
//! # Wake-ups
//! Statements that make work ready send `pg_notify` on the channel `job_core.<schema>`;
//! Postgres delivers a notification when its transaction commits, so a job enqueued in a
//! transaction wakes workers when it becomes visible, never before. Each backend listens on a
//! connection of its own (a one-connection pool beside the main one, reconnected with
//! backoff; every reconnection wakes the workers once, since notifications sent while nobody
//! listened are lost). A notification names its queue and wakes only the workers of that
//! queue. Delayed jobs and retries notify their due time; an idle worker reads the earliest
//! due time of its queues (one index probe per queue) when it may have changed (at first,
//! after a reconnection, once a known due time passed, after a fallback poll), then sleeps
//! until a notification for its queues, that time, or the fallback
//! [`poll_interval`](PostgresBackendBuilder::poll_interval) (5 s), whichever comes first.
//! An idle runtime does not reserve in a loop.
//!
//! The same connection hears the ends of jobs a [`Client::wait`](crate::Client::wait)
//! waits for, in any process: the waiter marks its live job `watched`, and a trigger sends
//! `=<id>` on the channel when a watched job ends (see `watch.rs`). Rows nobody watches
//! send nothing.
//!
//! # Outages
//! Every call is bounded by [`statement_timeout`](PostgresBackendBuilder::statement_timeout)
//! (a hung server, a held lock), and a failure is [`BackendError::Unavailable`], never a
//! panic: the runtime retries with backoff, reports degraded health, and `enqueue` fails
//! loudly with [`EnqueueError::Backend`](crate::EnqueueError::Backend). A timed-out statement
//! may still commit on the server: at worst a job is leased to nobody and comes back after
//! its lease, or an acknowledgement is reported failed and repeated (which is safe).
//!
//! # Transactional enqueue
//! [`Client::enqueue_tx`](crate::Client::enqueue_tx) runs the enqueue statement on the
//! caller's connection or transaction: the job is visible to workers only when the caller
//! commits, a rollback leaves no trace, and the returned id is the job's either way. It does
//! not wait for capacity (a full store answers
//! [`EnqueueError::QueueFull`](crate::EnqueueError::QueueFull) at once: waiting would hold
//! the caller's transaction open), and, as with any statement, an error inside a
//! transaction aborts that transaction. The `counts` row it touches stays locked until the
//! caller commits; other statements pick another of the 32.
//!
//! # Connections
//! [`PostgresBackend::new`] makes a pool of its own (10 connections by default, the server's
//! `statement_timeout` set to the backend's); [`PostgresBackend::from_pool`] shares the
//! application's. TLS, when needed, is a feature of sqlx that the application enables
//! (`sqlx = { version = "0.9", features = ["tls-rustls"] }`; cargo unifies features).

mod config;
mod conn;
mod decode;
mod reaper;
mod watch;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::{Notify, OnceCell};
use uuid::Uuid;

use self::config::Source;
pub use self::config::{PostgresBackendBuilder, PostgresConfigError};
use self::conn::{Sql, Wakeups, bounded, connection_lost, sql, unavailable};
use self::decode::{StoredDead, get_at};
use super::{
    Backend, BackendError, BackendStats, BoxFuture, CancelOutcome, Envelope, Extended, LeaseToken,
    Payload, Reaped, Reservation, Retry, reserve_in_calls, unix_ms,
};
use crate::dead_letter::DeadLetter;
use crate::job::{JobId, is_valid_name};
use crate::observe::status::{JobState, JobStatus};
use crate::unique::{Enqueued, UniqueKey, UniqueUntil};

/// Jobs one statement stores at most (a longer batch is split).
const ENQUEUE_BATCH: usize = 1000;
/// Acknowledgements and lease renewals per statement, at most.
const ACK_BATCH: usize = 1000;
/// Jobs one reserve statement takes at most (a larger reservation runs several).
const MAX_RESERVE: usize = 1000;
/// Expired leases handled per reaper pass, and finished or dead rows deleted per statement.
const REAP_BATCH: i32 = 1000;
/// Time a reaper pass spends at most deleting expired succeeded rows.
const SWEEP_TIME: Duration = Duration::from_secs(2);
/// Rows of the `counts` table (see `schema_v1.sql`).
const COUNT_SHARDS: i16 = 32;

/// The [`Backend`] contract on PostgreSQL. See the [module docs](self).
pub struct PostgresBackend {
    pool: PgPool,
    sql: Sql,
    /// Set once the schema is known to be at this build's version.
    ready: OnceCell<()>,
    wakeups: Arc<Wakeups>,
    channel: String,
    settings: PostgresBackendBuilder,
    vacuum: reaper::Vacuum,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("schema", &self.settings.schema)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        self.wakeups.stop.cancel();
    }
}

impl PostgresBackend {
    /// Settings for a backend on its own pool to `url`
    /// (`postgres://user[:password]@host[:port]/database`), with the defaults: schema `jobs`,
    /// 10 connections, 10,000 dead letters kept 7 days, succeeded rows kept 10 minutes, 5 s
    /// statement timeout, 5 s fallback poll.
    pub fn builder(url: &str) -> PostgresBackendBuilder {
        // sqlx parses some URLs of other schemes as Postgres ones; a `mysql://` URL here is
        // a mistake worth refusing before the first connection attempt.
        let scheme = url.split_once("://").map(|(s, _)| s);
        let source = if matches!(scheme, Some("postgres" | "postgresql")) {
            PgConnectOptions::from_str(url)
                .map(|o| Source::Options(Box::new(o)))
                .map_err(|e| e.to_string())
        } else {
            Err("the URL must start with postgres:// or postgresql://".to_owned())
        };
        PostgresBackendBuilder::with_source(source)
    }

    /// Settings for a backend on the application's pool (shared: the backend's statements
    /// and the application's take connections from it; the listener has its own).
    pub fn builder_from_pool(pool: PgPool) -> PostgresBackendBuilder {
        PostgresBackendBuilder::with_source(Ok(Source::Pool(pool)))
    }

    /// A backend on its own pool to `url`, with the default settings.
    ///
    /// # Errors
    /// An invalid URL.
    pub fn new(url: &str) -> Result<Self, PostgresConfigError> {
        Self::builder(url).build()
    }

    /// A backend on the application's pool, with the default settings.
    pub fn from_pool(pool: PgPool) -> Self {
        let settings = PostgresBackendBuilder::with_source(Ok(Source::Pool(pool.clone())));
        Self::from_settings(pool, settings)
    }

    pub(super) fn from_settings(pool: PgPool, settings: PostgresBackendBuilder) -> Self {
        Self {
            pool,
            sql: Sql::new(&settings.schema),
            ready: OnceCell::new(),
            wakeups: Arc::new(Wakeups::new()),
            channel: format!("job_core.{}", settings.schema),
            settings,
            vacuum: reaper::Vacuum::new(),
        }
    }

    /// The pool the backend's statements use.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema that holds the backend's tables.
    pub fn schema(&self) -> &str {
        &self.settings.schema
    }

    /// The schema version this build creates and reads.
    pub fn schema_version() -> usize {
        conn::latest_version()
    }

    /// Creates the schema or migrates it to this build's version (the first call of any
    /// kind does this too; call it to migrate before starting workers).
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when Postgres cannot be reached;
    /// [`BackendError::Corrupt`] when the database holds a newer schema version.
    pub async fn migrate(&self) -> Result<(), BackendError> {
        self.ensure_schema().await
    }

    async fn ensure_schema(&self) -> Result<(), BackendError> {
        let limit = self.settings.statement_timeout * 2;
        self.ready
            .get_or_try_init(|| async {
                match tokio::time::timeout(limit, conn::migrate(&self.pool, &self.settings.schema))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(BackendError::Unavailable(
                        format!("no reply from Postgres within {limit:?} while migrating").into(),
                    )),
                }
            })
            .await
            .map(|_| ())
    }

    fn limit(&self) -> Duration {
        self.settings.statement_timeout
    }

    fn shard() -> i16 {
        fastrand::i16(0..COUNT_SHARDS)
    }

    /// Stores `raw` under `id` in `queue` as a record that names no job, bypassing the
    /// capacity check: a corrupted or foreign record, for tests and tools exercising the
    /// bad-record path (it comes back from `reserve` as [`Reservation::Malformed`]). For an
    /// id that is not stored yet.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when Postgres cannot be reached (or the id is stored);
    /// an invalid queue name.
    pub async fn insert_raw(&self, id: JobId, queue: &str, raw: &str) -> Result<(), BackendError> {
        check_name("queue", queue)?;
        self.ensure_schema().await?;
        let q = sqlx::query(sql(&self.sql.insert_raw))
            .bind(id.as_uuid())
            .bind(queue)
            .bind(raw)
            .bind(&self.channel)
            .bind(Self::shard());
        bounded(self.limit(), q.execute(&self.pool)).await?;
        Ok(())
    }

    /// Stores jobs with the enqueue statement on `conn` (a pooled connection or the caller's
    /// transaction); returns how many of the first are stored (see
    /// [`Backend::enqueue_batch`]). What [`Client::enqueue_tx`](crate::Client::enqueue_tx)
    /// runs; use that, which also encodes and checks the job.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when the statement fails or times out; an invalid name.
    pub async fn enqueue_on(
        &self,
        conn: &mut PgConnection,
        envelopes: &[Envelope],
        capacity: u64,
    ) -> Result<usize, BackendError> {
        self.ensure_schema().await?;
        let mut stored = 0;
        for chunk in envelopes.chunks(ENQUEUE_BATCH) {
            let done = self.enqueue_chunk(&mut *conn, chunk, capacity).await?;
            stored += done;
            if done < chunk.len() {
                break;
            }
        }
        Ok(stored)
    }

    async fn enqueue_chunk(
        &self,
        conn: &mut PgConnection,
        chunk: &[Envelope],
        capacity: u64,
    ) -> Result<usize, BackendError> {
        if let [one] = chunk {
            return self.enqueue_one(conn, one, capacity).await;
        }
        let n = chunk.len();
        let (mut ids, mut jobs, mut queues, mut payloads) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut max, mut attempts, mut recoveries, mut enqueued, mut not_before) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for e in chunk {
            check_name("queue", &e.queue)?;
            check_name("job", &e.job)?;
            ids.push(e.id.as_uuid());
            jobs.push(e.job.as_str());
            queues.push(e.queue.as_str());
            payloads.push(e.payload.as_str());
            max.push(i32::try_from(e.max_attempts).unwrap_or(i32::MAX));
            attempts.push(i32::try_from(e.attempt).unwrap_or(i32::MAX));
            recoveries.push(i32::try_from(e.recoveries).unwrap_or(i32::MAX));
            enqueued.push(i64::try_from(e.enqueued_at).unwrap_or(i64::MAX));
            not_before.push(e.not_before.map(|t| i64::try_from(t).unwrap_or(i64::MAX)));
        }
        let q = sqlx::query(sql(&self.sql.enqueue))
            .bind(ids)
            .bind(jobs)
            .bind(queues)
            .bind(payloads)
            .bind(max)
            .bind(attempts)
            .bind(recoveries)
            .bind(enqueued)
            .bind(not_before)
            .bind(i64::try_from(capacity).unwrap_or(i64::MAX))
            .bind(&self.channel)
            .bind(Self::shard());
        let row = bounded(self.limit(), q.fetch_one(conn)).await?;
        let stored: i64 = get_at(&row, 0)?;
        Ok(usize::try_from(stored).unwrap_or(0).min(n))
    }

    /// One job: `enqueue_one.sql`, whose plan Postgres keeps (see there). Returns 1 when the
    /// job is stored (now or before), 0 when the store is full.
    async fn enqueue_one(
        &self,
        conn: &mut PgConnection,
        e: &Envelope,
        capacity: u64,
    ) -> Result<usize, BackendError> {
        check_name("queue", &e.queue)?;
        check_name("job", &e.job)?;
        let q = sqlx::query(sql(&self.sql.enqueue_one))
            .bind(e.id.as_uuid())
            .bind(e.job.as_str())
            .bind(e.queue.as_str())
            .bind(e.payload.as_str())
            .bind(i32::try_from(e.max_attempts).unwrap_or(i32::MAX))
            .bind(i32::try_from(e.attempt).unwrap_or(i32::MAX))
            .bind(i32::try_from(e.recoveries).unwrap_or(i32::MAX))
            .bind(i64::try_from(e.enqueued_at).unwrap_or(i64::MAX))
            .bind(e.not_before.map(|t| i64::try_from(t).unwrap_or(i64::MAX)))
            .bind(i64::try_from(capacity).unwrap_or(i64::MAX))
            .bind(&self.channel)
            .bind(Self::shard());
        let row = bounded(self.limit(), q.fetch_one(conn)).await?;
        let inserted: i64 = get_at(&row, 0)?;
        let stored_before: bool = get_at(&row, 1)?;
        let free: i64 = get_at(&row, 2)?;
        // With room and no row inserted, only an existing row with this id stopped it (one
        // another transaction committed after this statement's snapshot, which
        // `stored_before` cannot see).
        Ok(usize::from(inserted > 0 || stored_before || free > 0))
    }

    /// Takes `unique`'s key and stores the job in one transaction on `conn` (the caller's,
    /// for [`Client::enqueue_tx`](crate::Client::enqueue_tx)): see `unique_take.sql`.
    pub(crate) async fn enqueue_unique_on(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        capacity: u64,
        unique: &UniqueKey,
    ) -> Result<Enqueued, BackendError> {
        self.ensure_schema().await?;
        let mut tx = bounded(self.limit(), sqlx::Connection::begin(&mut *conn)).await?;
        let q = sqlx::query(sql(&self.sql.unique_take))
            .bind(unique.key.as_str())
            .bind(envelope.id.as_uuid())
            .bind(millis(unique.window).max(1))
            .bind(unique.until == UniqueUntil::Finished);
        if bounded(self.limit(), q.fetch_optional(&mut *tx))
            .await?
            .is_none()
        {
            let q = sqlx::query(sql(&self.sql.unique_holder)).bind(unique.key.as_str());
            let row = bounded(self.limit(), q.fetch_one(&mut *tx)).await?;
            let holder: Uuid = get_at(&row, 0)?;
            bounded(self.limit(), tx.commit()).await?;
            return Ok(Enqueued::Existing(JobId::from(holder)));
        }
        if self.enqueue_one(&mut tx, envelope, capacity).await? == 0 {
            // Full: the key goes back with the rollback.
            bounded(self.limit(), tx.rollback()).await?;
            return Err(BackendError::Full);
        }
        bounded(self.limit(), tx.commit()).await?;
        Ok(Enqueued::New(envelope.id))
    }

    async fn do_enqueue_batch(
        &self,
        envelopes: &[Envelope],
        capacity: u64,
    ) -> Result<usize, BackendError> {
        self.ensure_schema().await?;
        let mut stored = 0;
        for chunk in envelopes.chunks(ENQUEUE_BATCH) {
            // The pool does not ping a connection before lending it (a round trip per
            // statement): a pooled connection the server dropped (a restart, a terminated
            // backend) fails on use instead, and the chunk goes again on the next one. That
            // is safe even if the lost one had committed: an enqueue of a stored id changes
            // nothing.
            let mut lost = 0;
            let done = loop {
                let mut conn = bounded(self.limit(), self.pool.acquire()).await?;
                match self.enqueue_chunk(&mut conn, chunk, capacity).await {
                    Err(e) if lost < self.settings.max_connections && connection_lost(&e) => {
                        conn.close_on_drop();
                        lost += 1;
                    }
                    result => break result?,
                }
            };
            stored += done;
            if done < chunk.len() {
                break;
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
        self.ensure_schema().await?;
        self.wakeups.reserving(queues);
        // One statement per `MAX_RESERVE` jobs, until `max` are reserved or one is short.
        let out = reserve_in_calls(max, MAX_RESERVE, |want| {
            self.reserve_chunk(queues, want, lease)
        })
        .await?;
        self.vacuum.churned(out.len());
        Ok(out)
    }

    /// One reserve statement for up to `max` (at most `MAX_RESERVE`) jobs.
    async fn reserve_chunk(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Reservation>, BackendError> {
        let max = i32::try_from(max.min(MAX_RESERVE)).unwrap_or(1);
        let q = sqlx::query(sql(&self.sql.reserve))
            .bind(queues)
            .bind(max)
            .bind(millis(lease).max(1))
            .bind(Self::shard());
        let rows = bounded(self.limit(), q.fetch_all(&self.pool)).await?;
        let mut out = rows
            .iter()
            .map(|row| decode::reservation(row, queues))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|(a, _), (b, _)| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)));
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    async fn wait(&self, queues: &[String], timeout: Duration) {
        self.wakeups.start(&self.pool, &self.channel);
        let valid: Vec<String> = queues
            .iter()
            .filter(|q| is_valid_name(q))
            .cloned()
            .collect();
        if valid.is_empty() {
            tokio::time::sleep(timeout).await;
            return;
        }
        if self.wakeups.take_refresh() && self.ensure_schema().await.is_ok() {
            // The earliest delayed job or retry of these queues, so the wait ends when it is
            // due (notifications carry the due times of later ones).
            let q = sqlx::query_scalar::<_, Option<i64>>(sql(&self.sql.next_due)).bind(&valid);
            match bounded(self.limit(), q.fetch_one(&self.pool)).await {
                Ok(Some(ms)) => self.wakeups.due_at(u64::try_from(ms).unwrap_or(0)),
                Ok(None) => {}
                // Ask again next time.
                Err(_) => self.wakeups.refresh_later(),
            }
        }
        self.wakeups.wait(&valid, timeout).await;
    }

    async fn do_ack_batch(&self, acks: &[(JobId, LeaseToken)]) -> Result<Vec<JobId>, BackendError> {
        let mut lost = Vec::new();
        for chunk in acks.chunks(ACK_BATCH) {
            let (ids, tokens) = pairs(chunk);
            self.ack_chunk(ids, tokens, Vec::new(), &mut lost).await?;
        }
        Ok(lost)
    }

    async fn do_ack_results(
        &self,
        acks: &[(JobId, LeaseToken, Payload)],
    ) -> Result<Vec<JobId>, BackendError> {
        let mut lost = Vec::new();
        for chunk in acks.chunks(ACK_BATCH) {
            let ids = chunk.iter().map(|(id, _, _)| id.as_uuid()).collect();
            let tokens = chunk.iter().map(|(_, t, _)| pg_token(t)).collect();
            let results = chunk.iter().map(|(_, _, r)| r.as_str()).collect();
            self.ack_chunk(ids, tokens, results, &mut lost).await?;
        }
        Ok(lost)
    }

    /// One `ack.sql` call (`results` empty, or one per id); adds the ids it reports lost.
    async fn ack_chunk(
        &self,
        ids: Vec<Uuid>,
        tokens: Vec<Uuid>,
        results: Vec<&str>,
        lost: &mut Vec<JobId>,
    ) -> Result<(), BackendError> {
        self.ensure_schema().await?;
        let delete_now = self.settings.finished_retention.is_zero();
        let q = sqlx::query_scalar::<_, Uuid>(sql(&self.sql.ack))
            .bind(ids)
            .bind(tokens)
            .bind(Self::shard())
            .bind(delete_now)
            .bind(results);
        let ids = bounded(self.limit(), q.fetch_all(&self.pool)).await?;
        lost.extend(ids.into_iter().map(JobId::from));
        Ok(())
    }

    /// Runs a fenced single-job statement answering `changed, repeated, ...`.
    async fn fenced(
        &self,
        id: JobId,
        q: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<(), BackendError> {
        let row = bounded(self.limit(), q.fetch_one(&self.pool)).await?;
        let changed: i64 = get_at(&row, 0)?;
        let repeated: bool = get_at(&row, 1)?;
        if changed == 1 || repeated {
            Ok(())
        } else {
            Err(BackendError::LeaseLost(id))
        }
    }

    async fn do_retry(
        &self,
        id: JobId,
        token: LeaseToken,
        retry: Retry,
    ) -> Result<(), BackendError> {
        self.ensure_schema().await?;
        let q = sqlx::query(sql(&self.sql.retry))
            .bind(id.as_uuid())
            .bind(pg_token(&token))
            .bind(i64::try_from(unix_ms(retry.at)).unwrap_or(i64::MAX))
            .bind(retry.error)
            .bind(&self.channel)
            .bind(Self::shard());
        self.fenced(id, q).await
    }

    async fn do_dead_letter(
        &self,
        id: JobId,
        token: LeaseToken,
        record: DeadLetter,
    ) -> Result<(), BackendError> {
        self.ensure_schema().await?;
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
        let q = sqlx::query(sql(&self.sql.dead_letter))
            .bind(id.as_uuid())
            .bind(pg_token(&token))
            .bind(json)
            .bind(record.error_message())
            .bind(Self::shard());
        self.fenced(id, q).await
    }

    async fn do_extend(
        &self,
        leases: &[(JobId, LeaseToken)],
        lease: Duration,
    ) -> Result<Extended, BackendError> {
        let mut extended = Extended::default();
        if leases.is_empty() {
            return Ok(extended);
        }
        self.ensure_schema().await?;
        for chunk in leases.chunks(ACK_BATCH) {
            let (ids, tokens) = pairs(chunk);
            let q = sqlx::query_as::<_, (Uuid, bool)>(sql(&self.sql.extend))
                .bind(ids)
                .bind(tokens)
                .bind(millis(lease).max(1));
            let rows = bounded(self.limit(), q.fetch_all(&self.pool)).await?;
            for (id, lost) in rows {
                if lost {
                    extended.lost.push(JobId::from(id));
                } else {
                    extended.cancelled.push(JobId::from(id));
                }
            }
        }
        Ok(extended)
    }

    async fn do_cancel(&self, id: JobId) -> Result<CancelOutcome, BackendError> {
        self.ensure_schema().await?;
        let q = sqlx::query(sql(&self.sql.cancel))
            .bind(id.as_uuid())
            .bind(Self::shard());
        let Some(row) = bounded(self.limit(), q.fetch_optional(&self.pool)).await? else {
            return Err(BackendError::NotFound(id));
        };
        let state = decode::state(id, get_at(&row, 0)?)?;
        Ok(match state {
            JobState::Running => CancelOutcome::Requested,
            s if s.is_finished() => CancelOutcome::Finished(s),
            _ => CancelOutcome::Removed,
        })
    }

    async fn do_record_progress(
        &self,
        updates: &[(JobId, LeaseToken, Payload)],
    ) -> Result<(), BackendError> {
        if updates.is_empty() {
            return Ok(());
        }
        self.ensure_schema().await?;
        for chunk in updates.chunks(ACK_BATCH) {
            let ids: Vec<Uuid> = chunk.iter().map(|(id, _, _)| id.as_uuid()).collect();
            let tokens: Vec<Uuid> = chunk.iter().map(|(_, t, _)| pg_token(t)).collect();
            let values: Vec<&str> = chunk.iter().map(|(_, _, p)| p.as_str()).collect();
            let q = sqlx::query(sql(&self.sql.progress))
                .bind(ids)
                .bind(tokens)
                .bind(values);
            bounded(self.limit(), q.execute(&self.pool)).await?;
        }
        Ok(())
    }

    async fn do_finish_cancelled(&self, id: JobId, token: LeaseToken) -> Result<(), BackendError> {
        self.ensure_schema().await?;
        let q = sqlx::query(sql(&self.sql.cancelled))
            .bind(id.as_uuid())
            .bind(pg_token(&token))
            .bind(Self::shard());
        self.fenced(id, q).await
    }

    async fn do_release(&self, id: JobId, token: LeaseToken) -> Result<(), BackendError> {
        self.ensure_schema().await?;
        let q = sqlx::query(sql(&self.sql.release))
            .bind(id.as_uuid())
            .bind(pg_token(&token))
            .bind(&self.channel)
            .bind(Self::shard());
        self.fenced(id, q).await
    }

    async fn do_status(&self, id: JobId) -> Result<Option<JobStatus>, BackendError> {
        self.ensure_schema().await?;
        let q = sqlx::query(sql(&self.sql.status)).bind(id.as_uuid());
        let row: Option<PgRow> = bounded(self.limit(), q.fetch_optional(&self.pool)).await?;
        row.map(|row| decode::status(id, &row)).transpose()
    }

    async fn do_stats(&self) -> Result<BackendStats, BackendError> {
        self.ensure_schema().await?;
        let q = sqlx::query(sql(&self.sql.stats));
        let row = bounded(self.limit(), q.fetch_one(&self.pool)).await?;
        let n = |i: usize| -> Result<u64, BackendError> {
            Ok(u64::try_from(row.try_get::<i64, _>(i).map_err(unavailable)?).unwrap_or(0))
        };
        Ok(BackendStats {
            ready: n(0)?,
            scheduled: n(1)?,
            running: n(2)?,
            dead: n(3)?,
        })
    }

    async fn do_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.ensure_schema().await?;
        let q =
            sqlx::query(sql(&self.sql.dead_letters)).bind(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = bounded(self.limit(), q.fetch_all(&self.pool)).await?;
        rows.iter().map(decode::dead_row).collect()
    }

    /// One indexed lookup (the primary key) instead of a scan of every dead letter.
    async fn do_find_dead_letter(&self, id: JobId) -> Result<Option<DeadLetter>, BackendError> {
        self.ensure_schema().await?;
        let q = sqlx::query(sql(&self.sql.find_dead_letter)).bind(id.as_uuid());
        let row: Option<PgRow> = bounded(self.limit(), q.fetch_optional(&self.pool)).await?;
        row.as_ref().map(decode::dead_row).transpose()
    }

    async fn do_requeue(&self, id: JobId) -> Result<(), BackendError> {
        self.ensure_schema().await?;
        let q = sqlx::query(sql(&self.sql.requeue))
            .bind(id.as_uuid())
            .bind(&self.channel)
            .bind(Self::shard());
        let row = bounded(self.limit(), q.fetch_one(&self.pool)).await?;
        match get_at::<i64>(&row, 0)? {
            1 => Ok(()),
            _ => Err(BackendError::NotFound(id)),
        }
    }

    async fn check(&self) -> Result<(), BackendError> {
        let q = sqlx::query_scalar::<_, i32>("SELECT current_setting('server_version_num')::int4");
        let version = bounded(self.limit(), q.fetch_one(&self.pool)).await?;
        if version < 130_000 {
            return Err(BackendError::Unavailable(
                format!(
                    "PostgreSQL {version} is too old: this backend needs PostgreSQL 13 or later (gen_random_uuid)"
                )
                .into(),
            ));
        }
        self.ensure_schema().await?;
        self.wakeups.start(&self.pool, &self.channel);
        Ok(())
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn pairs(chunk: &[(JobId, LeaseToken)]) -> (Vec<Uuid>, Vec<Uuid>) {
    chunk
        .iter()
        .map(|(id, token)| (id.as_uuid(), pg_token(token)))
        .unzip()
}

/// The lease column's value for `token`. A token this backend did not make (not a number)
/// is no lease of ours: the nil UUID, which no reservation stores, so the statement finds
/// no row held with it and reports the lease lost.
fn pg_token(token: &LeaseToken) -> Uuid {
    token.as_u128().map_or(Uuid::nil(), Uuid::from_u128)
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

impl Backend for PostgresBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn connect(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.check())
    }

    fn enqueue(
        &self,
        envelope: Envelope,
        capacity: u64,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            match self
                .do_enqueue_batch(std::slice::from_ref(&envelope), capacity)
                .await?
            {
                1 => Ok(()),
                _ => Err(BackendError::Full),
            }
        })
    }

    fn enqueue_unique<'a>(
        &'a self,
        envelope: Envelope,
        capacity: u64,
        unique: &'a UniqueKey,
    ) -> BoxFuture<'a, Result<Enqueued, BackendError>> {
        Box::pin(async move {
            // As for batches: a pooled connection the server dropped fails on use, and the
            // enqueue goes again on the next one. Safe if the lost one had committed: the key
            // already names this id, and the id is stored, so the repeat answers `New` and
            // changes nothing.
            let mut lost = 0;
            loop {
                let mut conn = bounded(self.limit(), self.pool.acquire()).await?;
                match self
                    .enqueue_unique_on(&mut conn, &envelope, capacity, unique)
                    .await
                {
                    Err(e) if lost < self.settings.max_connections && connection_lost(&e) => {
                        conn.close_on_drop();
                        lost += 1;
                    }
                    result => return result,
                }
            }
        })
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

    fn idle_poll(&self) -> Duration {
        self.settings.poll_interval
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
        Box::pin(self.do_extend(leases, lease))
    }

    fn release(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.do_release(id, token))
    }

    fn reap(&self, max_recoveries: u32) -> BoxFuture<'_, Result<Reaped, BackendError>> {
        Box::pin(self.do_reap(max_recoveries))
    }

    fn status(&self, id: JobId) -> BoxFuture<'_, Result<Option<JobStatus>, BackendError>> {
        Box::pin(self.do_status(id))
    }

    fn stats(&self) -> BoxFuture<'_, Result<BackendStats, BackendError>> {
        Box::pin(self.do_stats())
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

    fn requeue(&self, id: JobId) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.do_requeue(id))
    }

    fn cancel(&self, id: JobId) -> BoxFuture<'_, Result<CancelOutcome, BackendError>> {
        Box::pin(self.do_cancel(id))
    }

    fn finish_cancelled(
        &self,
        id: JobId,
        token: LeaseToken,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.do_finish_cancelled(id, token))
    }

    fn record_progress<'a>(
        &'a self,
        updates: &'a [(JobId, LeaseToken, Payload)],
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(self.do_record_progress(updates))
    }

    fn watch_finish(&self, id: JobId) -> BoxFuture<'_, Result<Arc<Notify>, BackendError>> {
        Box::pin(self.do_watch(id))
    }

    fn ack_results<'a>(
        &'a self,
        acks: &'a [(JobId, LeaseToken, Payload)],
    ) -> BoxFuture<'a, Result<Vec<JobId>, BackendError>> {
        Box::pin(self.do_ack_results(acks))
    }

    fn postgres(&self) -> Option<&PostgresBackend> {
        Some(self)
    }
}
