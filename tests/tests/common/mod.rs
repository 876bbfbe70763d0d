//! Jobs and helpers shared by the runtime's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use job_core::prelude::*;
use job_core::{JobRuntimeBuilder, StartError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// What a [`Probe`] does on each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Behavior {
    Succeed,
    /// Fails transiently this many times, then succeeds.
    FailTimes(u32),
    /// Fails permanently.
    Permanent,
    /// Panics.
    Panic,
    /// Asks to be retried after this many ms, this many times, then succeeds.
    RetryAfterMs(u64, u32),
    /// Sleeps this many ms, then succeeds.
    SleepMs(u64),
    /// Sleeps this many ms unless cancelled first (then returns an error).
    SleepUnlessCancelledMs(u64),
    /// Waits for a permit of the recorder's gate, then succeeds.
    Gate,
    /// Waits for a permit of the recorder's gate, then fails permanently.
    GateThenFail,
    /// Fails with a nested error chain, permanently.
    Chain,
    /// While the recorder's `stall` flag is set, waits for cancellation (then fails);
    /// otherwise succeeds.
    Stall,
    /// Reports progress 1..=n (in a tight loop), waits for a permit of the gate, reports
    /// `{"done": n}`, then succeeds.
    ProgressThenGate(u32),
}

/// A hand-written job whose behaviour is data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    pub key: u64,
    pub behavior: Behavior,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("transient failure {0}")]
    Transient(u32),
    #[error("permanent failure")]
    Permanent,
    #[error("rate limited")]
    RateLimited(Duration),
    #[error("cancelled")]
    Cancelled,
    #[error("sending failed")]
    Outer(#[source] std::io::Error),
}

impl Classify for ProbeError {
    fn classify(&self) -> ErrorClass {
        match self {
            Self::Transient(_) | Self::Cancelled => ErrorClass::Transient,
            Self::Permanent | Self::Outer(_) => ErrorClass::Permanent,
            Self::RateLimited(d) => ErrorClass::RetryAfter(*d),
        }
    }
}

/// One attempt as the job saw it.
#[derive(Debug, Clone)]
pub struct Run {
    pub key: u64,
    pub id: JobId,
    pub attempt: u32,
    pub at: Instant,
}

/// Shared with the jobs through `.data(...)`.
#[derive(Debug)]
pub struct Recorder {
    pub runs: Mutex<Vec<Run>>,
    pub gate: tokio::sync::Semaphore,
    pub running: AtomicUsize,
    pub max_running: AtomicUsize,
    pub successes: AtomicUsize,
    pub stall: std::sync::atomic::AtomicBool,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            runs: Mutex::new(Vec::new()),
            gate: tokio::sync::Semaphore::new(0),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
            successes: AtomicUsize::new(0),
            stall: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }

    pub fn attempts_of(&self, key: u64) -> Vec<Run> {
        self.runs().into_iter().filter(|r| r.key == key).collect()
    }

    pub fn runs_per_key(&self) -> HashMap<u64, usize> {
        let mut m = HashMap::new();
        for r in self.runs.lock().unwrap().iter() {
            *m.entry(r.key).or_default() += 1;
        }
        m
    }

    pub fn successes(&self) -> usize {
        self.successes.load(Ordering::SeqCst)
    }

    /// Lets `n` gated jobs through.
    pub fn open(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

impl Job for Probe {
    const NAME: &'static str = "probe";
    type Error = ProbeError;
    type Output = ();

    fn options() -> JobOptions {
        // A timeout, as a backend with a longest lease (RabbitMQ's consumer_timeout)
        // requires of every job.
        JobOptions::new()
            .max_attempts(3)
            .backoff(Backoff::new(
                Duration::from_millis(100),
                Duration::from_secs(10),
                0.0,
            ))
            .timeout(Duration::from_secs(600))
    }

    fn dependencies(deps: &mut job_core::Dependencies) {
        deps.data::<Recorder>();
    }

    async fn run(&self, cx: &JobContext) -> Result<(), ProbeError> {
        let rec = cx.data::<Recorder>().expect("recorder registered");
        rec.runs.lock().unwrap().push(Run {
            key: self.key,
            id: cx.id(),
            attempt: cx.attempt(),
            at: Instant::now(),
        });
        let now = rec.running.fetch_add(1, Ordering::SeqCst) + 1;
        rec.max_running.fetch_max(now, Ordering::SeqCst);
        let result = self.act(cx, rec).await;
        rec.running.fetch_sub(1, Ordering::SeqCst);
        if result.is_ok() {
            rec.successes.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
}

impl Probe {
    pub fn new(key: u64, behavior: Behavior) -> Self {
        Self { key, behavior }
    }

    async fn act(&self, cx: &JobContext, rec: &Recorder) -> Result<(), ProbeError> {
        match self.behavior {
            Behavior::Succeed => Ok(()),
            Behavior::FailTimes(n) if cx.attempt() <= n => Err(ProbeError::Transient(cx.attempt())),
            Behavior::FailTimes(_) => Ok(()),
            Behavior::Permanent => Err(ProbeError::Permanent),
            Behavior::Panic => panic!("probe {} panicked on purpose", self.key),
            Behavior::RetryAfterMs(ms, n) if cx.attempt() <= n => {
                Err(ProbeError::RateLimited(Duration::from_millis(ms)))
            }
            Behavior::RetryAfterMs(..) => Ok(()),
            Behavior::SleepMs(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            }
            Behavior::SleepUnlessCancelledMs(ms) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
                    _ = cx.cancelled() => Err(ProbeError::Cancelled),
                }
            }
            Behavior::ProgressThenGate(n) => {
                for i in 1..=n {
                    cx.progress(&i).expect("a small progress value is accepted");
                }
                rec.gate.acquire().await.expect("gate open").forget();
                cx.progress(&serde_json::json!({ "done": n }))
                    .expect("a small progress value is accepted");
                Ok(())
            }
            Behavior::Gate => {
                rec.gate.acquire().await.expect("gate open").forget();
                Ok(())
            }
            Behavior::GateThenFail => {
                rec.gate.acquire().await.expect("gate open").forget();
                Err(ProbeError::Permanent)
            }
            Behavior::Stall if rec.stall.load(Ordering::SeqCst) => {
                cx.cancelled().await;
                Err(ProbeError::Cancelled)
            }
            Behavior::Stall => Ok(()),
            Behavior::Chain => Err(ProbeError::Outer(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "smtp server refused",
            ))),
        }
    }
}

