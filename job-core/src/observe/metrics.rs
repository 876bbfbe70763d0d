//! Metrics through the `metrics` facade, and the in-process [`Stats`] snapshot.
//!
//! Names (labelled `job` and `queue`): `jobs_enqueued_total`, `jobs_started_total`,
//! `jobs_succeeded_total`, `jobs_failed_total` (failed attempts), `jobs_retried_total`,
//! `jobs_dead_lettered_total`, `jobs_cancelled_total` (jobs cancelled by id), `jobs_queue_depth` (admitted and not finished) and the
//! histogram `job_duration_seconds` (one observation per attempt).
//!
//! `jobs_queue_depth` in memory moves with every admission and end, per job and queue. On a
//! durable backend it is one series without labels: the store's depth (ready, scheduled
//! and running jobs of every queue the store holds, other processes' included), as
//! [`BackendStats::depth`](crate::backend::BackendStats::depth) reports it, set every 500 ms
//! when the runtime refreshes the depth its health reads; the per-job series stay at 0
//! there, so a sum over the series is right on either. (Backend stats are not per queue.)
//!
//! On durable backends also, unlabelled: `jobs_lease_lost_total` (outcomes refused because this process had lost the
//! job's lease) and `jobs_recovered_total` (jobs this process's reaper returned to their
//! queue after their worker stopped renewing the lease).
//!
//! Handles are taken when the runtime starts: install your recorder (for example
//! `metrics-exporter-prometheus`) before calling `start()`.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram};

/// The metric handles of one job type.
#[derive(Debug)]
pub(crate) struct JobMetrics {
    pub(crate) enqueued: Counter,
    pub(crate) started: Counter,
    pub(crate) succeeded: Counter,
    pub(crate) failed: Counter,
    pub(crate) retried: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) depth: Gauge,
    pub(crate) duration: Histogram,
}

/// Describes every metric to the installed recorder (help text and units).
pub(crate) fn describe() {
    use metrics::Unit;
    metrics::describe_counter!(
        "jobs_enqueued_total",
        Unit::Count,
        "Jobs accepted by enqueue"
    );
    metrics::describe_counter!("jobs_started_total", Unit::Count, "Attempts started");
    metrics::describe_counter!("jobs_succeeded_total", Unit::Count, "Jobs that succeeded");
    metrics::describe_counter!(
        "jobs_failed_total",
        Unit::Count,
        "Attempts that failed (each retry's failure counts)"
    );
    metrics::describe_counter!(
        "jobs_retried_total",
        Unit::Count,
        "Retries scheduled after a failed attempt"
    );
    metrics::describe_counter!(
        "jobs_dead_lettered_total",
        Unit::Count,
        "Jobs dead-lettered"
    );
    metrics::describe_counter!(
        "jobs_cancelled_total",
        Unit::Count,
        "Jobs cancelled by id (removed while waiting, or stopped while running)"
    );
    metrics::describe_gauge!(
        "jobs_queue_depth",
        Unit::Count,
        "Jobs admitted and not finished: queued, scheduled, retrying or running"
    );
    metrics::describe_counter!(
        "jobs_lease_lost_total",
        Unit::Count,
        "Outcomes a durable backend refused because this process had lost the job's lease"
    );
    metrics::describe_counter!(
        "jobs_recovered_total",
        Unit::Count,
        "Jobs returned to their queue by this process's reaper after their worker stopped renewing the lease"
    );
    metrics::describe_histogram!(
        "job_duration_seconds",
        Unit::Seconds,
        "Duration of one attempt"
    );
}

