//! Recurring jobs: every period, or at the times a cron expression names, in a time zone.
//!
//! From the builder ([`JobRuntimeBuilder::schedule`](crate::JobRuntimeBuilder::schedule),
//! and its shorthands [`every`](crate::JobRuntimeBuilder::every) and
//! [`cron`](crate::JobRuntimeBuilder::cron)) a schedule starts with the runtime and stops at
//! shutdown. From a spawned task, [`start`] (and [`every`], [`cron()`]) take a [`Client`] and
//! return a [`ScheduleHandle`]. [`Client::schedules`] lists them with their next run time.
//!
//! # Ticks
//! A schedule's ticks are the times it is due: for [`Schedule::every`], one period apart;
//! for [`Schedule::cron`], the times the expression matches on the zone's wall clock (UTC
//! unless [`Schedule::timezone`] says otherwise; see [`CronSchedule::next_after_in`] for
//! daylight saving). Ticks do not drift: tick *n* is due at its time whatever each enqueue
//! took (the seed's `PeriodicTimer`, not `Task.Delay` in a loop).
//!
//! # Once across processes
//! On a durable backend that keeps one job per id (Redis, Postgres:
//! [`Capabilities::idempotent_enqueue`](crate::backend::Capabilities::idempotent_enqueue)),
//! each tick is enqueued under an id made from the schedule's name and the tick's time
//! ([`JobId::for_tick`](crate::JobId::for_tick)), and the grid of an `every` schedule is
//! counted from the Unix epoch rather than from the start. Every process that runs the same
//! schedule therefore enqueues the same job for a tick, and the store keeps one: N
//! processes give one job per tick, with no leader to elect and nothing to fail over when
//! one of them dies. Two things keep this true:
//!
//! - the processes' clocks agree to well within the store's retention of finished jobs
//!   (an hour by default): a process late by more than that would enqueue a tick whose job
//!   is gone again;
//! - two different schedules of one job have different names (the default name holds the
//!   job, the period or the expression and the zone; give the others a
//!   [`named`](Schedule::named) one).
//!
//! In memory, and on a store that cannot tell a stored id (RabbitMQ, Azure Queue
//! Storage), each process runs its own schedules, counted from its start; the runtime says
//! so in a warning when a backend would run a schedule in every process.
//!
//! # Misfires
//! A tick reached late — the process stalled or was suspended, the store was down, or the
//! previous enqueue waited for room — by more than a quarter of the time to the following
//! tick (and at most a minute) is *missed*. Missed ticks are never fired back to back:
//! [`Misfire::Skip`] (the default) drops them and waits for the next tick;
//! [`Misfire::RunOnce`] enqueues one job for all of them at once, then goes on.

mod cron;
mod run;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

pub use self::cron::{CronError, CronSchedule};
pub(crate) use self::run::Board;
use self::run::Slot;
/// A time zone of the IANA database (`"Europe/Paris".parse::<Tz>()`), from `chrono-tz`.
pub use chrono_tz::Tz;

use crate::job::Job;
use crate::runtime::Client;

/// What a schedule does with ticks it reached too late (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Misfire {
    /// Missed ticks are dropped; the schedule waits for its next tick.
    #[default]
    Skip,
    /// Missed ticks are caught up with one run, at once; then the schedule goes on.
    RunOnce,
}

impl fmt::Display for Misfire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Skip => "skip",
            Self::RunOnce => "run_once",
        })
    }
}

/// An unknown time zone name.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown time zone `{name}`: expected a name of the IANA time zone database, such as `Europe/Paris`, `America/New_York` or `UTC`"
)]
pub struct TimezoneError {
    /// The name as given.
    pub name: String,
}

#[derive(Debug, Clone)]
enum When {
    Every(Duration),
    Cron(Box<CronSchedule>),
}

