//! Batching on a durable backend (Redis): `Client::enqueue_many`, concurrent single enqueues
//! sharing round trips, acknowledgements written in batches (and flushed before shutdown
//! gives anything back), and the prefetch that reserves jobs ahead of the workers.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Behavior, Probe, Recorder, eventually, wait_state};
use job_core::JobRuntimeBuilder;
use job_core::backend::Backend;
use job_core::backend::redis::RedisBackend;
use job_core::prelude::*;
use serde::{Deserialize, Serialize};

const LONG: Duration = Duration::from_secs(20);

/// A job with a payload of any size, for the payload-limit case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Blob {
    n: u64,
    data: String,
}

impl Job for Blob {
    const NAME: &'static str = "blob";
    type Error = std::convert::Infallible;
    type Output = ();
    async fn run(&self, _: &JobContext) -> Result<(), Self::Error> {
        Ok(())
    }
}

fn blob(n: u64, size: usize) -> Blob {
    Blob {
        n,
        data: "x".repeat(size),
    }
}

/// A Redis backend on a fresh prefix (deleted on drop) and a fresh recorder.
async fn redis() -> (Arc<RedisBackend>, common::RedisCleanup, Arc<Recorder>) {
    let (backend, cleanup) = common::redis_backend().await;
    (Arc::new(backend), cleanup, Recorder::new())
}

/// Polls the backend's counts until `done` holds (or about 4 s pass); the last counts.
async fn backend_until(
    backend: &RedisBackend,
    done: impl Fn(&job_core::backend::BackendStats) -> bool,
) -> job_core::backend::BackendStats {
    let mut stats = backend.stats().await.unwrap();
    for _ in 0..200 {
        if done(&stats) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        stats = backend.stats().await.unwrap();
    }
    stats
}

fn on(backend: &Arc<RedisBackend>, rec: &Arc<Recorder>) -> JobRuntimeBuilder {
    common::builder(rec)
        .register::<Blob>()
        .backend(backend.clone())
        .lease(Duration::from_secs(5))
}

#[tokio::test]
async fn enqueue_many_stores_every_job_once_in_order() {
    let (backend, _cleanup, rec) = redis().await;
    let rt = on(&backend, &rec).concurrency(1).start().unwrap();
    // More than one batch (500 per call), with the workers already taking jobs.
    let ids = rt
        .client()
        .enqueue_many((0..1_203).map(|key| Probe::new(key, Behavior::Succeed)))
        .await
        .unwrap();
    assert_eq!(ids.len(), 1_203);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        1_203,
        "unique ids"
    );
    eventually(LONG, "all ran", || rec.successes() == 1_203).await;
    let keys: Vec<u64> = rec.runs().iter().map(|r| r.key).collect();
    assert_eq!(keys, (0..1_203).collect::<Vec<_>>(), "in order, each once");
    assert_eq!(rt.stats().enqueued, 1_203);
    let status = wait_state(&rt, ids[1_202], JobState::Succeeded, LONG).await;
    assert_eq!(status.attempts, 1);
    rt.shutdown().await;
}

#[tokio::test]
async fn enqueue_many_waits_for_room_under_capacity() {
    let (backend, _cleanup, rec) = redis().await;
    let rt = on(&backend, &rec)
        .capacity(20)
        .concurrency(2)
        .start()
        .unwrap();
    let ids = tokio::time::timeout(
        LONG,
        rt.client()
            .enqueue_many((0..150).map(|key| Probe::new(key, Behavior::SleepMs(1)))),
    )
    .await
    .expect("enqueue_many made progress as workers freed room")
    .unwrap();
    assert_eq!(ids.len(), 150);
    eventually(LONG, "all ran", || rec.successes() == 150).await;
    // Acknowledgements are written just after the attempts end.
    let depth = backend_until(&backend, |s| s.depth() == 0).await.depth();
    assert_eq!(depth, 0, "every job acknowledged");
    rt.shutdown().await;
}

