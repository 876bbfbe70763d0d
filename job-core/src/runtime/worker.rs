//! Launching the runtime, and the worker loop that runs attempts.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::builder::JobRuntimeBuilder;
use super::cancel::Start;
use super::ready::Empty;
use super::{Client, Envelope, Inner, JobRuntime, shutdown, timer};
use crate::context::JobContext;
use crate::dead_letter::{DeadLetter, DeadLetterStore};
use crate::error::ErrorClass;
use crate::observe::metrics::Counters;
use crate::observe::status::{JobState, StatusStore};
use crate::registry::{Failure, Registry};

impl JobRuntime {
    pub(crate) fn launch(builder: JobRuntimeBuilder, registry: Registry) -> JobRuntime {
        let JobRuntimeBuilder {
            capacity,
            concurrency,
            data,
            mut scoped,
            hooks,
            shutdown_hooks,
            shutdown_timeout,
            cancel_grace,
            drain_queue,
            thresholds,
            payload_limit,
            retry_panics,
            status_retention,
            status_capacity,
            dead_letter_capacity,
            schedules,
            durable,
            ..
        } = builder;
        let durable = durable.map(|config| {
            let queues = config.queues.clone().unwrap_or_else(|| {
                let mut q: Vec<String> = registry
                    .kinds()
                    .iter()
                    .map(|e| e.ty.options.queue.to_owned())
                    .collect();
                q.sort_unstable();
                q.dedup();
                q
            });
            super::durable::Durable::new(config, queues, concurrency, capacity as u64)
        });
        let kinds: Vec<_> = registry
            .kinds()
            .iter()
            .map(|e| (e.ty.name, e.ty.options.queue))
            .collect();
        let scoped_per_kind = registry
            .kinds()
            .iter()
            .map(|e| {
                e.ty.dependencies
                    .items
                    .iter()
                    .filter_map(|d| scoped.get(&d.type_id).map(|f| (d.type_id, f.clone())))
                    .collect()
            })
            .collect();
        scoped.clear();
        let (timer_tx, timer_rx) = mpsc::unbounded_channel();
        let job_cancel = CancellationToken::new();
        let inner = Arc::new(Inner {
            attempts: super::cancel::Attempts::new(concurrency, &job_cancel),
            registry,
            scoped: scoped_per_kind,
            data: Arc::new(data),
            capacity,
            concurrency,
            permits: Semaphore::new(capacity),
            ready: super::ready::ReadyQueue::new(capacity),
            timer_tx,
            status: StatusStore::new(kinds, status_retention, status_capacity, concurrency),
            counters: Counters::default(),
            dead: DeadLetterStore::new(dead_letter_capacity),
            hooks,
            shutdown_hooks,
            thresholds,
            payload_limit,
            retry_panics,
            shutdown_timeout,
            cancel_grace,
            drain_queue,
            stopping: AtomicBool::new(false),
            stop_fetch: CancellationToken::new(),
            job_cancel,
            stop_background: CancellationToken::new(),
            workers: TaskTracker::new(),
            background: TaskTracker::new(),
            worker_handles: Mutex::new(Vec::new()),
            tally: shutdown::Tally::default(),
            report: tokio::sync::OnceCell::new(),
            durable,
            finished: super::wait::Finished::default(),
            workers_done: CancellationToken::new(),
            unreleased: (0..concurrency)
                .map(|_| super::Unreleased::default())
                .collect(),
            // Small against the capacity, so that batching never starves a producer waiting
            // for room for long.
            release_batch: (capacity / (4 * concurrency.max(1))).clamp(1, 16),
        });
        let handles: Vec<_> = if inner.durable.is_some() {
            super::durable::launch(&inner, concurrency)
        } else {
            (0..concurrency)
                .map(|i| inner.workers.spawn(worker(inner.clone(), i)))
                .collect()
        };
        *inner
            .worker_handles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = handles;
        inner.workers.close();
        if inner.durable.is_none() {
            // The in-memory queue's own timer and status pruning; a backend has its own.
            inner.background.spawn(timer::run(inner.clone(), timer_rx));
            inner.background.spawn(maintenance(inner.clone()));
        }
        let client = Client {
            inner: inner.clone(),
        };
        for spec in schedules {
            let token = inner.stop_background.clone();
            inner.background.spawn(spec.run(client.clone(), token));
        }
        JobRuntime { client }
    }
}

