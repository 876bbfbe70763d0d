//! The jobs of the chaos tests, shared by the `soak_worker` binary (which runs them) and
//! `tests/tests/redis_chaos.rs` (which enqueues them and reads what they recorded).
//!
//! Every job records its execution OUTSIDE the queue, in a Redis list under the backend's
//! key prefix (`{prefix}:chaos:<kind>`), before it does anything that can be interrupted:
//! what the queue says happened is checked against what the jobs saw.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use job_core::prelude::*;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

/// The queue every chaos job runs on.
pub(crate) const QUEUE: &str = "chaos";

/// The list a kind of record goes to. Inside the prefix's hash tag, so the test's cleanup
/// of `{prefix}:*` removes it with the backend's keys.
pub(crate) fn record_key(prefix: &str, kind: &str) -> String {
    format!("{{{prefix}}}:chaos:{kind}")
}

/// Where jobs record their executions: its own Redis connection, apart from the backend's.
pub(crate) struct Sink {
    conn: ConnectionManager,
    prefix: String,
}

impl Sink {
    pub(crate) async fn connect(url: &str, prefix: &str) -> redis::RedisResult<Arc<Self>> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Arc::new(Self {
            conn,
            prefix: prefix.to_owned(),
        }))
    }

    /// Appends one record; the job fails (and is retried) if it cannot be written.
    async fn push(&self, kind: &str, line: String) -> std::io::Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("RPUSH")
            .arg(record_key(&self.prefix, kind))
            .arg(line)
            .query_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(std::io::Error::other)
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

    /// Attempts count crash recoveries too: with up to 10 recoveries in T1, a failed write
    /// of the record must still be retried rather than dead-lettered.
    fn options() -> JobOptions {
        JobOptions::new().queue(QUEUE).max_attempts(12)
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

    fn options() -> JobOptions {
        JobOptions::new().queue(QUEUE)
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

    fn options() -> JobOptions {
        JobOptions::new().queue(QUEUE)
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
