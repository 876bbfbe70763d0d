//! What the runtime does with a backend's declared [`Capabilities`] and with lease tokens
//! that a store replaces on every renewal (Azure's pop receipt), checked with a wrapper over
//! the memory backend that behaves as such a store would:
//!
//! * every reservation and every renewal issues a new opaque token, and only the newest one
//!   is accepted: a write-back with an older one is refused as a lost lease;
//! * its renewal is slow (a network round trip), so write-backs arrive while one is in
//!   flight;
//! * it declares the capabilities a test asks for, and counts the calls the runtime must not
//!   make when a capability is not declared.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use job_core::backend::memory::MemoryBackend;
use job_core::backend::{
    Backend, BackendError, BackendStats, BoxFuture, Capabilities, Envelope, Extended, LeaseToken,
    Reaped, Reservation, Retry,
};
use job_core::prelude::*;
use job_core::{DeadLetter, JobStatus, QueryError, RequeueError};
use serde::{Deserialize, Serialize};

const LONG: Duration = Duration::from_secs(20);
const LEASE: Duration = Duration::from_millis(300);

/// A job that runs for `ms` milliseconds and fails its first `fail_first` attempts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slow {
    ms: u64,
    fail_first: u32,
    data: String,
}

impl Job for Slow {
    const NAME: &'static str = "capabilities_slow";
    type Error = std::io::Error;
    type Output = ();
    fn options() -> JobOptions {
        JobOptions::new()
            .timeout(Duration::from_millis(900))
            .backoff(Backoff::new(
                Duration::from_millis(10),
                Duration::from_millis(10),
                0.0,
            ))
    }
    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(self.ms)) => {}
            () = cx.cancelled() => {
                return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "shutdown"));
            }
        }
        if cx.attempt() <= self.fail_first {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "not yet"));
        }
        Ok(())
    }
}

fn slow(ms: u64, fail_first: u32) -> Slow {
    Slow {
        ms,
        fail_first,
        data: String::new(),
    }
}

/// A job with no timeout, which a store bounding an attempt's lease must refuse at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Unbounded;

