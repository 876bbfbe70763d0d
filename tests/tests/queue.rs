//! Admission, backpressure, the concurrency limit, no loss and no duplicates, health.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Behavior, Probe, Recorder, builder, eventually};
use job_core::HealthStatus;
use job_core::prelude::*;

const LONG: Duration = Duration::from_secs(20);

#[tokio::test]
async fn enqueue_waits_while_full_and_try_enqueue_hands_the_job_back() {
    let rec = Recorder::new();
    let rt = builder(&rec).capacity(2).concurrency(1).start().unwrap();
    let client = rt.client();
    client.enqueue(Probe::new(1, Behavior::Gate)).await.unwrap();
    client.enqueue(Probe::new(2, Behavior::Gate)).await.unwrap();
    assert_eq!(rt.stats().depth, 2);

    // try_enqueue never waits and gives the job back.
    let err = client
        .try_enqueue(Probe::new(3, Behavior::Succeed))
        .unwrap_err();
    assert!(err.is_full(), "{err}");
    assert_eq!(err.into_inner().key, 3);

    // enqueue waits for room...
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.enqueue(Probe::new(4, Behavior::Succeed)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "enqueue must wait while the runtime is full"
    );
    assert_eq!(rt.stats().enqueued, 2);
    assert_eq!(rt.stats().depth, 2, "never more admitted than capacity");

    // ...and goes through once a job finishes.
    rec.open(1);
    let id = tokio::time::timeout(LONG, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    rec.open(1);
    common::wait_state(&rt, id, JobState::Succeeded, LONG).await;
    eventually(LONG, "all three succeed", || rec.successes() == 3).await;
    eventually(LONG, "depth back to zero", || rt.stats().depth == 0).await;
    rt.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_enqueue_enqueues_nothing() {
    let rec = Recorder::new();
    let rt = builder(&rec).capacity(1).concurrency(1).start().unwrap();
    let client = rt.client();
    client.enqueue(Probe::new(1, Behavior::Gate)).await.unwrap();
    // Waits for room, then is dropped.
    let r = tokio::time::timeout(
        Duration::from_millis(50),
        client.enqueue(Probe::new(2, Behavior::Succeed)),
    )
    .await;
    assert!(r.is_err(), "enqueue should still be waiting");
    assert_eq!(rt.stats().enqueued, 1);
    rec.open(1);
    let id = client
        .enqueue(Probe::new(3, Behavior::Succeed))
        .await
        .unwrap();
    common::wait_state(&rt, id, JobState::Succeeded, LONG).await;
    let keys: HashSet<u64> = rec.runs().iter().map(|r| r.key).collect();
    assert_eq!(keys, HashSet::from([1, 3]), "the dropped enqueue never ran");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_a_flood() {
    let rec = Recorder::new();
    let rt = builder(&rec).capacity(50).concurrency(2).start().unwrap();
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let client = rt.client();
            tokio::spawn(async move {
                for i in 0..2_000u64 {
                    client
                        .enqueue(Probe::new(p * 1_000_000 + i, Behavior::Succeed))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut max_depth = 0;
    while !producers.iter().all(|p| p.is_finished()) {
        max_depth = max_depth.max(rt.stats().depth);
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    assert!(max_depth <= 50, "depth {max_depth} over capacity");
    eventually(LONG, "all run", || rec.successes() == 8_000).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_is_never_exceeded() {
    let rec = Recorder::new();
    let rt = builder(&rec).capacity(500).concurrency(3).start().unwrap();
    for i in 0..200 {
        rt.client()
            .enqueue(Probe::new(i, Behavior::SleepMs(2)))
            .await
            .unwrap();
    }
    eventually(LONG, "all run", || rec.successes() == 200).await;
    assert_eq!(rec.max_running.load(Ordering::SeqCst), 3);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_producers_ten_thousand_each_run_exactly_once() {
    let rec = Recorder::new();
    let rt = builder(&rec)
        .capacity(1_000)
        .concurrency(4)
        .start()
        .unwrap();
    let producers: Vec<_> = (0..8u64)
        .map(|p| {
            let client = rt.client();
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(10_000);
                for i in 0..10_000u64 {
                    ids.push(
                        client
                            .enqueue(Probe::new(p * 100_000 + i, Behavior::Succeed))
                            .await
                            .unwrap(),
                    );
                }
                ids
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for p in producers {
        ids.extend(p.await.unwrap());
    }
    assert_eq!(ids.len(), 80_000, "every enqueue got its own id");
    eventually(Duration::from_secs(60), "80,000 successes", || {
        rec.successes() >= 80_000
    })
    .await;
    let per_key = rec.runs_per_key();
    assert_eq!(per_key.len(), 80_000, "none lost");
    assert!(per_key.values().all(|&n| n == 1), "none twice");
    let report = rt.shutdown().await;
    assert_eq!(report.left_behind + report.cancelled, 0);
    let stats = rt.stats();
    assert_eq!((stats.enqueued, stats.succeeded), (80_000, 80_000));
}

#[tokio::test]
async fn health_follows_load_against_capacity() {
    let rec = Recorder::new();
    let rt = builder(&rec).capacity(20).concurrency(1).start().unwrap();
    let client = rt.client();
    assert_eq!(rt.health().status, HealthStatus::Healthy);
    for i in 0..14 {
        client.enqueue(Probe::new(i, Behavior::Gate)).await.unwrap();
    }
    assert_eq!(rt.health().status, HealthStatus::Healthy, "70%");
    client
        .enqueue(Probe::new(14, Behavior::Gate))
        .await
        .unwrap();
    assert_eq!(rt.health().status, HealthStatus::Degraded, "75%");
    for i in 15..19 {
        client.enqueue(Probe::new(i, Behavior::Gate)).await.unwrap();
    }
    let h = rt.health();
    assert_eq!(
        (h.status, h.depth, h.capacity),
        (HealthStatus::Unhealthy, 19, 20),
        "95%"
    );
    rec.open(19);
    eventually(LONG, "drained", || rec.successes() == 19).await;
    eventually(LONG, "healthy again", || {
        rt.health().status == HealthStatus::Healthy
    })
    .await;
    rt.shutdown().await;
    assert_eq!(rt.health().status, HealthStatus::Unhealthy, "stopping");
}

#[tokio::test]
async fn thresholds_are_configurable() {
    let rec = Recorder::new();
    let rt = builder(&rec)
        .capacity(10)
        .concurrency(1)
        .health_thresholds(0.2, 0.5)
        .start()
        .unwrap();
    for i in 0..2 {
        rt.client()
            .enqueue(Probe::new(i, Behavior::Gate))
            .await
            .unwrap();
    }
    assert_eq!(rt.health().status, HealthStatus::Degraded);
    for i in 2..5 {
        rt.client()
            .enqueue(Probe::new(i, Behavior::Gate))
            .await
            .unwrap();
    }
    assert_eq!(rt.health().status, HealthStatus::Unhealthy);
    rec.open(5);
    rt.shutdown().await;
}

#[tokio::test]
async fn oversized_and_unregistered_jobs_are_refused_with_the_job_back() {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Stranger;
    impl Job for Stranger {
        const NAME: &'static str = "stranger";
        type Error = std::io::Error;
        type Output = ();
        async fn run(&self, _: &JobContext) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    let rec = Recorder::new();
    let rt = builder(&rec).payload_limit(Some(64)).start().unwrap();
    let err = rt.client().try_enqueue(Stranger).unwrap_err();
    assert!(
        matches!(err, EnqueueError::NotRegistered(Stranger)),
        "{err}"
    );

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Big {
        blob: String,
    }
    impl Job for Big {
        const NAME: &'static str = "big";
        type Error = std::io::Error;
        type Output = ();
        async fn run(&self, _: &JobContext) -> Result<(), Self::Error> {
            Ok(())
        }
    }
    let rt2 = JobRuntime::builder()
        .register::<Big>()
        .payload_limit(Some(64))
        .start()
        .unwrap();
    let err = rt2
        .client()
        .enqueue(Big {
            blob: "x".repeat(100),
        })
        .await
        .unwrap_err();
    match &err {
        EnqueueError::PayloadTooLarge { size, limit, .. } => {
            assert_eq!((*size, *limit), (111, 64));
        }
        other => panic!("expected PayloadTooLarge, got {other}"),
    }
    assert_eq!(err.into_inner().blob.len(), 100);
    assert_eq!(rt2.stats().enqueued, 0);
    rt2.client()
        .enqueue(Big { blob: "ok".into() })
        .await
        .unwrap();
    rt.shutdown().await;
    rt2.shutdown().await;
}

#[tokio::test]
async fn several_runtimes_live_side_by_side() {
    let (a, b) = (Recorder::new(), Recorder::new());
    let rt_a = builder(&a).start().unwrap();
    let rt_b = builder(&b).start().unwrap();
    let id = rt_a
        .client()
        .enqueue(Probe::new(1, Behavior::Succeed))
        .await
        .unwrap();
    rt_b.client()
        .enqueue(Probe::new(2, Behavior::Succeed))
        .await
        .unwrap();
    common::wait_state(&rt_a, id, JobState::Succeeded, LONG).await;
    eventually(LONG, "b ran", || b.successes() == 1).await;
    assert!(
        rt_b.status(id).await.unwrap().is_none(),
        "statuses are per runtime"
    );
    assert_eq!(a.runs()[0].key, 1);
    assert_eq!(b.runs()[0].key, 2);
    rt_a.shutdown().await;
    rt_b.shutdown().await;
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<Client>();
    check::<JobRuntime>();
    let _ = Arc::new(0);
}
