//! Leases on a durable backend (T6), on `MemoryBackend` and on Redis: a slow job that keeps
//! heartbeating is never redelivered; one whose heartbeat stops is redelivered once, and the
//! stale worker's acknowledgement is refused.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use job_core::backend::Backend;
use job_core::backend::memory::MemoryBackend;
use job_core::backend::redis::RedisBackend;
use job_core::prelude::*;

/// Executions per job id (tests of both stores run in parallel in this binary).
static RUNS: Mutex<Option<HashMap<JobId, usize>>> = Mutex::new(None);

fn record(id: JobId) {
    *RUNS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(id)
        .or_default() += 1;
}

fn runs(id: JobId) -> usize {
    RUNS.lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(&id).copied())
        .unwrap_or(0)
}

/// Runs for three lease lengths, politely (the runtime keeps heartbeating).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Slow;

impl Job for Slow {
    const NAME: &'static str = "slow";
    type Error = std::io::Error;
    type Output = ();
    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        record(cx.id());
        tokio::time::sleep(Duration::from_millis(900)).await;
        Ok(())
    }
}

/// On its first attempt, blocks its whole (single-threaded) runtime, heartbeat included.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Blocker;

impl Job for Blocker {
    const NAME: &'static str = "blocker";
    type Error = std::io::Error;
    type Output = ();
    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        record(cx.id());
        if cx.attempt() == 1 {
            std::thread::sleep(Duration::from_millis(1_500));
        }
        Ok(())
    }
}

const LEASE: Duration = Duration::from_millis(300);

/// Where the jobs live. Each "process" gets its own handle, as separate processes would:
/// one shared `MemoryBackend`, or a new `RedisBackend` on one key prefix.
enum Store {
    Memory(Arc<MemoryBackend>),
    Redis(String, #[allow(dead_code)] common::RedisCleanup),
}

impl Store {
    async fn memory() -> Self {
        Self::Memory(Arc::new(MemoryBackend::new()))
    }

    async fn redis() -> Self {
        let (backend, cleanup) = common::redis_backend().await;
        Self::Redis(backend.prefix().to_owned(), cleanup)
    }

    fn handle(&self) -> Arc<dyn Backend> {
        match self {
            Self::Memory(m) => m.clone(),
            Self::Redis(prefix, _) => Arc::new(
                RedisBackend::builder(common::redis_url())
                    .prefix(prefix.as_str())
                    .build()
                    .unwrap(),
            ),
        }
    }
}

async fn wait_status(backend: &dyn Backend, id: JobId, state: JobState) -> JobStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = backend.status(id).await.unwrap()
            && s.state == state
        {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job never reached {state:?}: {:?}",
            backend.status(id).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn a_heartbeating_job_three_leases_long_is_not_redelivered(store: Store) {
    let backend = store.handle();
    let rt = JobRuntime::builder()
        .register::<Slow>()
        .backend(backend.clone())
        .lease(LEASE)
        .reap_interval(Duration::from_millis(50))
        .start()
        .unwrap();
    let id = rt.client().enqueue(Slow).await.unwrap();
    let status = wait_status(backend.as_ref(), id, JobState::Succeeded).await;
    assert_eq!(status.attempts, 1);
    assert_eq!(runs(id), 1, "never redelivered");
    assert_eq!(rt.stats().lease_lost, 0);
    rt.shutdown().await;
}

async fn a_job_whose_heartbeat_stops_is_redelivered_once_and_the_stale_ack_refused(store: Store) {
    let (tx, rx) = std::sync::mpsc::channel();
    // Worker process A: one thread, so a blocked job also blocks its heartbeat.
    let a = std::thread::spawn({
        let backend = store.handle();
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let a = JobRuntime::builder()
                    .register::<Blocker>()
                    .backend(backend)
                    .lease(LEASE)
                    .reap_interval(Duration::from_secs(3_600))
                    .concurrency(1)
                    .start()
                    .unwrap();
                // Delayed a little, so the id reaches the test before the job blocks this
                // thread (on Redis, enqueue awaits I/O, and the fetcher could run first).
                let id = a
                    .client()
                    .enqueue_in(Blocker, Duration::from_millis(300))
                    .await
                    .unwrap();
                tx.send(id).unwrap();
                tokio::time::sleep(Duration::from_secs(3)).await;
                let stats = a.stats();
                a.shutdown().await;
                stats
            })
        }
    });
    let id = rx.recv().unwrap();
    let backend = store.handle();
    wait_status(backend.as_ref(), id, JobState::Running).await;

    // Worker process B: reaps A's expired lease and runs the job again.
    let b = JobRuntime::builder()
        .register::<Blocker>()
        .backend(backend.clone())
        .lease(LEASE)
        .reap_interval(Duration::from_millis(50))
        .start()
        .unwrap();
    let status = wait_status(backend.as_ref(), id, JobState::Succeeded).await;
    assert_eq!(status.attempts, 2);

    let a_stats = tokio::task::spawn_blocking(move || a.join().unwrap())
        .await
        .unwrap();
    assert_eq!(a_stats.lease_lost, 1, "A's late ack was refused");
    assert_eq!(runs(id), 2, "redelivered exactly once");
    let status = backend.status(id).await.unwrap().unwrap();
    assert_eq!(
        (status.state, status.attempts),
        (JobState::Succeeded, 2),
        "A changed nothing"
    );
    assert_eq!(b.stats().lease_lost, 0);
    assert_eq!(
        (a_stats.recovered, b.stats().recovered),
        (0, 1),
        "B's reaper recovered the job"
    );
    b.shutdown().await;
}

macro_rules! on {
    ($store:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_heartbeating_job_three_leases_long_is_not_redelivered() {
            super::a_heartbeating_job_three_leases_long_is_not_redelivered(
                super::Store::$store().await,
            )
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_job_whose_heartbeat_stops_is_redelivered_once_and_the_stale_ack_refused() {
            super::a_job_whose_heartbeat_stops_is_redelivered_once_and_the_stale_ack_refused(
                super::Store::$store().await,
            )
            .await;
        }
    };
}

mod memory_backend {
    on!(memory);
}

mod redis {
    on!(redis);
}
