//! Metrics through the `metrics` facade (its own binary: the recorder is process-wide).

mod common;

use std::time::Duration;

use common::{Behavior, Probe, Recorder, builder, eventually};
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
}
