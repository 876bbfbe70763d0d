//! The runtime on a durable [`Backend`]: a fetcher reserves jobs under leases for the local
//! workers, a heartbeat renews the leases of running jobs, a reaper returns the jobs of dead
//! workers to their queues, and every outcome is written back fenced by the lease token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::worker::{
    Decision, Outcome, decide, execute, job_span, notify_dead, prepare, spawn_hooks,
};
use super::{Client, Inner};
use crate::backend::{Backend, BackendError, Envelope, LeaseToken, Reservation, Retry, unix_ms};
use crate::context::JobContext;
use crate::dead_letter::DeadLetter;
use crate::error::{EnqueueError, RequeueError, error_chain};
use crate::job::{Job, JobId};
use crate::observe::metrics::Counters;

/// Durable-mode settings and state.
pub(crate) struct Durable {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) queues: Vec<String>,
    pub(crate) lease: Duration,
    pub(crate) max_recoveries: u32,
    pub(crate) reap_interval: Duration,
    /// Jobs reserved by this process and not yet written back: id -> lease.
    pub(crate) held: Mutex<HashMap<JobId, LeaseToken>>,
    /// One permit per worker: the fetcher reserves only as many jobs as are free.
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) work_tx: async_channel::Sender<(Reservation, OwnedSemaphorePermit)>,
    pub(crate) work_rx: async_channel::Receiver<(Reservation, OwnedSemaphorePermit)>,
    /// Last depth the backend reported.
    pub(crate) depth: AtomicU64,
    /// False while the backend is failing.
    pub(crate) reachable: AtomicBool,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("backend", &self.backend.name())
            .field("queues", &self.queues)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// Durable settings from the builder.
#[derive(Debug, Clone)]
pub(crate) struct DurableConfig {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) queues: Option<Vec<String>>,
    pub(crate) lease: Duration,
    pub(crate) max_recoveries: u32,
    pub(crate) reap_interval: Duration,
}

impl Durable {
    pub(crate) fn new(config: DurableConfig, queues: Vec<String>, concurrency: usize) -> Self {
        let (work_tx, work_rx) = async_channel::bounded(concurrency.max(1));
        Self {
            backend: config.backend,
            queues,
            lease: config.lease,
            max_recoveries: config.max_recoveries,
            reap_interval: config.reap_interval,
            held: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(concurrency)),
            work_tx,
            work_rx,
            depth: AtomicU64::new(0),
            reachable: AtomicBool::new(true),
        }
    }

    fn hold(&self, id: JobId, token: LeaseToken) {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, token);
    }

    fn unhold(&self, id: JobId) {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }

    fn held_now(&self) -> Vec<(JobId, LeaseToken)> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(id, t)| (*id, *t))
            .collect()
    }

    fn mark(&self, ok: bool) {
        let was = self.reachable.swap(ok, Ordering::AcqRel);
        if was && !ok {
            tracing::error!(
                backend = self.backend.name(),
                "job backend unreachable; retrying with backoff"
            );
        } else if !was && ok {
            tracing::info!(backend = self.backend.name(), "job backend reachable again");
        }
    }
}

