//! The harness of the Postgres chaos tests (`postgres_chaos.rs`, `postgres_restart.rs`): a
//! schema of its own per test with the jobs' record table, `soak_worker` processes on it,
//! and the in-process runtime of the outage tests (T7).
//!
//! Every test runs in a fresh schema of the shared server at `JOB_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), dropped when the test ends. A missing server
//! fails the test with the command that starts one.
#![allow(dead_code, unreachable_pub)]

#[path = "../../src/bin/soak_worker/jobs.rs"]
pub mod jobs;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use job_core::backend::postgres::{PostgresBackend, PostgresBackendBuilder};
use job_core::prelude::*;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::time::Instant;

use crate::common::pg::{PgCleanup, fresh_schema, postgres_url, unreachable};

/// The `application_name` of the tests' own connections (reading records, holding locks,
/// terminating connections): never one the tests terminate.
pub const ADMIN_APPLICATION: &str = "job-core-chaos-admin";

/// One test at a time, across a target's tests.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `body` alone (see [`SERIAL`]) and fails it if it takes longer than `limit`. On a
/// timeout the body is dropped, and with it the guards that kill its processes.
pub async fn run_test(name: &str, limit: Duration, body: impl Future<Output = ()>) {
    let _serial = SERIAL.lock().await;
    install_warning_counter();
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("{name}: did not finish within {limit:?} (hard timeout)");
    }
}

/// Polls `check` every 20 ms until it holds; fails naming `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh schema on the shared server, holding the `chaos_records` table the jobs write
/// to; dropped on every path (the cleanup is synchronous).
pub struct Scope {
    pub url: String,
    pub schema: String,
    /// The test's own connections (application name [`ADMIN_APPLICATION`]).
    pub admin: PgPool,
    _cleanup: PgCleanup,
}

impl Scope {
    pub async fn new() -> Self {
        let url = postgres_url();
        let schema = fresh_schema();
        let cleanup = PgCleanup {
            schema: schema.clone(),
        };
        let admin = admin_pool(&url).await;
        let create = format!(
            "CREATE SCHEMA \"{schema}\"; {};",
            jobs::RECORDS_TABLE.replace("{s}", &format!("\"{schema}\""))
        );
        sqlx::raw_sql(AssertSqlSafe(create))
            .execute(&admin)
            .await
            .expect("create the test's schema and record table");
        Self {
            url,
            schema,
            admin,
            _cleanup: cleanup,
        }
    }

    /// Settings for a backend on the test's schema.
    pub fn builder(&self) -> PostgresBackendBuilder {
        PostgresBackend::builder(&self.url).schema(self.schema.as_str())
    }

    /// A backend on the test's schema: what a separate process would have.
    pub fn backend(&self) -> PostgresBackend {
        self.builder()
            .max_connections(4)
            .build()
            .expect("valid backend settings")
    }

    /// A runtime that only enqueues: it takes jobs from a queue nobody uses and leaves
    /// recovery to the workers (its reaper waits an hour).
    pub fn producer(&self) -> JobRuntime {
        JobRuntime::builder()
            .backend(self.builder().build().expect("valid backend settings"))
            .queues(["chaos-producer-idle"])
            .reap_interval(Duration::from_secs(3_600))
            .capacity(1_000_000)
            .concurrency(1)
            .register::<jobs::Soak>()
            .register::<jobs::Span>()
            .register::<jobs::Pill>()
            .start()
            .expect("producer runtime starts")
    }

    /// A table of the schema, quoted: `"t_…".name`.
    pub fn table(&self, name: &str) -> String {
        format!("\"{}\".{name}", self.schema)
    }

    /// The executions of `kind` the jobs recorded, in the order they were written.
    pub async fn records(&self, kind: &str) -> Vec<Exec> {
        let q = format!(
            "SELECT line FROM {} WHERE kind = $1 ORDER BY seq",
            self.table("chaos_records")
        );
        let lines: Vec<String> = sqlx::query_scalar(AssertSqlSafe(q))
            .bind(kind)
            .fetch_all(&self.admin)
            .await
            .expect("read the records");
        lines.iter().map(|l| Exec::parse(l)).collect()
    }

