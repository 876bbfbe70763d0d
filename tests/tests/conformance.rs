//! The conformance suite: the same assertions, through the runtime's public API, against
//! every store — the typed in-memory default, `MemoryBackend` (the backend contract in
//! memory), `RedisBackend` on a real server (`JOB_REDIS_URL`, default the local one),
//! `PostgresBackend` on a real server (`JOB_POSTGRES_URL`, default the local `test`
//! database) and `AzureQueueBackend` on Azurite (`JOB_AZURE_QUEUE`, default 127.0.0.1:10001);
//! a missing server fails these tests, it never skips them. Each capability's assertions run
//! on the stores that declare it; the others must answer `Unsupported` (Azure has no status
//! by id: there a job is done when the store no longer holds it, and dead when its poison
//! queue does).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Behavior, Probe, Recorder, eventually, wait_state};
use job_core::JobRuntimeBuilder;
use job_core::QueryError;
use job_core::backend::memory::MemoryBackend;
use job_core::backend::postgres::PostgresBackend;
use job_core::backend::redis::RedisBackend;
use job_core::backend::{Backend, Capabilities, Envelope, unix_ms};
use job_core::prelude::*;
use tokio::time::Instant;

const LONG: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Store {
    /// No backend: typed values in memory.
    Typed,
    /// `MemoryBackend`.
    Memory,
    /// `RedisBackend` on `JOB_REDIS_URL`, under a fresh key prefix.
    Redis,
    /// `PostgresBackend` on `JOB_POSTGRES_URL`, in a fresh schema.
    Postgres,
    /// `AzureQueueBackend` on `JOB_AZURE_QUEUE`, under a fresh queue prefix.
    Azure,
}

struct Setup {
    backend: Option<Arc<dyn Backend>>,
    memory: Option<Arc<MemoryBackend>>,
    redis: Option<Arc<RedisBackend>>,
    postgres: Option<Arc<PostgresBackend>>,
    _cleanup: Option<common::RedisCleanup>,
    _pg_cleanup: Option<common::pg::PgCleanup>,
    azure: Option<Arc<job_core::backend::azure::AzureQueueBackend>>,
    _azure_cleanup: Option<common::azure::AzureCleanup>,
}

impl Setup {
    async fn new(store: Store) -> Self {
        let mut setup = Setup {
            backend: None,
            memory: None,
            redis: None,
            postgres: None,
            _cleanup: None,
            _pg_cleanup: None,
            azure: None,
            _azure_cleanup: None,
        };
        match store {
            Store::Typed => {}
            Store::Memory => {
                let m = Arc::new(MemoryBackend::new());
                setup.backend = Some(m.clone());
                setup.memory = Some(m);
            }
            Store::Redis => {
                let (r, cleanup) = common::redis_backend().await;
                let r = Arc::new(r);
                setup.backend = Some(r.clone());
                setup.redis = Some(r);
                setup._cleanup = Some(cleanup);
            }
            Store::Postgres => {
                let (p, cleanup) = common::pg::postgres_backend().await;
                let p = Arc::new(p);
                setup.backend = Some(p.clone());
                setup.postgres = Some(p);
                setup._pg_cleanup = Some(cleanup);
            }
            Store::Azure => {
                let (a, cleanup) = common::azure::azure_backend().await;
                let a = Arc::new(a);
                setup.backend = Some(a.clone());
                setup.azure = Some(a);
                setup._azure_cleanup = Some(cleanup);
            }
        }
        setup
    }

    /// What the store declares (everything, for the typed default).
    fn caps(&self) -> Capabilities {
        self.backend
            .as_ref()
            .map_or_else(Capabilities::full, |b| b.capabilities())
    }

