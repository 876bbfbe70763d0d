//! The status lifecycle, delayed jobs, retention.

mod common;

use std::time::{Duration, SystemTime};

use common::{Behavior, Probe, Recorder, builder, eventually, wait_state};
use job_core::prelude::*;

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn queued_running_retrying_succeeded() {
    let rec = Recorder::new();
    let rt = builder(&rec).concurrency(1).start().unwrap();
    let client = rt.client();
    let blocker = client.enqueue(Probe::new(0, Behavior::Gate)).await.unwrap();
    let id = client
        .enqueue(Probe::new(1, Behavior::FailTimes(1)))
        .await
        .unwrap();

    let s = rt.status(id).await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.attempts, s.job.as_ref(), s.queue.as_ref()),
        (JobState::Queued, 0, "probe", "default")
    );
    assert!(s.last_error.is_none());
    let running = wait_state(&rt, blocker, JobState::Running, LONG).await;
    assert_eq!(running.attempts, 1);

    rec.open(1);
    let retrying = wait_state(&rt, id, JobState::Retrying, LONG).await;
    assert_eq!(retrying.attempts, 1);
    assert_eq!(retrying.last_error.as_deref(), Some("transient failure 1"));
    let done = wait_state(&rt, id, JobState::Succeeded, LONG).await;
    assert_eq!(done.attempts, 2);
    assert_eq!(
        done.last_error, None,
        "a succeeded job has no current error"
    );
    assert_eq!(done.last_failure.as_deref(), Some("transient failure 1"));
    assert!(done.updated_at >= done.enqueued_at);
    let json = serde_json::to_value(&done).unwrap();
    assert_eq!(json["state"], "succeeded");
    assert_eq!(json["job_id"], id.to_string());
    assert!(json["enqueued_at"].as_str().unwrap().ends_with('Z'));
    rt.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn delayed_jobs_are_scheduled_then_run_on_time() {
    let rec = Recorder::new();
    let rt = builder(&rec).start().unwrap();
    let start = tokio::time::Instant::now();
    let id = rt
        .client()
        .enqueue_in(Probe::new(1, Behavior::Succeed), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        rt.status(id).await.unwrap().unwrap().state,
        JobState::Scheduled
    );
    assert_eq!(rt.stats().depth, 1, "a scheduled job holds its slot");
    wait_state(&rt, id, JobState::Succeeded, LONG).await;
    let ran_at = rec.attempts_of(1)[0].at - start;
    assert!(
        ran_at >= Duration::from_secs(30) && ran_at < Duration::from_millis(30_050),
        "{ran_at:?}"
    );

    // enqueue_at with a time in the past runs at once.
    let id = rt
        .client()
        .enqueue_at(
            Probe::new(2, Behavior::Succeed),
            SystemTime::now() - Duration::from_secs(5),
        )
        .await
        .unwrap();
    wait_state(&rt, id, JobState::Succeeded, LONG).await;
    rt.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn delayed_jobs_run_in_start_time_order() {
    let rec = Recorder::new();
    let rt = builder(&rec).concurrency(1).start().unwrap();
    for (key, secs) in [(3, 30), (1, 10), (2, 20)] {
        rt.client()
            .enqueue_in(
                Probe::new(key, Behavior::Succeed),
                Duration::from_secs(secs),
            )
            .await
            .unwrap();
    }
    eventually(LONG, "all ran", || rec.successes() == 3).await;
    assert_eq!(
        rec.runs().iter().map(|r| r.key).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    rt.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn finished_statuses_expire_after_the_retention() {
    let rec = Recorder::new();
    let rt = builder(&rec)
        .status_retention(Duration::from_secs(10))
        .start()
        .unwrap();
    let id = rt
        .client()
        .enqueue(Probe::new(1, Behavior::Succeed))
        .await
        .unwrap();
    wait_state(&rt, id, JobState::Succeeded, LONG).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        rt.status(id).await.unwrap().is_some(),
        "kept within the retention"
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(rt.status(id).await.unwrap().is_none(), "expired");
    rt.shutdown().await;
}

#[tokio::test]
async fn finished_statuses_are_capped_by_count() {
    let rec = Recorder::new();
    let rt = builder(&rec)
        .status_capacity(64)
        .capacity(1_000)
        .start()
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..1_000 {
        ids.push(
            rt.client()
                .enqueue(Probe::new(i, Behavior::Succeed))
                .await
                .unwrap(),
        );
    }
    eventually(LONG, "all ran", || rec.successes() == 1_000).await;
    let mut kept = 0;
    for id in &ids {
        if rt.status(*id).await.unwrap().is_some() {
            kept += 1;
        }
    }
    assert!(kept <= 64 + 32, "kept {kept} finished statuses");
    assert!(kept > 0);
    rt.shutdown().await;
}

#[tokio::test]
async fn unknown_ids_have_no_status() {
    let rec = Recorder::new();
    let rt = builder(&rec).start().unwrap();
    assert!(rt.status(JobId::new()).await.unwrap().is_none());
    rt.shutdown().await;
}
