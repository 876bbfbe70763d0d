//! The jobs of the chaos tests, shared by the `soak_worker` binary (which runs them) and
//! `tests/tests/redis_chaos.rs` and `tests/tests/postgres_chaos.rs` (which enqueue them and
//! read what they recorded).
//!
//! Every job records its execution OUTSIDE the queue, before it does anything that can be
//! interrupted: in a Redis list under the backend's key prefix (`{prefix}:chaos:<kind>`), or,
//! for workers on Postgres, in the table `<schema>.chaos_records` of the backend's schema
//! (created by the test; see [`RECORDS_TABLE`]). What the queue says happened is checked
//! against what the jobs saw.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use job_core::prelude::*;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

/// Every chaos job's timeout: a backend with a longest lease (RabbitMQ's `consumer_timeout`)
/// requires one.
pub(crate) const JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// The queue every chaos job runs on.
pub(crate) const QUEUE: &str = "chaos";

/// The list a kind of record goes to. Inside the prefix's hash tag, so the test's cleanup
/// of `{prefix}:*` removes it with the backend's keys.
pub(crate) fn record_key(prefix: &str, kind: &str) -> String {
    format!("{{{prefix}}}:chaos:{kind}")
}

/// The table the Postgres sink writes to, in the backend's schema. The test creates it
/// (with the schema) before it starts workers: `seq` keeps the order records were written in.
#[allow(dead_code)] // Read by the tests (tests/tests/pg_chaos), not by the worker.
pub(crate) const RECORDS_TABLE: &str = "CREATE TABLE {s}.chaos_records (
    seq  bigserial PRIMARY KEY,
    kind text NOT NULL,
    line text NOT NULL
)";

/// The `application_name` of the Postgres sink's connections: not the backend's
/// (`job-core`), so tests that terminate the backend's connections never hit these.
pub(crate) const SINK_APPLICATION: &str = "job-core-chaos-sink";

/// Where jobs record their executions: a connection of its own, apart from the backend's.
pub(crate) enum Sink {
    Redis {
        conn: ConnectionManager,
        prefix: String,
    },
    Postgres {
        pool: sqlx::PgPool,
        /// The INSERT statement, with the schema filled in.
        insert: Arc<str>,
    },
}

impl Sink {
    pub(crate) async fn connect(url: &str, prefix: &str) -> redis::RedisResult<Arc<Self>> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Arc::new(Self::Redis {
            conn,
            prefix: prefix.to_owned(),
        }))
    }

    /// A sink writing to `schema.chaos_records` (which must exist) on the Postgres at `url`,
    /// with up to `connections` connections, opened on demand.
    pub(crate) fn connect_postgres(
        url: &str,
        schema: &str,
        connections: u32,
    ) -> Result<Arc<Self>, sqlx::Error> {
        use std::str::FromStr;
        // Spliced into the statement below: the backend's rule for schema names.
        let mut bytes = schema.bytes();
        let valid = matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
            && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'));
        if !valid {
            return Err(sqlx::Error::Configuration(
                format!("invalid schema name {schema:?}").into(),
            ));
        }
        let options =
            sqlx::postgres::PgConnectOptions::from_str(url)?.application_name(SINK_APPLICATION);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(Arc::new(Self::Postgres {
            pool,
            insert: format!("INSERT INTO \"{schema}\".chaos_records (kind, line) VALUES ($1, $2)")
                .into(),
        }))
    }

    /// Appends one record; the job fails (and is retried) if it cannot be written.
    async fn push(&self, kind: &str, line: String) -> std::io::Result<()> {
        match self {
            Self::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                redis::cmd("RPUSH")
                    .arg(record_key(prefix, kind))
                    .arg(line)
                    .query_async::<i64>(&mut conn)
                    .await
                    .map(drop)
                    .map_err(std::io::Error::other)
            }
            Self::Postgres { pool, insert } => {
                // The schema name was checked in `connect_postgres`.
                let q = sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                    .bind(kind)
                    .bind(line);
                match tokio::time::timeout(Duration::from_secs(5), q.execute(pool)).await {
                    Ok(done) => done.map(drop).map_err(std::io::Error::other),
                    Err(_) => Err(std::io::Error::other("recording the run timed out")),
                }
            }
        }
    }
}

fn sink(cx: &JobContext) -> std::io::Result<&Sink> {
    cx.data::<Sink>()
        .ok_or_else(|| std::io::Error::other("no Sink registered with the runtime"))
}

/// Microseconds since the Unix epoch (all processes of a test run on one machine).
fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// T1's job: records `n id attempt pid` in `chaos:runs`, then sleeps, so that a SIGKILL
/// usually lands while some are running.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Soak {
    pub(crate) n: u32,
    pub(crate) sleep_ms: u64,
}

impl Job for Soak {
    const NAME: &'static str = "chaos-soak";
    type Error = std::io::Error;
    type Output = ();

    /// Attempts count crash recoveries too: with up to 10 recoveries in T1, a failed write
    /// of the record must still be retried rather than dead-lettered.
    fn options() -> JobOptions {
        JobOptions::new()
            .queue(QUEUE)
            .max_attempts(12)
            .timeout(JOB_TIMEOUT)
    }

    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        let line = format!(
            "{} {} {} {}",
            self.n,
            cx.id(),
            cx.attempt(),
            std::process::id()
        );
        sink(cx)?.push("runs", line).await?;
        tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        Ok(())
    }
}

/// Records the interval it ran in, `n id attempt pid start_us end_us`, in `chaos:spans`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Span {
    pub(crate) n: u32,
    pub(crate) sleep_ms: u64,
}

impl Job for Span {
    const NAME: &'static str = "chaos-span";
    type Error = std::io::Error;
    type Output = ();

    fn options() -> JobOptions {
        JobOptions::new().queue(QUEUE).timeout(JOB_TIMEOUT)
    }

    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        let start = now_us();
        tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        let end = now_us();
        let line = format!(
            "{} {} {} {} {start} {end}",
            self.n,
            cx.id(),
            cx.attempt(),
            std::process::id()
        );
        sink(cx)?.push("spans", line).await
    }
}

/// T4's poison pill: records `n id attempt pid` in `chaos:pills`, then aborts its process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Pill {
    pub(crate) n: u32,
}

impl Job for Pill {
    const NAME: &'static str = "chaos-pill";
    type Error = std::io::Error;
    type Output = ();

    fn options() -> JobOptions {
        JobOptions::new().queue(QUEUE).timeout(JOB_TIMEOUT)
    }

    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        let line = format!(
            "{} {} {} {}",
            self.n,
            cx.id(),
            cx.attempt(),
            std::process::id()
        );
        sink(cx)?.push("pills", line).await?;
        std::process::abort()
    }
}