/// Prunes expired statuses once a second.
async fn maintenance(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = inner.stop_background.cancelled() => return,
            _ = tick.tick() => inner.status.prune(),
        }
    }
}

/// A worker's finished jobs whose capacity permits it has not given back yet. Giving each
/// back at once made every job take the semaphore's lock, and bounce its line between the
/// workers and the producer taking permits.
struct Held<'a> {
    inner: &'a Inner,
    slot: &'a super::Unreleased,
    count: usize,
}

impl Held<'_> {
    fn finished(&mut self, kind: u16) {
        self.inner.registry.kind(kind).metrics.depth.decrement(1.0);
        self.count += 1;
        self.slot.0.fetch_add(1, Ordering::Relaxed);
        if self.count >= self.inner.release_batch {
            self.give_back();
        }
    }

    fn give_back(&mut self) {
        if self.count > 0 {
            // Uncounted before given back: `depth` may briefly count them, never miss one.
            self.slot.0.fetch_sub(self.count, Ordering::Relaxed);
            self.inner.permits.add_permits(self.count);
            self.count = 0;
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.give_back();
    }
}

async fn worker(inner: Arc<Inner>, index: usize) {
    let mut cx = JobContext::for_worker(
        inner.attempts.token(index),
        inner.data.clone(),
        inner.attempts.progress_cell(index),
    );
    let Some(slot) = inner.unreleased.get(index) else {
        return;
    };
    let mut held = Held {
        inner: &inner,
        slot,
        count: 0,
    };
    loop {
        if !inner.drain_queue && inner.stop_fetch.is_cancelled() {
            return;
        }
        let next = match inner.ready.try_pop() {
            Ok(envelope) => Ok(envelope),
            Err(_) => {
                // Nothing queued: give back the held permits before waiting.
                held.give_back();
                try_pop_spinning(&inner).await
            }
        };
        let envelope = match next {
            Ok(envelope) => envelope,
            Err(Empty::ForGood) => return,
            Err(Empty::Now) => {
                if !inner.drain_queue && inner.stop_fetch.is_cancelled() {
                    return;
                }
                let next = if inner.drain_queue {
                    inner.ready.pop().await
                } else {
                    tokio::select! {
                        biased;
                        _ = inner.stop_fetch.cancelled() => None,
                        r = inner.ready.pop() => r,
                    }
                };
                match next {
                    Some(envelope) => envelope,
                    None => return,
                }
            }
        };
        if let Some((kind, took)) = run_attempt(&inner, index, &mut cx, envelope).await {
            held.finished(kind);
            if took >= QUICK_JOB {
                // Batching saves little next to a job this long, and a permit held through
                // the next (maybe long) job would shrink the capacity producers see.
                held.give_back();
            }
        }
    }
}

/// Jobs quicker than this hand their capacity permits back in batches (see [`Held`]); after a
/// slower one, the worker gives back what it holds at once. So permits are held back only
/// across runs of quick jobs: at most a batch of them, for about a batch of quick jobs' time.
const QUICK_JOB: Duration = Duration::from_micros(100);

/// Yields to the scheduler this many times, looking for a job after each, before a worker
/// that found the queue empty parks. A parked worker costs the producer a wake-up through the
/// kernel for its next job; a few turns of the scheduler usually bring that job first.
const SPINS: usize = 8;

/// `try_pop`, retried after each of up to [`SPINS`] yields while the queue is empty (and
/// the workers are not told to stop).
async fn try_pop_spinning(inner: &Inner) -> Result<super::Envelope, Empty> {
    let mut result = inner.ready.try_pop();
    for _ in 0..SPINS {
        if !matches!(result, Err(Empty::Now))
            || (!inner.drain_queue && inner.stop_fetch.is_cancelled())
        {
            break;
        }
        tokio::task::yield_now().await;
        result = inner.ready.try_pop();
    }
    result
}

pub(crate) enum Outcome {
    /// Succeeded, with the result to keep.
    Ok(crate::registry::Produced),
    Failed(Failure),
    /// Cancelled by id: before it started, or while it ran (whatever it returned).
    Cancelled {
        /// Whether an attempt ran (and counts as started).
        started: bool,
    },
}

