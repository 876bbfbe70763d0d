//! Launching the runtime, and the in-memory worker loop: it takes jobs from the ready
//! queue, runs each attempt ([`attempt`](super::attempt)) and applies what
//! [`conclude`](super::outcome::conclude) decided to the in-memory status, timer and
//! dead-letter store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::attempt::{execute_from, job_span, prepare};
use super::builder::JobRuntimeBuilder;
use super::outcome::{Next, conclude, dead_letter, notify_dead};
use super::ready::Empty;
use super::{Client, Envelope, Inner, JobRuntime, shutdown, timer};
use crate::context::JobContext;
use crate::dead_letter::DeadLetterStore;
use crate::observe::metrics::Counters;
use crate::observe::status::{JobState, StatusStore};
use crate::registry::Registry;

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
            schedules: crate::schedule::Board::default(),
            workers_done: CancellationToken::new(),
            unreleased: (0..concurrency)
                .map(|_| super::Unreleased::default())
                .collect(),
            // Small against the capacity, so that batching never starves a producer waiting
            // for room for long.
            release_batch: (capacity / (4 * concurrency.max(1))).clamp(1, 16),
            uniques: super::unique::Uniques::default(),
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
    let max_attempts = ty.options.max_attempts;
    let finished = match conclude(inner, id, kind, outcome, attempt, max_attempts) {
        Next::Succeeded(produced) => {
            inner.status.succeeded(worker, id, attempt, ended, produced);
            inner.finished.signal();
            true
        }
        Next::Cancelled { started } => {
            if started {
                inner.status.cancelled(Some((worker, attempt)), id);
                inner.finished.signal();
            }
            // Else the cancel took it out of the queue: it recorded and counted that.
            true
        }
        Next::Interrupted { error } => {
            let error = format!("interrupted by shutdown: {error}");
            inner
                .status
                .failed(worker, id, attempt, JobState::Retrying, &error);
            false
        }
        Next::Retry { delay, error } => {
            inner
                .status
                .failed(worker, id, attempt, JobState::Retrying, &error);
            if let Err(e) = inner.timer_tx.send(timer::Timed::new(delay, env)) {
                inner.tally.left_behind(e.0.envelope.id);
            }
            false
        }
        Next::Dead { error } => {
            inner
                .status
                .failed(worker, id, attempt, JobState::Dead, &error.join(": "));
            inner.finished.signal();
            let payload = env.job.to_json().unwrap_or_else(|e| {
                serde_json::Value::String(format!("<payload did not serialize: {e}>"))
            });
            let enqueued_at = inner
                .status
                .get(id)
                .map_or_else(SystemTime::now, |s| s.enqueued_at);
            let dead = dead_letter(
                id,
                ty.name,
                ty.options.queue,
                payload,
                attempt,
                error,
                enqueued_at,
            );
            notify_dead(inner, kind, &dead);
            inner.dead.push(dead);
            true
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