/// When a recurring job runs: [`every`](Self::every) a period or on a
/// [`cron`](Self::cron) expression, with its time zone, its [`Misfire`] policy and its name.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use job_core::schedule::{Misfire, Schedule};
///
/// // 09:00 on weekdays, Paris time; a run missed while the service was down runs once.
/// let morning = Schedule::cron("0 9 * * Mon-Fri")?
///     .timezone("Europe/Paris")?
///     .misfire(Misfire::RunOnce);
/// assert_eq!(morning.to_string(), "cron `0 9 * * Mon-Fri` in Europe/Paris");
///
/// // Every 5 minutes, the first run at start rather than 5 minutes after it.
/// let sweep = Schedule::every(Duration::from_secs(300)).first_at_start();
/// assert_eq!(sweep.to_string(), "every 5m");
/// assert!("Mars/Olympus".parse::<job_core::schedule::Tz>().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Schedule {
    when: When,
    zone: Tz,
    misfire: Misfire,
    first_at_start: bool,
    name: Option<String>,
}

impl Schedule {
    /// Every `period`. A period of zero makes the builder's `start()` fail (and
    /// [`start`] panic).
    pub fn every(period: Duration) -> Self {
        Self::new(When::Every(period))
    }

    /// At each time matching `expression`: five fields (`minute hour day-of-month month
    /// day-of-week`) or six with a leading seconds field, read in UTC unless a
    /// [`timezone`](Self::timezone) is given.
    ///
    /// # Errors
    /// [`CronError`] for an invalid expression.
    pub fn cron(expression: &str) -> Result<Self, CronError> {
        CronSchedule::parse(expression).map(|c| Self::new(When::Cron(Box::new(c))))
    }

    fn new(when: When) -> Self {
        Self {
            when,
            zone: Tz::UTC,
            misfire: Misfire::default(),
            first_at_start: false,
            name: None,
        }
    }

    /// Reads a cron expression on the wall clock of the IANA zone `name` (`Europe/Paris`).
    /// An `every` schedule counts absolute time and ignores the zone.
    ///
    /// # Errors
    /// [`TimezoneError`] for a name the zone database does not hold.
    pub fn timezone(self, name: &str) -> Result<Self, TimezoneError> {
        let zone = name.parse::<Tz>().map_err(|_| TimezoneError {
            name: name.to_owned(),
        })?;
        Ok(self.in_zone(zone))
    }

    /// As [`timezone`](Self::timezone), with a zone already parsed.
    pub fn in_zone(mut self, zone: Tz) -> Self {
        self.zone = zone;
        self
    }

    /// What to do with missed ticks (default [`Misfire::Skip`]).
    pub fn misfire(mut self, policy: Misfire) -> Self {
        self.misfire = policy;
        self
    }

    /// Also runs at start, without waiting for the first tick. When ticks are shared
    /// across processes the run at start is the latest tick due at or before the start, so
    /// processes that start together, or a process that restarts soon after that tick ran,
    /// add no job.
    pub fn first_at_start(mut self) -> Self {
        self.first_at_start = true;
        self
    }

    /// The schedule's name, in logs, in [`Client::schedules`] and in the ids of its ticks
    /// (default: the job's name and the schedule, as in `report every 1h`). Schedules of
    /// one job that enqueue different jobs need names of their own.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The time zone cron expressions are read in.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The misfire policy.
    pub fn misfire_policy(&self) -> Misfire {
        self.misfire
    }

    /// The first tick strictly after `t`, as on a durable store that shares ticks (an
    /// `every` schedule's grid counted from the Unix epoch); `None` when a cron expression
    /// matches no later time.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_from(t, DateTime::UNIX_EPOCH)
    }

    /// The first tick strictly after `t`, an `every` grid counted from `origin`.
    fn next_from(&self, t: DateTime<Utc>, origin: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.when {
            When::Every(period) => run::grid_next(t, origin, *period),
            When::Cron(c) => c.next_after_in(t, self.zone),
        }
    }

    fn name_for(&self, job: &str) -> String {
        self.name.clone().unwrap_or_else(|| format!("{job} {self}"))
    }

    fn period_problem(&self) -> Option<String> {
        match self.when {
            When::Every(p) if p.is_zero() => {
                Some("`every` needs a period greater than zero".to_owned())
            }
            _ => None,
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.when {
            When::Every(p) => write!(f, "every {}", run::short_duration(*p)),
            When::Cron(c) if self.zone == Tz::UTC => write!(f, "cron `{}`", c.expression()),
            When::Cron(c) => write!(f, "cron `{}` in {}", c.expression(), self.zone.name()),
        }
    }
}

