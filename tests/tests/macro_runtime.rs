//! `#[job]` jobs on a started runtime: injected `&dyn Trait` data, `&JobContext` and a
//! per-attempt `&mut T`; classification by `#[derive(JobError)]` driving retries and dead
//! letters; automatic registration of jobs from a submodule and from another crate; and a
//! missing registration refused at start, naming the job and the type.
//!
//! `inventory` registers every `#[job]` of this binary with every runtime it starts, so each
//! runtime here is built by [`builder`], which provides everything those jobs need.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use job_core::prelude::*;
use job_core::{JobRuntimeBuilder, StartError};

const LONG: Duration = Duration::from_secs(20);

/// Shared state, injected as `&dyn AuditLog`.
trait AuditLog: Send + Sync {
    fn record(&self, line: String);
}

#[derive(Default)]
struct MemoryLog(Mutex<Vec<String>>);

impl AuditLog for MemoryLog {
    fn record(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
}

impl MemoryLog {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A per-attempt value, injected as `&mut Connection`. Counts how many are alive.
struct Connection {
    serial: u32,
    live: Arc<AtomicU32>,
    statements: Vec<String>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

#[job(queue = "audit")]
async fn record_visit(
    page: String,
    cx: &JobContext,
    log: &dyn AuditLog,
    conn: &mut Connection,
) -> Result<(), std::io::Error> {
    conn.statements.push(format!("insert {page}"));
    log.record(format!(
        "{page} job={} attempt={} conn={} statements={}",
        cx.job_name(),
        cx.attempt(),
        conn.serial,
        conn.statements.len()
    ));
    Ok(())
}

#[derive(Debug, thiserror::Error, JobError)]
enum FlakyError {
    #[error("upstream timed out")]
    #[job(transient)]
    Timeout,
    #[error("rate limited")]
    #[job(retry_after)]
    RateLimited(Duration),
    #[error("account {0} is closed")]
    #[job(permanent)]
    Closed(u64),
}

/// Fails with `error` on the attempts before `succeed_on`, then succeeds.
#[job(max_attempts = 3, backoff(initial = "10ms", max = "10ms", jitter = 0))]
async fn flaky(
    account: u64,
    succeed_on: u32,
    error: String,
    cx: &JobContext,
) -> Result<(), FlakyError> {
    if cx.attempt() >= succeed_on {
        return Ok(());
    }
    Err(match error.as_str() {
        "timeout" => FlakyError::Timeout,
        "rate_limited" => FlakyError::RateLimited(Duration::from_millis(20)),
        _ => FlakyError::Closed(account),
    })
}

mod submodule {
    use std::sync::atomic::{AtomicU64, Ordering};

    use job_core::prelude::*;

    pub(crate) static SEEN: AtomicU64 = AtomicU64::new(0);