impl Job for Unbounded {
    const NAME: &'static str = "capabilities_unbounded";
    type Error = std::convert::Infallible;
    type Output = ();
    async fn run(&self, _: &JobContext) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// The store described in the module docs.
#[derive(Debug)]
struct Renewing {
    inner: MemoryBackend,
    caps: Capabilities,
    /// id -> (the newest token issued, the memory backend's own token).
    leases: Mutex<HashMap<JobId, (LeaseToken, LeaseToken)>>,
    issued: AtomicU64,
    renewals: AtomicU64,
    /// Write-backs that came with a token older than the newest.
    stale: AtomicU64,
    /// Calls the runtime should not make when the capability is not declared.
    undeclared_calls: AtomicU32,
}

impl Renewing {
    fn new(caps: Capabilities) -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryBackend::new(),
            caps,
            leases: Mutex::new(HashMap::new()),
            issued: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            undeclared_calls: AtomicU32::new(0),
        })
    }

    fn issue(&self) -> LeaseToken {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        LeaseToken::opaque(format!("receipt-{n}"))
    }

    /// The memory backend's token when `token` is the newest issued for `id`.
    fn current(&self, id: JobId, token: &LeaseToken) -> Result<LeaseToken, BackendError> {
        let leases = self.leases.lock().unwrap();
        match leases.get(&id) {
            Some((newest, inner)) if newest == token => Ok(inner.clone()),
            _ => {
                self.stale.fetch_add(1, Ordering::Relaxed);
                Err(BackendError::LeaseLost(id))
            }
        }
    }

    fn undeclared(&self, declared: bool) {
        if !declared {
            self.undeclared_calls.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Backend for Renewing {
    fn name(&self) -> &'static str {
        "renewing"
    }
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    fn connect(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.inner.connect()
    }
    fn enqueue(&self, e: Envelope, cap: u64) -> BoxFuture<'_, Result<(), BackendError>> {
        self.inner.enqueue(e, cap)
    }
    fn reserve<'a>(
        &'a self,
        queues: &'a [String],
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Reservation>, BackendError>> {
        Box::pin(async move {
            let got = self.inner.reserve(queues, max, lease).await?;
            let mut leases = self.leases.lock().unwrap();
            Ok(got
                .into_iter()
                .map(|r| match r {
                    Reservation::Job {
                        mut envelope,
                        token,
                    } => {
                        let outer = self.issue();
                        leases.insert(envelope.id, (outer.clone(), token));
                        envelope.lease = Some(outer.clone());
                        Reservation::Job {
                            envelope,
                            token: outer,
                        }
                    }
                    malformed @ Reservation::Malformed { .. } => malformed,
                })
                .collect())
        })
    }
    fn wait_for_work<'a>(&'a self, queues: &'a [String], t: Duration) -> BoxFuture<'a, ()> {
        self.inner.wait_for_work(queues, t)
    }
    fn ack(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let inner = self.current(id, &token)?;
            self.inner.ack(id, inner).await
        })
    }
    fn retry(
        &self,
        id: JobId,
        token: LeaseToken,
        retry: Retry,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let inner = self.current(id, &token)?;
            self.inner.retry(id, inner, retry).await
        })
    }
    fn dead_letter(
        &self,
        id: JobId,
        token: LeaseToken,
        record: DeadLetter,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let inner = self.current(id, &token)?;
            self.inner.dead_letter(id, inner, record).await
        })
    }
    fn extend<'a>(
        &'a self,
        leases: &'a [(JobId, LeaseToken)],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Extended, BackendError>> {
        Box::pin(async move {
            let mut out = Extended::default();
            for (id, token) in leases {
                let Ok(inner) = self.current(*id, token) else {
                    out.lost.push(*id);
                    continue;
                };
                let lost = self.inner.extend(&[(*id, inner.clone())], lease).await?;
                if !lost.lost.is_empty() {
                    out.lost.push(*id);
                    continue;
                }
                let fresh = self.issue();
                self.leases
                    .lock()
                    .unwrap()
                    .insert(*id, (fresh.clone(), inner));
                self.renewals.fetch_add(1, Ordering::Relaxed);
                out.renewed.push((*id, fresh));
            }
            // The store has replaced the tokens; its reply takes a round trip, during which
            // workers finish and want to write back.
            tokio::time::sleep(Duration::from_millis(40)).await;
            Ok(out)
        })
    }
    fn release(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let inner = self.current(id, &token)?;
            self.inner.release(id, inner).await
        })
    }
    fn reap(&self, max_recoveries: u32) -> BoxFuture<'_, Result<Reaped, BackendError>> {
        self.inner.reap(max_recoveries)
    }
    fn status(&self, id: JobId) -> BoxFuture<'_, Result<Option<JobStatus>, BackendError>> {
        self.undeclared(self.caps.status_by_id);
        self.inner.status(id)
    }
    fn stats(&self) -> BoxFuture<'_, Result<BackendStats, BackendError>> {
        self.inner.stats()
    }
    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, BackendError>> {
        self.undeclared(self.caps.dead_letter_listing);
        self.inner.dead_letters(limit)
    }
    fn requeue(&self, id: JobId) -> BoxFuture<'_, Result<(), BackendError>> {
        self.undeclared(self.caps.requeue_by_id);
        self.inner.requeue(id)
    }
}

fn runtime(store: &Arc<Renewing>) -> JobRuntime {
    JobRuntime::builder()
        .register::<Slow>()
        .backend(store.clone())
        .lease(LEASE)
        .concurrency(4)
        .shutdown_timeout(Duration::from_millis(50))
        .start()
        .unwrap()
}