/// What happens to a job after a failed attempt.
pub(crate) enum Decision {
    /// Try again after this long.
    Retry(Duration),
    /// Dead-letter it, for this reason.
    Dead(&'static str),
    /// Shutdown cancelled the attempt: neither retried nor dead-lettered here.
    Interrupted,
}

pub(crate) fn decide(
    inner: &Inner,
    failure: &Failure,
    attempt: u32,
    max_attempts: u32,
    kind: u16,
) -> Decision {
    if inner.job_cancel.is_cancelled() {
        return Decision::Interrupted;
    }
    let backoff = &inner.registry.kind(kind).ty.options.backoff;
    match failure.class {
        ErrorClass::Permanent => Decision::Dead("permanent error"),
        _ if attempt >= max_attempts => Decision::Dead("out of attempts"),
        ErrorClass::Transient => Decision::Retry(backoff.delay(attempt, fastrand::f64())),
        ErrorClass::RetryAfter(d) => Decision::Retry(d),
    }
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// Points the worker's context at a new attempt.
pub(crate) fn prepare(
    cx: &mut JobContext,
    id: crate::JobId,
    attempt: u32,
    max_attempts: u32,
    inner: &Inner,
    kind: u16,
) {
    let ty = &inner.registry.kind(kind).ty;
    cx.id = id;
    cx.attempt = attempt;
    cx.max_attempts = max_attempts;
    cx.job = ty.name;
    cx.queue = ty.options.queue;
}

/// Runs one attempt in isolation: scoped values, panic capture, timeout, cancel by id,
/// metrics. `worker` is the index of the worker running it (its cancel slot). The caller
/// enters `span` to log the outcome.
pub(crate) async fn execute(
    inner: &Inner,
    worker: usize,
    cx: &mut JobContext,
    kind: u16,
    job: &dyn crate::registry::ErasedJob,
    span: &tracing::Span,
) -> Outcome {
    execute_from(inner, worker, cx, kind, job, span, Instant::now(), || {})
        .await
        .0
}

/// As [`execute`], for an attempt that started at `started`; also gives the instant it
/// ended and how long it took (the clock is read once at each end of the attempt).
///
/// A job cancelled before it started is not run: [`Outcome::Cancelled`], with nothing
/// counted as started. Otherwise `on_start` runs first (the in-memory status marks the
/// attempt running there: after the cancel slot holds the job, so that a cancel reading
/// "running" always finds the slot, or finds it already emptied by the attempt's end).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn execute_from(
    inner: &Inner,
    worker: usize,
    cx: &mut JobContext,
    kind: u16,
    job: &dyn crate::registry::ErasedJob,
    span: &tracing::Span,
    started: Instant,
    on_start: impl FnOnce(),
) -> (Outcome, Instant, Duration) {
    if let Start::Cancelled = inner.attempts.start(worker, cx.id, cx) {
        inner.attempts.end(worker);
        return (
            Outcome::Cancelled { started: false },
            started,
            Duration::ZERO,
        );
    }
    on_start();
    let entry = inner.registry.kind(kind);
    let ty = &entry.ty;
    Counters::bump(&inner.counters.started);
    entry.metrics.started.increment(1);
    let outcome = async {
        if let Some(failure) = build_scoped(inner, cx, kind).await {
            return Outcome::Failed(failure);
        }
        // Borrowed, not cloned: a token's clone and drop each take its lock.
        let cx: &JobContext = cx;
        let token = &cx.cancel;
        let fut = AssertUnwindSafe(job.run(cx)).catch_unwind();
        let result = match ty.options.timeout {
            None => Ok(stoppable(inner, token, fut).await),
            Some(limit) => {
                let mut fut = std::pin::pin!(stoppable(inner, token, fut));
                match tokio::time::timeout(limit, &mut fut).await {
                    Ok(result) => Ok(result),
                    Err(_) => {
                        // Out of time: the token fires first, and the attempt gets the grace
                        // period to stop at a safe point before it is dropped. What it
                        // returns then does not matter: it timed out.
                        inner.attempts.interrupt(worker);
                        let _ = tokio::time::timeout(inner.cancel_grace, &mut fut).await;
                        Err(limit)
                    }
                }
            }
        };
        match result {
            Ok(None) => Outcome::Cancelled { started: true },
            Ok(Some(Ok(Ok(produced)))) => Outcome::Ok(produced),
            Ok(Some(Ok(Err(failure)))) => Outcome::Failed(failure),
            Ok(Some(Err(panic))) => {
                let class = if inner.retry_panics {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                };
                Outcome::Failed(Failure::new(
                    class,
                    format!("job panicked: {}", panic_message(panic.as_ref())),
                ))
            }
            Err(limit) => Outcome::Failed(Failure::new(
                ErrorClass::Transient,
                format!("attempt timed out after {limit:?}"),
            )),
        }
    }
    .instrument(span.clone())
    .await;
    // A cancel by id that reached the attempt decides its end, whatever it returned.
    let outcome = if inner.attempts.end(worker) && !inner.job_cancel.is_cancelled() {
        Outcome::Cancelled { started: true }
    } else {
        outcome
    };
    // Scoped values not taken by the job are dropped with the attempt.
    cx.scoped
        .get_mut()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clear();
    let ended = Instant::now();
    let took = ended.saturating_duration_since(started);
    entry.metrics.duration.record(took.as_secs_f64());
    match &outcome {
        Outcome::Ok(_) => {
            Counters::bump(&inner.counters.succeeded);
            entry.metrics.succeeded.increment(1);
        }
        Outcome::Failed(_) => {
            Counters::bump(&inner.counters.failed);
            entry.metrics.failed.increment(1);
        }
        Outcome::Cancelled { .. } => Counters::bump(&inner.counters.attempts_cancelled),
    }
    (outcome, ended, took)
}

/// Runs an attempt's future; when a cancel by id fires its token, gives it the grace period
/// to return and then drops it (`None`). A token fired by shutdown is left to shutdown,
/// which has its own window. The future is polled once before anything else: a quick job
/// ends there, without the attempt ever waiting on its token.
async fn stoppable<F: std::future::Future>(
    inner: &Inner,
    token: &CancellationToken,
    fut: F,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        })
    })
    .await;
    if let Some(out) = first {
        return Some(out);
    }
    tokio::select! {
        biased;
        out = &mut fut => return Some(out),
        () = token.cancelled() => {}
    }
    if inner.job_cancel.is_cancelled() {
        // Shutdown: the attempt runs on until shutdown's own grace ends it.
        return Some(fut.await);
    }
    tokio::time::timeout(inner.cancel_grace, fut).await.ok()
}