    #[job]
    pub(crate) async fn remember(n: u64) -> Result<(), std::io::Error> {
        SEEN.fetch_add(n, Ordering::SeqCst);
        Ok(())
    }
}

struct Env {
    log: Arc<MemoryLog>,
    live: Arc<AtomicU32>,
    opened: Arc<AtomicU32>,
}

fn env() -> Env {
    Env {
        log: Arc::new(MemoryLog::default()),
        live: Arc::new(AtomicU32::new(0)),
        opened: Arc::new(AtomicU32::new(0)),
    }
}

/// A builder providing every dependency the jobs of this binary declare.
fn builder(env: &Env) -> JobRuntimeBuilder {
    let (live, opened) = (env.live.clone(), env.opened.clone());
    JobRuntime::builder()
        .capacity(64)
        .concurrency(4)
        .data::<dyn AuditLog>(env.log.clone())
        .scoped::<Connection, _, _>(move || {
            let (live, opened) = (live.clone(), opened.clone());
            async move {
                live.fetch_add(1, Ordering::SeqCst);
                let serial = opened.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(Connection {
                    serial,
                    live,
                    statements: Vec::new(),
                })
            }
        })
}

async fn wait_finished(runtime: &JobRuntime, id: JobId) -> JobStatus {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let status = runtime.status(id).await.unwrap();
        if let Some(status) = &status
            && status.state.is_finished()
        {
            return status.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} did not finish in {LONG:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn injected_parameters_are_resolved_for_each_attempt() {
    let env = env();
    let runtime = builder(&env).start().unwrap();
    let client = runtime.client();

    let mut ids = Vec::new();
    for page in ["/a", "/b", "/c"] {
        let job = RecordVisit { page: page.into() };
        ids.push(client.enqueue(job).await.unwrap());
    }
    for id in ids {
        let status = wait_finished(&runtime, id).await;
        assert_eq!(status.state, JobState::Succeeded, "{status:?}");
        assert_eq!(status.queue, "audit");
    }

    let mut lines = env.log.lines();
    lines.sort();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (line, page) in lines.iter().zip(["/a", "/b", "/c"]) {
        // The context is the attempt's, and each attempt got a fresh connection.
        assert!(
            line.starts_with(&format!("{page} job=record_visit attempt=1 conn=")),
            "{line}"
        );
        assert!(line.ends_with("statements=1"), "{line}");
    }
    assert_eq!(env.opened.load(Ordering::SeqCst), 3);
    assert_eq!(
        env.live.load(Ordering::SeqCst),
        0,
        "scoped values are dropped with their attempt"
    );
    runtime.shutdown().await;
}

#[tokio::test]
async fn derived_classification_drives_retries_and_dead_letters() {
    let env = env();
    let runtime = builder(&env).start().unwrap();
    let client = runtime.client();
    let enqueue = |succeed_on: u32, error: &str| {
        let job = Flaky {
            account: 7,
            succeed_on,
            error: error.into(),
        };
        let client = client.clone();
        async move { client.enqueue(job).await.unwrap() }
    };

    // Transient: retried with backoff until it succeeds.
    let transient = enqueue(3, "timeout").await;
    // RetryAfter: retried after the delay the variant holds.
    let rate_limited = enqueue(2, "rate_limited").await;
    // Permanent: dead-lettered on the first failure, attempts left unused.
    let permanent = enqueue(3, "closed").await;
    // Transient but out of attempts: dead after max_attempts.
    let exhausted = enqueue(10, "timeout").await;

    let status = wait_finished(&runtime, transient).await;
    assert_eq!((status.state, status.attempts), (JobState::Succeeded, 3));
    let status = wait_finished(&runtime, rate_limited).await;
    assert_eq!((status.state, status.attempts), (JobState::Succeeded, 2));
    let status = wait_finished(&runtime, permanent).await;
    assert_eq!((status.state, status.attempts), (JobState::Dead, 1));
    assert_eq!(status.last_error.as_deref(), Some("account 7 is closed"));
    let status = wait_finished(&runtime, exhausted).await;
    assert_eq!((status.state, status.attempts), (JobState::Dead, 3));
    assert_eq!(status.last_error.as_deref(), Some("upstream timed out"));

    let dead = runtime.dead_letters().await.unwrap();
    let mut dead_ids: Vec<JobId> = dead.iter().map(|d| d.job_id).collect();
    dead_ids.sort();
    let mut expected = vec![permanent, exhausted];
    expected.sort();
    assert_eq!(dead_ids, expected);
    runtime.shutdown().await;
}

#[tokio::test]
async fn jobs_from_submodules_and_other_crates_register_themselves() {
    let env = env();
    // No `.register::<J>()` anywhere: inventory supplied every type.
    let runtime = builder(&env).start().unwrap();
    let client = runtime.client();

    let local = client.enqueue(submodule::Remember { n: 5 }).await.unwrap();
    let other_crate = client
        .enqueue(fixture_jobs::AddToTotal { n: 11 })
        .await
        .unwrap();
    let nested = client
        .enqueue(fixture_jobs::nested::Check { fail: true })
        .await
        .unwrap();

    assert_eq!(
        wait_finished(&runtime, local).await.state,
        JobState::Succeeded
    );
    assert_eq!(
        wait_finished(&runtime, other_crate).await.state,
        JobState::Succeeded
    );
    let status = wait_finished(&runtime, nested).await;
    assert_eq!(status.state, JobState::Dead);
    assert_eq!(status.job, "fixture.check");
    assert_eq!(
        status.last_error.as_deref(),
        Some("fixture.check asked to fail")
    );
    assert_eq!(submodule::SEEN.load(Ordering::SeqCst), 5);
    assert_eq!(fixture_jobs::TOTAL.load(Ordering::SeqCst), 11);
    assert_eq!(status.queue, "default");
    runtime.shutdown().await;
}

fn start_error(builder: JobRuntimeBuilder) -> StartError {
    match builder.start() {
        Ok(_) => panic!("start() must refuse a job whose dependency is missing"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_missing_data_or_scoped_registration_is_refused_at_start() {
    let missing_data = start_error(
        JobRuntime::builder()
            .scoped::<Connection, _, _>(|| async { Err::<Connection, _>("unused".into()) }),
    );
    let message = missing_data.to_string();
    assert!(
        message.contains("job `record_visit` needs `&dyn macro_runtime::AuditLog`"),
        "{message}"
    );
    assert!(!message.contains("Connection"), "{message}");

    let missing_scoped =
        start_error(JobRuntime::builder().data::<dyn AuditLog>(Arc::new(MemoryLog::default())));
    let message = missing_scoped.to_string();
    assert!(
        message.contains("job `record_visit` needs `&mut macro_runtime::Connection`"),
        "{message}"
    );
    assert_eq!(missing_scoped.problems.len(), 1, "{message}");

    // `&JobContext` is always available and never reported.
    assert!(!message.contains("JobContext"), "{message}");
}

#[tokio::test]
async fn the_job_fn_stays_callable_without_a_runtime() {
    let cx = JobContext::detached("flaky");
    let err = flaky(1, 2, "closed".into(), &cx).await.unwrap_err();
    assert!(matches!(err, FlakyError::Closed(1)), "{err:?}");
    assert_eq!(err.classify(), ErrorClass::Permanent);
    flaky(1, 1, "closed".into(), &cx).await.unwrap();
    let err = fixture_jobs::nested::check(true, &cx).await.unwrap_err();
    assert_eq!(err.to_string(), "flaky asked to fail");
}
