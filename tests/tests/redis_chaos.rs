//! Crash and chaos tests of the durable runtime on a real Redis (RELIABILITY.md §2: T1, T4,
//! T7, and two workers on one queue). What the queue claims is checked against what the
//! jobs saw: every job records each execution outside the queue (a Redis list, or memory
//! for in-process runtimes), and each job is classified as in Jepsen's queue checker:
//! *lost* (acknowledged by `enqueue` but never ran to success), *unexpected* (ran but never
//! enqueued), *duplicated* (ran more than once).
//!
//! Worker processes are `soak_worker` (tests/src/bin/soak_worker.rs), started, SIGKILLed and
//! restarted by the tests. T1, T4 and the two-worker test use the shared server at
//! `JOB_REDIS_URL` (default `redis://127.0.0.1:6379`), each under its own random key prefix,
//! deleted when the test ends. The T7 tests kill connections and crash the server, so they
//! start a private `redis-server` on a free port. A missing server or binary fails the test
//! with the command that starts one: nothing here passes by skipping.
//!
//! The tests run one at a time (T1 keeps both cores of a small machine busy; the others
//! depend on leases being renewed in time) and each has a hard timeout that fails it.

mod common;
#[path = "../src/bin/soak_worker/jobs.rs"]
#[allow(dead_code)] // The worker's half (recording) is not used here.
mod jobs;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::chaos::{Exec, Workers, enqueue_all};
use job_core::backend::Backend;
use job_core::backend::redis::RedisBackend;
use job_core::prelude::*;
use job_core::{EnqueueError, HealthStatus};
use jobs::{Pill, Soak, Span, record_key};
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

const START_REDIS: &str =
    r#"redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no"#;

fn shared_url() -> String {
    std::env::var("JOB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// One test at a time, across this file's tests.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `body` alone (see [`SERIAL`]) and fails it if it takes longer than `limit`. On a
/// timeout the body is dropped, and with it the guards that kill its processes.
async fn run_test(name: &str, limit: Duration, body: impl Future<Output = ()>) {
    let _serial = SERIAL.lock().await;
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("{name}: did not finish within {limit:?} (hard timeout)");
    }
}

/// Polls `check` every 20 ms until it holds; fails naming `what` after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
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

async fn raw_connection(url: &str, start_hint: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).expect("valid Redis URL");
    // The client's default response timeout (a fraction of a second) is too short for an
    // admin command on a loaded machine (CLIENT KILL of many connections timed out once).
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await;
    match conn {
        Ok(Ok(mut conn)) => {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
            match pong {
                Ok(_) => conn,
                Err(e) => panic!("Redis at {url} does not answer PING ({e}). {start_hint}"),
            }
        }
        Ok(Err(e)) => panic!("Redis is not reachable at {url} ({e}). {start_hint}"),
        Err(_) => panic!("Redis at {url}: no connection within 5 s. {start_hint}"),
    }
}

/// A random key prefix on the shared server, and the cleanup of its keys (on every path:
/// `Drop` is synchronous).
struct Scope {
    url: String,
    prefix: String,
    raw: MultiplexedConnection,
}

impl Scope {
    async fn new(test: &str) -> Self {
        let url = shared_url();
        let hint = format!(
            "These tests need a Redis server; start one with:\n    {START_REDIS}\nor point JOB_REDIS_URL at one."
        );
        let raw = raw_connection(&url, &hint).await;
        Self {
            prefix: format!("chaos-{test}-{}", JobId::new()),
            url,
            raw,
        }
    }

    /// `soak_worker` processes on this scope's prefix.
    fn workers(&self, count: usize, settings: &[(&str, u64)]) -> Workers {
        let args = [
            "--redis",
            self.url.as_str(),
            "--prefix",
            self.prefix.as_str(),
        ];
        Workers::start(&format!("redis-{}", self.prefix), &args, count, settings)
    }

