//! Leases on a durable backend (T6): a slow job that keeps heartbeating is never
//! redelivered; one whose heartbeat stops is redelivered once, and the stale worker's
//! acknowledgement is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use job_core::backend::Backend;
use job_core::backend::memory::MemoryBackend;
use job_core::prelude::*;

static SLOW_RUNS: AtomicUsize = AtomicUsize::new(0);
static BLOCKER_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Runs for three lease lengths, politely (the runtime keeps heartbeating).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Slow;

impl Job for Slow {
    const NAME: &'static str = "slow";
    type Error = std::io::Error;
    async fn run(&self, _: &JobContext) -> Result<(), Self::Error> {
        SLOW_RUNS.fetch_add(1, Ordering::SeqCst);
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
    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        BLOCKER_RUNS.fetch_add(1, Ordering::SeqCst);
        if cx.attempt() == 1 {
            std::thread::sleep(Duration::from_millis(1_500));
        }
        Ok(())
    }
}

const LEASE: Duration = Duration::from_millis(300);

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
            "job never reached {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeating_job_three_leases_long_is_not_redelivered() {
    let backend = Arc::new(MemoryBackend::new());
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
    assert_eq!(SLOW_RUNS.load(Ordering::SeqCst), 1, "never redelivered");
    assert_eq!(rt.stats().lease_lost, 0);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_heartbeat_stops_is_redelivered_once_and_the_stale_ack_refused() {
    let backend = Arc::new(MemoryBackend::new());
    let (tx, rx) = std::sync::mpsc::channel();
    // Worker process A: one thread, so a blocked job also blocks its heartbeat.
    let a = std::thread::spawn({
        let backend = backend.clone();
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
                let id = a.client().enqueue(Blocker).await.unwrap();
                tx.send(id).unwrap();
                tokio::time::sleep(Duration::from_secs(3)).await;
                let stats = a.stats();
                a.shutdown().await;
                stats
            })
        }
    });
    let id = rx.recv().unwrap();
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
    assert_eq!(
        BLOCKER_RUNS.load(Ordering::SeqCst),
        2,
        "redelivered exactly once"
    );
    let status = backend.status(id).await.unwrap().unwrap();
    assert_eq!(
        (status.state, status.attempts),
        (JobState::Succeeded, 2),
        "A changed nothing"
    );
    assert_eq!(b.stats().lease_lost, 0);
    b.shutdown().await;
}
