//! The runtime on a durable [`Backend`]: a fetcher reserves jobs under leases for the local
//! workers, a heartbeat renews the leases of running jobs, a reaper returns the jobs of dead
//! workers to their queues, and every outcome is written back fenced by the lease token.
//!
//! | module | what it holds |
//! |---|---|
//! | this one | [`Durable`]: settings and the state the tasks share (held leases, slots, reachability); launching the tasks; giving back held jobs at shutdown |
//! | `intake` | storing new jobs: the group commit of single enqueues, batches, requeue |
//! | `fetch` | the fetcher that reserves jobs for free workers, and its adaptive prefetch |
//! | `settle` | the worker loop, and the fenced write-back of what [`conclude`](super::outcome::conclude) decided (acks batched by the acker) |
//! | `upkeep` | the heartbeat (lease renewal, cancels heard), the reaper, the progress writer, the depth refresh |

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Client, Inner};
use crate::backend::{Backend, Capabilities, LeaseToken, Reservation};
use crate::error::{QueryError, error_chain};
use crate::job::JobId;
use crate::registry::Produced;

mod fetch;
mod intake;
mod settle;
mod upkeep;

pub(crate) use self::intake::{
    BatchFailure, counted, enqueue, enqueue_as, enqueue_batch, envelope_for, requeue,
    wait_for_room_in,
};

use self::fetch::{MAX_PREFETCH_PER_WORKER, fetcher};
use self::intake::Pending;
use self::settle::{acker, release, worker};
use self::upkeep::{heartbeat, progress_writer, reaper, refresh};

/// Durable-mode settings and state.
pub(crate) struct Durable {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) queues: Vec<String>,
    pub(crate) lease: Duration,
    pub(crate) max_recoveries: u32,
    pub(crate) reap_interval: Duration,
    /// Successful attempts waiting to be acknowledged, in batches, by the acker (with the
    /// result to keep, if any).
    acks_tx: async_channel::Sender<(JobId, LeaseToken, Produced)>,
    acks_rx: async_channel::Receiver<(JobId, LeaseToken, Produced)>,
    /// The acker task, awaited at shutdown before held jobs are given back.
    acker: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The fetcher task, awaited at shutdown before held jobs are given back.
    fetcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Single enqueues that arrive while another is being stored, sent together next.
    pending: Arc<Mutex<Pending>>,
    /// The runtime's capacity: the most jobs the backend may store.
    capacity: u64,
    /// Jobs reserved by this process and not yet written back: id -> lease (the token of the
    /// reservation, or of the last renewal where the store issues a new one on each).
    pub(crate) held: Mutex<HashMap<JobId, LeaseToken>>,
    /// Signalled each time this process lets go of a job (see `unhold`).
    pub(crate) finished: super::wait::Finished,
    /// Held for writing while the heartbeat renews leases, for reading by every write-back:
    /// a write-back never runs with a token that a renewal in flight is about to replace
    /// (on Azure, a delete would otherwise race its own update and lose).
    renewing: tokio::sync::RwLock<()>,
    /// One permit per worker and per prefetched job: the fetcher reserves only as many jobs
    /// as are free.
    pub(crate) slots: Arc<Semaphore>,
    /// Workers.
    concurrency: usize,
    /// Jobs reserved ahead of the workers at most (the semaphore holds `concurrency` plus
    /// this many permits).
    max_prefetch: usize,
    /// A fixed prefetch, or `None` to adapt it to how long jobs take.
    fixed_prefetch: Option<usize>,
    /// Moving average of recent attempts' run time, in nanoseconds (0: none yet).
    job_ns: AtomicU64,
    /// Moving average of recent reserve calls' time, in nanoseconds (0: none yet).
    reserve_ns: AtomicU64,
    /// Signalled by a worker each time it frees a slot.
    freed: tokio::sync::Notify,
    pub(crate) work_tx: async_channel::Sender<(Reservation, OwnedSemaphorePermit)>,
    pub(crate) work_rx: async_channel::Receiver<(Reservation, OwnedSemaphorePermit)>,
    /// Last depth the backend reported.
    pub(crate) depth: AtomicU64,
    /// `jobs_queue_depth` without labels: the store's depth, set with `depth` (see
    /// [`crate::observe::metrics`]).
    depth_gauge: metrics::Gauge,
    /// False while the backend is failing.
    pub(crate) reachable: AtomicBool,
    /// What the backend can do, read once at start.
    pub(crate) caps: Capabilities,
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
    /// Jobs reserved ahead of free workers (`None`: adaptive, see `Durable::prefetch`).
    pub(crate) prefetch: Option<usize>,
}

/// Successful attempts waiting for the acker, at most (workers wait beyond it).
const ACK_QUEUE: usize = 4096;

