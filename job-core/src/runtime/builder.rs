//! [`JobRuntimeBuilder`]: configuration, validation, start.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::context::{DataMap, DependencyKind, ScopedFactory};
use crate::dead_letter::{DeadLetter, DeadLetterHook, HookOutcome};
use crate::error::{BoxError, StartError};
use crate::job::Job;
use crate::job::JobOptions;
use crate::observe::health::HealthThresholds;
use crate::registry::{JobType, OptionsOverride, Registry};
use crate::runtime::durable::DurableConfig;
use crate::runtime::shutdown::ShutdownReport;
use crate::runtime::{Client, JobRuntime};
use crate::schedule::{Schedule, ScheduleSpec};

pub(crate) type ShutdownHook = Arc<dyn Fn(&ShutdownReport) + Send + Sync>;

/// Configures and starts a [`JobRuntime`]. Get one from [`JobRuntime::builder`].
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use job_core::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize)] struct Noop;
/// # impl Job for Noop {
/// #     const NAME: &'static str = "noop";
/// #     type Error = std::io::Error;
/// #     type Output = ();
/// #     async fn run(&self, _: &JobContext) -> Result<(), Self::Error> { Ok(()) }
/// # }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let runtime = JobRuntime::builder()
///     .capacity(1_000)
///     .concurrency(8)
///     .shutdown_timeout(Duration::from_secs(10))
///     .on_dead_letter(|dead: DeadLetter| async move {
///         tracing::error!(job = %dead.job, error = %dead.error_message(), "job died");
///     })
/// #   .register::<Noop>()
///     .start()?;
/// runtime.shutdown().await;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `start()` is called"]
pub struct JobRuntimeBuilder {
    pub(crate) capacity: usize,
    pub(crate) concurrency: usize,
    pub(crate) data: DataMap,
    pub(crate) scoped: HashMap<TypeId, ScopedFactory>,
    pub(crate) hooks: Vec<DeadLetterHook>,
    pub(crate) shutdown_hooks: Vec<ShutdownHook>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) cancel_grace: Duration,
    pub(crate) drain_queue: bool,
    pub(crate) thresholds: HealthThresholds,
    pub(crate) payload_limit: Option<usize>,
    pub(crate) retry_panics: bool,
    pub(crate) status_retention: Duration,
    pub(crate) status_capacity: usize,
    pub(crate) dead_letter_capacity: usize,
    pub(crate) manual: Vec<JobType>,
    pub(crate) overrides: Vec<OptionsOverride>,
    pub(crate) schedules: Vec<ScheduleSpec>,
    pub(crate) problems: Vec<String>,
    /// Options set that only the in-memory runtime honours (refused with a backend).
    memory_only: Vec<&'static str>,
    pub(crate) durable: Option<DurableConfig>,
}

impl Default for JobRuntimeBuilder {
    fn default() -> Self {
        Self {
            capacity: 100,
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            data: DataMap::default(),
            scoped: HashMap::new(),
            hooks: Vec::new(),
            shutdown_hooks: Vec::new(),
            shutdown_timeout: Duration::from_secs(25),
            cancel_grace: Duration::from_secs(1),
            drain_queue: false,
            thresholds: HealthThresholds::default(),
            payload_limit: Some(256 * 1024),
            retry_panics: false,
            status_retention: Duration::from_secs(3600),
            status_capacity: 100_000,
            dead_letter_capacity: 10_000,
            manual: Vec::new(),
            overrides: Vec::new(),
            schedules: Vec::new(),
            problems: Vec::new(),
            memory_only: Vec::new(),
            durable: None,
        }
    }
}

impl fmt::Debug for JobRuntimeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobRuntimeBuilder")
            .field("capacity", &self.capacity)
            .field("concurrency", &self.concurrency)
            .field("data", &self.data)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("payload_limit", &self.payload_limit)
            .finish_non_exhaustive()
    }
}