pub(crate) fn job_span(id: crate::JobId, job: &str, queue: &str, attempt: u32) -> tracing::Span {
    tracing::info_span!("job", job_id = %id, job, queue, attempt)
}

/// Runs one attempt and everything after it; gives the job's kind and how long the attempt
/// ran when the job finished for good (succeeded or dead), whose capacity permit the caller
/// then gives back.
async fn run_attempt(
    inner: &Arc<Inner>,
    worker: usize,
    cx: &mut JobContext,
    mut env: Envelope,
) -> Option<(u16, Duration)> {
    let entry = inner.registry.kind(env.kind);
    let ty = &entry.ty;
    env.attempts += 1;
    let attempt = env.attempts;
    prepare(
        cx,
        env.id,
        attempt,
        ty.options.max_attempts,
        inner,
        env.kind,
    );
    let started = Instant::now();
    let span = job_span(env.id, ty.name, ty.options.queue, attempt);
    let (outcome, ended, took) = execute_from(
        inner,
        worker,
        cx,
        env.kind,
        env.job.as_ref(),
        &span,
        started,
        || inner.status.running(worker, env.id, attempt, started),
    )
    .await;

    let _enter = span.enter();
    let (id, kind) = (env.id, env.kind);
    // What the attempt reported last stays with the job's record.
    if let Some((_, progress)) = inner
        .attempts
        .progress_cells()
        .get(worker)
        .and_then(|cell| cell.clear())
    {
        inner.status.set_progress(id, progress);
    }
    let finished = match outcome {
        Outcome::Ok(produced) => {
            inner.status.succeeded(worker, id, attempt, ended, produced);
            inner.finished.signal();
            true
        }
        Outcome::Cancelled { started } => {
            if started {
                tracing::info!("attempt ended by a cancel; the job is cancelled");
                inner.status.cancelled(Some((worker, attempt)), id);
                inner.counters.cancelled(entry);
                inner.finished.signal();
            }
            // Else the cancel took it out of the queue: it recorded and counted that.
            true
        }
        Outcome::Failed(failure) => {
            let message = failure.message();
            match decide(inner, &failure, attempt, ty.options.max_attempts, env.kind) {
                Decision::Interrupted => {
                    tracing::warn!(error = %message, "attempt interrupted by shutdown");
                    inner.status.failed(
                        worker,
                        env.id,
                        attempt,
                        JobState::Retrying,
                        &format!("interrupted by shutdown: {message}"),
                    );
                    inner.tally.cancelled(env.id);
                    false
                }
                Decision::Retry(delay) => {
                    tracing::warn!(error = %message, retry_in = ?delay, "attempt failed; will retry");
                    inner
                        .status
                        .failed(worker, env.id, attempt, JobState::Retrying, &message);
                    Counters::bump(&inner.counters.retried);
                    entry.metrics.retried.increment(1);
                    if let Err(e) = inner.timer_tx.send(timer::Timed::new(delay, env)) {
                        inner.tally.left_behind(e.0.envelope.id);
                    }
                    false
                }
                Decision::Dead(reason) => {
                    tracing::error!(error = %message, reason, "job dead-lettered");
                    inner
                        .status
                        .failed(worker, env.id, attempt, JobState::Dead, &message);
                    inner.finished.signal();
                    let payload = env.job.to_json().unwrap_or_else(|e| {
                        serde_json::Value::String(format!("<payload did not serialize: {e}>"))
                    });
                    let enqueued_at = inner
                        .status
                        .get(env.id)
                        .map_or_else(SystemTime::now, |s| s.enqueued_at);
                    let dead = DeadLetter {
                        job_id: env.id,
                        job: ty.name.to_owned(),
                        queue: ty.options.queue.to_owned(),
                        payload,
                        attempts: env.attempts,
                        error: failure.chain,
                        enqueued_at,
                        died_at: SystemTime::now(),
                    };
                    notify_dead(inner, env.kind, &dead);
                    inner.dead.push(dead);
                    true
                }
            }
        }
    };
    if finished {
        if inner.stopping.load(Ordering::Acquire) {
            inner.tally.completed.fetch_add(1, Ordering::Relaxed);
        }
        return Some((kind, took));
    }
    None
}

