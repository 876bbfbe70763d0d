//! Connections: the statements with the schema filled in, deadlines on every call, the
//! schema migration, and the `LISTEN` connection that wakes idle workers.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::announce::Announcements;
use crate::backend::{BackendError, unix_ms};

/// Schema versions this build knows, in order; `connect` applies the missing ones.
const MIGRATIONS: &[&str] = &[
    include_str!("sql/schema_v1.sql"),
    include_str!("sql/schema_v2.sql"),
    include_str!("sql/schema_v3.sql"),
    include_str!("sql/schema_v4.sql"),
    include_str!("sql/schema_v5.sql"),
    include_str!("sql/schema_v6.sql"),
];

/// Every statement, with `{s}` replaced by the quoted schema name.
pub(super) struct Sql {
    pub(super) enqueue: Arc<str>,
    pub(super) enqueue_one: Arc<str>,
    pub(super) reserve: Arc<str>,
    pub(super) next_due: Arc<str>,
    pub(super) ack: Arc<str>,
    pub(super) retry: Arc<str>,
    pub(super) dead_letter: Arc<str>,
    pub(super) extend: Arc<str>,
    pub(super) release: Arc<str>,
    pub(super) reap: Arc<str>,
    pub(super) sweep: Arc<str>,
    pub(super) expire_dead: Arc<str>,
    pub(super) requeue: Arc<str>,
    pub(super) stats: Arc<str>,
    pub(super) status: Arc<str>,
    pub(super) dead_letters: Arc<str>,
    pub(super) find_dead_letter: Arc<str>,
    pub(super) insert_raw: Arc<str>,
    pub(super) cancel: Arc<str>,
    pub(super) cancelled: Arc<str>,
    pub(super) progress: Arc<str>,
    pub(super) watch: Arc<str>,
    pub(super) unique_take: Arc<str>,
    pub(super) unique_holder: Arc<str>,
    pub(super) unique_sweep: Arc<str>,
}

impl Sql {
    pub(super) fn new(schema: &str) -> Self {
        let s = |text: &str| Arc::<str>::from(fill(text, schema));
        Self {
            enqueue: s(include_str!("sql/enqueue.sql")),
            enqueue_one: s(include_str!("sql/enqueue_one.sql")),
            unique_take: s(include_str!("sql/unique_take.sql")),
            unique_holder: s(include_str!("sql/unique_holder.sql")),
            unique_sweep: s(include_str!("sql/unique_sweep.sql")),
            reserve: s(include_str!("sql/reserve.sql")),
            next_due: s(include_str!("sql/next_due.sql")),
            ack: s(include_str!("sql/ack.sql")),
            retry: s(include_str!("sql/retry.sql")),
            dead_letter: s(include_str!("sql/dead_letter.sql")),
            extend: s(include_str!("sql/extend.sql")),
            release: s(include_str!("sql/release.sql")),
            reap: s(include_str!("sql/reap.sql")),
            sweep: s(include_str!("sql/sweep.sql")),
            expire_dead: s(include_str!("sql/expire_dead.sql")),
            requeue: s(include_str!("sql/requeue.sql")),
            stats: s(include_str!("sql/stats.sql")),
            status: s(include_str!("sql/status.sql")),
            dead_letters: s(include_str!("sql/dead_letters.sql")),
            find_dead_letter: s(include_str!("sql/find_dead_letter.sql")),
            insert_raw: s(include_str!("sql/insert_raw.sql")),
            cancel: s(include_str!("sql/cancel.sql")),
            cancelled: s(include_str!("sql/cancelled.sql")),
            progress: s(include_str!("sql/progress.sql")),
            watch: s(include_str!("sql/watch.sql")),
        }
    }
}

/// The statement text for `schema` (checked to need no quoting, `[a-z_][a-z0-9_]*`; quoted
/// all the same).
fn fill(text: &str, schema: &str) -> String {
    text.replace("{s}", &format!("\"{schema}\""))
}

/// A statement for sqlx: the schema is the only text spliced in, and it was validated.
pub(super) fn sql(text: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(text.clone())
}

pub(super) fn unavailable(e: sqlx::Error) -> BackendError {
    BackendError::Unavailable(Box::new(e))
}

/// Runs one database call under the statement deadline.
pub(super) async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(BackendError::Unavailable(
            format!("no reply from Postgres within {limit:?}").into(),
        )),
    }
}