/// In memory and on Redis alike: the jobs before a rejected one are enqueued, and the
/// error gives back the rejected job and every job after it.
async fn a_rejected_job_stops_the_batch_and_loses_nothing(backend: Option<Arc<RedisBackend>>) {
    let rec = Recorder::new();
    let mut b = common::builder(&rec)
        .register::<Blob>()
        .payload_limit(Some(1_000));
    if let Some(backend) = &backend {
        b = b.backend(backend.clone());
    }
    let rt = b.start().unwrap();
    let jobs: Vec<Blob> = (0..10)
        .map(|n| blob(n, if n == 6 { 5_000 } else { 10 }))
        .collect();
    let err = rt
        .client()
        .enqueue_many(jobs.clone())
        .await
        .expect_err("job 6 is over the payload limit");
    assert_eq!(err.enqueued.len(), 6);
    assert!(
        matches!(err.error, EnqueueError::PayloadTooLarge { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("after 6 jobs were enqueued"),
        "{err}"
    );
    assert_eq!(err.error.job(), &jobs[6]);
    assert_eq!(err.remaining, jobs[7..]);
    assert_eq!(err.into_jobs(), jobs[6..]);
    // An unregistered type is refused before anything is stored.
    let none = rt
        .client()
        .enqueue_many((0..3).map(|n| Unregistered { n }))
        .await
        .expect_err("not registered");
    assert!(none.enqueued.is_empty());
    assert!(matches!(none.error, EnqueueError::NotRegistered(_)));
    assert_eq!(none.remaining.len(), 2);
    // An empty batch is fine.
    let empty: Vec<Blob> = Vec::new();
    assert!(rt.client().enqueue_many(empty).await.unwrap().is_empty());
    // A single enqueue over the limit: the size is the encoded payload's, the same in
    // memory (counted) as on Redis (encoded once, and stored as encoded); the job comes
    // back; one byte under the limit goes in.
    let big = Blob {
        n: 7,
        data: "x".repeat(1_001 - 17),
    };
    let err = rt.client().enqueue(big.clone()).await.unwrap_err();
    match &err {
        EnqueueError::PayloadTooLarge { size, limit, .. } => {
            assert_eq!((*size, *limit), (1_001, 1_000));
        }
        other => panic!("expected PayloadTooLarge, got {other}"),
    }
    assert_eq!(err.into_inner(), big);
    let fits = Blob {
        n: 7,
        data: "x".repeat(1_000 - 17),
    };
    rt.client().enqueue(fits).await.unwrap();
    rt.shutdown().await;
}

#[derive(Debug, Serialize, Deserialize)]
struct Unregistered {
    n: u64,
}

impl Job for Unregistered {
    const NAME: &'static str = "unregistered";
    type Error = std::convert::Infallible;
    type Output = ();
    async fn run(&self, _: &JobContext) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[tokio::test]
async fn a_rejected_job_stops_the_batch_in_memory() {
    a_rejected_job_stops_the_batch_and_loses_nothing(None).await;
}

#[tokio::test]
async fn a_rejected_job_stops_the_batch_on_redis() {
    let (backend, _cleanup) = common::redis_backend().await;
    a_rejected_job_stops_the_batch_and_loses_nothing(Some(Arc::new(backend))).await;
}

#[tokio::test]
async fn concurrent_single_enqueues_all_land_once() {
    let (backend, _cleanup, rec) = redis().await;
    let rt = on(&backend, &rec).concurrency(4).start().unwrap();
    let tasks: Vec<_> = (0..32u64)
        .map(|t| {
            let client = rt.client();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..50 {
                    let job = Probe::new(t * 1_000 + i, Behavior::Succeed);
                    ids.push(client.enqueue(job).await.unwrap());
                }
                ids
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    assert_eq!(ids.len(), 1_600);
    eventually(LONG, "all ran", || rec.successes() == 1_600).await;
    let per_key = rec.runs_per_key();
    assert_eq!(per_key.len(), 1_600);
    assert!(per_key.values().all(|&n| n == 1), "each ran once");
    rt.shutdown().await;
}

#[tokio::test]
async fn successes_are_acknowledged_before_shutdown_gives_anything_back() {
    let (backend, _cleanup, rec) = redis().await;
    let rt = on(&backend, &rec).concurrency(4).start().unwrap();
    let ids = rt
        .client()
        .enqueue_many((0..400).map(|key| Probe::new(key, Behavior::Succeed)))
        .await
        .unwrap();
    // Shut down while jobs are still running and acknowledgements are in flight.
    eventually(LONG, "some ran", || rec.successes() >= 50).await;
    let report = rt.shutdown().await;
    let ran: HashSet<u64> = rec.runs().iter().map(|r| r.key).collect();
    // Every job that succeeded is acknowledged: none of them is in the store any more...
    let stats = backend.stats().await.unwrap();
    assert_eq!(stats.running, 0, "nothing left leased: {report:?}");
    assert_eq!(stats.ready as usize, 400 - ran.len(), "{report:?}");
    // ... and a new process runs exactly the ones that did not run.
    let rt2 = on(&backend, &rec).concurrency(4).start().unwrap();
    eventually(LONG, "the rest ran", || rec.successes() == 400).await;
    let per_key = rec.runs_per_key();
    assert_eq!(per_key.len(), 400);
    assert!(
        per_key.values().all(|&n| n == 1),
        "no successful job ran twice"
    );
    for id in [ids[0], ids[399]] {
        wait_state(&rt2, id, JobState::Succeeded, LONG).await;
    }
    rt2.shutdown().await;
}

#[tokio::test]
async fn long_jobs_are_not_prefetched_by_default() {
    let (backend, _cleanup, rec) = redis().await;
    let rt = on(&backend, &rec).concurrency(1).start().unwrap();
    let ids = rt
        .client()
        .enqueue_many((0..4).map(|key| Probe::new(key, Behavior::SleepMs(300))))
        .await
        .unwrap();
    // While the second job runs (the first has told how long jobs take), the last two are
    // still queued: free for any other process to take.
    wait_state(&rt, ids[1], JobState::Running, LONG).await;
    for id in &ids[2..] {
        let s = rt.status(*id).await.unwrap().unwrap();
        assert_eq!(s.state, JobState::Queued, "{id} was reserved ahead");
    }
    rt.shutdown().await;
}

#[tokio::test]
async fn a_fixed_prefetch_reserves_ahead_and_gives_back_at_shutdown() {
    let (backend, _cleanup, rec) = redis().await;
    let rt = on(&backend, &rec)
        .concurrency(1)
        .prefetch(2)
        .shutdown_timeout(Duration::from_secs(5))
        .start()
        .unwrap();
    let ids = rt
        .client()
        .enqueue_many((0..5).map(|key| Probe::new(key, Behavior::SleepMs(400))))
        .await
        .unwrap();
    wait_state(&rt, ids[0], JobState::Running, LONG).await;
    let running = backend_until(&backend, |s| s.running == 3).await.running;
    assert_eq!(running, 3, "one running and two reserved ahead");
    let report = rt.shutdown().await;
    // The running one finished; the two reserved ahead went back at once, named as left
    // behind by this process.
    assert_eq!(report.completed, 1, "{report:?}");
    assert_eq!(report.left_behind_ids.len(), 2, "{report:?}");
    let stats = backend.stats().await.unwrap();
    assert_eq!((stats.ready, stats.running), (4, 0));
    let statuses: Vec<JobState> = {
        let mut v = Vec::new();
        for id in &ids[1..] {
            v.push(backend.status(*id).await.unwrap().unwrap().state);
        }
        v
    };
    assert!(
        statuses.iter().all(|s| *s == JobState::Queued),
        "{statuses:?}"
    );
}

/// `MemoryBackend` with faults: acknowledgements that take a while (a slow network), to
/// catch a shutdown that gives back jobs whose success is still being written; and, when
/// `broken_batches` is set, slow single enqueues and batch enqueues that panic (a backend
/// bug), to check that enqueues waiting for a batch get an error instead of hanging.
#[derive(Debug, Default)]
struct SlowAcks(
    job_core::backend::memory::MemoryBackend,
    std::sync::atomic::AtomicBool,
);

mod slow_acks {
    use std::time::Duration;

    use job_core::backend::{
        Backend, BackendError, BackendStats, BoxFuture, Envelope, Extended, LeaseToken, Reaped,
        Reservation, Retry,
    };
    use job_core::{DeadLetter, JobId, JobStatus};

    use super::SlowAcks;

    const DELAY: Duration = Duration::from_millis(300);

    impl Backend for SlowAcks {
        fn name(&self) -> &'static str {
            "slow-acks"
        }
        fn connect(&self) -> BoxFuture<'_, Result<(), BackendError>> {
            self.0.connect()
        }
        fn enqueue(&self, e: Envelope, cap: u64) -> BoxFuture<'_, Result<(), BackendError>> {
            Box::pin(async move {
                if self.1.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(DELAY).await;
                }
                self.0.enqueue(e, cap).await
            })
        }
        fn enqueue_batch<'a>(
            &'a self,
            envelopes: &'a [Envelope],
            cap: u64,
        ) -> BoxFuture<'a, Result<usize, BackendError>> {
            Box::pin(async move {
                assert!(
                    !self.1.load(std::sync::atomic::Ordering::SeqCst),
                    "a backend bug: enqueue_batch panicked"
                );
                self.0.enqueue_batch(envelopes, cap).await
            })
        }
        fn reserve<'a>(
            &'a self,
            queues: &'a [String],
            max: usize,
            lease: Duration,
        ) -> BoxFuture<'a, Result<Vec<Reservation>, BackendError>> {
            self.0.reserve(queues, max, lease)
        }
        fn wait_for_work<'a>(&'a self, queues: &'a [String], t: Duration) -> BoxFuture<'a, ()> {
            self.0.wait_for_work(queues, t)
        }
        fn ack(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
            Box::pin(async move {
                tokio::time::sleep(DELAY).await;
                self.0.ack(id, token.clone()).await
            })
        }
        fn ack_batch<'a>(
            &'a self,
            acks: &'a [(JobId, LeaseToken)],
        ) -> BoxFuture<'a, Result<Vec<JobId>, BackendError>> {
            Box::pin(async move {
                tokio::time::sleep(DELAY).await;
                self.0.ack_batch(acks).await
            })
        }
        fn retry(
            &self,
            id: JobId,
            token: LeaseToken,
            retry: Retry,
        ) -> BoxFuture<'_, Result<(), BackendError>> {
            self.0.retry(id, token.clone(), retry)
        }
        fn dead_letter(
            &self,
            id: JobId,
            token: LeaseToken,
            record: DeadLetter,
        ) -> BoxFuture<'_, Result<(), BackendError>> {
            self.0.dead_letter(id, token.clone(), record)
        }
        fn extend<'a>(
            &'a self,
            leases: &'a [(JobId, LeaseToken)],
            lease: Duration,
        ) -> BoxFuture<'a, Result<Extended, BackendError>> {
            self.0.extend(leases, lease)
        }
        fn release(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
            self.0.release(id, token.clone())
        }
        fn reap(&self, max_recoveries: u32) -> BoxFuture<'_, Result<Reaped, BackendError>> {
            self.0.reap(max_recoveries)
        }
        fn status(&self, id: JobId) -> BoxFuture<'_, Result<Option<JobStatus>, BackendError>> {
            self.0.status(id)
        }
        fn stats(&self) -> BoxFuture<'_, Result<BackendStats, BackendError>> {
            self.0.stats()
        }
        fn dead_letters(
            &self,
            limit: usize,
        ) -> BoxFuture<'_, Result<Vec<DeadLetter>, BackendError>> {
            self.0.dead_letters(limit)
        }
        fn requeue(&self, id: JobId) -> BoxFuture<'_, Result<(), BackendError>> {
            self.0.requeue(id)
        }
    }
}

