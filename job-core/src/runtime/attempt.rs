//! One attempt, run in isolation the same way on every backend: scoped values built for
//! it, its panic caught, its timeout and a cancel by id enforced (each firing the attempt's
//! token first, then a grace), its metrics counted. What the attempt's end means for the
//! job is decided in [`outcome`](super::outcome).

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Inner;
use super::cancel::Start;
use super::outcome::Outcome;
use crate::context::JobContext;
use crate::error::ErrorClass;
use crate::observe::metrics::Counters;
use crate::registry::Failure;

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