/// A builder with the probe registered and a fresh recorder.
pub fn builder(rec: &Arc<Recorder>) -> JobRuntimeBuilder {
    JobRuntime::builder()
        .register::<Probe>()
        .data::<Recorder>(rec.clone())
}

pub fn start(b: JobRuntimeBuilder) -> Result<JobRuntime, StartError> {
    b.start()
}

/// The end of a watched job is heard across a lost listening connection: `backend` watches
/// a running job, `kill` drops its listening connection, and 1 s later (the backend listens
/// again by then) the job is acknowledged; the watch's signal must fire within 5 s (nothing
/// else fires it: no runtime reads statuses here, and a backend that did not listen again
/// never hears the end).
pub async fn an_end_is_heard_after_a_lost_listener<F>(
    backend: &dyn job_core::backend::Backend,
    kill: F,
) where
    F: std::future::Future<Output = ()>,
{
    use job_core::backend::{Envelope, Reservation};
    let env = Envelope {
        id: JobId::new(),
        job: "probe".to_owned(),
        queue: "watched".to_owned(),
        payload: serde_json::json!({ "key": 1, "behavior": "Succeed" }).into(),
        attempt: 0,
        max_attempts: 3,
        recoveries: 0,
        enqueued_at: job_core::backend::unix_ms(std::time::SystemTime::now()),
        not_before: None,
        lease: None,
    };
    backend.enqueue(env.clone(), 100).await.unwrap();
    let mut got = backend
        .reserve(&["watched".to_owned()], 1, Duration::from_secs(60))
        .await
        .unwrap();
    let Some(Reservation::Job { token, .. }) = got.pop() else {
        panic!("the job was not reserved: {got:?}");
    };
    let signal = backend.watch_finish(env.id).await.unwrap();
    kill.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let heard = signal.notified();
    tokio::pin!(heard);
    heard.as_mut().enable();
    backend.ack(env.id, token).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), heard)
        .await
        .expect("the end of the watched job was announced after the listener came back");
}

/// Polls until `f` is true, failing the test after `limit`.
pub async fn eventually<F: FnMut() -> bool>(limit: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the job reaches `state`.
pub async fn wait_state(rt: &JobRuntime, id: JobId, state: JobState, limit: Duration) -> JobStatus {
    let deadline = Instant::now() + limit;
    loop {
        let status = rt.status(id).await.unwrap().expect("status known");
        if status.state == state {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not reach {state:?}; last status {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The Redis the durable tests use: `JOB_REDIS_URL`, by default the local server.
pub fn redis_url() -> String {
    std::env::var("JOB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Deletes every key of a test's prefix when dropped (also when the test panics).
pub struct RedisCleanup {
    pub prefix: String,
}

impl Drop for RedisCleanup {
    fn drop(&mut self) {
        delete_prefix(&redis_url(), &self.prefix);
    }
}

/// Deletes every key under `{prefix}:` (synchronously, so it also runs in `Drop` after a
/// panic). Errors are ignored: cleanup must never fail a test.
pub fn delete_prefix(url: &str, prefix: &str) {
    let pattern = format!("{{{prefix}}}:*");
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
        return;
    };
    let keys: Vec<String> = match redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(&pattern)
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter::<String>(&mut conn)
    {
        Ok(iter) => iter.filter_map(Result::ok).collect(),
        Err(_) => return,
    };
    for chunk in keys.chunks(500) {
        let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
    }
}

/// A `RedisBackend` on a fresh random prefix; fails loudly when Redis is not reachable.
pub async fn redis_backend() -> (job_core::backend::redis::RedisBackend, RedisCleanup) {
    use job_core::backend::Backend;
    let prefix = format!("t{:016x}", rand_u64());
    let backend = job_core::backend::redis::RedisBackend::builder(redis_url())
        .prefix(prefix.as_str())
        .build()
        .expect("valid Redis settings");
    if let Err(e) = backend.connect().await {
        panic!(
            "Redis is not reachable at {} ({e}). Start it with:\n    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no",
            redis_url()
        );
    }
    (backend, RedisCleanup { prefix })
}

pub(crate) fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
pub mod amqp;
pub mod azure;
pub mod chaos;
pub mod pg;