/// Builds the scoped values the job declared; a failing factory fails the attempt.
async fn build_scoped(inner: &Inner, cx: &mut JobContext, kind: u16) -> Option<Failure> {
    let factories = &inner.scoped[kind as usize];
    if factories.is_empty() {
        return None;
    }
    let mut built = Vec::with_capacity(factories.len());
    for (type_id, factory) in factories {
        match AssertUnwindSafe((factory.make)()).catch_unwind().await {
            Ok(Ok(value)) => built.push((*type_id, value)),
            Ok(Err(e)) => {
                return Some(Failure::new(
                    ErrorClass::Transient,
                    format!("could not build scoped `{}`: {e}", factory.type_name),
                ));
            }
            Err(panic) => {
                return Some(Failure::new(
                    ErrorClass::Transient,
                    format!(
                        "factory of scoped `{}` panicked: {}",
                        factory.type_name,
                        panic_message(panic.as_ref())
                    ),
                ));
            }
        }
    }
    *cx.scoped
        .get_mut()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = built;
    None
}

/// Counts a dead letter and hands it to every hook, each in its own task: a hook that fails
/// or panics is logged and stops nothing.
pub(crate) fn notify_dead(inner: &Inner, kind: u16, dead: &DeadLetter) {
    Counters::bump(&inner.counters.dead_lettered);
    inner.registry.kind(kind).metrics.dead_lettered.increment(1);
    spawn_hooks(inner, dead);
}

pub(crate) fn spawn_hooks(inner: &Inner, dead: &DeadLetter) {
    for hook in &inner.hooks {
        let fut = (hook.0)(dead.clone());
        let id = dead.job_id;
        inner.background.spawn(async move {
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(job_id = %id, error = %e, "dead-letter hook failed"),
                Err(panic) => tracing::error!(
                    job_id = %id,
                    panic = %panic_message(panic.as_ref()),
                    "dead-letter hook panicked"
                ),
            }
        });
    }
}
