//! Periodic and cron enqueue.
//!
//! From the builder ([`JobRuntimeBuilder::every`](crate::JobRuntimeBuilder::every),
//! [`cron`](crate::JobRuntimeBuilder::cron)) a schedule starts with the runtime and stops at
//! shutdown. From a spawned task, [`every`] and [`cron()`] take a [`Client`] and return a
//! [`ScheduleHandle`].
//!
//! `every` does not drift: tick *n* is due at `start + n * period` whatever each enqueue
//! took (the seed's `PeriodicTimer`, not `Task.Delay` in a loop); a tick missed because
//! enqueue waited for room is skipped, not bunched up. With the in-memory backend each
//! process runs its own schedules.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::job::Job;
use crate::runtime::Client;

/// A parsed cron expression, evaluated in UTC.
///
/// Five fields (`minute hour day-of-month month day-of-week`) as in crontab, or six with a
/// leading seconds field.
///
/// # Examples
/// ```
/// use chrono::{TimeZone, Utc};
/// use job_core::schedule::CronSchedule;
///
/// let hourly = CronSchedule::parse("0 * * * *").unwrap();
/// let t = Utc.with_ymd_and_hms(2026, 1, 1, 10, 15, 0).unwrap();
/// assert_eq!(hourly.next_after(t), Some(Utc.with_ymd_and_hms(2026, 1, 1, 11, 0, 0).unwrap()));
/// assert!(CronSchedule::parse("every tuesday").is_err());
/// ```
#[derive(Clone)]
pub struct CronSchedule {
    expression: String,
    schedule: cron::Schedule,
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CronSchedule")
            .field(&self.expression)
            .finish()
    }
}

/// An invalid cron expression.
#[derive(Debug, thiserror::Error)]
#[error("invalid cron expression `{expression}`: {message}")]
pub struct CronError {
    /// The expression as given.
    pub expression: String,
    /// What is wrong with it.
    pub message: String,
}

impl CronSchedule {
    /// Parses a five- or six-field expression.
    ///
    /// # Errors
    /// [`CronError`] naming the expression.
    pub fn parse(expression: &str) -> Result<Self, CronError> {
        let fields = expression.split_whitespace().count();
        let full = match fields {
            5 => format!("0 {expression}"),
            6 => expression.to_owned(),
            n => {
                return Err(CronError {
                    expression: expression.to_owned(),
                    message: format!(
                        "expected 5 fields (minute hour day month weekday) or 6 (with seconds first), found {n}"
                    ),
                });
            }
        };
        cron::Schedule::from_str(&full)
            .map(|schedule| Self {
                expression: expression.to_owned(),
                schedule,
            })
            .map_err(|e| CronError {
                expression: expression.to_owned(),
                message: e.to_string(),
            })
    }

    /// The first matching time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.after(&t).next()
    }
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A schedule waiting for a client (built by the builder, started by `start()`).
pub(crate) struct ScheduleSpec {
    start: Box<dyn FnOnce(Client, CancellationToken) -> Task + Send>,
}

impl ScheduleSpec {
    pub(crate) fn every<J: Job, F: FnMut() -> J + Send + 'static>(
        period: Duration,
        make: F,
    ) -> Self {
        Self {
            start: Box::new(move |client, token| Box::pin(every_loop(client, period, make, token))),
        }
    }

    pub(crate) fn cron<J: Job, F: FnMut() -> J + Send + 'static>(
        schedule: CronSchedule,
        make: F,
    ) -> Self {
        Self {
            start: Box::new(move |client, token| {
                Box::pin(cron_loop(client, schedule, make, token))
            }),
        }
    }

    pub(crate) fn run(self, client: Client, token: CancellationToken) -> Task {
        (self.start)(client, token)
    }
}

impl fmt::Debug for ScheduleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScheduleSpec")
    }
}

