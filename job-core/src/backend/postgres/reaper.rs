//! The reaper's work: expired leases recovered (poison pills dead-lettered), succeeded rows
//! and dead letters past their retention deleted, and the job table vacuumed as fast as it
//! churns.
//!
//! Every job leaves dead row versions behind (its reservation, its outcome, its deletion),
//! and so do their index entries; until a `VACUUM` removes them, the table grows and each
//! reserve walks the dead entries at the head of the waiting index. Autovacuum looks at a
//! table at most once a `autovacuum_naptime` (a minute by default), which at thousands of
//! jobs a second is hundreds of thousands of dead rows late. So the reaper vacuums the
//! table itself once enough rows have churned: a plain `VACUUM (SKIP_LOCKED)`, which takes
//! no lock that jobs wait for, on a connection of its own (no statement timeout applies to
//! it), in the background. Where the role may not vacuum the table, it says so once and
//! leaves it to autovacuum.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use tokio::time::Instant;
use uuid::Uuid;

use super::conn::{bounded, sql};
use super::decode::{self, get_at};
use super::{PostgresBackend, REAP_BATCH, SWEEP_TIME, millis};
use crate::backend::{BackendError, Reaped};
use crate::job::JobId;

/// Rows changed (reserved, or deleted by the sweep) after which the table is vacuumed ...
const CHURN: u64 = 50_000;
/// ... at most this often.
const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Churn counted since the last vacuum, and whether one runs.
#[derive(Debug)]
pub(super) struct Vacuum {
    churn: AtomicU64,
    running: Arc<AtomicBool>,
    disabled: Arc<AtomicBool>,
    last: std::sync::Mutex<Option<Instant>>,
}

impl Vacuum {
    pub(super) fn new() -> Self {
        Self {
            churn: AtomicU64::new(0),
            running: Arc::new(AtomicBool::new(false)),
            disabled: Arc::new(AtomicBool::new(false)),
            last: std::sync::Mutex::new(None),
        }
    }

    /// Counts rows changed.
    pub(super) fn churned(&self, rows: usize) {
        self.churn
            .fetch_add(u64::try_from(rows).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Starts a vacuum of `table` in the background when enough has churned (called by the
    /// reaper; needs a tokio runtime).
    pub(super) fn maybe_start(&self, pool: &PgPool, table: &str) {
        if self.disabled.load(Ordering::Relaxed) || self.churn.load(Ordering::Relaxed) < CHURN {
            return;
        }
        {
            let mut last = self
                .last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < MIN_INTERVAL) {
                return;
            }
            if self.running.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Some(Instant::now());
        }
        self.churn.store(0, Ordering::Relaxed);
        let options = (*pool.connect_options()).clone();
        let statement = format!("VACUUM (SKIP_LOCKED) {table}");
        let running = self.running.clone();
        let disabled = self.disabled.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = async {
                let mut conn = PgConnection::connect_with(&options).await?;
                // The backend's own pool sets the server's statement_timeout (5 s by
                // default) on its connections; a vacuum of a large table may take longer.
                sqlx::raw_sql("SET statement_timeout = 0")
                    .execute(&mut conn)
                    .await?;
                sqlx::raw_sql(AssertSqlSafe(statement))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            }
            .await;
            match result {
                Ok(()) => tracing::debug!(took = ?started.elapsed(), "job table vacuumed"),
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
                    disabled.store(true, Ordering::Relaxed);
                    tracing::warn!(error = %e, "this role may not vacuum the job table: leaving it to autovacuum, which may let it bloat at high job rates");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "vacuuming the job table failed; trying again later")
                }
            }
            running.store(false, Ordering::Release);
        });
    }
}

impl PostgresBackend {
    pub(super) async fn do_reap(&self, max_recoveries: u32) -> Result<Reaped, BackendError> {
        self.ensure_schema().await?;
        let reason = format!(
            "worker lost {max_recoveries} times while running this job (crash-recovered); dead-lettered as a poison pill"
        );
        let q = sqlx::query(sql(&self.sql.reap))
            .bind(i32::try_from(max_recoveries).unwrap_or(i32::MAX))
            .bind(reason)
            .bind(REAP_BATCH)
            .bind(&self.channel)
            .bind(Self::shard());
        let rows = bounded(self.limit(), q.fetch_all(&self.pool)).await?;
        let mut reaped = Reaped::default();
        for row in &rows {
            let id: Uuid = get_at(row, 0)?;
            let state: i16 = get_at(row, 1)?;
            if state == 0 {
                reaped.recovered.push(JobId::from(id));
            } else if state == 6 {
                // Its cancel was requested before its holder died: cancelled, not recovered.
            } else {
                reaped.dead.push(decode::dead_letter(
                    id,
                    None,
                    get_at(row, 2)?,
                    get_at(row, 3)?,
                    get_at(row, 4)?,
                    get_at(row, 5)?,
                    get_at(row, 6)?,
                    get_at(row, 8)?,
                    get_at(row, 7)?,
                ));
            }
        }
        self.sweep().await?;
        self.vacuum
            .maybe_start(&self.pool, &format!("\"{}\".jobs", self.settings.schema));
        Ok(reaped)
    }

    /// Deletes succeeded rows past their retention, uniqueness keys past their window, and
    /// dead letters past theirs or beyond the capacity, a batch per statement, for at most `SWEEP_TIME` per reaper pass.
    async fn sweep(&self) -> Result<(), BackendError> {
        let until = tokio::time::Instant::now() + SWEEP_TIME;
        loop {
            let q = sqlx::query(sql(&self.sql.sweep))
                .bind(millis(self.settings.finished_retention))
                .bind(REAP_BATCH);
            let done = bounded(self.limit(), q.execute(&self.pool)).await?;
            self.vacuum
                .churned(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX));
            if done.rows_affected() < REAP_BATCH as u64 || tokio::time::Instant::now() >= until {
                break;
            }
        }
        let q = sqlx::query(sql(&self.sql.unique_sweep)).bind(REAP_BATCH);
        bounded(self.limit(), q.execute(&self.pool)).await?;
        let q = sqlx::query(sql(&self.sql.expire_dead))
            .bind(millis(self.settings.dead_letter_retention))
            .bind(REAP_BATCH)
            .bind(i64::try_from(self.settings.dead_letter_capacity).unwrap_or(i64::MAX))
            .bind(Self::shard());
        let rows = bounded(self.limit(), q.fetch_all(&self.pool)).await?;
        for row in &rows {
            let id: Uuid = get_at(row, 0)?;
            let evicted: bool = get_at(row, 1)?;
            if evicted {
                tracing::warn!(job_id = %JobId::from(id), "dead-letter capacity reached: deleted the oldest dead letter");
            }
        }
        Ok(())
    }
}
