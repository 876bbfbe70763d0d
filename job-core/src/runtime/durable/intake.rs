//! Storing new jobs: the group commit of single enqueues, batches, and requeues.

use super::Durable;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::backend::{Backend, BackendError, Envelope, Payload, unix_ms};
use crate::error::{EnqueueError, RequeueError, error_chain};
use crate::job::{Job, JobId};
use crate::observe::metrics::Counters;
use crate::runtime::{Inner, Rejected};

/// Group commit for single enqueues: while one store call is in flight, the enqueues that
/// arrive wait here and go to the backend together in one batch call when it returns. A lone
/// producer sees no change (its call goes out at once); many concurrent producers (request
/// handlers) share round trips and backend work.
#[derive(Default)]
pub(crate) struct Pending {
    /// A store call (inline or the flusher's) is in flight.
    busy: bool,
    waiting: Vec<(
        Envelope,
        tokio::sync::oneshot::Sender<Result<(), BackendError>>,
    )>,
}

/// Frees the group-commit slot when an inline store call ends (or is cancelled): hands what
/// waits to a flusher task.
struct Inline {
    backend: Arc<dyn Backend>,
    pending: Arc<Mutex<Pending>>,
    capacity: u64,
}

impl Drop for Inline {
    fn drop(&mut self) {
        hand_over(&self.backend, &self.pending, self.capacity);
    }
}

