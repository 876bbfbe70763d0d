//! Shutdown: drain versus cancel, exact counts, named leftovers, refusing new work.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Behavior, Probe, Recorder, builder, wait_state};
use job_core::ShutdownReport;
use job_core::prelude::*;

const LONG: Duration = Duration::from_secs(20);

#[tokio::test]
async fn running_jobs_drain_or_are_cancelled_and_the_rest_is_named() {
    let rec = Recorder::new();
    let hook_saw: Arc<Mutex<Option<ShutdownReport>>> = Arc::default();
    let rt = builder(&rec)
        .concurrency(2)
        .capacity(20)
        .shutdown_timeout(Duration::from_millis(400))
        .cancel_grace(Duration::from_secs(5))
        .on_shutdown({
            let hook_saw = hook_saw.clone();
            move |report: &ShutdownReport| *hook_saw.lock().unwrap() = Some(report.clone())
        })
        .start()
        .unwrap();
    let client = rt.client();

    // One job waiting to retry in a minute.
    let retrying = client
        .enqueue(Probe::new(1, Behavior::RetryAfterMs(60_000, 1)))
        .await
        .unwrap();
    wait_state(&rt, retrying, JobState::Retrying, LONG).await;
    // Two running: one finishes within the drain window, one only stops when cancelled.
    let finishes = client
        .enqueue(Probe::new(2, Behavior::SleepMs(100)))
        .await
        .unwrap();
    let cancelled = client
        .enqueue(Probe::new(3, Behavior::SleepUnlessCancelledMs(60_000)))
        .await
        .unwrap();
    wait_state(&rt, finishes, JobState::Running, LONG).await;
    wait_state(&rt, cancelled, JobState::Running, LONG).await;
    // Three queued behind them, one scheduled for later.
    let mut queued = Vec::new();
    for key in 4..7 {
        queued.push(
            client
                .enqueue(Probe::new(key, Behavior::Succeed))
                .await
                .unwrap(),
        );
    }
    let scheduled = client
        .enqueue_in(Probe::new(7, Behavior::Succeed), Duration::from_secs(3_600))
        .await
        .unwrap();

    let report = rt.shutdown().await;
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(report.cancelled, 1, "{report:?}");
    assert_eq!(report.cancelled_ids, [cancelled]);
    assert_eq!(report.left_behind, 5, "{report:?}");
    let left: HashSet<_> = report.left_behind_ids.iter().copied().collect();
    let mut expected: HashSet<_> = queued.iter().copied().collect();
    expected.extend([scheduled, retrying]);
    assert_eq!(left, expected);
    assert!(report.timed_out);

    assert_eq!(
        rt.status(finishes).await.unwrap().unwrap().state,
        JobState::Succeeded
    );
    let s = rt.status(cancelled).await.unwrap().unwrap();
    assert_eq!(
        s.last_error.as_deref(),
        Some("interrupted by shutdown: cancelled")
    );
    // The queued ones never started.
    let keys: HashSet<u64> = rec.runs().iter().map(|r| r.key).collect();
    assert_eq!(keys, HashSet::from([1, 2, 3]));

    // New work is refused, with the job handed back.
    let err = client
        .enqueue(Probe::new(8, Behavior::Succeed))
        .await
        .unwrap_err();
    assert!(err.is_shutting_down());
    assert_eq!(err.into_inner().key, 8);
    assert!(
        client
            .try_enqueue(Probe::new(9, Behavior::Succeed))
            .unwrap_err()
            .is_shutting_down()
    );
    assert!(
        client
            .enqueue_in(Probe::new(10, Behavior::Succeed), Duration::from_secs(1))
            .await
            .unwrap_err()
            .is_shutting_down()
    );

    // Calling it again is harmless and reports the same thing; the hook saw it once.
    assert_eq!(rt.shutdown().await, report);
    assert_eq!(hook_saw.lock().unwrap().as_ref(), Some(&report));
}

#[tokio::test]
async fn a_job_ignoring_its_token_is_dropped_after_the_grace() {
    let rec = Recorder::new();
    let rt = builder(&rec)
        .concurrency(1)
        .shutdown_timeout(Duration::from_millis(100))
        .cancel_grace(Duration::from_millis(100))
        .start()
        .unwrap();
    let stuck = rt
        .client()
        .enqueue(Probe::new(1, Behavior::Gate))
        .await
        .unwrap();
    wait_state(&rt, stuck, JobState::Running, LONG).await;
    let started = tokio::time::Instant::now();
    let report = tokio::time::timeout(LONG, rt.shutdown())
        .await
        .expect("shutdown ends");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        (report.completed, report.cancelled, report.left_behind),
        (0, 1, 0)
    );
    assert_eq!(report.cancelled_ids, [stuck]);
}

#[tokio::test]
async fn drain_mode_finishes_queued_jobs_within_the_window() {
    let rec = Recorder::new();
    let rt = builder(&rec)
        .concurrency(1)
        .drain_queue_on_shutdown(true)
        .start()
        .unwrap();
    for key in 0..5 {
        rt.client()
            .enqueue(Probe::new(key, Behavior::SleepMs(10)))
            .await
            .unwrap();
    }
    let report = rt.shutdown().await;
    assert_eq!(
        (report.completed, report.cancelled, report.left_behind),
        (5, 0, 0),
        "{report:?}"
    );
    assert_eq!(rec.successes(), 5);
}

#[tokio::test]
async fn an_enqueue_waiting_for_room_is_refused_when_shutdown_begins() {
    let rec = Recorder::new();
    let rt = builder(&rec)
        .capacity(1)
        .concurrency(1)
        .shutdown_timeout(Duration::from_millis(50))
        .cancel_grace(Duration::from_millis(50))
        .start()
        .unwrap();
    rt.client()
        .enqueue(Probe::new(1, Behavior::Gate))
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let client = rt.client();
        async move { client.enqueue(Probe::new(2, Behavior::Succeed)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished());
    rt.shutdown().await;
    let err = waiting.await.unwrap().unwrap_err();
    assert!(err.is_shutting_down());
    assert_eq!(err.into_inner().key, 2);
}

#[tokio::test]
async fn shutting_down_an_idle_runtime_is_quick_and_clean() {
    let rec = Recorder::new();
    let rt = builder(&rec).start().unwrap();
    let id = rt
        .client()
        .enqueue(Probe::new(1, Behavior::Succeed))
        .await
        .unwrap();
    wait_state(&rt, id, JobState::Succeeded, LONG).await;
    let report = rt.shutdown().await;
    assert_eq!(
        (report.completed, report.cancelled, report.left_behind),
        (0, 0, 0)
    );
    assert!(!report.timed_out);
    assert!(
        report.elapsed < Duration::from_secs(2),
        "{:?}",
        report.elapsed
    );
    assert!(rt.stats().is_stopping);
}