impl Durable {
    pub(crate) fn new(
        config: DurableConfig,
        queues: Vec<String>,
        concurrency: usize,
        capacity: u64,
    ) -> Self {
        let max_prefetch = config
            .prefetch
            .unwrap_or(concurrency.saturating_mul(MAX_PREFETCH_PER_WORKER));
        let slots = concurrency + max_prefetch;
        let caps = config.backend.capabilities();
        let (work_tx, work_rx) = async_channel::bounded(slots.max(1));
        let (acks_tx, acks_rx) = async_channel::bounded(ACK_QUEUE);
        Self {
            acks_tx,
            acks_rx,
            acker: Mutex::new(None),
            fetcher: Mutex::new(None),
            pending: Arc::new(Mutex::new(Pending::default())),
            capacity,
            backend: config.backend,
            queues,
            lease: config.lease,
            max_recoveries: config.max_recoveries,
            reap_interval: config.reap_interval,
            held: Mutex::new(HashMap::new()),
            finished: super::wait::Finished::default(),
            renewing: tokio::sync::RwLock::new(()),
            slots: Arc::new(Semaphore::new(slots)),
            concurrency,
            max_prefetch,
            fixed_prefetch: config.prefetch,
            job_ns: AtomicU64::new(0),
            reserve_ns: AtomicU64::new(0),
            freed: tokio::sync::Notify::new(),
            work_tx,
            work_rx,
            depth: AtomicU64::new(0),
            depth_gauge: metrics::gauge!("jobs_queue_depth"),
            reachable: AtomicBool::new(true),
            caps,
        }
    }

    /// `Ok` when the backend declares the capability, else the answer for the caller.
    pub(crate) fn supports(&self, declared: bool, what: &'static str) -> Result<(), QueryError> {
        if declared {
            Ok(())
        } else {
            Err(QueryError::Unsupported {
                backend: self.backend.name(),
                what,
            })
        }
    }

    /// The most jobs the backend may store (the runtime's capacity).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    fn hold(&self, id: JobId, token: LeaseToken) {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, token);
    }

    /// The current token of a held job. Call under `renewing`.
    fn current(&self, id: JobId, reserved: &LeaseToken) -> LeaseToken {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .unwrap_or(reserved)
            .clone()
    }

    /// A renewal gave a held job a new token (a job no longer held is left alone).
    fn renewed(&self, id: JobId, token: LeaseToken) {
        if let Some(held) = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(&id)
        {
            *held = token;
        }
    }

    /// Lets go of `id` once its outcome is written back (or given up on), and wakes the
    /// callers of `Client::wait`, who read its status again.
    fn unhold(&self, inner: &Inner, id: JobId) {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        inner.attempts.forget(id);
        self.finished.signal();
    }

    fn held_now(&self) -> Vec<(JobId, LeaseToken)> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(id, t)| (*id, t.clone()))
            .collect()
    }

    /// Whether this process holds `id` (reserved, running, or waiting for its write-back).
    pub(crate) fn is_held(&self, id: JobId) -> bool {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&id)
    }

    /// A cancel was requested for `id`: if a worker here runs it, its token fires now; if
    /// it is reserved here and not started, the worker that takes it drops it.
    pub(crate) fn reach(&self, inner: &Inner, id: JobId) {
        if !self.is_held(id) {
            return;
        }
        inner.attempts.hold_back(id);
        // Checked again after: a job let go in between (`unhold` forgets it first) would
        // leave its id in the set for good.
        if inner.attempts.request(id) || !self.is_held(id) {
            inner.attempts.forget(id);
        }
    }

    pub(crate) fn mark(&self, ok: bool) {
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
    let fetching = inner.background.spawn(fetcher(inner.clone()));
    *d.fetcher
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fetching);
    inner.background.spawn(heartbeat(inner.clone()));
    inner.background.spawn(reaper(inner.clone()));
    inner.background.spawn(refresh(inner.clone()));
    if d.caps.progress {
        inner.background.spawn(progress_writer(inner.clone()));
    }
    let acker = inner.background.spawn(acker(inner.clone()));
    *d.acker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(acker);
    (0..concurrency)
        .map(|i| inner.workers.spawn(worker(inner.clone(), i)))
        .collect()
}

/// At shutdown, after the workers stopped: give back every job this process still holds
/// (reserved but not started, or dropped mid-attempt) so it runs again without waiting for
/// its lease to expire. Returns the ids given back before they started.
pub(crate) async fn give_back(inner: &Inner) -> Vec<JobId> {
    let Some(d) = inner.durable.as_ref() else {
        return Vec::new();
    };
    // The fetcher's last reservation lands in the buffer (or it is given back below), and
    // successful attempts are acknowledged first, so none of them is given back to run again.
    for (task, close_acks) in [(&d.fetcher, false), (&d.acker, true)] {
        if close_acks {
            d.acks_tx.close();
        }
        let handle = task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
    let mut unstarted = Vec::new();
    while let Ok((r, _permit)) = d.work_rx.try_recv() {
        unstarted.push(r.id());
        release(inner, d, r.id(), r.token()).await;
    }
    for (id, token) in d.held_now() {
        inner.tally.cancelled(id);
        release(inner, d, id, &token).await;
    }
    unstarted
}

impl Client {
    pub(crate) fn durable(&self) -> Option<&Durable> {
        self.inner.durable.as_ref()
    }
}
