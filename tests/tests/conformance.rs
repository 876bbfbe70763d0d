//! The conformance suite: the same assertions, through the runtime's public API, against
//! every store — the typed in-memory default, `MemoryBackend` (the backend contract in
//! memory), `RedisBackend` on a real server (`JOB_REDIS_URL`, default the local one) and
//! `PostgresBackend` on a real server (`JOB_POSTGRES_URL`, default the local `test`
//! database), `AmqpBackend` on a real broker (`JOB_AMQP_URL`, default the local RabbitMQ) and
//! `AzureQueueBackend` on Azurite (`JOB_AZURE_QUEUE`, default 127.0.0.1:10001); a missing
//! server fails these tests, it never skips them. Where a backend does not declare status by
//! id or dead-letter listing, the checks assert that the runtime answers `Unsupported` and
//! follow the job by what it did instead (the recorder, the dead-letter hook).

mod common;
mod conformance {
    pub(super) mod schedules;
    pub(super) mod unique;
}

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Behavior, Probe, Recorder, eventually, wait_state};
use conformance::schedules::ticks_run_once_across_processes;
use conformance::unique::{a_key_is_held_as_asked, one_key_makes_one_job};
use job_core::JobRuntimeBuilder;
use job_core::backend::amqp::AmqpBackend;
use job_core::backend::azure::AzureQueueBackend;
use job_core::backend::memory::MemoryBackend;
use job_core::backend::postgres::PostgresBackend;
use job_core::backend::redis::RedisBackend;
use job_core::backend::{Backend, Envelope, unix_ms};
use job_core::prelude::*;
use serde::{Deserialize, Serialize};
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
    /// `AmqpBackend` on `JOB_AMQP_URL`, under a fresh name prefix.
    Amqp,
    /// `AzureQueueBackend` on `JOB_AZURE_QUEUE`, under a fresh queue prefix.
    Azure,
}

struct Setup {
    backend: Option<Arc<dyn Backend>>,
    memory: Option<Arc<MemoryBackend>>,
    redis: Option<Arc<RedisBackend>>,
    postgres: Option<Arc<PostgresBackend>>,
    amqp: Option<Arc<AmqpBackend>>,
    azure: Option<Arc<AzureQueueBackend>>,
    /// Every dead letter the runtimes built by `builder` reported to their hook.
    hooked: Arc<Mutex<Vec<DeadLetter>>>,
    _azure_cleanup: Option<common::azure::AzureCleanup>,
    _amqp_cleanup: Option<common::amqp::AmqpCleanup>,
    _cleanup: Option<common::RedisCleanup>,
    _pg_cleanup: Option<common::pg::PgCleanup>,
}

