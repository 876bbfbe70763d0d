//! Metrics through the `metrics` facade (its own binary: the recorder is process-wide).

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{Behavior, Probe, Recorder, builder, eventually};
use job_core::JobId;
use job_core::backend::memory::MemoryBackend;
use job_core::backend::{Backend, Envelope, Payload, unix_ms};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};

fn find<'a>(
    snapshot: &'a [(
        CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )],
    kind: MetricKind,
    name: &str,
) -> Option<&'a DebugValue> {
    snapshot
        .iter()
        .find(|(k, ..)| {
            k.kind() == kind
                && k.key().name() == name
                && k.key()
                    .labels()
                    .any(|l| l.key() == "job" && l.value() == "probe")
                && k.key()
                    .labels()
                    .any(|l| l.key() == "queue" && l.value() == "default")
        })
        .map(|(.., v)| v)
}

#[tokio::test]
async fn counters_gauge_and_histogram_are_labelled_by_job_and_queue() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let rec = Recorder::new();
    let rt = builder(&rec).concurrency(1).start().unwrap();
    let c = rt.client();
    c.enqueue(Probe::new(1, Behavior::Succeed)).await.unwrap();
    c.enqueue(Probe::new(2, Behavior::FailTimes(1)))
        .await
        .unwrap();
    c.enqueue(Probe::new(3, Behavior::Permanent)).await.unwrap();
    eventually(Duration::from_secs(10), "done", || {
        let s = rt.stats();
        s.succeeded == 2 && s.dead_lettered == 1
    })
    .await;

    let snap = snapshotter.snapshot().into_vec();
    let counter = |name| match find(&snap, MetricKind::Counter, name) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(counter("jobs_enqueued_total"), 3);
    assert_eq!(counter("jobs_started_total"), 4);
    assert_eq!(counter("jobs_succeeded_total"), 2);
    assert_eq!(counter("jobs_failed_total"), 2);
    assert_eq!(counter("jobs_retried_total"), 1);
    assert_eq!(counter("jobs_dead_lettered_total"), 1);
    match find(&snap, MetricKind::Gauge, "jobs_queue_depth") {
        Some(DebugValue::Gauge(g)) => assert_eq!(g.into_inner(), 0.0),
        other => panic!("depth: {other:?}"),
    }
    match find(&snap, MetricKind::Histogram, "job_duration_seconds") {
        Some(DebugValue::Histogram(h)) => assert_eq!(h.len(), 4),
        other => panic!("duration: {other:?}"),
    }
    let stats = rt.stats();
    assert_eq!(
        (
            stats.enqueued,
            stats.started,
            stats.succeeded,
            stats.failed,
            stats.retried,
            stats.dead_lettered
        ),
        (3, 4, 2, 2, 1, 1)
    );
    rt.shutdown().await;

    // On a durable backend: a job whose worker died (reserved here, never renewed) is
    // recovered by this runtime's reaper, counted in `stats().recovered` and as
    // `jobs_recovered_total`.
    let store = Arc::new(MemoryBackend::new());
    let dead_worker = Envelope {
        id: JobId::new(),
        job: "probe".into(),
        queue: "default".into(),
        payload: Payload::encode(&Probe::new(9, Behavior::Succeed)).unwrap(),
        attempt: 0,
        max_attempts: 3,
        recoveries: 0,
        enqueued_at: unix_ms(SystemTime::now()),
        not_before: None,
        lease: None,
    };
    store.enqueue(dead_worker, 100).await.unwrap();
    let held = store
        .reserve(&["default".to_owned()], 1, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    let rt = builder(&rec)
        .backend(store.clone())
        .lease(Duration::from_millis(300))
        .reap_interval(Duration::from_millis(50))
        .start()
        .unwrap();
    eventually(Duration::from_secs(10), "recovered and run", || {
        let s = rt.stats();
        s.recovered == 1 && s.succeeded == 1
    })
    .await;
    let snap = snapshotter.snapshot().into_vec();
    let recovered = snap.iter().find_map(|(k, .., v)| {
        (k.kind() == MetricKind::Counter && k.key().name() == "jobs_recovered_total").then_some(v)
    });
    assert!(
        matches!(recovered, Some(DebugValue::Counter(1))),
        "jobs_recovered_total: {recovered:?}"
    );
    rt.shutdown().await;

    // The depth gauge while jobs wait, so that an untouched gauge (0) cannot pass. The
    // debugging recorder's snapshot resets each gauge it reads (a swap to 0), so every
    // check reads the gauge once, where its value tells: in memory, where the gauge moves
    // by increments per job and queue, while three jobs wait...
    let gauge = |labelled: bool| -> f64 {
        let snap = snapshotter.snapshot().into_vec();
        let value = if labelled {
            find(&snap, MetricKind::Gauge, "jobs_queue_depth")
        } else {
            snap.iter()
                .find(|(k, ..)| {
                    k.kind() == MetricKind::Gauge
                        && k.key().name() == "jobs_queue_depth"
                        && k.key().labels().next().is_none()
                })
                .map(|(.., v)| v)
        };
        match value {
            Some(DebugValue::Gauge(g)) => g.into_inner(),
            other => panic!("jobs_queue_depth (labelled: {labelled}): {other:?}"),
        }
    };
    let rec = Recorder::new();
    let rt = builder(&rec).concurrency(1).start().unwrap();
    for key in 10..13 {
        rt.client()
            .enqueue(Probe::new(key, Behavior::SleepMs(300)))
            .await
            .unwrap();
    }
    assert_eq!(gauge(true), 3.0, "three jobs admitted and not finished");
    eventually(Duration::from_secs(20), "the jobs succeed", || {
        rt.stats().succeeded == 3
    })
    .await;
    rt.shutdown().await;

    // ...and on Redis, where the runtime sets it from the store's stats every 500 ms (one
    // series without labels): 3 while the jobs wait, 0 once they are done.
    let (redis, _cleanup) = common::redis_backend().await;
    let rec = Recorder::new();
    let rt = builder(&rec).backend(redis).concurrency(1).start().unwrap();
    for key in 20..23 {
        rt.client()
            .enqueue(Probe::new(key, Behavior::SleepMs(1500)))
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(10), "the store's depth, 3", || {
        gauge(false) == 3.0
    })
    .await;
    eventually(Duration::from_secs(20), "the jobs succeed", || {
        rt.stats().succeeded == 3 && rt.stats().depth == 0
    })
    .await;
    // Set again by the next refresh after the store's depth read 0.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gauge(false), 0.0, "the store's depth back to 0");
    rt.shutdown().await;
}