#[tokio::test]
async fn shutdown_waits_for_acknowledgements_in_flight() {
    let backend = Arc::new(SlowAcks::default());
    let rec = Recorder::new();
    let rt = common::builder(&rec)
        .backend(backend.clone())
        .concurrency(2)
        .start()
        .unwrap();
    rt.client()
        .enqueue_many((0..20).map(|key| Probe::new(key, Behavior::Succeed)))
        .await
        .unwrap();
    eventually(LONG, "all ran", || rec.successes() == 20).await;
    // Their acknowledgements are still on the way (300 ms each batch) when shutdown starts.
    let report = rt.shutdown().await;
    assert!(report.left_behind_ids.is_empty(), "{report:?}");
    let stats = backend.stats().await.unwrap();
    assert_eq!(stats.depth(), 0, "every success acknowledged: {stats:?}");
    // Nothing runs again in a new process.
    let rt2 = common::builder(&rec)
        .backend(backend.clone())
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rec.runs().len(), 20, "a successful job ran twice");
    rt2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueues_waiting_for_a_batch_that_dies_get_an_error() {
    let backend = Arc::new(SlowAcks::default());
    backend.1.store(true, std::sync::atomic::Ordering::SeqCst);
    let rec = Recorder::new();
    let rt = common::builder(&rec)
        .backend(backend.clone())
        .start()
        .unwrap();
    // The first goes out alone (slowly); the others wait for it, then go as one batch,
    // whose call panics.
    let tasks: Vec<_> = (0..8u64)
        .map(|key| {
            let client = rt.client();
            tokio::spawn(async move {
                let r = client.enqueue(Probe::new(key, Behavior::Succeed)).await;
                r.map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut ok = 0;
    let mut failed = Vec::new();
    for t in tasks {
        match tokio::time::timeout(LONG, t)
            .await
            .expect("no enqueue hangs")
        {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => failed.push(e),
            Err(e) => panic!("enqueue task panicked: {e}"),
        }
    }
    assert!(ok >= 1, "the first went out alone");
    assert!(!failed.is_empty(), "some waited for the batch");
    assert!(failed.iter().all(|e| e.contains("backend")), "{failed:?}");
    // The slot is free again: the next enqueues work, alone and in batches.
    backend.1.store(false, std::sync::atomic::Ordering::SeqCst);
    let client = rt.client();
    let ids = tokio::time::timeout(
        LONG,
        futures_util::future::join_all(
            (100..104).map(|key| client.enqueue(Probe::new(key, Behavior::Succeed))),
        ),
    )
    .await
    .expect("enqueues after the failure do not hang");
    assert!(ids.iter().all(Result::is_ok), "{ids:?}");
    rt.shutdown().await;
}

/// `MemoryBackend` that counts `record_progress` calls.
#[derive(Debug, Default)]
struct CountsProgress(
    job_core::backend::memory::MemoryBackend,
    std::sync::atomic::AtomicUsize,
);

mod counts_progress {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use job_core::backend::{
        Backend, BackendError, BackendStats, BoxFuture, Envelope, Extended, LeaseToken, Payload,
        Reaped, Reservation, Retry,
    };
    use job_core::{DeadLetter, JobId, JobStatus};

    use super::CountsProgress;

    impl Backend for CountsProgress {
        fn name(&self) -> &'static str {
            "counts-progress"
        }
        fn connect(&self) -> BoxFuture<'_, Result<(), BackendError>> {
            self.0.connect()
        }
        fn enqueue(&self, e: Envelope, cap: u64) -> BoxFuture<'_, Result<(), BackendError>> {
            self.0.enqueue(e, cap)
        }
        fn reserve<'a>(
            &'a self,
            queues: &'a [String],
            max: usize,
            lease: Duration,
        ) -> BoxFuture<'a, Result<Vec<Reservation>, BackendError>> {
            self.0.reserve(queues, max, lease)
        }
        fn wait_for_work<'a>(&'a self, queues: &'a [String], t: Duration) -> BoxFuture<'a, ()> {
            self.0.wait_for_work(queues, t)
        }
        fn ack(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
            self.0.ack(id, token)
        }
        fn retry(
            &self,
            id: JobId,
            token: LeaseToken,
            retry: Retry,
        ) -> BoxFuture<'_, Result<(), BackendError>> {
            self.0.retry(id, token, retry)
        }
        fn dead_letter(
            &self,
            id: JobId,
            token: LeaseToken,
            record: DeadLetter,
        ) -> BoxFuture<'_, Result<(), BackendError>> {
            self.0.dead_letter(id, token, record)
        }
        fn extend<'a>(
            &'a self,
            leases: &'a [(JobId, LeaseToken)],
            lease: Duration,
        ) -> BoxFuture<'a, Result<Extended, BackendError>> {
            self.0.extend(leases, lease)
        }
        fn release(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
            self.0.release(id, token)
        }
        fn reap(&self, max_recoveries: u32) -> BoxFuture<'_, Result<Reaped, BackendError>> {
            self.0.reap(max_recoveries)
        }
        fn status(&self, id: JobId) -> BoxFuture<'_, Result<Option<JobStatus>, BackendError>> {
            self.0.status(id)
        }
        fn stats(&self) -> BoxFuture<'_, Result<BackendStats, BackendError>> {
            self.0.stats()
        }
        fn dead_letters(
            &self,
            limit: usize,
        ) -> BoxFuture<'_, Result<Vec<DeadLetter>, BackendError>> {
            self.0.dead_letters(limit)
        }
        fn requeue(&self, id: JobId) -> BoxFuture<'_, Result<(), BackendError>> {
            self.0.requeue(id)
        }
        fn record_progress<'a>(
            &'a self,
            updates: &'a [(JobId, LeaseToken, Payload)],
        ) -> BoxFuture<'a, Result<(), BackendError>> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.record_progress(updates)
        }
    }
}