fn lock_pending(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The in-flight call ended: start a flusher for what waits, or mark the slot free.
fn hand_over(backend: &Arc<dyn Backend>, pending: &Arc<Mutex<Pending>>, capacity: u64) {
    let mut p = lock_pending(pending);
    if p.waiting.is_empty() {
        p.busy = false;
        return;
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        // Dropped outside any runtime: nothing can store them now; tell the callers.
        for (_, reply) in p.waiting.drain(..) {
            let _ = reply.send(Err(BackendError::Unavailable(
                "the enqueue batch was dropped with its runtime".into(),
            )));
        }
        p.busy = false;
        return;
    };
    drop(p);
    let (backend, pending) = (backend.clone(), pending.clone());
    handle.spawn(async move {
        // If this task ends any other way than below (a backend that panics, a runtime
        // shutting down), the callers waiting get an error and the slot is freed, so later
        // enqueues do not wait for a flusher that is gone.
        let mut guard = FlusherGone(Some(pending.clone()));
        loop {
            let batch = {
                let mut p = lock_pending(&pending);
                if p.waiting.is_empty() {
                    p.busy = false;
                    guard.0 = None;
                    return;
                }
                std::mem::take(&mut p.waiting)
            };
            let (envelopes, replies): (Vec<Envelope>, Vec<_>) = batch.into_iter().unzip();
            let result = backend.enqueue_batch(&envelopes, capacity).await;
            for (i, reply) in replies.into_iter().enumerate() {
                let r = match &result {
                    Ok(stored) if i < *stored => Ok(()),
                    Ok(_) => Err(BackendError::Full),
                    Err(e) => Err(BackendError::Unavailable(error_chain(e).into())),
                };
                // The caller may have given up waiting (cancelled): nothing to tell.
                let _ = reply.send(r);
            }
        }
    });
}

/// See the flusher in [`hand_over`].
struct FlusherGone(Option<Arc<Mutex<Pending>>>);

impl Drop for FlusherGone {
    fn drop(&mut self) {
        if let Some(pending) = self.0.take() {
            let mut p = lock_pending(&pending);
            for (_, reply) in p.waiting.drain(..) {
                let _ = reply.send(Err(BackendError::Unavailable(
                    "the batched enqueue stopped before it replied".into(),
                )));
            }
            p.busy = false;
        }
    }
}

impl Durable {
    /// Stores one new job, sharing the round trip with concurrent enqueues (see [`Pending`]).
    async fn store(&self, envelope: &Envelope) -> Result<(), BackendError> {
        let waiting = {
            let mut p = lock_pending(&self.pending);
            if p.busy {
                let (tx, rx) = tokio::sync::oneshot::channel();
                p.waiting.push((envelope.clone(), tx));
                Some(rx)
            } else {
                p.busy = true;
                None
            }
        };
        match waiting {
            Some(rx) => rx.await.unwrap_or_else(|_| {
                Err(BackendError::Unavailable(
                    "the batched enqueue was dropped before it replied".into(),
                ))
            }),
            None => {
                let _slot = Inline {
                    backend: self.backend.clone(),
                    pending: self.pending.clone(),
                    capacity: self.capacity,
                };
                self.backend.enqueue(envelope.clone(), self.capacity).await
            }
        }
    }
}

/// The envelope for a new job of registered kind `kind`.
pub(crate) fn envelope_for<J: Job>(
    inner: &Inner,
    job: &J,
    kind: u16,
    delay: Option<Duration>,
) -> Result<Envelope, Rejected> {
    let entry = inner.registry.kind(kind);
    // Encoded once: the size checked against the limit is the size the backend stores.
    let payload = Payload::encode(job).map_err(|e| Rejected::Serialize(e.to_string()))?;
    if let Some(limit) = inner.payload_limit
        && payload.len() > limit
    {
        return Err(Rejected::TooLarge {
            size: payload.len(),
            limit,
        });
    }
    let now = SystemTime::now();
    Ok(Envelope {
        id: JobId::new(),
        job: entry.ty.name.to_owned(),
        queue: entry.ty.options.queue.to_owned(),
        payload,
        attempt: 0,
        max_attempts: entry.ty.options.max_attempts,
        recoveries: 0,
        enqueued_at: unix_ms(now),
        not_before: delay.map(|d| unix_ms(now + d)),
        lease: None,
    })
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
    let envelope = match envelope_for(inner, &job, kind, delay) {
        Ok(e) => e,
        Err(rejected) => return Err(rejected.with(job)),
    };
    store_waiting(inner, d, job, kind, envelope, wait_for_room).await
}

/// Enqueues on the backend under the id `id` (a schedule's tick): when the store already
/// holds that id, nothing changes and the call succeeds. Waits while the store is full.
pub(crate) async fn enqueue_as<J: Job>(
    inner: &Inner,
    d: &Durable,
    job: J,
    kind: u16,
    id: JobId,
) -> Result<JobId, EnqueueError<J>> {
    let mut envelope = match envelope_for(inner, &job, kind, None) {
        Ok(e) => e,
        Err(rejected) => return Err(rejected.with(job)),
    };
    envelope.id = id;
    store_waiting(inner, d, job, kind, envelope, true).await
}

/// Stores `envelope` (made from `job`), waiting while the store is full when
/// `wait_for_room`.
async fn store_waiting<J: Job>(
    inner: &Inner,
    d: &Durable,
    job: J,
    kind: u16,
    envelope: Envelope,
    wait_for_room: bool,
) -> Result<JobId, EnqueueError<J>> {
    let id = envelope.id;
    let mut pause = Duration::from_millis(10);
    loop {
        if inner.stopping.load(Ordering::Acquire) {
            return Err(EnqueueError::ShuttingDown(job));
        }
        match d.store(&envelope).await {
            Ok(()) => {
                d.mark(true);
                counted(inner, kind, 1);
                return Ok(id);
            }
            Err(BackendError::Full) if wait_for_room => wait_for_room_in(&mut pause).await,
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

/// Waits a jittered `pause` for the backend to have room, and doubles it (up to 500 ms).
pub(crate) async fn wait_for_room_in(pause: &mut Duration) {
    tokio::time::sleep(pause.mul_f64(0.5 + fastrand::f64())).await;
    *pause = (*pause * 2).min(Duration::from_millis(500));
}

pub(crate) fn counted(inner: &Inner, kind: u16, n: u64) {
    Counters::add(&inner.counters.enqueued, n);
    inner.registry.kind(kind).metrics.enqueued.increment(n);
}

/// Stores `envelopes` (built from `jobs`, same order) with as few backend calls as the
/// backend allows, waiting while it is full. On failure, returns how many were stored and
/// the error; the jobs from that index on were not stored.
pub(crate) async fn enqueue_batch(
    inner: &Inner,
    d: &Durable,
    kind: u16,
    envelopes: &[Envelope],
) -> Result<(), (usize, BatchFailure)> {
    let mut stored = 0;
    let mut pause = Duration::from_millis(10);
    while stored < envelopes.len() {
        if inner.stopping.load(Ordering::Acquire) {
            return Err((stored, BatchFailure::ShuttingDown));
        }
        let rest = envelopes.get(stored..).unwrap_or_default();
        match d.backend.enqueue_batch(rest, d.capacity).await {
            Ok(n) => {
                d.mark(true);
                let n = n.min(rest.len());
                counted(inner, kind, n as u64);
                stored += n;
                if n < rest.len() {
                    // Full: wait for room, then send the rest.
                    wait_for_room_in(&mut pause).await;
                } else {
                    pause = Duration::from_millis(10);
                }
            }
            Err(BackendError::Full) => wait_for_room_in(&mut pause).await,
            Err(e) => {
                d.mark(false);
                return Err((stored, BatchFailure::Backend(error_chain(&e))));
            }
        }
    }
    Ok(())
}

/// Why a batch stopped.
pub(crate) enum BatchFailure {
    ShuttingDown,
    Backend(String),
}

pub(crate) async fn requeue(d: &Durable, id: JobId) -> Result<JobId, RequeueError> {
    if !d.caps.requeue_by_id {
        return Err(RequeueError::Unsupported {
            backend: d.backend.name(),
        });
    }
    match d.backend.requeue(id).await {
        Ok(()) => Ok(id),
        Err(BackendError::NotFound(_)) => Err(RequeueError::NotFound(id)),
        Err(BackendError::Full) => Err(RequeueError::QueueFull),
        Err(e) => Err(RequeueError::Backend(error_chain(&e))),
    }
}