    fn backend(&self) -> RedisBackend {
        RedisBackend::builder(&self.url)
            .prefix(&self.prefix)
            .build()
            .expect("valid backend settings")
    }

    /// A runtime that only enqueues: it takes jobs from a queue nobody uses and leaves
    /// recovery to the workers (its reaper waits an hour).
    fn producer(&self) -> JobRuntime {
        JobRuntime::builder()
            .backend(self.backend())
            .queues(["chaos-producer-idle"])
            .reap_interval(Duration::from_secs(3_600))
            .capacity(1_000_000)
            .concurrency(1)
            .register::<Soak>()
            .register::<Span>()
            .register::<Pill>()
            .start()
            .expect("producer runtime starts")
    }

    async fn records(&mut self, kind: &str) -> Vec<Exec> {
        let lines: Vec<String> = redis::cmd("LRANGE")
            .arg(record_key(&self.prefix, kind))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.raw)
            .await
            .expect("LRANGE");
        lines.iter().map(|l| Exec::parse(l)).collect()
    }

    async fn count(&mut self, kind: &str) -> u64 {
        redis::cmd("LLEN")
            .arg(record_key(&self.prefix, kind))
            .query_async(&mut self.raw)
            .await
            .expect("LLEN")
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        common::delete_prefix(&self.url, &self.prefix);
    }
}