async fn all_succeed(rt: &JobRuntime, ids: &[JobId]) {
    let deadline = Instant::now() + LONG;
    for id in ids {
        loop {
            let s = rt.status(*id).await.unwrap().expect("status kept");
            if s.state == JobState::Succeeded {
                break;
            }
            assert!(Instant::now() < deadline, "job {id} stuck at {s:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn write_backs_use_the_token_of_the_newest_renewal() {
    let store = Renewing::new(Capabilities::full());
    let rt = runtime(&store);
    // Each attempt spans several renewals (one every lease / 3 = 100 ms, each 40 ms long),
    // so acks, retries and the shutdown's give-back all come after the token changed, many
    // of them while a renewal is in flight.
    let mut ids = Vec::new();
    for n in 0..8 {
        let job = slow(250 + 37 * n, u32::from(n % 3 == 0));
        ids.push(rt.client().enqueue(job).await.unwrap());
    }
    all_succeed(&rt, &ids).await;
    assert!(
        store.renewals.load(Ordering::Relaxed) >= 8,
        "the jobs ran across renewals ({} renewals)",
        store.renewals.load(Ordering::Relaxed)
    );
    assert_eq!(
        store.stale.load(Ordering::Relaxed),
        0,
        "a write-back used a token a renewal had replaced"
    );
    assert_eq!(rt.stats().lease_lost, 0);
    assert_eq!(rt.stats().retried, 3);

    // Shutdown gives back a running job with its newest token, too.
    let running = rt.client().enqueue(slow(850, 0)).await.unwrap();
    let deadline = Instant::now() + LONG;
    while rt.status(running).await.unwrap().map(|s| s.state) != Some(JobState::Running) {
        assert!(Instant::now() < deadline, "the long job never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(LEASE).await;
    let report = rt.shutdown().await;
    assert_eq!(report.cancelled, 1, "{report:?}");
    assert_eq!(
        store.stale.load(Ordering::Relaxed),
        0,
        "the give-back's token"
    );
    let back = store.inner.status(running).await.unwrap().unwrap();
    assert_eq!(back.state, JobState::Queued, "given back to its queue");
}

#[tokio::test]
async fn what_a_backend_does_not_declare_is_answered_unsupported_without_asking_it() {
    let store = Renewing::new(Capabilities {
        status_by_id: false,
        dead_letter_listing: false,
        requeue_by_id: false,
        ..Capabilities::full()
    });
    let rt = runtime(&store);
    let id = rt.client().enqueue(slow(1, 0)).await.unwrap();
    let unsupported = |r: Result<(), QueryError>, what: &str| match r {
        Err(QueryError::Unsupported { backend, what: w }) => {
            assert_eq!((backend, w), ("renewing", what));
        }
        other => panic!("{what}: expected Unsupported, got {other:?}"),
    };
    unsupported(rt.status(id).await.map(drop), "status by id");
    unsupported(rt.dead_letters().await.map(drop), "listing dead letters");
    unsupported(
        rt.client().dead_letter(id).await.map(drop),
        "listing dead letters",
    );
    let e = rt.requeue(id).await.unwrap_err();
    assert!(
        matches!(
            e,
            RequeueError::Unsupported {
                backend: "renewing"
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "requeue by id is not supported by the renewing backend"
    );
    assert_eq!(store.undeclared_calls.load(Ordering::Relaxed), 0);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_payload_over_the_stores_own_limit_is_refused_before_the_store() {
    let store = Renewing::new(Capabilities {
        max_payload: Some(200),
        ..Capabilities::full()
    });
    let rt = runtime(&store);
    let mut big = slow(1, 0);
    big.data = "x".repeat(300);
    match rt.client().enqueue(big).await {
        Err(EnqueueError::PayloadTooLarge { limit, size, .. }) => {
            assert_eq!(limit, 200);
            assert!(size > 300, "{size}");
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert_eq!(
        store.inner.stats().await.unwrap().depth(),
        0,
        "nothing stored"
    );
    // Under the limit it goes through.
    let mut small = slow(1, 0);
    small.data = "x".repeat(100);
    let id = rt.client().enqueue(small).await.unwrap();
    all_succeed(&rt, &[id]).await;
    rt.shutdown().await;
}

#[tokio::test]
async fn a_job_that_may_outlast_the_stores_longest_lease_is_refused_at_start() {
    let store = Renewing::new(Capabilities {
        max_attempt_duration: Some(Duration::from_millis(500)),
        ..Capabilities::full()
    });
    let err = JobRuntime::builder()
        .register::<Slow>()
        .register::<Unbounded>()
        .backend(store.clone())
        .start()
        .unwrap_err();
    let problems = err.problems.join("\n");
    assert!(
        problems.contains(
            "job `capabilities_slow` has a timeout of 900ms, longer than the 500ms an attempt may hold its lease on the renewing backend"
        ),
        "{problems}"
    );
    assert!(
        problems.contains("job `capabilities_unbounded` has no timeout"),
        "{problems}"
    );
    assert!(
        problems.contains("give it a `timeout` of at most 500ms"),
        "{problems}"
    );

    // Within the bound it starts.
    let store = Renewing::new(Capabilities {
        max_attempt_duration: Some(Duration::from_secs(1)),
        ..Capabilities::full()
    });
    let rt = JobRuntime::builder()
        .register::<Slow>()
        .backend(store)
        .start()
        .unwrap();
    rt.shutdown().await;
}
