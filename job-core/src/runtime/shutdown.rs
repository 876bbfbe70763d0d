//! Graceful shutdown and its report.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Client, Inner};
use crate::job::JobId;

/// What shutdown did. Every job the runtime held when shutdown began is counted exactly
/// once: completed, cancelled, or left behind.
///
/// The in-memory backend keeps nothing across a restart: the jobs named in `cancelled_ids`
/// and `left_behind_ids` are gone once the process exits. Log them, or re-enqueue them
/// elsewhere from an [`on_shutdown`](crate::JobRuntimeBuilder::on_shutdown) hook.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Attempts that ended during shutdown with the job finished (succeeded or dead).
    pub completed: usize,
    /// Attempts still running when the drain window ran out: their tokens were cancelled and
    /// they were stopped.
    pub cancelled: usize,
    /// Jobs that never (re)started: queued, scheduled, or waiting to retry.
    pub left_behind: usize,
    /// The ids of the cancelled jobs.
    pub cancelled_ids: Vec<JobId>,
    /// The ids of the jobs left behind.
    pub left_behind_ids: Vec<JobId>,
    /// True when the drain window ran out with attempts still running.
    pub timed_out: bool,
    /// How long shutdown took.
    pub elapsed: Duration,
}

/// Counts kept while shutting down.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) completed: AtomicUsize,
    cancelled: Mutex<Vec<JobId>>,
    left_behind: Mutex<Vec<JobId>>,
}

impl Tally {
    pub(crate) fn cancelled(&self, id: JobId) {
        self.cancelled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(id);
    }

    pub(crate) fn left_behind(&self, id: JobId) {
        self.left_behind
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(id);
    }
}

pub(crate) async fn run(inner: Arc<Inner>) -> ShutdownReport {
    let began = Instant::now();
    tracing::info!(
        in_flight = inner.counters.in_flight(),
        depth = inner.depth(),
        "job runtime shutting down: no new jobs accepted"
    );
    // 1. Refuse new work: enqueue (also those waiting for room) and requeue fail from now.
    inner.stopping.store(true, Ordering::Release);
    Client::clear_ambient(&inner);
    inner.permits.close();
    inner.ready.close();
    // 2. Stop starting queued jobs, and stop the timer and the schedules.
    inner.stop_fetch.cancel();
    inner.stop_background.cancel();

    // 3. Running attempts get the drain window.
    let drained = tokio::time::timeout(inner.shutdown_timeout, inner.workers.wait())
        .await
        .is_ok();
    let mut timed_out = false;
    if !drained {
        timed_out = true;
        tracing::warn!(
            in_flight = inner.counters.in_flight(),
            "shutdown timeout reached: cancelling running jobs"
        );
        inner.job_cancel.cancel();
        let returned = tokio::time::timeout(inner.cancel_grace, inner.workers.wait())
            .await
            .is_ok();
        if !returned {
            let handles = std::mem::take(
                &mut *inner
                    .worker_handles
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            for handle in &handles {
                handle.abort();
            }
            for handle in handles {
                let _ = handle.await;
            }
            // Attempts dropped mid-run are still marked running (in memory) or still held
            // (durable: `give_back` below names and returns them).
            if inner.durable.is_none() {
                for id in inner.status.running_ids() {
                    inner.tally.cancelled(id);
                }
            }
        }
    }

    inner.workers_done.cancel();

    // 4. Whatever is still queued is left behind (the timer names its own on exit). A
    // durable backend gets back every job this process still holds.
    while let Ok(envelope) = inner.ready.try_pop() {
        inner.tally.left_behind(envelope.id);
    }
    for id in super::durable::give_back(&inner).await {
        inner.tally.left_behind(id);
    }
    inner.background.close();
    if tokio::time::timeout(
        inner.cancel_grace.max(Duration::from_millis(100)),
        inner.background.wait(),
    )
    .await
    .is_err()
    {
        tracing::warn!("dead-letter hooks or schedules still running after shutdown");
    }

    let mut cancelled_ids = std::mem::take(
        &mut *inner
            .tally
            .cancelled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    cancelled_ids.sort_unstable();
    cancelled_ids.dedup();
    let mut left_behind_ids = std::mem::take(
        &mut *inner
            .tally
            .left_behind
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    left_behind_ids.sort_unstable();
    left_behind_ids.dedup();
    let report = ShutdownReport {
        completed: inner.tally.completed.load(Ordering::Relaxed),
        cancelled: cancelled_ids.len(),
        left_behind: left_behind_ids.len(),
        cancelled_ids,
        left_behind_ids,
        timed_out,
        elapsed: began.elapsed(),
    };
    if report.left_behind > 0 || report.cancelled > 0 {
        tracing::warn!(
            completed = report.completed,
            cancelled = report.cancelled,
            left_behind = report.left_behind,
            cancelled_ids = ?report.cancelled_ids,
            left_behind_ids = ?report.left_behind_ids,
            "job runtime stopped; the in-memory queue loses the jobs it did not run"
        );
    } else {
        tracing::info!(completed = report.completed, "job runtime stopped cleanly");
    }
    for hook in &inner.shutdown_hooks {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&report))).is_err() {
            tracing::error!("on_shutdown hook panicked");
        }
    }
    report
}