/// Reports progress 1..=1000, one every millisecond or so.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Chatty;

impl Job for Chatty {
    const NAME: &'static str = "chatty";
    type Error = std::convert::Infallible;
    type Output = ();
    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        for i in 1..=1000u32 {
            cx.progress(&i).expect("small");
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(())
    }
}

/// A job reporting progress a thousand times in about a second costs the store about one
/// write per 100 ms, not one per report; the last report is written before the job ends.
#[tokio::test]
async fn progress_reports_are_written_at_most_every_100_ms() {
    let backend = Arc::new(CountsProgress::default());
    let rt = JobRuntime::builder()
        .register::<Chatty>()
        .backend(backend.clone())
        .start()
        .unwrap();
    let started = std::time::Instant::now();
    let id = rt.client().enqueue(Chatty).await.unwrap();
    let done = rt.client().wait(id, Duration::from_secs(30)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.progress, Some(serde_json::json!(1000)));
    let writes = backend.1.load(std::sync::atomic::Ordering::SeqCst);
    // One per 100 ms turn, and one at the end.
    let most = usize::try_from(took.as_millis() / 100).unwrap_or(usize::MAX) + 2;
    assert!(
        (1..=most).contains(&writes),
        "{writes} writes for 1,000 reports in {took:?}"
    );
    rt.shutdown().await;
}