    /// How many executions of `kind` are recorded.
    pub async fn count(&self, kind: &str) -> u64 {
        let q = format!(
            "SELECT count(*) FROM {} WHERE kind = $1",
            self.table("chaos_records")
        );
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(q))
            .bind(kind)
            .fetch_one(&self.admin)
            .await
            .expect("count the records");
        u64::try_from(n).unwrap_or(0)
    }

    /// One `i64` from `sql`, where `{jobs}` is the schema's job table and `{counts}` its
    /// count table.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let q = sql
            .replace("{jobs}", &self.table("jobs"))
            .replace("{counts}", &self.table("counts"));
        sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(q))
            .fetch_one(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or(0)
    }

    /// Terminates every connection of this test's backends (application name `job-core`,
    /// in this database, whose last statement names this schema: every statement of the
    /// backend does, and so does its listener's `LISTEN "job_core.<schema>"`). Other tests'
    /// connections, on other schemas, are left alone. Returns how many were terminated.
    pub async fn terminate_backend_connections(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = 'job-core' AND datname = current_database()
               AND pid <> pg_backend_pid() AND strpos(query, $1) > 0",
        )
        .bind(&self.schema)
        .fetch_one(&self.admin)
        .await
        .expect("pg_terminate_backend")
    }
}

/// The test's own pool; fails the test with the start command when Postgres is missing.
pub async fn admin_pool(url: &str) -> PgPool {
    let options = PgConnectOptions::from_str(url)
        .expect("valid JOB_POSTGRES_URL")
        .application_name(ADMIN_APPLICATION);
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .unwrap_or_else(|e| unreachable(e));
    if let Err(e) = sqlx::query("SELECT 1").execute(&pool).await {
        unreachable(e);
    }
    pool
}

/// One recorded execution: `n id attempt pid [start_us end_us]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Exec {
    pub n: u32,
    pub id: JobId,
    pub attempt: u32,
    pub pid: u32,
    pub span: Option<(u128, u128)>,
}

impl Exec {
    pub fn parse(line: &str) -> Self {
        let f: Vec<&str> = line.split(' ').collect();
        assert!(f.len() == 4 || f.len() == 6, "malformed record {line:?}");
        fn field<T: FromStr>(line: &str, f: &[&str], i: usize) -> T {
            f[i].parse()
                .unwrap_or_else(|_| panic!("malformed field {i} in record {line:?}"))
        }
        Self {
            n: field(line, &f, 0),
            id: field(line, &f, 1),
            attempt: field(line, &f, 2),
            pid: field(line, &f, 3),
            span: (f.len() == 6).then(|| (field(line, &f, 4), field(line, &f, 5))),
        }
    }
}

/// `soak_worker` processes on the scope's schema, in numbered slots; every one still
/// running is SIGKILLed on drop. Their output goes to log files, kept (and named) when the
/// test fails.
pub struct Workers {
    args: Vec<String>,
    slots: Vec<Option<Child>>,
    pub logs: PathBuf,
    spawned: usize,
}

impl Workers {
    pub fn start(scope: &Scope, count: usize, settings: &[(&str, u64)]) -> Self {
        let store = [
            "--postgres".to_owned(),
            scope.url.clone(),
            "--schema".to_owned(),
            scope.schema.clone(),
        ];
        Self::with_store(
            &format!("postgres-chaos-{}", scope.schema),
            &store,
            count,
            settings,
        )
    }