/// Waits until the store holds no ready, scheduled or reserved job.
async fn drained(backend: &RedisBackend, limit: Duration) {
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
// T1: kill -9 soak.

const T1_JOBS: u32 = 10_000;
const T1_WORKERS: usize = 4;
const T1_KILLS: usize = 20;
const T1_CONCURRENCY: u64 = 8;
const T1_SLEEP_MS: u64 = 10;
const T1_LEASE_MS: u64 = 3_000;
const T1_REAP_MS: u64 = 500;
/// Above the default 3: at this kill rate (a kill every few hundred ms, each interrupting up
/// to 8 jobs) a healthy job is now and then caught in three kills, and the poison-pill rule
/// would rightly bury it (T4 tests that rule). T1 measures loss and duplication.
const T1_MAX_RECOVERIES: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_sigkill_soak_loses_nothing() {
    run_test("T1", Duration::from_secs(110), t1()).await;
}

async fn t1() {
    let mut scope = Scope::new("t1").await;
    let backend = scope.backend();
    let producer = scope.producer();
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);

    let jobs = (0..T1_JOBS)
        .map(|n| Soak {
            n,
            sleep_ms: T1_SLEEP_MS,
        })
        .collect();
    let ids = enqueue_all(&producer, jobs).await;
    let expected: HashMap<JobId, u32> = ids.iter().copied().zip(0..).collect();
    assert_eq!(expected.len(), T1_JOBS as usize, "unique ids");

    let started = Instant::now();
    let mut workers = scope.workers(
        T1_WORKERS,
        &[
            ("concurrency", T1_CONCURRENCY),
            ("lease-ms", T1_LEASE_MS),
            ("reap-ms", T1_REAP_MS),
            ("max-recoveries", T1_MAX_RECOVERIES),
        ],
    );
    // Each kill at a random moment: a random point of its own slice of the run (measured in
    // executions recorded), plus a random few ms, of a random worker.
    let first = f64::from(T1_JOBS) * 0.03;
    let slice = f64::from(T1_JOBS) * 0.9 / T1_KILLS as f64;
    let mut kills = 0;
    for k in 0..T1_KILLS {
        let at = (first + slice * (k as f64 + rng.f64())) as u64;
        let (mut seen, mut moved) = (0, Instant::now());
        loop {
            let count = scope.count("runs").await;
            if count >= at {
                break;
            }
            if count > seen {
                (seen, moved) = (count, Instant::now());
            }
            assert!(
                moved.elapsed() < Duration::from_secs(20),
                "no job started for 20 s, at {count} executions (kill {k}); logs in {}",
                workers.logs.display()
            );
            workers.assert_all_alive();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..20))).await;
        workers.assert_all_alive();
        let slot = rng.usize(..T1_WORKERS);
        workers.kill(slot);
        kills += 1;
        workers.spawn(slot);
    }
    drained(&backend, Duration::from_secs(60)).await;
    let drain_time = started.elapsed();
    // One reap interval (and a margin) later, nothing may have come back.
    tokio::time::sleep(Duration::from_millis(2 * T1_REAP_MS)).await;
    workers.assert_all_alive();
    let stats = backend.stats().await.expect("stats");

    let runs = scope.records("runs").await;
    let mut per_job: HashMap<JobId, Vec<&Exec>> = HashMap::new();
    let mut unexpected = Vec::new();
    for r in &runs {
        match expected.get(&r.id) {
            Some(&n) if n == r.n => per_job.entry(r.id).or_default().push(r),
            _ => unexpected.push(r),
        }
    }
    let mut lost = Vec::new();
    let mut max_attempt = 0;
    for id in &ids {
        let status = backend.status(*id).await.expect("status");
        let ran = per_job.contains_key(id);
        match status {
            Some(s) if s.state == JobState::Succeeded && ran => {
                max_attempt = max_attempt.max(s.attempts);
            }
            other => {
                let runs: Vec<(u32, u32)> = per_job
                    .get(id)
                    .map(|v| v.iter().map(|r| (r.attempt, r.pid)).collect())
                    .unwrap_or_default();
                let other = other.map(|s| (s.state, s.attempts, s.last_error));
                lost.push(format!(
                    "{id}: status {other:?}, runs (attempt, pid) {runs:?}"
                ));
            }
        }
    }
    let duplicates: usize = per_job.values().map(|v| v.len() - 1).sum();
    let attempts_repeated: Vec<_> = per_job
        .values()
        .filter(|v| {
            let attempts: HashSet<u32> = v.iter().map(|r| r.attempt).collect();
            attempts.len() != v.len()
        })
        .collect();
    // A killed process loses what ran on it without reaching Redis as a success: the
    // attempts running at the kill (at most `concurrency`) and the successes still waiting
    // for their batched acknowledgement, one batch in flight at a time, in which no more
    // than `concurrency` jobs of T1_SLEEP_MS finish within a round trip. Prefetched jobs that
    // never started are not duplicates.
    let bound = kills * T1_CONCURRENCY as usize * 2;
    let pids: HashSet<u32> = runs.iter().map(|r| r.pid).collect();
    println!(
        "T1 figures: jobs={T1_JOBS} workers={T1_WORKERS} concurrency={T1_CONCURRENCY} kills={kills} \
         lost={} unexpected={} duplicates={duplicates} (bound {bound}) executions={} \
         worker_processes={} max_attempt={max_attempt} drained_in={:.1}s seed={seed}",
        lost.len(),
        unexpected.len(),
        runs.len(),
        pids.len(),
        drain_time.as_secs_f64(),
    );

    assert_eq!(kills, T1_KILLS);
    assert!(lost.is_empty(), "lost jobs:\n{}", lost.join("\n"));
    assert!(
        unexpected.is_empty(),
        "unexpected executions: {unexpected:?}"
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicate executions, more than kills x concurrency x 2 = {bound}"
    );
    assert!(
        attempts_repeated.is_empty(),
        "one reservation (attempt) executed twice: {attempts_repeated:?}"
    );
    assert!(
        u64::from(max_attempt) <= T1_MAX_RECOVERIES,
        "attempt counter {max_attempt} beyond max_recoveries"
    );
    assert_eq!(
        (stats.ready, stats.scheduled, stats.running, stats.dead),
        (0, 0, 0, 0),
        "nothing left ready, scheduled, reserved or dead: {stats:?}"
    );
    assert!(
        pids.len() > T1_WORKERS,
        "restarted workers ran jobs too: {} processes",
        pids.len()
    );
    producer.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Two worker processes on one queue.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_run_a_job_twice_while_its_lease_lives() {
    run_test("two workers", Duration::from_secs(60), two_workers()).await;
}

