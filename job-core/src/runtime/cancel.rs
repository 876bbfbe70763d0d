//! Cancel by id: [`Client::cancel`](super::Client::cancel), and the per-worker slots through
//! which a cancel reaches the attempt running the job.
//!
//! Each worker owns a [`Slot`]: the job it is running and the cancellation token its
//! attempts see (a child of the shutdown token, so shutdown still reaches every attempt). A
//! cancel finds the slot running the job, marks it and fires its token; the worker reads the
//! mark when the attempt returns, and the job ends `cancelled` whatever the attempt
//! returned. A fired token is replaced before the worker's next attempt, which costs a
//! child token only after a cancel (or a timeout), never per attempt.
//!
//! A job cancelled while it waits (queued, scheduled, retrying, or reserved ahead of the
//! workers on a durable store) is put in a small set of ids; a worker checks the set before
//! it starts a job, only while the set is not empty (one atomic load otherwise), and drops
//! a job it finds there. A cancel and a worker starting the same job cannot miss each
//! other: the cancel adds the id before it looks at the slots, and the worker fills its slot
//! before it looks at the set (both under the slot's lock).
//!
//! The same per-worker state holds each worker's progress cell (what its attempt reported
//! with `JobContext::progress`), read by status queries and the durable progress writer.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::Client;
use crate::backend::{BackendError, CancelOutcome, Payload};
use crate::context::{JobContext, ProgressCell};
use crate::error::{CancelError, Cancellation};
use crate::job::JobId;
use crate::observe::status::JobState;

/// [`Client::cancel`].
pub(crate) async fn cancel(client: &Client, id: JobId) -> Result<Cancellation, CancelError> {
    let inner = &client.inner;
    let Some(d) = inner.durable.as_ref() else {
        return cancel_in_memory(client, id).await;
    };
    if !d.caps.cancel_by_id {
        return Err(CancelError::Unsupported {
            backend: d.backend.name(),
        });
    }
    match d.backend.cancel(id).await {
        Ok(CancelOutcome::Removed) => {
            d.mark(true);
            if let Some(entry) = job_kind_of(client, id).await {
                inner.counters.cancelled(entry);
            } else {
                crate::observe::metrics::Counters::bump(&inner.counters.cancelled);
            }
            d.finished.signal();
            Ok(Cancellation::Removed)
        }
        Ok(CancelOutcome::Requested) => {
            d.mark(true);
            // Held here: reach the attempt now rather than at the next renewal (or drop
            // the job before it starts, if it is reserved ahead of the workers).
            d.reach(inner, id);
            Ok(Cancellation::Requested)
        }
        Ok(CancelOutcome::Finished(state)) => {
            d.mark(true);
            Err(CancelError::Finished { id, state })
        }
        Err(BackendError::NotFound(_)) => Err(CancelError::NotFound(id)),
        Err(BackendError::Unsupported(_)) => Err(CancelError::Unsupported {
            backend: d.backend.name(),
        }),
        Err(e) => {
            d.mark(false);
            Err(CancelError::Backend(e))
        }
    }
}

/// The registered kind of a job the store just cancelled, from its status (for the
/// per-job metric; `None` when the status cannot be read or names no registered job).
async fn job_kind_of(client: &Client, id: JobId) -> Option<&crate::registry::Registered> {
    let d = client.inner.durable.as_ref()?;
    let status = d.backend.status(id).await.ok()??;
    client
        .inner
        .registry
        .by_name(&status.job)
        .map(|e| &**client.inner.registry.kind(e.kind))
}