    /// Workers on any store `soak_worker` takes: `store` are its flags (`--azure-queue ..
    /// --prefix ..`), `name` names the log directory.
    pub fn with_store(
        name: &str,
        store: &[String],
        count: usize,
        settings: &[(&str, u64)],
    ) -> Self {
        let logs = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&logs).expect("log dir");
        let mut args = store.to_vec();
        for (flag, value) in settings {
            args.push(format!("--{flag}"));
            args.push(value.to_string());
        }
        let mut workers = Self {
            args,
            slots: (0..count).map(|_| None).collect(),
            logs,
            spawned: 0,
        };
        for slot in 0..count {
            workers.spawn(slot);
        }
        workers
    }

    pub fn spawn(&mut self, slot: usize) {
        assert!(self.slots[slot].is_none(), "slot {slot} is busy");
        let log = self
            .logs
            .join(format!("worker-{slot}-{:03}.log", self.spawned));
        self.spawned += 1;
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_soak_worker"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("soak_worker starts");
        self.slots[slot] = Some(child);
    }

    pub fn pid(&self, slot: usize) -> u32 {
        self.slots[slot].as_ref().expect("slot has a worker").id()
    }

    /// The exit status of the worker in `slot` if it has exited (the slot is then empty).
    pub fn exited(&mut self, slot: usize) -> Option<ExitStatus> {
        let child = self.slots[slot].as_mut()?;
        let status = child.try_wait().expect("try_wait")?;
        self.slots[slot] = None;
        Some(status)
    }

    /// Fails if any worker exited by itself.
    pub fn assert_all_alive(&mut self) {
        for slot in 0..self.slots.len() {
            if let Some(status) = self.exited(slot) {
                panic!(
                    "worker in slot {slot} died by itself ({status}); logs in {}",
                    self.logs.display()
                );
            }
        }
    }

    /// SIGKILL, then reap the process.
    pub fn kill(&mut self, slot: usize) {
        let mut child = self.slots[slot].take().expect("slot has a worker");
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
    }

    /// SIGTERM to every worker; each must exit with status 0 within `limit`.
    pub async fn terminate_all(&mut self, limit: Duration) {
        for slot in 0..self.slots.len() {
            let pid = self.pid(slot);
            let sent = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .expect("kill(1) runs");
            assert!(sent.success(), "kill -TERM {pid}");
        }
        let deadline = Instant::now() + limit;
        for slot in 0..self.slots.len() {
            loop {
                if let Some(status) = self.exited(slot) {
                    assert!(
                        status.success(),
                        "worker {slot} exited with {status} after SIGTERM; logs in {}",
                        self.logs.display()
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "worker {slot} still running {limit:?} after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for mut child in self.slots.iter_mut().filter_map(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("worker logs kept in {}", self.logs.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

/// Enqueues `jobs` through `rt` from 8 concurrent tasks; returns their ids, in order.
pub async fn enqueue_all<J: Job + std::fmt::Debug>(rt: &JobRuntime, jobs: Vec<J>) -> Vec<JobId> {
    let tasks = 8;
    let per = jobs.len().div_ceil(tasks).max(1);
    let mut handles = Vec::new();
    let mut jobs = jobs.into_iter();
    loop {
        let chunk: Vec<J> = jobs.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        let client = rt.client();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(chunk.len());
            for job in chunk {
                ids.push(client.enqueue(job).await.expect("enqueue acknowledged"));
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.extend(h.await.expect("enqueue task"));
    }
    ids
}

/// Waits until the store holds no ready, scheduled or reserved job.
pub async fn drained(backend: &PostgresBackend, limit: Duration) {
    use job_core::backend::Backend;
    let deadline = Instant::now() + limit;
    loop {
        let s = backend.stats().await.expect("stats");
        if s.ready == 0 && s.scheduled == 0 && s.running == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the queue did not drain within {limit:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Warnings of the runtime, counted: "no error loop" is a quiet log.

static WARNINGS: AtomicU64 = AtomicU64::new(0);
static LAST_WARNINGS: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// Counts WARN and ERROR events of `job_core` (and prints them with the test's output).
struct WarningCounter;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarningCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::WARN || !meta.target().starts_with("job_core") {
            return;
        }
        WARNINGS.fetch_add(1, Ordering::SeqCst);
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write as _;
                let _ = write!(self.0, " {}={value:?}", field.name());
            }
        }
        let mut m = Message(format!("{} {}:", meta.level(), meta.target()));
        event.record(&mut m);
        let mut last = LAST_WARNINGS.lock().unwrap();
        if last.len() == 20 {
            last.pop_front();
        }
        last.push_back(m.0);
    }
}

fn install_warning_counter() {
    use tracing_subscriber::layer::SubscriberExt as _;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(WarningCounter).with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::filter::LevelFilter::WARN),
        );
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

use tracing_subscriber::Layer as _;

/// WARN and ERROR events of `job_core` so far (in this test binary).
pub fn warnings() -> u64 {
    WARNINGS.load(Ordering::SeqCst)
}

/// The last (up to 20) of them, for a failure message.
pub fn last_warnings() -> Vec<String> {
    LAST_WARNINGS.lock().unwrap().iter().cloned().collect()
}

// ---------------------------------------------------------------------------------------
// T7: an in-process runtime on the test's schema, through an outage.

/// Executions seen by the in-process T7 runtime, and the rendezvous of [`Meet`].
pub struct Ledger {
    runs: Mutex<HashMap<JobId, u32>>,
    meet: tokio::sync::Barrier,
}

impl Ledger {
    pub fn runs(&self) -> HashMap<JobId, u32> {
        self.runs.lock().unwrap().clone()
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Tick {
    pub sleep_ms: u64,
}

impl Job for Tick {
    const NAME: &'static str = "chaos-tick";
    type Error = std::io::Error;
    type Output = ();
    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        let ledger = cx.data::<Ledger>().expect("ledger");
        *ledger.runs.lock().unwrap().entry(cx.id()).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        Ok(())
    }
}

/// Succeeds only when [`T7_CONCURRENCY`] of them run at the same time: proof that every
/// worker task is alive.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Meet;

impl Job for Meet {
    const NAME: &'static str = "chaos-meet";
    type Error = std::io::Error;
    type Output = ();
    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        let ledger = cx.data::<Ledger>().expect("ledger");
        tokio::time::timeout(Duration::from_secs(20), ledger.meet.wait())
            .await
            .map(drop)
            .map_err(|_| std::io::Error::other("not every worker came to the meeting"))
    }
}

pub const T7_CONCURRENCY: usize = 4;

/// A runtime on the scope's schema whose every backend call is bounded by
/// `statement_timeout`.
pub fn t7_runtime(scope: &Scope, statement_timeout: Duration) -> (JobRuntime, Arc<Ledger>) {
    let ledger = Arc::new(Ledger {
        runs: Mutex::new(HashMap::new()),
        meet: tokio::sync::Barrier::new(T7_CONCURRENCY),
    });
    let backend = scope
        .builder()
        .statement_timeout(statement_timeout)
        .max_connections(6)
        .build()
        .expect("backend settings");
    let rt = JobRuntime::builder()
        .backend(backend)
        .lease(Duration::from_secs(2))
        .reap_interval(Duration::from_millis(300))
        .concurrency(T7_CONCURRENCY)
        .capacity(100_000)
        .data(ledger.clone())
        .register::<Tick>()
        .register::<Meet>()
        .start()
        .expect("runtime starts");
    (rt, ledger)
}

/// Every id in `ids` succeeded (per the store) and ran at least once (per the ledger).
pub async fn all_succeed(rt: &JobRuntime, ledger: &Ledger, ids: &[JobId], limit: Duration) {
    eventually(limit, "every acknowledged job succeeded", || async {
        for id in ids {
            match rt.status(*id).await.unwrap() {
                Some(s) if s.state == JobState::Succeeded => {}
                _ => return false,
            }
        }
        true
    })
    .await;
    let runs = ledger.runs();
    let never: Vec<_> = ids.iter().filter(|id| !runs.contains_key(id)).collect();
    assert!(never.is_empty(), "succeeded without running: {never:?}");
}

/// All [`T7_CONCURRENCY`] worker tasks are alive: the meeting needs every one at once.
pub async fn all_workers_alive(rt: &JobRuntime) {
    let mut ids = Vec::new();
    for _ in 0..T7_CONCURRENCY {
        ids.push(rt.client().enqueue(Meet).await.expect("enqueued"));
    }
    eventually(
        Duration::from_secs(25),
        "every worker task took part in the meeting",
        || async {
            for id in &ids {
                match rt.status(*id).await.unwrap() {
                    Some(s) if s.state == JobState::Succeeded && s.attempts == 1 => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await;
}

/// Enqueues `n` ticks of `sleep_ms`.
pub async fn ticks(rt: &JobRuntime, n: usize, sleep_ms: u64) -> Vec<JobId> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(
            rt.client()
                .enqueue(Tick { sleep_ms })
                .await
                .expect("enqueued"),
        );
    }
    ids
}

/// After an outage: with the backend back, the runtime settles. New jobs run while the log
/// stays quiet for `quiet`: no warning or error of the runtime (a retry or error loop would
/// log on every turn).
pub async fn no_error_loop(rt: &JobRuntime, ledger: &Ledger, quiet: Duration) {
    let before = warnings();
    let started = Instant::now();
    let mut ids = Vec::new();
    while started.elapsed() < quiet {
        ids.extend(ticks(rt, 5, 1).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    all_succeed(rt, ledger, &ids, Duration::from_secs(10)).await;
    let logged = warnings() - before;
    assert_eq!(
        logged,
        0,
        "{logged} warnings or errors after recovery (an error loop?); the last: {:#?}",
        last_warnings()
    );
}