async fn two_workers() {
    const LEASE_MS: u64 = 1_500;
    let mut scope = Scope::new("two").await;
    let backend = scope.backend();
    let producer = scope.producer();
    let mut workers = scope.workers(
        2,
        &[("concurrency", 4), ("lease-ms", LEASE_MS), ("reap-ms", 100)],
    );
    // Long jobs (2.5 leases: they live on renewals) first, then many short ones.
    let mut jobs: Vec<Span> = (0..4)
        .map(|n| Span {
            n,
            sleep_ms: LEASE_MS * 5 / 2,
        })
        .collect();
    jobs.extend((4..300).map(|n| Span { n, sleep_ms: 15 }));
    let ids = enqueue_all(&producer, jobs).await;
    drained(&backend, Duration::from_secs(30)).await;
    workers.assert_all_alive();

    let spans = scope.records("spans").await;
    let mut per_job: HashMap<JobId, Vec<&Exec>> = HashMap::new();
    for s in &spans {
        per_job.entry(s.id).or_default().push(s);
    }
    for (n, id) in ids.iter().enumerate() {
        let runs = per_job.get_mut(id).map(std::mem::take).unwrap_or_default();
        assert!(!runs.is_empty(), "job {n} never ran");
        let mut intervals: Vec<(u128, u128, u32, u32)> = runs
            .iter()
            .map(|r| {
                let (start, end) = r.span.expect("span record");
                (start, end, r.attempt, r.pid)
            })
            .collect();
        intervals.sort_unstable();
        for w in intervals.windows(2) {
            assert!(
                w[1].0 >= w[0].1,
                "job {n} ran twice at once: attempt {} in pid {} and attempt {} in pid {}",
                w[0].2,
                w[0].3,
                w[1].2,
                w[1].3
            );
        }
        // No crash, leases renewed in time: nothing was redelivered, long jobs included.
        assert_eq!(
            intervals.len(),
            1,
            "job {n} ran {} times: {intervals:?}",
            intervals.len()
        );
        let status = backend.status(*id).await.expect("status").expect("kept");
        assert_eq!(status.state, JobState::Succeeded, "job {n}");
    }
    assert!(per_job.values().all(Vec::is_empty), "unexpected executions");
    let pids: HashSet<u32> = spans.iter().map(|s| s.pid).collect();
    assert_eq!(pids.len(), 2, "both worker processes took jobs");
    // SIGTERM: a graceful stop, exit status 0.
    workers.terminate_all(Duration::from_secs(10)).await;
    producer.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// T4: poison pill.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_a_job_that_kills_its_worker_is_dead_lettered_after_three_recoveries() {
    run_test("T4", Duration::from_secs(60), t4()).await;
}