/// Enqueues on the backend. Waits (polling) while the backend reports it is full.
pub(crate) async fn enqueue<J: Job>(
    inner: &Inner,
    d: &Durable,
    job: J,
    kind: u16,
    delay: Option<Duration>,
    wait_for_room: bool,
) -> Result<JobId, EnqueueError<J>> {
    let entry = inner.registry.kind(kind);
    let payload = match serde_json::to_value(&job) {
        Ok(v) => v,
        Err(e) => {
            return Err(EnqueueError::Serialize {
                job,
                message: e.to_string(),
            });
        }
    };
    let id = JobId::new();
    let now = SystemTime::now();
    let envelope = Envelope {
        id,
        job: entry.ty.name.to_owned(),
        queue: entry.ty.options.queue.to_owned(),
        payload,
        attempt: 0,
        max_attempts: entry.ty.options.max_attempts,
        recoveries: 0,
        enqueued_at: unix_ms(now),
        not_before: delay.map(|d| unix_ms(now + d)),
        lease: None,
    };
    let mut pause = Duration::from_millis(10);
    loop {
        if inner.stopping.load(Ordering::Acquire) {
            return Err(EnqueueError::ShuttingDown(job));
        }
        match d
            .backend
            .enqueue(envelope.clone(), inner.capacity as u64)
            .await
        {
            Ok(()) => {
                d.mark(true);
                Counters::bump(&inner.counters.enqueued);
                entry.metrics.enqueued.increment(1);
                return Ok(id);
            }
            Err(BackendError::Full) if wait_for_room => {
                tokio::time::sleep(pause.mul_f64(0.5 + fastrand::f64())).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(BackendError::Full) => return Err(EnqueueError::QueueFull(job)),
            Err(e) => {
                d.mark(false);
                return Err(EnqueueError::Backend {
                    job,
                    message: error_chain(&e),
                });
            }
        }
    }
}

pub(crate) async fn requeue(d: &Durable, id: JobId) -> Result<JobId, RequeueError> {
    match d.backend.requeue(id).await {
        Ok(()) => Ok(id),
        Err(BackendError::NotFound(_)) => Err(RequeueError::NotFound(id)),
        Err(BackendError::Full) => Err(RequeueError::QueueFull),
        Err(e) => Err(RequeueError::Backend(error_chain(&e))),
    }
}

/// Spawns the fetcher, the workers, the heartbeat and the reaper.
pub(crate) fn launch(inner: &Arc<Inner>, concurrency: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(d) = inner.durable.as_ref() else {
        return Vec::new();
    };
    let backend = d.backend.clone();
    let name = backend.name();
    inner.background.spawn(async move {
        if let Err(e) = backend.connect().await {
            tracing::error!(backend = name, error = %error_chain(&e), "job backend check failed at start; workers will keep retrying");
        }
    });
    inner.background.spawn(fetcher(inner.clone()));
    inner.background.spawn(heartbeat(inner.clone()));
    inner.background.spawn(reaper(inner.clone()));
    inner.background.spawn(refresh(inner.clone()));
    (0..concurrency)
        .map(|_| inner.workers.spawn(worker(inner.clone())))
        .collect()
}

async fn fetcher(inner: Arc<Inner>) {
    let Some(d) = inner.durable.as_ref() else {
        return;
    };
    let mut pause = Duration::from_millis(50);
    loop {
        let first = tokio::select! {
            biased;
            _ = inner.stop_fetch.cancelled() => break,
            p = d.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let mut permits = vec![first];
        while permits.len() < 64 {
            match d.slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let reserved = tokio::select! {
            biased;
            _ = inner.stop_fetch.cancelled() => break,
            r = d.backend.reserve(&d.queues, permits.len(), d.lease) => r,
        };
        match reserved {
            Ok(list) if list.is_empty() => {
                d.mark(true);
                pause = Duration::from_millis(50);
                drop(permits);
                tokio::select! {
                    biased;
                    _ = inner.stop_fetch.cancelled() => break,
                    // Short enough that due retries and delayed jobs start close to their time.
                    () = d.backend.wait_for_work(&d.queues, Duration::from_millis(200)) => {}
                }
            }
            Ok(list) => {
                d.mark(true);
                pause = Duration::from_millis(50);
                for r in list {
                    d.hold(r.id(), r.token());
                    let Some(permit) = permits.pop() else {
                        // The backend returned more than asked: give the extra back.
                        release(&inner, d, r.id(), r.token()).await;
                        continue;
                    };
                    if let Err(e) = d.work_tx.send((r, permit)).await {
                        let (r, _) = e.into_inner();
                        release(&inner, d, r.id(), r.token()).await;
                    }
                }
            }
            Err(e) => {
                d.mark(false);
                tracing::warn!(error = %error_chain(&e), retry_in = ?pause, "reserving jobs failed");
                drop(permits);
                tokio::select! {
                    biased;
                    _ = inner.stop_fetch.cancelled() => break,
                    () = tokio::time::sleep(pause.mul_f64(0.5 + fastrand::f64())) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
    d.work_tx.close();
}

async fn worker(inner: Arc<Inner>) {
    let Some(d) = inner.durable.as_ref() else {
        return;
    };
    let mut cx = JobContext::for_worker(inner.job_cancel.clone(), inner.data.clone());
    loop {
        if !inner.drain_queue && inner.stop_fetch.is_cancelled() {
            break;
        }
        let next = tokio::select! {
            biased;
            _ = inner.stop_fetch.cancelled(), if !inner.drain_queue => None,
            r = d.work_rx.recv() => r.ok(),
        };
        let Some((reservation, permit)) = next else {
            break;
        };
        run(&inner, d, &mut cx, reservation).await;
        drop(permit);
    }
}

/// Writes an outcome back, retrying briefly on backend errors; a lost lease is final.
async fn write_back<F, Fut>(inner: &Inner, d: &Durable, id: JobId, what: &str, mut op: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BackendError>>,
{
    let mut pause = Duration::from_millis(20);
    for _ in 0..5 {
        match op().await {
            Ok(()) => {
                d.mark(true);
                return;
            }
            Err(BackendError::LeaseLost(_)) => {
                Counters::bump(&inner.counters.lease_lost);
                tracing::warn!(job_id = %id, "{what} refused: the lease was lost (the job was recovered and may run again elsewhere)");
                return;
            }
            Err(e) => {
                d.mark(false);
                tracing::warn!(job_id = %id, error = %error_chain(&e), "{what} failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
    tracing::error!(job_id = %id, "{what} failed; the lease will expire and the job will be recovered");
}

async fn release(inner: &Inner, d: &Durable, id: JobId, token: LeaseToken) {
    write_back(inner, d, id, "release", || d.backend.release(id, token)).await;
    d.unhold(id);
}

async fn bury(
    inner: &Inner,
    d: &Durable,
    id: JobId,
    token: LeaseToken,
    kind: Option<u16>,
    dead: DeadLetter,
) {
    match kind {
        Some(kind) => notify_dead(inner, kind, &dead),
        None => {
            Counters::bump(&inner.counters.dead_lettered);
            spawn_hooks(inner, &dead);
        }
    }
    write_back(inner, d, id, "dead-letter", || {
        d.backend.dead_letter(id, token, dead.clone())
    })
    .await;
}

async fn run(inner: &Inner, d: &Durable, cx: &mut JobContext, reservation: Reservation) {
    let (envelope, token) = match reservation {
        Reservation::Job { envelope, token } => (envelope, token),
        Reservation::Malformed {
            id,
            token,
            queue,
            raw,
            reason,
        } => {
            tracing::error!(job_id = %id, reason, "malformed job record dead-lettered");
            let now = SystemTime::now();
            let dead = DeadLetter {
                job_id: id,
                job: String::new(),
                queue,
                payload: serde_json::Value::String(raw),
                attempts: 0,
                error: vec![format!("malformed job record: {reason}")],
                enqueued_at: now,
                died_at: now,
            };
            bury(inner, d, id, token, None, dead).await;
            d.unhold(id);
            return;
        }
    };
    let id = envelope.id;
    let dead_record = |error: Vec<String>| DeadLetter {
        job_id: id,
        job: envelope.job.clone(),
        queue: envelope.queue.clone(),
        payload: envelope.payload.clone(),
        attempts: envelope.attempt,
        error,
        enqueued_at: crate::backend::from_unix_ms(envelope.enqueued_at),
        died_at: SystemTime::now(),
    };
    let Some(entry) = inner.registry.by_name(&envelope.job) else {
        let reason = format!(
            "unknown job `{}`: this process has no job registered under that name",
            envelope.job
        );
        tracing::error!(job_id = %id, job = %envelope.job, "{reason}; dead-lettered");
        bury(inner, d, id, token, None, dead_record(vec![reason])).await;
        d.unhold(id);
        return;
    };
    let kind = entry.kind;
    let job = match (entry.ty.decode)(&envelope.payload) {
        Ok(job) => job,
        Err(e) => {
            let reason = format!("payload does not decode as job `{}`: {e}", envelope.job);
            tracing::error!(job_id = %id, "{reason}; dead-lettered");
            bury(inner, d, id, token, Some(kind), dead_record(vec![reason])).await;
            d.unhold(id);
            return;
        }
    };
    let attempt = envelope.attempt;
    let max_attempts = envelope.max_attempts.max(1);
    prepare(cx, id, attempt, max_attempts, inner, kind);
    let span = job_span(id, entry.ty.name, entry.ty.options.queue, attempt);
    let outcome = execute(inner, cx, kind, job.as_ref(), &span).await;
    let _enter = span.enter();
    let mut finished = true;
    match outcome {
        Outcome::Ok => {
            write_back(inner, d, id, "ack", || d.backend.ack(id, token)).await;
        }
        Outcome::Failed(failure) => {
            let message = failure.message();
            match decide(inner, &failure, attempt, max_attempts, kind) {
                Decision::Interrupted => {
                    tracing::warn!(error = %message, "attempt interrupted by shutdown; job returned to its queue");
                    inner.tally.cancelled(id);
                    write_back(inner, d, id, "release", || d.backend.release(id, token)).await;
                    finished = false;
                }
                Decision::Retry(delay) => {
                    tracing::warn!(error = %message, retry_in = ?delay, "attempt failed; will retry");
                    Counters::bump(&inner.counters.retried);
                    entry.metrics.retried.increment(1);
                    let retry = Retry {
                        at: SystemTime::now() + delay,
                        error: message.clone(),
                    };
                    write_back(inner, d, id, "retry", || {
                        d.backend.retry(id, token, retry.clone())
                    })
                    .await;
                    finished = false;
                }
                Decision::Dead(reason) => {
                    tracing::error!(error = %message, reason, "job dead-lettered");
                    bury(inner, d, id, token, Some(kind), dead_record(failure.chain)).await;
                }
            }
        }
    }
    d.unhold(id);
    if finished && inner.stopping.load(Ordering::Acquire) {
        inner.tally.completed.fetch_add(1, Ordering::Relaxed);
    }
}

async fn heartbeat(inner: Arc<Inner>) {
    let Some(d) = inner.durable.as_ref() else {
        return;
    };
    let period = (d.lease / 3).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            // Keeps renewing through the drain window; stops when the workers are done.
            _ = inner.workers_done.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let held = d.held_now();
        if held.is_empty() {
            continue;
        }
        match d.backend.extend(&held, d.lease).await {
            Ok(lost) => {
                d.mark(true);
                for id in lost {
                    tracing::warn!(job_id = %id, "lease lost while the job was running; it may run again elsewhere");
                }
            }
            Err(e) => {
                d.mark(false);
                tracing::warn!(error = %error_chain(&e), "renewing leases failed");
            }
        }
    }
}

async fn reaper(inner: Arc<Inner>) {
    let Some(d) = inner.durable.as_ref() else {
        return;
    };
    loop {
        tokio::select! {
            _ = inner.stop_background.cancelled() => return,
            () = tokio::time::sleep(d.reap_interval.mul_f64(0.8 + 0.4 * fastrand::f64())) => {}
        }
        match d.backend.reap(d.max_recoveries).await {
            Ok(reaped) => {
                d.mark(true);
                if !reaped.recovered.is_empty() {
                    tracing::warn!(jobs = ?reaped.recovered, "jobs whose worker stopped renewing their lease were returned to their queues");
                }
                for dead in reaped.dead {
                    tracing::error!(job_id = %dead.job_id, job = %dead.job, "job dead-lettered as a poison pill: {}", dead.error_message());
                    match inner.registry.by_name(&dead.job) {
                        Some(entry) => notify_dead(&inner, entry.kind, &dead),
                        None => {
                            Counters::bump(&inner.counters.dead_lettered);
                            spawn_hooks(&inner, &dead);
                        }
                    }
                }
            }
            Err(e) => {
                d.mark(false);
                tracing::warn!(error = %error_chain(&e), "reaping expired leases failed");
            }
        }
    }
}

/// Refreshes the depth used by health and stats.
async fn refresh(inner: Arc<Inner>) {
    let Some(d) = inner.durable.as_ref() else {
        return;
    };
    loop {
        match d.backend.stats().await {
            Ok(s) => {
                d.mark(true);
                d.depth.store(s.depth(), Ordering::Relaxed);
            }
            Err(_) => d.mark(false),
        }
        tokio::select! {
            _ = inner.stop_background.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// At shutdown, after the workers stopped: give back every job this process still holds
/// (reserved but not started, or dropped mid-attempt) so it runs again without waiting for
/// its lease to expire. Returns the ids given back before they started.
pub(crate) async fn give_back(inner: &Inner) -> Vec<JobId> {
    let Some(d) = inner.durable.as_ref() else {
        return Vec::new();
    };
    let mut unstarted = Vec::new();
    while let Ok((r, _permit)) = d.work_rx.try_recv() {
        unstarted.push(r.id());
        release(inner, d, r.id(), r.token()).await;
    }
    for (id, token) in d.held_now() {
        inner.tally.cancelled(id);
        release(inner, d, id, token).await;
    }
    unstarted
}

impl Client {
    pub(crate) fn durable(&self) -> Option<&Durable> {
        self.inner.durable.as_ref()
    }
}