/// A running schedule started with [`every`] or [`cron()`]. Dropping it does not stop it.
#[derive(Debug)]
pub struct ScheduleHandle {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ScheduleHandle {
    /// Stops the schedule and waits for it to end.
    pub async fn stop(self) {
        self.token.cancel();
        let _ = self.task.await;
    }

    /// True once the schedule has ended (stopped, or its runtime shut down).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Enqueues `make()` on `client` every `period` (first after one period), without drift,
/// until stopped or the runtime shuts down. Must be called inside a tokio runtime.
///
/// # Panics
/// If `period` is zero.
///
/// # Examples
/// ```
/// # use job_core::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize)] struct Report;
/// # impl Job for Report {
/// #     const NAME: &'static str = "report";
/// #     type Error = std::io::Error;
/// #     type Output = ();
/// #     async fn run(&self, _: &JobContext) -> Result<(), Self::Error> { Ok(()) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let runtime = JobRuntime::builder().register::<Report>().start()?;
/// use std::time::Duration;
/// let schedule = job_core::schedule::every(&runtime.client(), Duration::from_secs(3600), || Report);
/// schedule.stop().await;
/// # runtime.shutdown().await;
/// # Ok(()) }
/// ```
#[track_caller]
pub fn every<J, F>(client: &Client, period: Duration, make: F) -> ScheduleHandle
where
    J: Job,
    F: FnMut() -> J + Send + 'static,
{
    assert!(
        !period.is_zero(),
        "`every` needs a period greater than zero"
    );
    let token = CancellationToken::new();
    let task = tokio::spawn(every_loop(client.clone(), period, make, token.clone()));
    ScheduleHandle { token, task }
}

/// Enqueues `make()` on `client` at each time matching `expression` (UTC), until stopped or
/// the runtime shuts down. Must be called inside a tokio runtime.
///
/// # Errors
/// [`CronError`] for an invalid expression.
pub fn cron<J, F>(client: &Client, expression: &str, make: F) -> Result<ScheduleHandle, CronError>
where
    J: Job,
    F: FnMut() -> J + Send + 'static,
{
    let schedule = CronSchedule::parse(expression)?;
    let token = CancellationToken::new();
    let task = tokio::spawn(cron_loop(client.clone(), schedule, make, token.clone()));
    Ok(ScheduleHandle { token, task })
}

/// Enqueues one job from a schedule; false when the runtime is shutting down.
async fn fire<J: Job>(client: &Client, job: J) -> bool {
    match client.enqueue(job).await {
        Ok(id) => {
            tracing::debug!(job = J::NAME, job_id = %id, "scheduled job enqueued");
            true
        }
        Err(e) if e.is_shutting_down() => false,
        Err(e) => {
            tracing::error!(job = J::NAME, error = %e, "scheduled enqueue failed");
            true
        }
    }
}

async fn every_loop<J: Job, F: FnMut() -> J>(
    client: Client,
    period: Duration,
    mut make: F,
    token: CancellationToken,
) {
    let mut next = Instant::now() + period;
    loop {
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        if client.is_stopping() {
            return;
        }
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            more = fire(&client, make()) => if !more { return },
        }
        // The next grid point not yet passed: ticks missed while enqueue waited are skipped.
        next += period;
        let now = Instant::now();
        if next < now {
            let behind = (now - next).as_nanos() / period.as_nanos();
            let skip = u32::try_from(behind + 1).unwrap_or(u32::MAX);
            next += period.saturating_mul(skip);
        }
    }
}

async fn cron_loop<J: Job, F: FnMut() -> J>(
    client: Client,
    schedule: CronSchedule,
    mut make: F,
    token: CancellationToken,
) {
    let mut after = Utc::now();
    loop {
        let Some(next) = schedule.next_after(after) else {
            tracing::info!(cron = %schedule.expression, "cron schedule has no more times");
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if client.is_stopping() {
            return;
        }
        after = next;
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            more = fire(&client, make()) => if !more { return },
        }
    }
}