async fn t4() {
    let mut scope = Scope::new("t4").await;
    let backend = scope.backend();
    let producer = scope.producer();
    let id = producer
        .client()
        .enqueue(Pill { n: 0 })
        .await
        .expect("enqueued");
    let mut workers = scope.workers(
        1,
        &[
            ("concurrency", 2),
            ("lease-ms", 1_000),
            ("reap-ms", 200),
            ("max-recoveries", 3),
        ],
    );
    let mut deaths = Vec::new();
    eventually(Duration::from_secs(40), "the pill dead-lettered", || {
        if let Some(status) = workers.exited(0) {
            deaths.push(status);
            assert!(deaths.len() <= 3, "the worker died {} times", deaths.len());
            workers.spawn(0);
        }
        let backend = &backend;
        async move {
            backend
                .status(id)
                .await
                .expect("status")
                .expect("kept")
                .state
                == JobState::Dead
        }
    })
    .await;

    let pills = scope.records("pills").await;
    assert_eq!(
        pills.len(),
        3,
        "ran exactly max_recoveries times: {pills:?}"
    );
    assert!(pills.iter().all(|p| p.id == id));
    assert_eq!(
        pills.iter().map(|p| p.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        pills.iter().map(|p| p.pid).collect::<HashSet<_>>().len(),
        3,
        "each run in a new process"
    );
    assert_eq!(deaths.len(), 3, "{deaths:?}");
    for d in &deaths {
        assert_eq!(d.signal(), Some(6), "died by abort (SIGABRT): {d}");
    }
    let dead = backend.dead_letters(10).await.expect("dead letters");
    let record = dead.iter().find(|d| d.job_id == id).expect("dead letter");
    let reason = record.error_message();
    assert!(
        reason.contains("crash-recovered") && reason.contains("poison pill"),
        "{reason}"
    );
    assert_eq!(record.job, "chaos-pill");

    // The worker that buried it goes on with other work; the pill does not come back.
    let next = producer
        .client()
        .enqueue(Soak { n: 1, sleep_ms: 1 })
        .await
        .expect("enqueued");
    eventually(
        Duration::from_secs(10),
        "the next job succeeded",
        || async {
            backend
                .status(next)
                .await
                .expect("status")
                .expect("kept")
                .state
                == JobState::Succeeded
        },
    )
    .await;
    workers.assert_all_alive();
    assert_eq!(scope.count("pills").await, 3, "no fourth run");
    let stats = backend.stats().await.expect("stats");
    assert_eq!((stats.ready, stats.running, stats.dead), (0, 0, 1));
    producer.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// T7: backend outage, on a private server.

const START_PRIVATE: &str = "T7 starts its own `redis-server` (from PATH) on a free port; install Redis (apt-get install redis-server). For the other tests, start the shared server with:";

/// A private `redis-server` child with its data in a temp dir: append-only file, fsynced
/// on every write (`appendfsync always`), no RDB snapshots. So every write Redis
/// acknowledged survives even a SIGKILL of the server, and a restart on the same port and
/// dir brings the data back: T7 tests what the backend does with the data Redis keeps, not
/// Redis's own durability window (`appendfsync everysec` could lose the last second on a
/// machine crash, and no persistence would lose everything). Killed on drop.
struct Server {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Server {
    async fn start() -> Self {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let dir = std::env::temp_dir().join(format!("redis-chaos-t7-{}", JobId::new()));
            std::fs::create_dir_all(&dir).expect("data dir");
            let mut server = Self {
                port,
                dir,
                child: None,
            };
            if server.spawn().await {
                return server;
            }
            // Someone took the port between the probe and the start: try another.
        }
        panic!("could not start a private redis-server");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and dir; false if it exited at once.
    async fn spawn(&mut self) -> bool {
        assert!(self.child.is_none());
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .expect("log file");
        let spawned = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => panic!("cannot run redis-server ({e}). {START_PRIVATE}\n    {START_REDIS}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                self.child = None;
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                if log.contains("Address already in use") {
                    return false;
                }
                panic!("redis-server exited at start ({status}):\n{log}");
            }
            let client = redis::Client::open(self.url()).expect("url");
            if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -STOP` or `kill -CONT`: the server hangs (connections stay open, nothing is
    /// answered), or goes on.
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("server running").id();
        let sent = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// SIGKILL: a crash, without a final save.
    fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.crash();
        if std::thread::panicking() {
            eprintln!("redis-server data and log kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Executions seen by the in-process T7 runtime, and the rendezvous of [`Meet`].
struct Ledger {
    runs: Mutex<HashMap<JobId, u32>>,
    meet: tokio::sync::Barrier,
}

impl Ledger {
    fn runs(&self) -> HashMap<JobId, u32> {
        self.runs.lock().unwrap().clone()
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Tick {
    sleep_ms: u64,
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
struct Meet;

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

const T7_CONCURRENCY: usize = 4;

fn t7_runtime(server: &Server) -> (JobRuntime, Arc<Ledger>) {
    let ledger = Arc::new(Ledger {
        runs: Mutex::new(HashMap::new()),
        meet: tokio::sync::Barrier::new(T7_CONCURRENCY),
    });
    let backend = RedisBackend::builder(server.url())
        .prefix("t7")
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
async fn all_succeed(rt: &JobRuntime, ledger: &Ledger, ids: &[JobId], limit: Duration) {
    eventually(limit, "every acknowledged job succeeded", || async {
        for id in ids {
            // Right after a restart the status query itself may still fail: not yet.
            match rt.status(*id).await {
                Ok(Some(s)) if s.state == JobState::Succeeded => {}
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
async fn all_workers_alive(rt: &JobRuntime) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t7_killed_connections_workers_resume_and_nothing_acknowledged_is_lost() {
    run_test("T7 CLIENT KILL", Duration::from_secs(60), t7_client_kill()).await;
}

async fn t7_client_kill() {
    let server = Server::start().await;
    let mut admin = raw_connection(&server.url(), START_PRIVATE).await;
    let (rt, ledger) = t7_runtime(&server);
    let mut ids = Vec::new();
    for _ in 0..500 {
        ids.push(
            rt.client()
                .enqueue(Tick { sleep_ms: 15 })
                .await
                .expect("enqueued"),
        );
    }
    eventually(Duration::from_secs(10), "jobs running", || async {
        !ledger.runs().is_empty()
    })
    .await;
    let mut report = String::new();
    // Several rounds, so that the kills hit each kind of call (reserve, ack, renew).
    for round in 0..8 {
        let killed: i64 = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal"])
            .query_async(&mut admin)
            .await
            .expect("CLIENT KILL");
        let done = ledger.runs().len();
        let _ = write!(
            report,
            " round {round}: {killed} connections killed at {done} jobs run;"
        );
        assert!(
            killed >= 1,
            "round {round}: the runtime had no connection to kill"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        ledger.runs().len() < ids.len(),
        "the kills landed after the run:{report}"
    );
    // Workers resume by themselves: the jobs acknowledged before, and new ones.
    for _ in 0..20 {
        ids.push(
            rt.client()
                .enqueue(Tick { sleep_ms: 1 })
                .await
                .expect("enqueued after the kills"),
        );
    }
    all_succeed(&rt, &ledger, &ids, Duration::from_secs(30)).await;
    all_workers_alive(&rt).await;
    eventually(Duration::from_secs(5), "healthy", || async {
        rt.health().status == HealthStatus::Healthy
    })
    .await;
    let runs = ledger.runs();
    let duplicates: u32 = ids.iter().map(|id| runs[id] - 1).sum();
    println!(
        "T7 CLIENT KILL:{report} jobs={} lost=0 duplicates={duplicates} lease_lost={}",
        ids.len(),
        rt.stats().lease_lost
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t7_server_restart_enqueue_fails_fast_workers_resume_nothing_acknowledged_is_lost() {
    run_test("T7 restart", Duration::from_secs(90), t7_restart()).await;
}

async fn t7_restart() {
    let mut server = Server::start().await;
    let (rt, ledger) = t7_runtime(&server);
    let mut ids = Vec::new();
    for _ in 0..150 {
        ids.push(
            rt.client()
                .enqueue(Tick { sleep_ms: 25 })
                .await
                .expect("enqueued"),
        );
    }
    assert_eq!(rt.health().status, HealthStatus::Healthy);
    eventually(Duration::from_secs(10), "jobs running", || async {
        ledger.runs().len() >= 20
    })
    .await;

    server.crash();
    let ran_before = ledger.runs().len();
    let outage = Instant::now();
    // Enqueue during the outage: an error, quickly; never a hang.
    let mut refused = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        match rt.client().enqueue(Tick { sleep_ms: 1 }).await {
            Err(EnqueueError::Backend { message, .. }) => refused.push((t.elapsed(), message)),
            other => {
                panic!("enqueue while Redis is down: expected EnqueueError::Backend, got {other:?}")
            }
        }
    }
    let slowest = refused.iter().map(|(d, _)| *d).max().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(3),
        "enqueue took {slowest:?} to fail: {refused:?}"
    );
    eventually(Duration::from_secs(10), "health degraded", || async {
        rt.health().status == HealthStatus::Degraded
    })
    .await;
    // Keep the server down a while: workers fail to reserve, ack and renew, and go on.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(outage.elapsed())).await;

    assert!(server.spawn().await, "redis-server restarts on its port");
    let down_for = outage.elapsed();
    // Jobs acknowledged before the outage all complete, without restarting anything here.
    all_succeed(&rt, &ledger, &ids, Duration::from_secs(40)).await;
    let after = rt
        .client()
        .enqueue(Tick { sleep_ms: 1 })
        .await
        .expect("enqueue works again");
    all_succeed(&rt, &ledger, &[after], Duration::from_secs(10)).await;
    all_workers_alive(&rt).await;
    eventually(Duration::from_secs(5), "healthy again", || async {
        rt.health().status == HealthStatus::Healthy
    })
    .await;
    let runs = ledger.runs();
    let duplicates: u32 = ids.iter().map(|id| runs[id] - 1).sum();
    println!(
        "T7 restart: jobs={} ran_before_crash={ran_before} down_for={down_for:.1?} \
         enqueue_refused_in<={slowest:?} ({}) lost=0 duplicates={duplicates}",
        ids.len(),
        refused[0].1
    );
    assert!(
        ran_before < ids.len(),
        "the crash landed after the run: nothing was pending"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t7_hung_server_enqueue_times_out_workers_survive_and_resume() {
    run_test("T7 hang", Duration::from_secs(90), t7_hang()).await;
}

/// The apalis-redis#76 shape: Redis stops answering (SIGSTOP) for longer than the response
/// timeout (2 s by default) while connections stay open. Calls must time out, not hang, and
/// no worker may die of it.
async fn t7_hang() {
    const HANG: Duration = Duration::from_secs(5);
    let server = Server::start().await;
    let (rt, ledger) = t7_runtime(&server);
    let mut ids = Vec::new();
    for _ in 0..150 {
        ids.push(
            rt.client()
                .enqueue(Tick { sleep_ms: 25 })
                .await
                .expect("enqueued"),
        );
    }
    eventually(Duration::from_secs(10), "jobs running", || async {
        ledger.runs().len() >= 20
    })
    .await;

    server.signal("-STOP");
    let hang = Instant::now();
    let ran_before = ledger.runs().len();
    let t = Instant::now();
    let refused = match rt.client().enqueue(Tick { sleep_ms: 1 }).await {
        Err(EnqueueError::Backend { message, .. }) => (t.elapsed(), message),
        other => panic!("enqueue while Redis hangs: expected EnqueueError::Backend, got {other:?}"),
    };
    // Bounded by the backend's call deadline (2 x connection + response timeout + 1.5 s).
    assert!(
        refused.0 < Duration::from_secs(6),
        "enqueue took {:?} to fail",
        refused.0
    );
    eventually(HANG, "health degraded", || async {
        rt.health().status == HealthStatus::Degraded
    })
    .await;
    tokio::time::sleep(HANG.saturating_sub(hang.elapsed())).await;
    server.signal("-CONT");

    all_succeed(&rt, &ledger, &ids, Duration::from_secs(40)).await;
    all_workers_alive(&rt).await;
    eventually(Duration::from_secs(5), "healthy again", || async {
        rt.health().status == HealthStatus::Healthy
    })
    .await;
    let runs = ledger.runs();
    let duplicates: u32 = ids.iter().map(|id| runs[id] - 1).sum();
    println!(
        "T7 hang: jobs={} ran_before_hang={ran_before} hung_for={HANG:?} enqueue_refused_in={:?} ({}) \
         lost=0 duplicates={duplicates} lease_lost={}",
        ids.len(),
        refused.0,
        refused.1,
        rt.stats().lease_lost
    );
    assert!(ran_before < ids.len(), "the hang landed after the run");
    rt.shutdown().await;
}