impl JobMetrics {
    pub(crate) fn new(job: &'static str, queue: &'static str) -> Self {
        let labels = [("job", job), ("queue", queue)];
        Self {
            enqueued: metrics::counter!("jobs_enqueued_total", &labels),
            started: metrics::counter!("jobs_started_total", &labels),
            succeeded: metrics::counter!("jobs_succeeded_total", &labels),
            failed: metrics::counter!("jobs_failed_total", &labels),
            retried: metrics::counter!("jobs_retried_total", &labels),
            dead_lettered: metrics::counter!("jobs_dead_lettered_total", &labels),
            cancelled: metrics::counter!("jobs_cancelled_total", &labels),
            depth: metrics::gauge!("jobs_queue_depth", &labels),
            duration: metrics::histogram!("job_duration_seconds", &labels),
        }
    }
}

/// Runtime-wide counters, kept whether or not a metrics recorder is installed. Each sits on
/// its own cache line: producers bump `enqueued` while workers bump the others, and sharing a
/// line would make every increment a cross-core transfer.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) enqueued: Padded,
    pub(crate) started: Padded,
    pub(crate) succeeded: Padded,
    pub(crate) failed: Padded,
    pub(crate) retried: Padded,
    pub(crate) dead_lettered: Padded,
    pub(crate) lease_lost: Padded,
    pub(crate) recovered: Padded,
    /// Jobs cancelled by id.
    pub(crate) cancelled: Padded,
    /// Attempts that a cancel by id ended (so that `in_flight` does not count them).
    pub(crate) attempts_cancelled: Padded,
}

/// An `AtomicU64` alone on a 128-byte line (two 64-byte lines: adjacent-line prefetch).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded(AtomicU64);

impl Padded {
    pub(crate) fn load(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Counters {
    /// A write-back refused because the lease was lost: counted here and as a metric.
    pub(crate) fn lease_lost(&self) {
        Self::bump(&self.lease_lost);
        metrics::counter!("jobs_lease_lost_total").increment(1);
    }

    /// Jobs the reaper returned to their queue: counted here and as a metric.
    pub(crate) fn recovered(&self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        Self::add(&self.recovered, n);
        metrics::counter!("jobs_recovered_total").increment(n);
    }

    /// A job of kind `entry` was cancelled by id: counted here and as a metric.
    pub(crate) fn cancelled(&self, entry: &crate::registry::Registered) {
        Self::bump(&self.cancelled);
        entry.metrics.cancelled.increment(1);
    }

    pub(crate) fn bump(counter: &Padded) {
        counter.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &Padded, n: u64) {
        counter.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Attempts running now: started and not yet ended.
    pub(crate) fn in_flight(&self) -> usize {
        let ended = self.succeeded.load() + self.failed.load() + self.attempts_cancelled.load();
        usize::try_from(self.started.load().saturating_sub(ended)).unwrap_or(usize::MAX)
    }
}

/// A snapshot of a runtime's counters and load, for status pages and health checks without
/// a metrics exporter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Jobs accepted since start.
    pub enqueued: u64,
    /// Attempts started.
    pub started: u64,
    /// Jobs that succeeded.
    pub succeeded: u64,
    /// Attempts that failed (each retry's failure counts).
    pub failed: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Jobs dead-lettered.
    pub dead_lettered: u64,
    /// Outcomes a durable backend refused because this process had lost the job's lease
    /// (the job had been recovered and may have run again elsewhere).
    pub lease_lost: u64,
    /// Jobs this process's reaper returned to their queue because their worker stopped
    /// renewing the lease (crashed, or hung without its heartbeat).
    pub recovered: u64,
    /// Jobs cancelled by id ([`Client::cancel`](crate::Client::cancel)): by this process's
    /// cancel while they waited, or by its workers when a cancel stopped their attempt.
    pub cancelled: u64,
    /// Jobs admitted and not finished: ready, scheduled, waiting to retry, or running.
    pub depth: usize,
    /// The most jobs the runtime holds at once.
    pub capacity: usize,
    /// Attempts running now.
    pub in_flight: usize,
    /// True until shutdown begins.
    pub is_running: bool,
    /// True once shutdown has begun.
    pub is_stopping: bool,
}
