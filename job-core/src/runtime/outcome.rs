//! What the end of an attempt means for its job, decided in one place for every backend.
//!
//! [`attempt`](super::attempt) runs an attempt and reports its [`Outcome`]: succeeded with
//! a result, failed with an error of some class (a panic and a timeout are failures too),
//! or cancelled by id. [`conclude`] turns that into the job's [`Next`] state: it applies the
//! retry policy, logs the end in the job's span, and counts it. The worker loops then apply
//! `Next` to their store: the in-memory queue, status and dead-letter store in
//! [`worker`](super::worker), a backend's fenced write-backs in [`durable`](super::durable).
//! Dead-letter records are made by [`dead_letter`], and reach the hooks through
//! [`notify_dead`].

use std::panic::AssertUnwindSafe;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;

use super::Inner;
use super::attempt::panic_message;
use crate::dead_letter::DeadLetter;
use crate::error::ErrorClass;
use crate::job::JobId;
use crate::observe::metrics::Counters;
use crate::registry::{Failure, Produced};

/// How an attempt ended.
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

/// What becomes of a job after an attempt.
pub(crate) enum Next {
    /// Finished, succeeded: keep the result (if any).
    Succeeded(Produced),
    /// Finished, cancelled by id. `started`: whether an attempt ran (a job whose cancel was
    /// learnt before its attempt began is not run at all).
    Cancelled {
        /// Whether an attempt ran.
        started: bool,
    },
    /// Failed; try again after `delay`.
    Retry {
        /// The wait before the next attempt.
        delay: Duration,
        /// The failure, as `error: source: source`.
        error: String,
    },
    /// Failed for good: dead-letter it with this error chain.
    Dead {
        /// The error and its sources, outermost first.
        error: Vec<String>,
    },
    /// Shutdown cancelled the attempt: neither retried nor dead-lettered; the job waits for
    /// the next start (in memory it is left behind, on a store it is released).
    Interrupted {
        /// The failure the interrupted attempt returned.
        error: String,
    },
}

/// Decides what becomes of job `id` (of registered kind `kind`) after attempt `attempt` of
/// `max_attempts` ended with `outcome`; logs it (the caller has entered the job's span) and
/// counts retries and cancels. The same for every backend.
pub(crate) fn conclude(
    inner: &Inner,
    id: JobId,
    kind: u16,
    outcome: Outcome,
    attempt: u32,
    max_attempts: u32,
) -> Next {
    let entry = inner.registry.kind(kind);
    match outcome {
        Outcome::Ok(produced) => Next::Succeeded(produced),
        Outcome::Cancelled { started } => {
            if started {
                tracing::info!("attempt ended by a cancel; the job is cancelled");
            } else {
                tracing::info!("job cancelled before it started");
            }
            // In memory, a job cancelled before it started was taken out of line by the
            // cancel, which recorded and counted it then; every other cancel ends here.
            if started || inner.durable.is_some() {
                inner.counters.cancelled(entry);
            }
            Next::Cancelled { started }
        }
        Outcome::Failed(failure) => {
            let error = failure.message();
            if inner.job_cancel.is_cancelled() {
                tracing::warn!(%error, "attempt interrupted by shutdown; the job will run again at the next start");
                inner.tally.cancelled(id);
                return Next::Interrupted { error };
            }
            let reason = match failure.class {
                ErrorClass::Permanent => "permanent error",
                _ if attempt >= max_attempts => "out of attempts",
                class => {
                    let delay = match class {
                        ErrorClass::RetryAfter(d) => d,
                        _ => entry.ty.options.backoff.delay(attempt, fastrand::f64()),
                    };
                    tracing::warn!(%error, retry_in = ?delay, "attempt failed; will retry");
                    Counters::bump(&inner.counters.retried);
                    entry.metrics.retried.increment(1);
                    return Next::Retry { delay, error };
                }
            };
            tracing::error!(%error, reason, "job dead-lettered");
            Next::Dead {
                error: failure.chain,
            }
        }
    }
}

/// The dead-letter record of job `id`, dying now.
pub(crate) fn dead_letter(
    id: JobId,
    job: &str,
    queue: &str,
    payload: serde_json::Value,
    attempts: u32,
    error: Vec<String>,
    enqueued_at: SystemTime,
) -> DeadLetter {
    DeadLetter::new(
        id,
        job,
        queue,
        payload,
        attempts,
        error,
        enqueued_at,
        SystemTime::now(),
    )
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
