//! What keeps held jobs and the process's view of the store current: the heartbeat that
//! renews leases (and hears of cancels), the reaper, the progress writer and the depth
//! refresh.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::backend::Backend;
use crate::error::error_chain;
use crate::observe::metrics::Counters;
use crate::runtime::Inner;
use crate::runtime::outcome::{notify_dead, spawn_hooks};

pub(super) async fn heartbeat(inner: Arc<Inner>) {
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
        // No write-back runs while the renewal is in flight: where the store issues a new
        // token with it, the write-back must use that one.
        let _renewal = d.renewing.write().await;
        let held = d.held_now();
        if held.is_empty() {
            continue;
        }
        match d.backend.extend(&held, d.lease).await {
            Ok(extended) => {
                d.mark(true);
                for (id, token) in extended.renewed {
                    d.renewed(id, token);
                }
                for id in extended.lost {
                    tracing::warn!(job_id = %id, "lease lost while the job was running; it may run again elsewhere");
                }
                for id in extended.cancelled {
                    // Reserved ahead of the workers: dropped when a worker takes it;
                    // running: its token fires now.
                    d.reach(&inner, id);
                }
            }
            Err(e) => {
                d.mark(false);
                tracing::warn!(error = %error_chain(&e), "renewing leases failed");
            }
        }
    }
}

pub(super) async fn reaper(inner: Arc<Inner>) {
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
                    inner.counters.recovered(reaped.recovered.len());
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

/// How often the progress writer looks for new reports.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Writes what running jobs reported with `JobContext::progress`: every 100 ms, the latest
/// report of each worker whose attempt reported since the last turn, all in one call.
pub(super) async fn progress_writer(inner: Arc<Inner>) {
    let Some(d) = inner.durable.as_ref() else {
        return;
    };
    loop {
        tokio::select! {
            _ = inner.stop_background.cancelled() => return,
            () = tokio::time::sleep(PROGRESS_EVERY) => {}
        }
        let reports: Vec<_> = inner
            .attempts
            .progress_cells()
            .iter()
            .filter_map(|cell| cell.take_dirty())
            .collect();
        if reports.is_empty() {
            continue;
        }
        let _renewal = d.renewing.read().await;
        let updates: Vec<_> = {
            let held = d
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            reports
                .into_iter()
                .filter_map(|(id, p)| held.get(&id).map(|t| (id, t.clone(), p)))
                .collect()
        };
        if let Err(e) = d.backend.record_progress(&updates).await {
            tracing::debug!(error = %error_chain(&e), "writing job progress failed");
        }
    }
}

/// Refreshes the depth used by health and stats, and the `jobs_queue_depth` gauge, every
/// 500 ms from the backend's `stats()`.
pub(super) async fn refresh(inner: Arc<Inner>) {
    let Some(d) = inner.durable.as_ref() else {
        return;
    };
    loop {
        match d.backend.stats().await {
            Ok(s) => {
                d.mark(true);
                d.depth.store(s.depth(), Ordering::Relaxed);
                // The store counts all its queues together, so the gauge has no labels.
                d.depth_gauge.set(s.depth() as f64);
            }
            Err(_) => d.mark(false),
        }
        tokio::select! {
            _ = inner.stop_background.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