impl JobRuntimeBuilder {
    /// The most jobs held at once, counting ready, scheduled, waiting-to-retry and running
    /// jobs (default 100). `enqueue` waits and `try_enqueue` fails while it is reached.
    ///
    /// In memory, the ready queue is a ring of 48 bytes per slot of capacity, allocated at
    /// start for capacities up to 262,144 (12 MiB at most; above that it grows and shrinks in
    /// blocks). Workers running quick jobs (under 100 µs) give finished jobs' slots back in
    /// small batches, at most a quarter of the capacity in all, so `enqueue` may wait a
    /// moment before the count of held jobs reaches capacity; a worker gives back what it
    /// holds after a slower job and whenever it finds the queue empty. On a durable
    /// backend, capacity bounds the jobs the backend stores.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The most attempts running at once (default: the machine's available parallelism).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Registers a shared value; a `#[job]` fn receives it as `&T`, a hand-written job via
    /// [`JobContext::data`](crate::JobContext::data). `T` may be unsized:
    /// `.data::<dyn Mailer>(Arc::new(SmtpMailer::new()))`.
    pub fn data<T: ?Sized + Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.data.insert(value);
        self
    }

    /// Registers a factory for a per-attempt dependency: a `#[job]` fn declaring `&mut T`
    /// gets a fresh `T` for each attempt, dropped when the attempt ends (a database
    /// transaction or connection, say). A factory error fails the attempt as transient.
    pub fn scoped<T, F, Fut>(mut self, factory: F) -> Self
    where
        T: Send + 'static,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, BoxError>> + Send + 'static,
    {
        self.scoped
            .insert(TypeId::of::<T>(), ScopedFactory::new(factory));
        self
    }

    /// Adds a hook called with every dead letter. Hooks run in their own tasks: one that
    /// fails (returns `Err`) or panics is logged and stops nothing.
    pub fn on_dead_letter<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(DeadLetter) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HookOutcome,
    {
        self.hooks.push(DeadLetterHook::new(hook));
        self
    }

    /// Adds a hook called once with the [`ShutdownReport`], naming every job left behind.
    pub fn on_shutdown<F>(mut self, hook: F) -> Self
    where
        F: Fn(&ShutdownReport) + Send + Sync + 'static,
    {
        self.shutdown_hooks.push(Arc::new(hook));
        self
    }

    /// How long running attempts get to finish once shutdown begins (default 25 s, under
    /// Kubernetes' 30 s grace period). Then their cancellation tokens fire.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long attempts get to return after their tokens fire before they are dropped
    /// (default 1 s): at shutdown, after a cancel by id, and after a job's `timeout` (the
    /// token fires at the timeout; the attempt counts as timed out whatever it returns in
    /// the grace).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// When true, shutdown also runs the jobs already queued (within the same window);
    /// by default it only lets running attempts finish and reports the queued ones.
    pub fn drain_queue_on_shutdown(mut self, drain: bool) -> Self {
        self.drain_queue = drain;
        self
    }

    /// Loads (fractions of capacity) at which health turns degraded and unhealthy
    /// (default 0.75 and 0.95).
    pub fn health_thresholds(mut self, degraded: f64, unhealthy: f64) -> Self {
        self.thresholds = HealthThresholds {
            degraded,
            unhealthy,
        };
        self
    }

    /// Largest serialized payload accepted, in bytes (default 256 KiB); `None` for no limit.
    /// The check serializes into a byte counter and allocates nothing.
    pub fn payload_limit(mut self, limit: Option<usize>) -> Self {
        self.payload_limit = limit;
        self
    }

    /// Whether a panicking attempt is retried like a transient error (default false: a
    /// panic is a bug and the job is dead-lettered at once).
    pub fn retry_panics(mut self, retry: bool) -> Self {
        self.retry_panics = retry;
        self
    }

    /// How long statuses of finished jobs are kept (default 1 h). In-memory runtime only:
    /// with a [`backend`](Self::backend), `start()` refuses it (the backend's own retention
    /// applies).
    pub fn status_retention(mut self, retention: Duration) -> Self {
        self.status_retention = retention;
        if !self.memory_only.contains(&"status_retention") {
            self.memory_only.push("status_retention");
        }
        self
    }

    /// The most statuses of finished jobs kept (default 100,000); the oldest go first.
    /// In-memory runtime only, as [`status_retention`](Self::status_retention).
    pub fn status_capacity(mut self, capacity: usize) -> Self {
        self.status_capacity = capacity;
        if !self.memory_only.contains(&"status_capacity") {
            self.memory_only.push("status_capacity");
        }
        self
    }

    /// The most dead letters kept for listing and requeue (default 10,000); the oldest are
    /// evicted, with a warning. Hooks see every dead letter regardless. In-memory runtime
    /// only, as [`status_retention`](Self::status_retention).
    pub fn dead_letter_capacity(mut self, capacity: usize) -> Self {
        self.dead_letter_capacity = capacity;
        if !self.memory_only.contains(&"dead_letter_capacity") {
            self.memory_only.push("dead_letter_capacity");
        }
        self
    }

    /// Runs on a durable backend instead of the in-memory queue: jobs are serialized, stored
    /// by the backend, reserved under leases and acknowledged when done (at-least-once). Job
    /// and worker code do not change. `capacity` then bounds the jobs the backend stores.
    pub fn backend<B: Backend>(mut self, backend: B) -> Self {
        self.durable = Some(DurableConfig {
            backend: Arc::new(backend),
            queues: None,
            lease: Duration::from_secs(30),
            max_recoveries: 3,
            reap_interval: Duration::from_secs(15),
            prefetch: None,
        });
        self
    }

    fn durable_mut(&mut self, what: &str) -> Option<&mut DurableConfig> {
        if self.durable.is_none() {
            self.problems.push(format!(
                "`{what}` only applies with a durable backend: call `.backend(..)` first"
            ));
        }
        self.durable.as_mut()
    }

    /// How long a reserved job stays leased without renewal (default 30 s). Running jobs are
    /// renewed every third of it; a job whose worker died runs again within about the lease
    /// plus the reap interval.
    pub fn lease(mut self, lease: Duration) -> Self {
        if let Some(d) = self.durable_mut("lease") {
            d.lease = lease;
        }
        self
    }

    /// How often this process returns expired leases to their queues (default 15 s).
    pub fn reap_interval(mut self, interval: Duration) -> Self {
        if let Some(d) = self.durable_mut("reap_interval") {
            d.reap_interval = interval;
        }
        self
    }

    /// How many jobs this process reserves ahead of its free workers, so a worker that
    /// finishes a job finds the next one already fetched instead of waiting a round trip to
    /// the backend, and one round trip fetches many jobs.
    ///
    /// By default the prefetch adapts to how long jobs take (a moving average of recent
    /// attempts): about 2 ms of work is kept ahead of each worker, at most 16 jobs, and none
    /// before the first jobs have run. Jobs of 125 µs or less get the full 16 per worker and
    /// the throughput that comes with it; jobs longer than 2 ms get none, so a process never
    /// sits on long jobs that idle processes could run. A fixed `jobs` (in all, not per
    /// worker) replaces the adaptive value (`0`: reserve only for idle workers).
    ///
    /// Prefetched jobs are leased (and renewed) like running ones; at shutdown they go back
    /// to the front of their queue at once.
    pub fn prefetch(mut self, jobs: usize) -> Self {
        if let Some(d) = self.durable_mut("prefetch") {
            d.prefetch = Some(jobs);
        }
        self
    }

    /// How many times a job may lose its worker (crash, kill) before it is dead-lettered as a
    /// poison pill (default 3). Counted apart from failed attempts.
    pub fn max_recoveries(mut self, max: u32) -> Self {
        if let Some(d) = self.durable_mut("max_recoveries") {
            d.max_recoveries = max;
        }
        self
    }

    /// The queues this process takes jobs from, in priority order (default: every queue of
    /// the registered jobs, sorted by name).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let queues: Vec<String> = queues.into_iter().map(Into::into).collect();
        if let Some(d) = self.durable_mut("queues") {
            d.queues = Some(queues);
        }
        self
    }

    /// Registers a job type by hand. `#[job]` types register themselves through
    /// `inventory`; use this for hand-written impls and for targets where `inventory`
    /// collects nothing. Registering a type twice is harmless.
    pub fn register<J: Job>(mut self) -> Self {
        self.manual.push(JobType::of::<J>());
        self
    }

    /// Changes the options of job type `J` for this runtime: from configuration (attempts,
    /// timeout), or to shorten backoffs in tests. The queue may change too.
    ///
    /// ```
    /// # use job_core::prelude::*;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Clone, Serialize, Deserialize)] struct Sync;
    /// # impl Job for Sync {
    /// #     const NAME: &'static str = "sync";
    /// #     type Error = std::io::Error;
    /// #     type Output = ();
    /// #     async fn run(&self, _: &JobContext) -> Result<(), Self::Error> { Ok(()) }
    /// # }
    /// use std::time::Duration;
    /// let builder = JobRuntime::builder().register::<Sync>().options::<Sync>(|o| {
    ///     o.max_attempts(10).timeout(Duration::from_secs(5))
    /// });
    /// # drop(builder);
    /// ```
    pub fn options<J: Job>(
        mut self,
        change: impl FnOnce(JobOptions) -> JobOptions + Send + 'static,
    ) -> Self {
        self.overrides.push(OptionsOverride {
            type_id: std::any::TypeId::of::<J>(),
            type_name: std::any::type_name::<J>(),
            apply: Some(Box::new(change)),
        });
        self
    }

    /// Enqueues `make()` at each tick of `schedule` (see [`Schedule`] and the
    /// [schedule module](crate::schedule): time zones, misfires, and one job per tick
    /// across processes on a durable store). Starts with the runtime, stops at shutdown. A
    /// schedule with a period of zero, or two schedules with one name, make `start()` fail.
    ///
    /// # Examples
    /// ```
    /// # use job_core::prelude::*;
    /// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)] struct Digest;
    /// # impl Job for Digest {
    /// #     const NAME: &'static str = "digest";
    /// #     type Error = std::io::Error;
    /// #     type Output = ();
    /// #     async fn run(&self, _: &JobContext) -> Result<(), Self::Error> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use job_core::schedule::{Misfire, Schedule};
    ///
    /// let runtime = JobRuntime::builder()
    ///     .register::<Digest>()
    ///     .schedule(
    ///         Schedule::cron("0 8 * * *")?.timezone("Europe/Berlin")?.misfire(Misfire::RunOnce),
    ///         || Digest,
    ///     )
    ///     .start()?;
    /// let schedules = runtime.client().schedules();
    /// assert_eq!(schedules[0].schedule, "cron `0 8 * * *` in Europe/Berlin");
    /// # runtime.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn schedule<J, F>(mut self, schedule: Schedule, make: F) -> Self
    where
        J: Job,
        F: FnMut() -> J + Send + 'static,
    {
        match ScheduleSpec::new(schedule, make) {
            Ok(spec) => self.schedules.push(spec),
            Err(problem) => self.problems.push(problem),
        }
        self
    }

    /// Enqueues `make()` every `period` ([`schedule`](Self::schedule) with
    /// [`Schedule::every`]): without drift (a slow enqueue does not push later ticks back;
    /// missed ticks are skipped). In memory the first tick is one period after the start; on
    /// a store that shares ticks, at the next multiple of the period since the Unix epoch.
    pub fn every<J, F>(self, period: Duration, make: F) -> Self
    where
        J: Job,
        F: FnMut() -> J + Send + 'static,
    {
        self.schedule(Schedule::every(period), make)
    }

    /// Enqueues `make()` at each time matching a cron expression, in UTC: five fields
    /// (`min hour day month weekday`) or six with seconds first ([`schedule`](Self::schedule)
    /// with [`Schedule::cron`], which also takes a time zone). An invalid expression makes
    /// `start()` fail.
    pub fn cron<J, F>(mut self, expression: &str, make: F) -> Self
    where
        J: Job,
        F: FnMut() -> J + Send + 'static,
    {
        match Schedule::cron(expression) {
            Ok(schedule) => return self.schedule(schedule, make),
            Err(e) => self.problems.push(e.to_string()),
        }
        self
    }

    /// Validates the configuration and the job registry, spawns the workers on the current
    /// tokio runtime, and installs this runtime as the ambient one used by
    /// [`Job::enqueue`](crate::Job::enqueue). When several runtimes are started, the one
    /// started last is ambient; enqueue on the others through their [`Client`].
    ///
    /// # Errors
    /// [`StartError`] listing every problem: not inside a tokio runtime, capacity or
    /// concurrency of 0, bad thresholds, an empty registry, two job types with one name, an
    /// invalid job or queue name, a job needing a `data` or `scoped` value nobody registered,
    /// an invalid cron expression.
    pub fn start(mut self) -> Result<JobRuntime, StartError> {
        let mut problems = std::mem::take(&mut self.problems);
        let handle = tokio::runtime::Handle::try_current();
        if handle.is_err() {
            problems.push(
                "`start()` must be called inside a tokio runtime (for example from `#[tokio::main]`)"
                    .to_owned(),
            );
        }
        if self.capacity == 0 {
            problems.push("capacity must be at least 1".to_owned());
        }
        if self.capacity > tokio::sync::Semaphore::MAX_PERMITS {
            problems.push(format!(
                "capacity must be at most {}",
                tokio::sync::Semaphore::MAX_PERMITS
            ));
        }
        if self.concurrency == 0 {
            problems.push("concurrency must be at least 1".to_owned());
        }
        let t = self.thresholds;
        if !(t.degraded > 0.0 && t.degraded <= t.unhealthy && t.unhealthy <= 1.0) {
            problems.push(format!(
                "health thresholds must satisfy 0 < degraded <= unhealthy <= 1 (got {} and {})",
                t.degraded, t.unhealthy
            ));
        }
        if let Some(d) = &self.durable {
            for option in &self.memory_only {
                problems.push(format!(
                    "`{option}` applies to the in-memory runtime only: on the {} backend, the backend keeps statuses and dead letters under its own settings (e.g. `finished_retention`, `dead_letter_capacity` on its builder)",
                    d.backend.name()
                ));
            }
            if d.lease < Duration::from_millis(100) {
                problems.push("lease must be at least 100 ms".to_owned());
            }
            if d.reap_interval.is_zero() {
                problems.push("reap_interval must be greater than zero".to_owned());
            }
            if d.max_recoveries == 0 {
                problems.push("max_recoveries must be at least 1".to_owned());
            }
            for q in d.queues.iter().flatten() {
                if !crate::job::is_valid_name(q) {
                    problems.push(format!(
                        "invalid queue name `{q}`: use 1 to 64 of `A-Z a-z 0-9 _ . -`"
                    ));
                }
            }
        }
        let registry = Registry::build(
            std::mem::take(&mut self.manual),
            std::mem::take(&mut self.overrides),
            &mut problems,
        );
        // The schedules jobs declare (`#[job(cron = ..)]`), after those of the builder.
        for entry in registry.kinds() {
            match (entry.ty.recurring)() {
                Some(Ok(spec)) => self.schedules.push(spec),
                Some(Err(problem)) => problems.push(problem),
                None => {}
            }
        }
        let mut names: Vec<&str> = self.schedules.iter().map(ScheduleSpec::name).collect();
        names.sort_unstable();
        for pair in names.windows(2) {
            if pair[0] == pair[1] && (problems.last() != Some(&duplicate_schedule(pair[0]))) {
                problems.push(duplicate_schedule(pair[0]));
            }
        }
        if registry.is_empty() {
            problems.push(
                "no job types are registered: define jobs with `#[job]` (and make sure their crate is linked, e.g. `use my_jobs as _;`) or call `.register::<J>()`"
                    .to_owned(),
            );
        }
        for entry in registry.kinds() {
            for dep in &entry.ty.dependencies.items {
                match dep.kind {
                    DependencyKind::Data if !self.data.contains(dep.type_id) => {
                        problems.push(format!(
                            "job `{}` needs `&{}`, but it was not registered: add `.data::<{}>(Arc::new(...))` to the builder",
                            entry.ty.name, dep.type_name, dep.type_name
                        ));
                    }
                    DependencyKind::Scoped if !self.scoped.contains_key(&dep.type_id) => {
                        problems.push(format!(
                            "job `{}` needs `&mut {}`, but no factory was registered: add `.scoped::<{}, _, _>(|| async {{ ... }})` to the builder",
                            entry.ty.name, dep.type_name, dep.type_name
                        ));
                    }
                    _ => {}
                }
            }
        }
        if let Some(d) = &self.durable {
            let caps = d.backend.capabilities();
            if let Some(max) = caps.max_attempt_duration {
                let backend = d.backend.name();
                for entry in registry.kinds() {
                    match entry.ty.options.timeout {
                        Some(t) if t <= max => {}
                        Some(t) => problems.push(format!(
                            "job `{}` has a timeout of {t:?}, longer than the {max:?} an attempt may hold its lease on the {backend} backend (the store would take the job back while it runs): give it a `timeout` of at most {max:?}",
                            entry.ty.name
                        )),
                        None => problems.push(format!(
                            "job `{}` has no timeout, but an attempt may hold its lease for at most {max:?} on the {backend} backend (the store would take the job back while it runs): give it a `timeout` of at most {max:?}",
                            entry.ty.name
                        )),
                    }
                }
            }
            if let Some(max) = caps.max_payload {
                // The store's hard limit bounds the configured one.
                self.payload_limit = Some(self.payload_limit.map_or(max, |l| l.min(max)));
            }
        }
        if !problems.is_empty() {
            return Err(StartError { problems });
        }
        tracing::info!(
            jobs = ?registry.names(),
            capacity = self.capacity,
            concurrency = self.concurrency,
            "job runtime starting"
        );
        let runtime = JobRuntime::launch(self, registry);
        Client::install_ambient(runtime.client());
        Ok(runtime)
    }
}