impl Setup {
    async fn new(store: Store) -> Self {
        let mut setup = Setup {
            backend: None,
            memory: None,
            redis: None,
            postgres: None,
            amqp: None,
            azure: None,
            hooked: Arc::default(),
            _azure_cleanup: None,
            _amqp_cleanup: None,
            _cleanup: None,
            _pg_cleanup: None,
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
            Store::Amqp => {
                let (a, cleanup) = common::amqp::amqp_backend().await;
                setup.backend = Some(a.clone());
                setup.amqp = Some(a);
                setup._amqp_cleanup = Some(cleanup);
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

    /// Whether the store can tell a job's status by id.
    fn has_status(&self) -> bool {
        self.backend
            .as_ref()
            .is_none_or(|b| b.capabilities().status_by_id)
    }

    /// Waits until job `id` reaches `state`, or, where the store has no status by id, asserts
    /// that the runtime answers `Unsupported` and waits until `done` says the job got there.
    async fn reached(
        &self,
        rt: &JobRuntime,
        id: JobId,
        state: JobState,
        done: impl FnMut() -> bool,
    ) -> Option<JobStatus> {
        if self.has_status() {
            return Some(wait_state(rt, id, state, LONG).await);
        }
        let r = rt.status(id).await;
        assert!(
            matches!(r, Err(job_core::QueryError::Unsupported { .. })),
            "status without the capability: {r:?}"
        );
        eventually(LONG, &format!("job {id} reached {state:?}"), done).await;
        None
    }

    /// Whether the store can cancel a job by id.
    fn can_cancel(&self) -> bool {
        self.backend
            .as_ref()
            .is_none_or(|b| b.capabilities().cancel_by_id)
    }

    /// Whether the store can list its dead letters.
    fn has_listing(&self) -> bool {
        self.backend
            .as_ref()
            .is_none_or(|b| b.capabilities().dead_letter_listing)
    }

    /// How many dead letters the hook has been given.
    fn hooked(&self) -> usize {
        self.hooked.lock().unwrap().len()
    }

    /// The dead letter of job `id`: looked up by id where the store lists dead letters;
    /// where it does not, asserts that the runtime answers `Unsupported` and takes the
    /// record the dead-letter hook was given.
    async fn dead_letter_of(&self, rt: &JobRuntime, id: JobId) -> DeadLetter {
        let deadline = Instant::now() + LONG;
        if !self.has_listing() {
            let r = rt.client().dead_letter(id).await;
            assert!(
                matches!(r, Err(job_core::QueryError::Unsupported { .. })),
                "dead-letter lookup without the capability: {r:?}"
            );
        }
        loop {
            let found = if self.has_listing() {
                rt.client().dead_letter(id).await.unwrap()
            } else {
                let hooked = self.hooked.lock().unwrap();
                hooked.iter().rev().find(|d| d.job_id == id).cloned()
            };
            if let Some(dead) = found {
                return dead;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} was never dead-lettered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn durable(&self) -> bool {
        self.backend.is_some()
    }

    fn builder(&self, rec: &Arc<Recorder>) -> JobRuntimeBuilder {
        let hooked = self.hooked.clone();
        let b = common::builder(rec).on_dead_letter(move |d: DeadLetter| {
            hooked.lock().unwrap().push(d);
            std::future::ready(())
        });
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
        if let Some(a) = &self.amqp {
            a.insert_raw(id, queue, raw).await.unwrap();
        }
        if let Some(a) = &self.azure {
            a.insert_raw(id, queue, raw).await.unwrap();
        }
    }
}

async fn ordering_within_a_queue(store: Store) {
    let s = Setup::new(store).await;
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
    if s.has_status() {
        assert_eq!(
            rt.status(id).await.unwrap().unwrap().state,
            JobState::Scheduled
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rec.runs().is_empty(), "ran before its time");
    s.reached(&rt, id, JobState::Succeeded, || rec.successes() == 1)
        .await;
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
    if let Some(status) = s
        .reached(&rt, id, JobState::Succeeded, || rec.successes() == 1)
        .await
    {
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
    if let Some(status) = s.reached(&rt, id, JobState::Succeeded, || true).await {
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
    if let Some(status) = s.reached(&rt, id, JobState::Dead, || true).await {
        assert_eq!(status.attempts, 3);
        assert_eq!(status.last_error.as_deref(), Some("transient failure 3"));
    } else {
        let dead = s.dead_letter_of(&rt, id).await;
        assert_eq!(dead.attempts, 3);
        assert_eq!(dead.error_message(), "transient failure 3");
    }
    let runs: Vec<u32> = rec.attempts_of(1).iter().map(|r| r.attempt).collect();
    assert_eq!(runs, [1, 2, 3], "attempts run");
    rt.shutdown().await;
}

async fn dead_letters_are_listed_and_requeued(store: Store) {
    let s = Setup::new(store).await;
    let rec = Recorder::new();
    let rt = s.builder(&rec).start().unwrap();
    let id = rt
        .client()
        .enqueue(Probe::new(5, Behavior::Permanent))
        .await
        .unwrap();
    s.reached(&rt, id, JobState::Dead, || s.hooked() == 1).await;
    let dead = s.dead_letter_of(&rt, id).await;
    assert_eq!(dead.job, "probe");
    assert_eq!(dead.attempts, 1);
    assert_eq!(dead.error, ["permanent failure"]);
    assert_eq!(
        dead.payload,
        serde_json::json!({"key": 5, "behavior": "Permanent"})
    );
    eventually(LONG, "hook called", || s.hooked() == 1).await;

    // Without listing, the hook (called before the store's write) is what said it died:
    // the store may take a moment longer to have the dead letter.
    let deadline = Instant::now() + LONG;
    let requeued = loop {
        match rt.requeue(id).await {
            Err(job_core::RequeueError::NotFound(_))
                if !s.has_listing() && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(requeued, id);
    eventually(LONG, "ran again", || rec.attempts_of(5).len() == 2).await;
    if let Some(status) = s.reached(&rt, id, JobState::Dead, || s.hooked() == 2).await {
        assert_eq!(status.attempts, 1, "a fresh budget");
    }
    assert_eq!(rec.attempts_of(5)[1].attempt, 1);
    eventually(LONG, "hook called again", || s.hooked() == 2).await;
    assert!(matches!(
        rt.requeue(JobId::new()).await,
        Err(job_core::RequeueError::NotFound(_))
    ));
    rt.shutdown().await;
}

async fn status_follows_the_job(store: Store) {
    let s = Setup::new(store).await;
    let rec = Recorder::new();
    let rt = s.builder(&rec).concurrency(1).start().unwrap();
    if !s.has_status() {
        // Not declared: the runtime answers Unsupported, naming the backend.
        let r = rt.status(JobId::new()).await;
        assert!(
            matches!(r, Err(job_core::QueryError::Unsupported { .. })),
            "{r:?}"
        );
        rt.shutdown().await;
        return;
    }
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
    s.reached(&rt, stalled, JobState::Running, || !rec.runs().is_empty())
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
    let rt = s.builder(&rec).concurrency(1).start().unwrap();
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
    s.reached(&rt, good, JobState::Succeeded, || rec.successes() == 1)
        .await;

    let mut dead = Vec::new();
    for id in [raw, unknown_id, undecodable_id] {
        dead.push(s.dead_letter_of(&rt, id).await);
    }
    if s.has_listing() {
        let listed = rt.dead_letters().await.unwrap();
        assert_eq!(listed.len(), 3, "{listed:?}");
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

/// `Client::wait` returns the final status once the job finished (through its retries),
/// the status at the deadline when it has not, and `NotFound` for an unknown id; on a
/// backend without status by id it answers `Unsupported`.
async fn wait_returns_the_final_status(store: Store) {
    let s = Setup::new(store).await;
    let rec = Recorder::new();
    let rt = s.builder(&rec).start().unwrap();
    let client = rt.client();
    let gated = client.enqueue(Probe::new(1, Behavior::Gate)).await.unwrap();
    if !s.has_status() {
        let r = client.wait(gated, Duration::from_secs(1)).await;
        assert!(
            matches!(r, Err(job_core::WaitError::Unsupported { .. })),
            "{r:?}"
        );
        rec.open(1);
        rt.shutdown().await;
        return;
    }
    let r = client.wait(gated, Duration::from_millis(300)).await;
    match r {
        Err(job_core::WaitError::TimedOut(st)) => {
            assert!(!st.state.is_finished(), "{st:?}");
            assert_eq!(st.job_id, gated);
        }
        other => panic!("a gated job's wait must time out: {other:?}"),
    }
    // Opened while the wait is on: it returns with the job's final status.
    let opener = {
        let rec = rec.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            rec.open(1);
        })
    };
    let done = client.wait(gated, LONG).await.unwrap();
    assert_eq!((done.state, done.attempts), (JobState::Succeeded, 1));
    opener.await.unwrap();

    // Through two retries to its death.
    let doomed = client
        .enqueue(Probe::new(2, Behavior::FailTimes(9)))
        .await
        .unwrap();
    let dead = client.wait(doomed, LONG).await.unwrap();
    assert_eq!((dead.state, dead.attempts), (JobState::Dead, 3));
    assert_eq!(rec.attempts_of(2).len(), 3);
    // A finished job answers at once.
    let again = client.wait(gated, Duration::ZERO).await.unwrap();
    assert_eq!(again.state, JobState::Succeeded);

    let unknown = JobId::new();
    let r = client.wait(unknown, Duration::from_millis(50)).await;
    assert!(
        matches!(r, Err(job_core::WaitError::NotFound(x)) if x == unknown),
        "{r:?}"
    );
    rt.shutdown().await;
}

/// Progress: a job reporting in a tight loop shows its latest report in its status while it
/// runs (within the durable writer's 100 ms), and its last one after it finished; the
/// stores without status by id take the reports and run the job as usual.
async fn progress_shows_in_the_status(store: Store) {
    let s = Setup::new(store).await;
    let rec = Recorder::new();
    let rt = s.builder(&rec).start().unwrap();
    let client = rt.client();
    let id = client
        .enqueue(Probe::new(1, Behavior::ProgressThenGate(10_000)))
        .await
        .unwrap();
    if !s.has_status() {
        eventually(LONG, "the job reports and waits", || {
            rec.attempts_of(1).len() == 1
        })
        .await;
        rec.open(1);
        eventually(LONG, "the job succeeds", || rec.successes() == 1).await;
        rt.shutdown().await;
        return;
    }
    let deadline = Instant::now() + LONG;
    loop {
        let st = client.status(id).await.unwrap().expect("status kept");
        if st.progress == Some(serde_json::json!(10_000)) {
            assert_eq!(st.state, JobState::Running, "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "progress never showed: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rec.open(1);
    let done = client.wait(id, LONG).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(
        done.progress,
        Some(serde_json::json!({ "done": 10_000 })),
        "the last report is kept: {done:?}"
    );
    rt.shutdown().await;
}

/// Cancel by id: a queued and a scheduled job are removed and never run; a running job that
/// honours its token ends `cancelled`, not retried (although it returned a transient error);
/// one that ignores its token is dropped after the cancel grace, and the worker goes on;
/// finished jobs answer `Finished`, unknown ids `NotFound`; a backend without the
/// capability answers `Unsupported`.
async fn cancel_by_id(store: Store) {
    use job_core::{CancelError, Cancellation};
    let s = Setup::new(store).await;
    let rec = Recorder::new();
    let rt = s
        .builder(&rec)
        .concurrency(1)
        .cancel_grace(Duration::from_millis(300))
        .start()
        .unwrap();
    let client = rt.client();
    if !s.can_cancel() {
        let id = client
            .enqueue(Probe::new(1, Behavior::Succeed))
            .await
            .unwrap();
        let r = client.cancel(id).await;
        assert!(matches!(r, Err(CancelError::Unsupported { .. })), "{r:?}");
        rt.shutdown().await;
        return;
    }
    // One worker: a running job that honours its token, and two waiting behind it.
    let running = client
        .enqueue(Probe::new(1, Behavior::SleepUnlessCancelledMs(60_000)))
        .await
        .unwrap();
    eventually(LONG, "the first job runs", || rec.attempts_of(1).len() == 1).await;
    let queued = client
        .enqueue(Probe::new(2, Behavior::Succeed))
        .await
        .unwrap();
    let scheduled = client
        .enqueue_in(Probe::new(3, Behavior::Succeed), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(client.cancel(queued).await.unwrap(), Cancellation::Removed);
    assert_eq!(
        client.cancel(scheduled).await.unwrap(),
        Cancellation::Removed
    );
    for id in [queued, scheduled] {
        let st = client.status(id).await.unwrap().expect("status kept");
        assert_eq!(st.state, JobState::Cancelled, "{st:?}");
    }
    let started = Instant::now();
    assert_eq!(
        client.cancel(running).await.unwrap(),
        Cancellation::Requested
    );
    let done = client.wait(running, LONG).await.unwrap();
    assert_eq!(
        (done.state, done.attempts),
        (JobState::Cancelled, 1),
        "{done:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a job that honours its token stops at once: {:?}",
        started.elapsed()
    );

    // A job that ignores its token is dropped once the grace has passed.
    let stubborn = client
        .enqueue(Probe::new(4, Behavior::SleepMs(60_000)))
        .await
        .unwrap();
    eventually(LONG, "the stubborn job runs", || {
        rec.attempts_of(4).len() == 1
    })
    .await;
    assert_eq!(
        client.cancel(stubborn).await.unwrap(),
        Cancellation::Requested
    );
    let done = client.wait(stubborn, LONG).await.unwrap();
    assert_eq!(done.state, JobState::Cancelled, "{done:?}");
    // The worker goes on with the next job.
    let after = client
        .enqueue(Probe::new(5, Behavior::Succeed))
        .await
        .unwrap();
    let ok = client.wait(after, LONG).await.unwrap();
    assert_eq!(ok.state, JobState::Succeeded);

    // Nothing cancelled ran (again); finished jobs stay as they finished.
    assert!(rec.attempts_of(2).is_empty() && rec.attempts_of(3).is_empty());
    assert_eq!(
        rec.attempts_of(1).len(),
        1,
        "a cancelled job is not retried"
    );
    assert_eq!(rec.attempts_of(4).len(), 1);
    let r = client.cancel(after).await;
    assert!(
        matches!(
            r,
            Err(CancelError::Finished {
                state: JobState::Succeeded,
                ..
            })
        ),
        "{r:?}"
    );
    let r = client.cancel(running).await;
    assert!(
        matches!(
            r,
            Err(CancelError::Finished {
                state: JobState::Cancelled,
                ..
            })
        ),
        "{r:?}"
    );
    let unknown = JobId::new();
    let r = client.cancel(unknown).await;
    assert!(
        matches!(r, Err(CancelError::NotFound(x)) if x == unknown),
        "{r:?}"
    );
    assert_eq!(client.stats().cancelled, 4);
    let report = rt.shutdown().await;
    assert_eq!(report.cancelled, 0, "{report:?}");
}

/// On a durable store, a cancel sent from one process reaches the job running in another
/// at that process's next lease renewal; a job reserved there and not started is dropped.
async fn a_cancel_reaches_another_process(store: Store) {
    use job_core::Cancellation;
    let s = Setup::new(store).await;
    if !s.durable() || !s.can_cancel() {
        return;
    }
    let rec = Recorder::new();
    // The worker process: short leases, so a renewal comes every 200 ms.
    let worker = s
        .builder(&rec)
        .concurrency(1)
        .lease(Duration::from_millis(600))
        .prefetch(4)
        .start()
        .unwrap();
    // The process that cancels: its runtime serves no queue the jobs are in.
    let other = s.builder(&rec).queues(["nothing-here"]).start().unwrap();
    let running = other
        .client()
        .enqueue(Probe::new(1, Behavior::SleepUnlessCancelledMs(60_000)))
        .await
        .unwrap();
    eventually(LONG, "the job runs in the worker process", || {
        rec.attempts_of(1).len() == 1
    })
    .await;
    let started = Instant::now();
    assert_eq!(
        other.client().cancel(running).await.unwrap(),
        Cancellation::Requested
    );
    let done = other.client().wait(running, LONG).await.unwrap();
    assert_eq!(done.state, JobState::Cancelled, "{done:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "seen at the next renewal: {:?}",
        started.elapsed()
    );
    assert_eq!(rec.attempts_of(1).len(), 1, "not retried");
    assert_eq!(worker.client().stats().cancelled, 1);
    other.shutdown().await;
    worker.shutdown().await;
}

/// What [`results_are_kept_and_typed`] produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    words: usize,
    longest: String,
}

/// Summarises `text`; the longest word comes back `repeat` times (a way to make a result
/// over the limit). Registered in every runtime of this file (by `#[job]`), so it has the
/// timeout a broker with a longest lease requires.
#[job(timeout = "30s")]
async fn summarize(text: String, repeat: usize) -> Result<Summary, std::io::Error> {
    let longest = text
        .split_whitespace()
        .max_by_key(|w| w.len())
        .unwrap_or_default();
    Ok(Summary {
        words: text.split_whitespace().count(),
        longest: longest.repeat(repeat),
    })
}

/// Typed results: a job's `Ok` value is kept with its status and read back typed, also from
/// another process on a durable store; `()` reads as `()`; a result over the limit is not
/// kept (the job still succeeded); unfinished, failed, unknown and other jobs' ids each get
/// their own answer; a store without results answers `Unsupported`.
async fn results_are_kept_and_typed(store: Store) {
    use job_core::ResultError;
    let s = Setup::new(store).await;
    let rec = Recorder::new();
    let rt = s.builder(&rec).start().unwrap();
    let client = rt.client();
    let id = client
        .enqueue(Summarize {
            text: "a bb ccc".into(),
            repeat: 1,
        })
        .await
        .unwrap();
    if !s.has_status() {
        let r = client.result::<Summarize>(id).await;
        assert!(
            matches!(r, Err(ResultError::Unsupported { .. })),
            "results without the capability: {r:?}"
        );
        rt.shutdown().await;
        return;
    }
    let done = client.wait(id, LONG).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let expected = Summary {
        words: 3,
        longest: "ccc".into(),
    };
    assert_eq!(
        done.result,
        Some(serde_json::json!({ "words": 3, "longest": "ccc" }))
    );
    assert_eq!(client.result::<Summarize>(id).await.unwrap(), expected);
    if s.durable() {
        // Another process reads it from the store.
        let other = s.builder(&rec).queues(["nothing-here"]).start().unwrap();
        assert_eq!(
            other.client().result::<Summarize>(id).await.unwrap(),
            expected
        );
        other.shutdown().await;
    }
    // Another job type's id.
    let r = client.result::<Probe>(id).await;
    assert!(
        matches!(&r, Err(ResultError::WrongJob { expected: "probe", found, .. }) if found == "summarize"),
        "{r:?}"
    );
    // `()` keeps nothing and reads as `()`.
    let unit = client
        .enqueue(Probe::new(1, Behavior::Succeed))
        .await
        .unwrap();
    let done = client.wait(unit, LONG).await.unwrap();
    assert_eq!(done.result, None);
    client.result::<Probe>(unit).await.unwrap();
    // Over the limit: the job succeeded, its result is not kept.
    let big = client
        .enqueue(Summarize {
            text: "0123456789".into(),
            repeat: job_core::RESULT_LIMIT / 10 + 1,
        })
        .await
        .unwrap();
    let done = client.wait(big, LONG).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert_eq!(done.result, None);
    let r = client.result::<Summarize>(big).await;
    assert!(
        matches!(r, Err(ResultError::NotKept(i)) if i == big),
        "{r:?}"
    );
    // Failed, not finished, unknown.
    let dead = client
        .enqueue(Probe::new(2, Behavior::Permanent))
        .await
        .unwrap();
    client.wait(dead, LONG).await.unwrap();
    let r = client.result::<Probe>(dead).await;
    assert!(
        matches!(
            r,
            Err(ResultError::Failed {
                state: JobState::Dead,
                ..
            })
        ),
        "{r:?}"
    );
    let later = client
        .enqueue_in(
            Summarize {
                text: "later".into(),
                repeat: 1,
            },
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let r = client.result::<Summarize>(later).await;
    assert!(
        matches!(
            r,
            Err(ResultError::NotFinished {
                state: JobState::Scheduled,
                ..
            })
        ),
        "{r:?}"
    );
    let r = client.result::<Summarize>(JobId::new()).await;
    assert!(matches!(r, Err(ResultError::NotFound(_))), "{r:?}");
    rt.shutdown().await;
}

/// A wait wakes when the job ends, not at its next reread of the status, also in a process
/// that does not run the job: a success, a dead letter and a cancel each end a job 300 ms
/// into a wait, and each wait returns within 1 s of it (a store that announces ends is
/// reread every 2 s, so a missing announcement shows as a 1.7 s wait). In memory the wait is
/// in the running process (nothing polls there: a missing signal would hang it); a store
/// that cannot announce ends declares so, and has no status to wait on.
async fn a_wait_hears_an_end_in_another_process(store: Store) {
    let s = Setup::new(store).await;
    if let Some(b) = &s.backend
        && !b.capabilities().finish_wakeups
    {
        assert!(
            !s.has_status(),
            "a store with status by id should announce ends"
        );
        return;
    }
    let rec = Recorder::new();
    let rt = s.builder(&rec).start().unwrap();
    let other = s
        .durable()
        .then(|| s.builder(&rec).queues(["nothing-here"]).start().unwrap());
    let waiter = other.as_ref().unwrap_or(&rt).client();
    let client = rt.client();
    let heard = |id: JobId| {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            let r = waiter.wait(id, LONG).await;
            (r, Instant::now())
        })
    };
    // One job at a time, so that the gate's one permit goes to the job meant.
    for (key, behavior, state) in [
        (1, Behavior::Gate, JobState::Succeeded),
        (2, Behavior::GateThenFail, JobState::Dead),
        (3, Behavior::Succeed, JobState::Cancelled),
    ] {
        let cancelled = state == JobState::Cancelled;
        let id = if cancelled {
            let delay = Duration::from_secs(3600);
            client
                .enqueue_in(Probe::new(key, behavior), delay)
                .await
                .unwrap()
        } else {
            let id = client.enqueue(Probe::new(key, behavior)).await.unwrap();
            eventually(LONG, "the gated job runs", || {
                rec.attempts_of(key).len() == 1
            })
            .await;
            id
        };
        let waiting = heard(id);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ended = Instant::now();
        if cancelled {
            client.cancel(id).await.unwrap();
        } else {
            rec.open(1);
        }
        let (r, returned) = waiting.await.unwrap();
        let done = r.unwrap();
        assert_eq!(done.state, state, "{done:?}");
        let after = returned.saturating_duration_since(ended);
        assert!(
            after < Duration::from_secs(1),
            "the wait for a job that ended ({state:?}) returned {after:?} after its end"
        );
    }
    if let Some(other) = other {
        other.shutdown().await;
    }
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
            wait_returns_the_final_status,
            cancel_by_id,
            a_cancel_reaches_another_process,
            progress_shows_in_the_status,
            results_are_kept_and_typed,
            a_wait_hears_an_end_in_another_process,
            ticks_run_once_across_processes,
            one_key_makes_one_job,
            a_key_is_held_as_asked,
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

mod amqp {
    conformance!(Amqp);
}

mod azure {
    conformance!(Azure);
}
