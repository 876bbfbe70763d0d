//! Error classes, the retry schedule, panics, timeouts, and the seed's deadlock.

mod common;

use std::time::Duration;

use common::{Behavior, Probe, ProbeError, Recorder, builder, eventually, wait_state};
use job_core::prelude::*;

const LONG: Duration = Duration::from_secs(60);

fn gaps(runs: &[common::Run]) -> Vec<Duration> {
    runs.windows(2).map(|w| w[1].at - w[0].at).collect()
}

#[tokio::test(start_paused = true)]
async fn transient_errors_retry_on_the_backoff_schedule_then_die() {
    let rec = Recorder::new();
    let rt = builder(&rec).start().unwrap();
    // Probe: 3 attempts, backoff 100 ms doubling, no jitter.
    let id = rt
        .client()
        .enqueue(Probe::new(1, Behavior::FailTimes(10)))
        .await
        .unwrap();
    let status = wait_state(&rt, id, JobState::Dead, LONG).await;
    assert_eq!(status.attempts, 3);
    assert_eq!(status.last_error.as_deref(), Some("transient failure 3"));
    let runs = rec.attempts_of(1);
    assert_eq!(
        runs.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let g = gaps(&runs);
    assert!(
        g[0] >= Duration::from_millis(100) && g[0] < Duration::from_millis(110),
        "{g:?}"
    );
    assert!(
        g[1] >= Duration::from_millis(200) && g[1] < Duration::from_millis(210),
        "{g:?}"
    );
    let stats = rt.stats();
    assert_eq!(
        (stats.failed, stats.retried, stats.dead_lettered),
        (3, 2, 1)
    );
    rt.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_then_success_succeeds() {
    let rec = Recorder::new();
    let rt = builder(&rec).start().unwrap();
    let id = rt
        .client()
        .enqueue(Probe::new(1, Behavior::FailTimes(2)))
        .await
        .unwrap();
    let status = wait_state(&rt, id, JobState::Succeeded, LONG).await;
    assert_eq!(status.attempts, 3);
    assert_eq!(
        status.last_error, None,
        "a succeeded job has no current error"
    );
    assert_eq!(
        status.last_failure.as_deref(),
        Some("transient failure 2"),
        "the last failure is kept"
    );
    assert!(rt.dead_letters().await.unwrap().is_empty());
    rt.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_dead_lettered_at_once() {
    let rec = Recorder::new();
    let rt = builder(&rec).start().unwrap();
    let id = rt
        .client()
        .enqueue(Probe::new(1, Behavior::Permanent))
        .await
        .unwrap();
    let status = wait_state(&rt, id, JobState::Dead, LONG).await;
    assert_eq!(status.attempts, 1);
    assert_eq!(rec.attempts_of(1).len(), 1);
    assert_eq!(rt.stats().retried, 0);
    rt.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_instead_of_the_backoff() {
    let rec = Recorder::new();
    let rt = builder(&rec).start().unwrap();
    let id = rt
        .client()
        .enqueue(Probe::new(1, Behavior::RetryAfterMs(5_000, 2)))
        .await
        .unwrap();
    wait_state(&rt, id, JobState::Succeeded, LONG).await;
    let g = gaps(&rec.attempts_of(1));
    assert_eq!(g.len(), 2);
    for gap in g {
        assert!(
            gap >= Duration::from_secs(5) && gap < Duration::from_millis(5_010),
            "{gap:?}"
        );
    }
    rt.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_caught_recorded_and_permanent_by_default() {
    let rec = Recorder::new();
    let rt = builder(&rec).concurrency(1).start().unwrap();
    let bad = rt
        .client()
        .enqueue(Probe::new(1, Behavior::Panic))
        .await
        .unwrap();
    let good = rt
        .client()
        .enqueue(Probe::new(2, Behavior::Succeed))
        .await
        .unwrap();
    let status = wait_state(&rt, bad, JobState::Dead, LONG).await;
    assert_eq!(status.attempts, 1);
    assert_eq!(
        status.last_error.as_deref(),
        Some("job panicked: probe 1 panicked on purpose")
    );
    // The single worker survived and ran the next job.
    wait_state(&rt, good, JobState::Succeeded, LONG).await;
    rt.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn panics_can_be_retried_when_configured() {
    let rec = Recorder::new();
    let rt = builder(&rec).retry_panics(true).start().unwrap();
    let id = rt
        .client()
        .enqueue(Probe::new(1, Behavior::Panic))
        .await
        .unwrap();
    let status = wait_state(&rt, id, JobState::Dead, LONG).await;
    assert_eq!(status.attempts, 3);
    rt.shutdown().await;
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Slow {
    ms: u64,
}

impl Job for Slow {
    const NAME: &'static str = "slow";
    type Error = ProbeError;
    type Output = ();
    fn options() -> JobOptions {
        JobOptions::new()
            .max_attempts(2)
            .timeout(Duration::from_millis(50))
            .backoff(Backoff::new(
                Duration::from_millis(10),
                Duration::from_millis(10),
                0.0,
            ))
    }
    async fn run(&self, _: &JobContext) -> Result<(), ProbeError> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_timeout_fails_the_attempt_as_transient() {
    let rt = JobRuntime::builder()
        .register::<Slow>()
        .concurrency(1)
        .start()
        .unwrap();
    let slow = rt.client().enqueue(Slow { ms: 1_000 }).await.unwrap();
    let fast = rt.client().enqueue(Slow { ms: 10 }).await.unwrap();
    let status = wait_state(&rt, slow, JobState::Dead, LONG).await;
    assert_eq!(status.attempts, 2, "retried once as transient");
    assert_eq!(
        status.last_error.as_deref(),
        Some("attempt timed out after 50ms")
    );
    wait_state(&rt, fast, JobState::Succeeded, LONG).await;
    rt.shutdown().await;
}

/// Notes whether its token had fired when it stopped: a job that watches its token.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Careful;

static SAW_TOKEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Job for Careful {
    const NAME: &'static str = "careful";
    type Error = ProbeError;
    type Output = ();
    fn options() -> JobOptions {
        JobOptions::new()
            .max_attempts(1)
            .timeout(Duration::from_millis(50))
    }
    async fn run(&self, cx: &JobContext) -> Result<(), ProbeError> {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
            () = cx.cancelled() => {
                // Cleaning up at a safe point, within the grace; then "done".
                SAW_TOKEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

/// At its timeout an attempt's token fires first; the attempt gets the cancel grace to stop,
/// and counts as timed out although it returned `Ok`. One that ignores its token is dropped
/// when the grace ends: the worker is free again after timeout + grace.
#[tokio::test(start_paused = true)]
async fn a_timeout_fires_the_token_and_gives_a_grace() {
    let rt = JobRuntime::builder()
        .register::<Careful>()
        .register::<Slow>()
        .concurrency(1)
        .cancel_grace(Duration::from_millis(200))
        .start()
        .unwrap();
    let careful = rt.client().enqueue(Careful).await.unwrap();
    let status = wait_state(&rt, careful, JobState::Dead, LONG).await;
    assert_eq!(SAW_TOKEN.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        status.last_error.as_deref(),
        Some("attempt timed out after 50ms"),
        "returning Ok in the grace does not undo the timeout"
    );
    // Slow ignores its token: each of its 2 attempts holds the worker 50 ms + 200 ms.
    let started = tokio::time::Instant::now();
    let slow = rt.client().enqueue(Slow { ms: 60_000 }).await.unwrap();
    let status = wait_state(&rt, slow, JobState::Dead, LONG).await;
    assert_eq!(status.attempts, 2);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(600),
        "two attempts of timeout + grace (and a 10 ms backoff): {took:?}"
    );
    rt.shutdown().await;
}

/// The seed re-enqueues a retry from its single consumer into the bounded channel, which
/// deadlocks once the channel is full. Here a retry keeps its slot and waits in the timer.
#[tokio::test(start_paused = true)]
async fn capacity_one_concurrency_one_a_thousand_jobs_failing_twice_all_finish() {
    let rec = Recorder::new();
    let rt = builder(&rec).capacity(1).concurrency(1).start().unwrap();
    let client = rt.client();
    let producer = tokio::spawn(async move {
        for i in 0..1_000 {
            client
                .enqueue(Probe::new(i, Behavior::FailTimes(2)))
                .await
                .unwrap();
        }
    });
    tokio::time::timeout(Duration::from_secs(3_600), producer)
        .await
        .expect("no deadlock")
        .unwrap();
    eventually(Duration::from_secs(3_600), "1,000 successes", || {
        rec.successes() == 1_000
    })
    .await;
    assert_eq!(rec.runs().len(), 3_000);
    let stats = rt.stats();
    assert_eq!(
        (
            stats.succeeded,
            stats.failed,
            stats.retried,
            stats.dead_lettered
        ),
        (1_000, 2_000, 2_000, 0)
    );
    rt.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_context_carries_id_and_attempt() {
    let rec = Recorder::new();
    let rt = builder(&rec).start().unwrap();
    let id = rt
        .client()
        .enqueue(Probe::new(9, Behavior::FailTimes(1)))
        .await
        .unwrap();
    wait_state(&rt, id, JobState::Succeeded, LONG).await;
    let runs = rec.attempts_of(9);
    assert!(runs.iter().all(|r| r.id == id));
    assert_eq!(runs.iter().map(|r| r.attempt).collect::<Vec<_>>(), [1, 2]);
    rt.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn options_can_be_changed_per_runtime() {
    let rec = Recorder::new();
    let rt = builder(&rec)
        .options::<Probe>(|o| {
            o.max_attempts(5).queue("elsewhere").backoff(Backoff::new(
                Duration::from_secs(7),
                Duration::from_secs(7),
                0.0,
            ))
        })
        .start()
        .unwrap();
    let id = rt
        .client()
        .enqueue(Probe::new(1, Behavior::FailTimes(4)))
        .await
        .unwrap();
    let status = wait_state(&rt, id, JobState::Succeeded, LONG).await;
    assert_eq!((status.attempts, status.queue.as_ref()), (5, "elsewhere"));
    for gap in gaps(&rec.attempts_of(1)) {
        assert!(
            gap >= Duration::from_secs(7) && gap < Duration::from_millis(7_010),
            "{gap:?}"
        );
    }
    rt.shutdown().await;

    let err = JobRuntime::builder()
        .register::<Probe>()
        .data(Recorder::new())
        .options::<Slow>(|o| o)
        .start()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("options were given for `retry::Slow`, which is not a registered job"),
        "{err}"
    );
}