    /// Waits until the job is `state`: by its status where the store keeps one; where it
    /// cannot look jobs up by id (after checking that the runtime says so), until the store
    /// holds no live job, and for `Dead` one dead letter more than `dead_before`.
    async fn settled(
        &self,
        rt: &JobRuntime,
        id: JobId,
        state: JobState,
        dead_before: u64,
    ) -> Option<JobStatus> {
        if self.caps().status_by_id {
            return Some(wait_state(rt, id, state, LONG).await);
        }
        assert!(
            matches!(rt.status(id).await, Err(QueryError::Unsupported { .. })),
            "a store without status by id must answer Unsupported"
        );
        let backend = self.backend.clone().expect("a durable store");
        let deadline = Instant::now() + LONG;
        loop {
            let st = backend.stats().await.unwrap();
            let dead_ok = state != JobState::Dead || st.dead > dead_before;
            if st.depth() == 0 && dead_ok {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never {state:?}: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn durable(&self) -> bool {
        self.backend.is_some()
    }

    fn builder(&self, rec: &Arc<Recorder>) -> JobRuntimeBuilder {
        let b = common::builder(rec);
        match &self.backend {
            None => b,
            Some(backend) => b
                .backend(backend.clone())
                .lease(Duration::from_secs(5))
                .reap_interval(Duration::from_millis(500)),
        }
    }

    /// Stores something that is not a job envelope, as corruption would.
    async fn plant_raw(&self, id: JobId, queue: &str, raw: &str) {
        if let Some(m) = &self.memory {
            m.insert_raw(id, queue, raw);
        }
        if let Some(r) = &self.redis {
            r.insert_raw(id, queue, raw).await.unwrap();
        }
        if let Some(p) = &self.postgres {
            p.insert_raw(id, queue, raw).await.unwrap();
        }
        if let Some(a) = &self.azure {
            a.insert_raw(id, queue, raw).await.unwrap();
        }
    }
}

async fn ordering_within_a_queue(store: Store) {
    let s = Setup::new(store).await;
    if !s.caps().ordered {
        // The store promises no order (Azure Queue Storage).
        return;
    }
    let rec = Recorder::new();
    let rt = s.builder(&rec).concurrency(1).start().unwrap();
    for key in 0..20 {
        rt.client()
            .enqueue(Probe::new(key, Behavior::Succeed))
            .await
            .unwrap();
    }
    eventually(LONG, "all ran", || rec.successes() == 20).await;
    let keys: Vec<u64> = rec.runs().iter().map(|r| r.key).collect();
    assert_eq!(keys, (0..20).collect::<Vec<_>>());
    rt.shutdown().await;
}

async fn delayed_jobs_wait_for_their_time(store: Store) {
    let s = Setup::new(store).await;
    let rec = Recorder::new();
    let rt = s.builder(&rec).start().unwrap();
    let start = Instant::now();
    let id = rt
        .client()
        .enqueue_in(Probe::new(1, Behavior::Succeed), Duration::from_millis(600))
        .await
        .unwrap();
    if s.caps().status_by_id {
        assert_eq!(
            rt.status(id).await.unwrap().unwrap().state,
            JobState::Scheduled
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rec.runs().is_empty(), "ran before its time");
    s.settled(&rt, id, JobState::Succeeded, 0).await;
    let at = rec.attempts_of(1)[0].at - start;
    assert!(at >= Duration::from_millis(600), "{at:?}");
    assert!(at < Duration::from_millis(2_000), "{at:?}");
    rt.shutdown().await;
}

async fn retries_keep_their_attempt_count(store: Store) {
    let s = Setup::new(store).await;
    let rec = Recorder::new();
    let rt = s.builder(&rec).start().unwrap();
    let id = rt
        .client()
        .enqueue(Probe::new(1, Behavior::FailTimes(2)))
        .await
        .unwrap();
    if let Some(status) = s.settled(&rt, id, JobState::Succeeded, 0).await {
        assert_eq!(status.attempts, 3);
    }
    let runs = rec.attempts_of(1);
    assert_eq!(
        runs.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(runs.iter().all(|r| r.id == id));
    assert!(
        runs[1].at - runs[0].at >= Duration::from_millis(100),
        "backoff waited"
    );
    if let Some(status) = s.settled(&rt, id, JobState::Succeeded, 0).await {
        assert_eq!(status.attempts, 3);
    }
    rt.shutdown().await;
}

async fn exhausted_retries_dead_letter(store: Store) {
    let s = Setup::new(store).await;
    let rec = Recorder::new();
    let rt = s.builder(&rec).start().unwrap();
    let id = rt
        .client()
        .enqueue(Probe::new(1, Behavior::FailTimes(9)))
        .await
        .unwrap();
    if let Some(status) = s.settled(&rt, id, JobState::Dead, 0).await {
        assert_eq!(status.attempts, 3);
        assert_eq!(status.last_error.as_deref(), Some("transient failure 3"));
    }
    assert_eq!(rec.attempts_of(1).len(), 3);
    rt.shutdown().await;
}

async fn dead_letters_are_listed_and_requeued(store: Store) {
    let s = Setup::new(store).await;
    let rec = Recorder::new();
    let hooked = Arc::new(AtomicUsize::new(0));
    let rt = s
        .builder(&rec)
        .on_dead_letter({
            let hooked = hooked.clone();
            move |_d: DeadLetter| {
                let hooked = hooked.clone();
                async move {
                    hooked.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .start()
        .unwrap();
    let id = rt
        .client()
        .enqueue(Probe::new(5, Behavior::Permanent))
        .await
        .unwrap();
    s.settled(&rt, id, JobState::Dead, 0).await;
    if !s.caps().dead_letter_listing {
        assert!(matches!(
            rt.client().dead_letter(id).await,
            Err(QueryError::Unsupported { .. })
        ));
        assert!(matches!(
            rt.dead_letters().await,
            Err(QueryError::Unsupported { .. })
        ));
    }
    let deadline = Instant::now() + LONG;
    let dead = loop {
        if !s.caps().dead_letter_listing {
            break None;
        }
        if let Some(dead) = rt.client().dead_letter(id).await.unwrap() {
            break Some(dead);
        }
        assert!(Instant::now() < deadline, "never listed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if let Some(dead) = dead {
        assert_eq!(dead.job, "probe");
        assert_eq!(dead.attempts, 1);
        assert_eq!(dead.error, ["permanent failure"]);
        assert_eq!(
            dead.payload,
            serde_json::json!({"key": 5, "behavior": "Permanent"})
        );
    }
    eventually(LONG, "hook called", || hooked.load(Ordering::SeqCst) == 1).await;

    assert_eq!(rt.requeue(id).await.unwrap(), id);
    eventually(LONG, "ran again", || rec.attempts_of(5).len() == 2).await;
    if let Some(status) = s.settled(&rt, id, JobState::Dead, 0).await {
        assert_eq!(status.attempts, 1, "a fresh budget");
    }
    assert_eq!(rec.attempts_of(5)[1].attempt, 1);
    eventually(LONG, "hook called again", || {
        hooked.load(Ordering::SeqCst) == 2
    })
    .await;
    assert!(matches!(
        rt.requeue(JobId::new()).await,
        Err(job_core::RequeueError::NotFound(_))
    ));
    rt.shutdown().await;
}

async fn status_follows_the_job(store: Store) {
    let s = Setup::new(store).await;
    if !s.caps().status_by_id {
        let rt = s.builder(&Recorder::new()).start().unwrap();
        assert!(matches!(
            rt.status(JobId::new()).await,
            Err(QueryError::Unsupported { .. })
        ));
        rt.shutdown().await;
        return;
    }
    let rec = Recorder::new();
    let rt = s.builder(&rec).concurrency(1).start().unwrap();
    let id = rt
        .client()
        .enqueue(Probe::new(1, Behavior::Gate))
        .await
        .unwrap();
    let running = wait_state(&rt, id, JobState::Running, LONG).await;
    assert_eq!(
        (
            running.job.as_ref(),
            running.queue.as_ref(),
            running.attempts
        ),
        ("probe", "default", 1)
    );
    rec.open(1);
    let done = wait_state(&rt, id, JobState::Succeeded, LONG).await;
    assert!(done.updated_at >= done.enqueued_at);
    assert!(rt.status(JobId::new()).await.unwrap().is_none());
    rt.shutdown().await;
}

async fn shutdown_accounts_for_every_job(store: Store) {
    let s = Setup::new(store).await;
    let rec = Recorder::new();
    rec.stall.store(true, Ordering::SeqCst);
    let rt = s
        .builder(&rec)
        .concurrency(1)
        .shutdown_timeout(Duration::from_millis(300))
        .cancel_grace(Duration::from_secs(5))
        .start()
        .unwrap();
    let stalled = rt
        .client()
        .enqueue(Probe::new(1, Behavior::Stall))
        .await
        .unwrap();
    eventually(LONG, "the stalled job running", || {
        rec.attempts_of(1).len() == 1
    })
    .await;
    let mut queued = Vec::new();
    for key in 2..4 {
        queued.push(
            rt.client()
                .enqueue(Probe::new(key, Behavior::Succeed))
                .await
                .unwrap(),
        );
    }
    let report = rt.shutdown().await;
    assert_eq!((report.completed, report.cancelled), (0, 1), "{report:?}");
    assert_eq!(report.cancelled_ids, [stalled]);
    if !s.durable() {
        // In memory the queued jobs are lost with the process, so they are named.
        let mut left = report.left_behind_ids.clone();
        left.sort();
        queued.sort();
        assert_eq!(left, queued);
        return;
    }
    // A durable store keeps them, and gets the cancelled one back at once (no lease wait):
    // a new process runs all three. Queued jobs this process had prefetched are given back
    // too, and named as left behind (by this process).
    assert!(
        report.left_behind_ids.iter().all(|id| queued.contains(id)),
        "{report:?}"
    );
    rec.stall.store(false, Ordering::SeqCst);
    let restarted = Instant::now();
    let rt2 = s.builder(&rec).start().unwrap();
    eventually(LONG, "all three ran after the restart", || {
        rec.successes() == 3
    })
    .await;
    // Nothing waited for a lease (5 s here) to run out: every job this process held,
    // including any reserved while it was shutting down, was given back.
    assert!(
        restarted.elapsed() < Duration::from_secs(3),
        "{:?}",
        restarted.elapsed()
    );
    let stalled_runs = rec.attempts_of(1);
    assert_eq!(stalled_runs.len(), 2);
    assert_eq!(
        stalled_runs[1].attempt, 1,
        "the interrupted attempt was not counted"
    );
    rt2.shutdown().await;
}

async fn bad_payloads_are_dead_lettered_and_the_worker_goes_on(store: Store) {
    let s = Setup::new(store).await;
    let Some(backend) = s.backend.clone() else {
        // Typed values cannot be malformed: the compiler checks them.
        return;
    };
    let rec = Recorder::new();
    let hooked: Arc<std::sync::Mutex<Vec<DeadLetter>>> = Arc::default();
    let rt = s
        .builder(&rec)
        .concurrency(1)
        .on_dead_letter({
            let hooked = hooked.clone();
            move |d: DeadLetter| {
                hooked.lock().unwrap().push(d);
                async {}
            }
        })
        .start()
        .unwrap();
    let raw = JobId::new();
    s.plant_raw(raw, "default", "{not json at all").await;
    let envelope = |job: &str, payload| Envelope {
        id: JobId::new(),
        job: job.to_owned(),
        queue: "default".to_owned(),
        payload,
        attempt: 0,
        max_attempts: 3,
        recoveries: 0,
        enqueued_at: unix_ms(std::time::SystemTime::now()),
        not_before: None,
        lease: None,
    };
    let unknown = envelope("nobody_knows_me", serde_json::json!({}).into());
    let undecodable = envelope("probe", serde_json::json!({"key": "not a number"}).into());
    let (unknown_id, undecodable_id) = (unknown.id, undecodable.id);
    backend.enqueue(unknown, 100).await.unwrap();
    backend.enqueue(undecodable, 100).await.unwrap();
    let good = rt
        .client()
        .enqueue(Probe::new(1, Behavior::Succeed))
        .await
        .unwrap();
    eventually(LONG, "the good job ran", || rec.successes() == 1).await;
    s.settled(&rt, good, JobState::Succeeded, 0).await;

    let mut dead = Vec::new();
    let deadline = Instant::now() + LONG;
    while dead.len() < 3 {
        assert!(Instant::now() < deadline, "dead letters: {dead:?}");
        dead = match s.caps().dead_letter_listing {
            true => rt.dead_letters().await.unwrap(),
            // Where the store cannot list them, the hooks saw every one.
            false => hooked.lock().unwrap().clone(),
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reason = |id: JobId| {
        dead.iter()
            .find(|d| d.job_id == id)
            .map(|d| d.error_message())
            .unwrap_or_default()
    };
    assert!(reason(raw).starts_with("malformed job record"), "{dead:?}");
    assert!(
        reason(unknown_id).starts_with("unknown job `nobody_knows_me`"),
        "{dead:?}"
    );
    assert!(
        reason(undecodable_id).starts_with("payload does not decode as job `probe`"),
        "{dead:?}"
    );
    rt.shutdown().await;
}

macro_rules! suite {
    ($store:ident: $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Store::$store).await;
            }
        )*
    };
}

macro_rules! conformance {
    ($store:ident) => {
        suite!($store:
            ordering_within_a_queue,
            delayed_jobs_wait_for_their_time,
            retries_keep_their_attempt_count,
            exhausted_retries_dead_letter,
            dead_letters_are_listed_and_requeued,
            status_follows_the_job,
            shutdown_accounts_for_every_job,
            bad_payloads_are_dead_lettered_and_the_worker_goes_on,
        );
    };
}

mod typed {
    conformance!(Typed);
}

mod memory_backend {
    conformance!(Memory);
}

mod redis {
    conformance!(Redis);
}

mod postgres {
    conformance!(Postgres);
}

mod azure {
    conformance!(Azure);
}