/// Creates the schema or brings it to the version this build knows, in one transaction under
/// an advisory lock: processes that start at once apply each migration once, and a database
/// that holds a newer version than this build knows is refused with a clear error.
pub(super) async fn migrate(pool: &PgPool, schema: &str) -> Result<(), BackendError> {
    let mut tx = pool.begin().await.map_err(unavailable)?;
    // The lock key: the schema name, hashed by the server (released at commit or rollback).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('job_core:' || $1, 0))")
        .bind(schema)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    let version_table = fill(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
        schema,
    );
    sqlx::raw_sql(AssertSqlSafe(version_table))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    let current: Option<i32> = sqlx::query_scalar(AssertSqlSafe(fill(
        "SELECT max(version) FROM {s}.schema_version",
        schema,
    )))
    .fetch_one(&mut *tx)
    .await
    .map_err(unavailable)?;
    let current = usize::try_from(current.unwrap_or(0)).unwrap_or(0);
    let known = MIGRATIONS.len();
    if current > known {
        return Err(BackendError::Corrupt(format!(
            "the database's job schema \"{schema}\" is at version {current}, newer than this build of job-core knows ({known}): \
             upgrade job-core in this process, or use another schema"
        )));
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(current) {
        sqlx::raw_sql(AssertSqlSafe(fill(migration, schema)))
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query(AssertSqlSafe(fill(
            "INSERT INTO {s}.schema_version (version) VALUES ($1)",
            schema,
        )))
        .bind(i32::try_from(i + 1).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tracing::info!(schema, version = i + 1, "job schema migrated");
    }
    tx.commit().await.map_err(unavailable)
}

/// The schema version this build creates.
pub(super) fn latest_version() -> usize {
    MIGRATIONS.len()
}

/// What the listener has heard, for idle workers.
///
/// Per queue: a worker that reserved from a queue and found nothing waits until a
/// notification names that queue (not any queue: an idle runtime does not query each time
/// another process's queue gets work), a due time it heard of comes, or its timeout ends.
pub(super) struct Wakeups {
    /// Bumped on every notification and (re)connection: wakes the waiters, who then look
    /// at their own queues.
    generation: watch::Sender<u64>,
    /// Per queue this process reserves from: notifications heard, and how many of them the
    /// latest reserve from it had heard (a wait that finds more returns at once: work may
    /// have arrived between the reserve and the wait).
    queues: Mutex<HashMap<String, Marks>>,
    /// Whether the store must be asked for the earliest due time before the next wait: at
    /// first, after the listener (re)connects, when the due time known passes and when a
    /// wait ends by its timeout. Otherwise notifications carry the due times.
    refresh_due: AtomicBool,
    /// The earliest due time heard of (ms since the Unix epoch; `u64::MAX`: none).
    next_due: AtomicU64,
    /// Signalled when `next_due` moves earlier.
    due_changed: Notify,
    /// Announced ends of watched jobs (payload `=<id>`), for waiters.
    pub(super) ended: Announcements,
    /// Stops the listener task when the backend is dropped.
    pub(super) stop: CancellationToken,
    started: std::sync::Once,
}

#[derive(Debug, Default, Clone, Copy)]
struct Marks {
    heard: u64,
    seen: u64,
}

impl Wakeups {
    pub(super) fn new() -> Self {
        Self {
            generation: watch::channel(0).0,
            queues: Mutex::new(HashMap::new()),
            refresh_due: AtomicBool::new(true),
            next_due: AtomicU64::new(u64::MAX),
            due_changed: Notify::new(),
            ended: Announcements::new(),
            stop: CancellationToken::new(),
            started: std::sync::Once::new(),
        }
    }

    fn marks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Marks>> {
        // The map holds counters only: a panic elsewhere cannot leave it inconsistent.
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Called as a reservation from `queues` starts.
    pub(super) fn reserving(&self, queues: &[String]) {
        let mut marks = self.marks();
        for q in queues {
            match marks.get_mut(q.as_str()) {
                Some(m) => m.seen = m.heard,
                None => {
                    marks.insert(q.clone(), Marks::default());
                }
            }
        }
    }

    /// Whether one of `queues` was named since its latest reserve (or never reserved).
    fn pending(&self, queues: &[String]) -> bool {
        let marks = self.marks();
        queues
            .iter()
            .any(|q| marks.get(q.as_str()).is_none_or(|m| m.heard > m.seen))
    }

    /// A notification named `queue`.
    fn heard(&self, queue: &str) {
        // A queue nobody here has reserved from has no waiter to wake.
        let known = match self.marks().get_mut(queue) {
            Some(m) => {
                m.heard += 1;
                true
            }
            None => false,
        };
        if known {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// Notifications may have been missed (the listener was away): every queue, and the
    /// due time, must be looked at again.
    fn everyone(&self) {
        for m in self.marks().values_mut() {
            m.heard += 1;
        }
        self.refresh_due.store(true, Ordering::Release);
        self.generation.send_modify(|g| *g += 1);
        self.ended.listening();
    }

    /// Whether the earliest due time must be read from the store now (clears the flag).
    pub(super) fn take_refresh(&self) -> bool {
        self.refresh_due.swap(false, Ordering::AcqRel)
    }

    /// The due-time query failed: run it before the next wait.
    pub(super) fn refresh_later(&self) {
        self.refresh_due.store(true, Ordering::Release);
    }

    /// Records a due time heard of or read from the store.
    pub(super) fn due_at(&self, ms: u64) {
        if self.next_due.fetch_min(ms, Ordering::AcqRel) > ms {
            self.due_changed.notify_waiters();
        }
    }

    fn handle(&self, payload: &str) {
        if payload.starts_with('=') {
            // A watched job ended (queue names cannot start with `=`).
            self.ended.heard();
            return;
        }
        let (queue, due) = match payload.split_once(' ') {
            Some((queue, due)) => (queue, due.parse::<u64>().ok()),
            None => (payload, None),
        };
        match due {
            Some(ms) if ms > unix_ms(SystemTime::now()) => self.due_at(ms),
            _ => self.heard(queue),
        }
    }

    /// Starts the listener task once (needs a tokio runtime; the first `wait_for_work`
    /// calls it).
    pub(super) fn start(self: &Arc<Self>, pool: &PgPool, channel: &str) {
        self.started.call_once(|| {
            // Its own one-connection pool: a `LISTEN` connection is held for good, and must
            // not take one of the application's pooled connections.
            let listen_pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with((*pool.connect_options()).clone());
            let wakeups = Arc::downgrade(self);
            let stop = self.stop.clone();
            let channel = channel.to_owned();
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = listen(wakeups, listen_pool, channel) => {}
                }
            });
        });
    }

    /// Waits until the listener hears of work in one of `queues`, the earliest known due
    /// time comes, or `timeout` passes.
    pub(super) async fn wait(&self, queues: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut rx = self.generation.subscribe();
        loop {
            rx.borrow_and_update();
            if self.pending(queues) {
                return;
            }
            let due = self.next_due.load(Ordering::Acquire);
            let until = if due == u64::MAX {
                deadline
            } else {
                let now = unix_ms(SystemTime::now());
                if due <= now {
                    // Due now: forget it (the reservation takes it) and read the next one
                    // from the store before the next wait.
                    let _ = self.next_due.compare_exchange(
                        due,
                        u64::MAX,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    self.refresh_due.store(true, Ordering::Release);
                    return;
                }
                deadline.min(Instant::now() + Duration::from_millis(due - now))
            };
            let due_changed = self.due_changed.notified();
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = due_changed => {}
                () = tokio::time::sleep_until(until) => {
                    if until >= deadline {
                        // The fallback poll: look at the store itself, due times included.
                        self.refresh_due.store(true, Ordering::Release);
                        return;
                    }
                }
            }
        }
    }
}

/// The listener loop: (re)connects with backoff, then turns notifications into wake-ups.
async fn listen(wakeups: std::sync::Weak<Wakeups>, pool: PgPool, channel: String) {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times();
    loop {
        let open = || async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let opened = open
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .notify(|e: &sqlx::Error, pause| {
                tracing::debug!(error = %e, retry_in = ?pause, "opening the Postgres LISTEN connection failed");
            })
            .await;
        let Ok(mut listener) = opened else {
            continue;
        };
        // Whatever was sent while no connection listened is lost: wake everyone once.
        match wakeups.upgrade() {
            Some(w) => w.everyone(),
            None => return,
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => match wakeups.upgrade() {
                    Some(w) => w.handle(n.payload()),
                    None => return,
                },
                Ok(None) => {
                    // The connection dropped. Reopened here rather than by the listener's
                    // next call, so that the wake-up for what was missed (`everyone`) comes
                    // once it listens again, not before.
                    if let Some(w) = wakeups.upgrade() {
                        w.ended.deaf();
                    }
                    tracing::debug!("the Postgres LISTEN connection dropped; reconnecting");
                    break;
                }
                Err(e) => {
                    if let Some(w) = wakeups.upgrade() {
                        w.ended.deaf();
                    }
                    tracing::debug!(error = %e, "the Postgres LISTEN connection failed; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the statement failed because its connection was lost (not because the server
/// refused it, and not by the deadline).
pub(super) fn connection_lost(e: &BackendError) -> bool {
    match e {
        BackendError::Unavailable(source) => {
            source
                .downcast_ref::<sqlx::Error>()
                .is_some_and(|e| match e {
                    sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
                    // The server's goodbye on a terminated backend or a shutdown.
                    sqlx::Error::Database(d) => {
                        matches!(d.code().as_deref(), Some("57P01" | "57P02"))
                    }
                    _ => false,
                })
        }
        _ => false,
    }
}