fn duplicate_schedule(name: &str) -> String {
    format!(
        "two schedules are named `{name}`: give one of them a name of its own with `Schedule::named` (on a store that shares ticks, schedules with one name enqueue one job per tick between them)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobContext, JobOptions};

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct A;
    impl Job for A {
        const NAME: &'static str = "same";
        type Error = std::io::Error;
        type Output = ();
        async fn run(&self, _: &JobContext) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct B;
    impl Job for B {
        const NAME: &'static str = "same";
        type Error = std::io::Error;
        type Output = ();
        fn options() -> JobOptions {
            JobOptions::new().queue("bad queue!")
        }
        fn dependencies(deps: &mut crate::Dependencies) {
            deps.data::<String>();
        }
        async fn run(&self, _: &JobContext) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct NeedsData;
    impl Job for NeedsData {
        const NAME: &'static str = "needs_data";
        type Error = std::io::Error;
        type Output = ();
        fn options() -> JobOptions {
            JobOptions::new().queue("bad queue!")
        }
        fn dependencies(deps: &mut crate::Dependencies) {
            deps.data::<dyn std::any::Any + Send + Sync>();
        }
        async fn run(&self, _: &JobContext) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    fn problems(b: JobRuntimeBuilder) -> Vec<String> {
        match b.start() {
            Ok(_) => panic!("start should fail"),
            Err(e) => e.problems,
        }
    }

    #[tokio::test]
    async fn an_empty_registry_is_refused() {
        let p = problems(JobRuntime::builder());
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("no job types are registered"), "{p:?}");
    }

    #[tokio::test]
    async fn every_problem_is_listed() {
        let p = problems(
            JobRuntime::builder()
                .register::<A>()
                .register::<A>()
                .register::<B>()
                .register::<NeedsData>()
                .capacity(0)
                .concurrency(0)
                .health_thresholds(0.9, 0.5),
        );
        let all = p.join("\n");
        assert!(all.contains("capacity must be at least 1"), "{all}");
        assert!(all.contains("concurrency must be at least 1"), "{all}");
        assert!(all.contains("health thresholds"), "{all}");
        assert!(
            all.contains("two job types are named `same`: `job_core::runtime::builder::tests::A` and `job_core::runtime::builder::tests::B`"),
            "{all}"
        );
        assert!(
            all.contains("job `needs_data` has an invalid queue name `bad queue!`"),
            "{all}"
        );
        assert!(
            all.contains("job `needs_data` needs `&dyn core::any::Any + core::marker::Send + core::marker::Sync`, but it was not registered"),
            "{all}"
        );
        assert_eq!(p.len(), 6, "{all}");
    }

    #[tokio::test]
    async fn in_memory_options_are_refused_with_a_backend_not_ignored() {
        // Set before and after `.backend(..)`, and one of them twice: each named once.
        let p = problems(
            JobRuntime::builder()
                .register::<A>()
                .status_retention(Duration::from_secs(5))
                .status_retention(Duration::from_secs(6))
                .backend(crate::backend::memory::MemoryBackend::new())
                .status_capacity(10)
                .dead_letter_capacity(10),
        );
        let all = p.join("\n");
        assert_eq!(p.len(), 3, "{all}");
        for option in [
            "status_retention",
            "status_capacity",
            "dead_letter_capacity",
        ] {
            assert!(
                all.contains(&format!(
                    "`{option}` applies to the in-memory runtime only: on the memory backend"
                )),
                "{all}"
            );
        }
        // Without a backend they are the runtime's own settings.
        let rt = JobRuntime::builder()
            .register::<A>()
            .status_retention(Duration::from_secs(5))
            .status_capacity(10)
            .dead_letter_capacity(10)
            .start()
            .unwrap();
        rt.shutdown().await;
    }

    #[test]
    fn start_outside_tokio_is_refused() {
        let p = problems(JobRuntime::builder().register::<A>());
        assert!(p[0].contains("inside a tokio runtime"), "{p:?}");
    }
}