/// One schedule as [`Client::schedules`] lists it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// Its name (see [`Schedule::named`]).
    pub name: String,
    /// The job it enqueues.
    pub job: &'static str,
    /// The schedule, as in `every 1h` or ``cron `0 9 * * *` in Europe/Paris``.
    pub schedule: String,
    /// What it does with missed ticks.
    pub misfire: Misfire,
    /// True when its ticks are shared with every process on the same store (one job per
    /// tick between them); false when this process runs its own.
    pub shared: bool,
    /// The next tick it waits for (`None` before it started, or when no time is left).
    pub next_run: Option<DateTime<Utc>>,
    /// The tick it enqueued last.
    pub last_run: Option<DateTime<Utc>>,
    /// Ticks enqueued by this process (on a shared store, a tick another process stored
    /// first counts too).
    pub runs: u64,
    /// Ticks missed (see [`Misfire`]).
    pub missed: u64,
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A schedule waiting for a client (built by the builder, started by `start()`).
pub(crate) struct ScheduleSpec {
    name: String,
    start: Box<dyn FnOnce(Client, CancellationToken) -> Task + Send>,
}

impl ScheduleSpec {
    /// The schedule, or what is wrong with it.
    pub(crate) fn new<J: Job, F: FnMut() -> J + Send + 'static>(
        schedule: Schedule,
        make: F,
    ) -> Result<Self, String> {
        if let Some(problem) = schedule.period_problem() {
            return Err(problem);
        }
        let name = schedule.name_for(J::NAME);
        let slot = Arc::new(Slot::new(name.clone(), J::NAME, &schedule));
        Ok(Self {
            name,
            start: Box::new(move |client: Client, token| {
                Board::list_on(&client, &slot, &schedule);
                Box::pin(run::run(client, slot, schedule, make, token))
            }),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn run(self, client: Client, token: CancellationToken) -> Task {
        (self.start)(client, token)
    }
}

impl fmt::Debug for ScheduleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ScheduleSpec").field(&self.name).finish()
    }
}

/// A running schedule started with [`start`], [`every`] or [`cron()`]. Dropping it does not
/// stop it.
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

/// Enqueues `make()` on `client` at each tick of `schedule`, until stopped or the runtime
/// shuts down. Must be called inside a tokio runtime.
///
/// # Panics
/// If `schedule` is [`every`](Schedule::every) a period of zero.
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
/// use job_core::schedule::{self, Schedule};
///
/// let nightly = Schedule::cron("0 2 * * *")?.timezone("America/New_York")?;
/// let handle = schedule::start(&runtime.client(), nightly, || Report);
/// let listed = runtime.client().schedules();
/// assert_eq!(listed[0].name, "report cron `0 2 * * *` in America/New_York");
/// assert!(listed[0].next_run.is_some());
/// handle.stop().await;
/// assert!(runtime.client().schedules().is_empty());
/// # runtime.shutdown().await;
/// # Ok(()) }
/// ```
#[track_caller]
pub fn start<J, F>(client: &Client, schedule: Schedule, make: F) -> ScheduleHandle
where
    J: Job,
    F: FnMut() -> J + Send + 'static,
{
    if let Some(problem) = schedule.period_problem() {
        panic!("{problem}");
    }
    let name = schedule.name_for(J::NAME);
    let slot = Arc::new(Slot::new(name, J::NAME, &schedule));
    // Listed from now on, not only once the task first runs.
    Board::list_on(client, &slot, &schedule);
    let token = CancellationToken::new();
    let task = tokio::spawn(run::run(
        client.clone(),
        slot,
        schedule,
        make,
        token.clone(),
    ));
    ScheduleHandle { token, task }
}

/// Enqueues `make()` on `client` every `period` (first after one period), without drift,
/// until stopped or the runtime shuts down: [`start`] with [`Schedule::every`].
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
    start(client, Schedule::every(period), make)
}

/// Enqueues `make()` on `client` at each time matching `expression` (UTC), until stopped or
/// the runtime shuts down: [`start`] with [`Schedule::cron`]. Must be called inside a tokio
/// runtime.
///
/// # Errors
/// [`CronError`] for an invalid expression.
pub fn cron<J, F>(client: &Client, expression: &str, make: F) -> Result<ScheduleHandle, CronError>
where
    J: Job,
    F: FnMut() -> J + Send + 'static,
{
    Ok(start(client, Schedule::cron(expression)?, make))
}