async fn cancel_in_memory(client: &Client, id: JobId) -> Result<Cancellation, CancelError> {
    let inner = &client.inner;
    let mut turns = 0u32;
    loop {
        // In the set before the slots are read: a worker starting the job now finds it in
        // the set, or the loop below finds the worker.
        inner.attempts.hold_back(id);
        if inner.attempts.request(id) {
            inner.attempts.forget(id);
            return Ok(Cancellation::Requested);
        }
        match inner.status.cancel_waiting(id) {
            None => {
                inner.attempts.forget(id);
                return Err(CancelError::NotFound(id));
            }
            Some(state) if state.is_finished() => {
                inner.attempts.forget(id);
                return Err(CancelError::Finished { id, state });
            }
            Some(JobState::Running) => {
                // Its attempt has just returned (its slot is empty) and its end is being
                // recorded: look again once it is.
                inner.attempts.forget(id);
                turns += 1;
                if turns < 64 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
            Some(_) => {
                // Queued, scheduled or retrying: recorded as cancelled now; the id stays in
                // the set, and the worker that takes the job drops it (and gives back its
                // place in capacity).
                if let Some(kind) = inner.status.kind_of(id) {
                    inner.counters.cancelled(inner.registry.kind(kind));
                }
                inner.finished.signal();
                return Ok(Cancellation::Removed);
            }
        }
    }
}

/// The slots of all workers, and the ids cancelled before they started.
pub(crate) struct Attempts {
    slots: Box<[Slot]>,
    /// Per worker, what its attempt reported with `JobContext::progress`.
    progress: Box<[Arc<ProgressCell>]>,
    /// The token every slot's token is a child of (shutdown's).
    parent: CancellationToken,
    waiting: Mutex<HashSet<JobId>>,
    /// `waiting.len()`, read without the lock by workers about to start a job.
    waiting_len: AtomicUsize,
}

#[repr(align(128))]
struct Slot(Mutex<SlotState>);

struct SlotState {
    job: Option<JobId>,
    token: CancellationToken,
    /// A cancel by id reached the attempt running `job`.
    requested: bool,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How an attempt's start went.
pub(crate) enum Start {
    /// Run it.
    Run,
    /// The job was cancelled before it started: do not run it.
    Cancelled,
}

impl Attempts {
    pub(crate) fn new(workers: usize, parent: &CancellationToken) -> Self {
        Self {
            slots: (0..workers)
                .map(|_| {
                    Slot(Mutex::new(SlotState {
                        job: None,
                        token: parent.child_token(),
                        requested: false,
                    }))
                })
                .collect(),
            progress: (0..workers).map(|_| Arc::default()).collect(),
            parent: parent.clone(),
            waiting: Mutex::new(HashSet::new()),
            waiting_len: AtomicUsize::new(0),
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashSet<JobId>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The token worker `worker`'s attempts see (the worker's context starts with it;
    /// [`start`](Self::start) hands it a new one when it replaces a fired token).
    pub(crate) fn token(&self, worker: usize) -> CancellationToken {
        self.slots
            .get(worker)
            .map_or_else(|| self.parent.clone(), |slot| slot.lock().token.clone())
    }

    /// Worker `worker`'s progress cell (its context reports into it).
    pub(crate) fn progress_cell(&self, worker: usize) -> Arc<ProgressCell> {
        self.progress.get(worker).cloned().unwrap_or_default()
    }

    /// The progress the attempt running `id` in this process reported last.
    pub(crate) fn progress_of(&self, id: JobId) -> Option<Payload> {
        self.progress.iter().find_map(|cell| cell.of(id))
    }

    /// Every worker's cell, for the writer that takes the new reports.
    pub(crate) fn progress_cells(&self) -> &[Arc<ProgressCell>] {
        &self.progress
    }

    /// Worker `worker` is about to run `id`: its slot takes the job, `cx` gets a token that
    /// has not fired (unless shutdown fired it), and the answer says whether the job was
    /// cancelled before it started (then the caller drops it, after [`end`](Self::end)).
    pub(crate) fn start(&self, worker: usize, id: JobId, cx: &mut JobContext) -> Start {
        if let Some(cell) = self.progress.get(worker) {
            cell.clear();
        }
        if let Some(slot) = self.slots.get(worker) {
            let mut s = slot.lock();
            s.job = Some(id);
            s.requested = false;
            if s.token.is_cancelled() && !self.parent.is_cancelled() {
                // Fired by a cancel or a timeout of an earlier attempt: a fresh one.
                s.token = self.parent.child_token();
                cx.cancel = s.token.clone();
            }
        }
        if self.waiting_len.load(Ordering::SeqCst) > 0 && self.waiting().remove(&id) {
            self.waiting_len.fetch_sub(1, Ordering::SeqCst);
            return Start::Cancelled;
        }
        Start::Run
    }

    /// The attempt `worker` ran has returned: frees the slot and says whether a cancel by
    /// id reached it.
    pub(crate) fn end(&self, worker: usize) -> bool {
        self.slots.get(worker).is_some_and(|slot| {
            let mut s = slot.lock();
            s.job = None;
            std::mem::take(&mut s.requested)
        })
    }

    /// Fires the token of worker `worker`'s attempt without marking it cancelled (its
    /// timeout ran out: the attempt gets a grace period to stop at a safe point).
    pub(crate) fn interrupt(&self, worker: usize) {
        if let Some(slot) = self.slots.get(worker) {
            slot.lock().token.cancel();
        }
    }

    /// Marks the attempt running `id`, if a worker of this process runs it, and fires its
    /// token. True when one did.
    pub(crate) fn request(&self, id: JobId) -> bool {
        for slot in &self.slots {
            let mut s = slot.lock();
            if s.job == Some(id) {
                s.requested = true;
                s.token.cancel();
                return true;
            }
        }
        false
    }

    /// `id` is cancelled before it started: the worker that takes it drops it.
    pub(crate) fn hold_back(&self, id: JobId) {
        let mut waiting = self.waiting();
        if waiting.insert(id) {
            self.waiting_len.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// `id` is no longer expected at a worker (it was found running, or let go).
    pub(crate) fn forget(&self, id: JobId) {
        if self.waiting_len.load(Ordering::SeqCst) > 0 && self.waiting().remove(&id) {
            self.waiting_len.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl std::fmt::Debug for Attempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempts")
            .field("workers", &self.slots.len())
            .field("waiting", &self.waiting_len.load(Ordering::Relaxed))
            .finish()
    }
}
