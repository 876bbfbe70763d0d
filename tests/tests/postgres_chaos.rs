//! Crash and chaos tests of the durable runtime on a real Postgres (RELIABILITY.md §2: T1,
//! T4, T6, T7, and two workers on one queue), the counterpart of `redis_chaos.rs`. What the
//! queue claims is checked against what the jobs saw: every job records each execution
//! outside the queue (a row of the test schema's `chaos_records` table, written on a
//! connection of its own, or memory for in-process runtimes), and each job is classified as
//! in Jepsen's queue checker: *lost* (acknowledged by `enqueue` but never ran to success),
//! *unexpected* (ran but never enqueued), *duplicated* (ran more than once).
//!
//! Worker processes are `soak_worker --postgres URL --schema S` (tests/src/bin/soak_worker.rs),
//! started, SIGKILLed and restarted by the tests. Every test works in a fresh schema of the
//! shared server at `JOB_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`),
//! dropped when it ends. The T7 tests here terminate connections (only their own backend's:
//! see `Scope::terminate_backend_connections`) and lock their own schema's job table; they
//! never restart the server (that is `postgres_restart.rs`). A missing server fails the test
//! with the command that starts one: nothing here passes by skipping.
//!
//! The tests run one at a time (T1 keeps both cores of a small machine busy; the others
//! depend on leases being renewed in time) and each has a hard timeout that fails it.

mod common;
mod pg_chaos;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::sync::Mutex;
use std::time::Duration;

use job_core::backend::{Backend, BackendError};
use job_core::prelude::*;
use job_core::{EnqueueError, HealthStatus};
use pg_chaos::jobs::{Pill, Soak, Span};
use pg_chaos::{
    Exec, Scope, Tick, Workers, all_succeed, all_workers_alive, drained, enqueue_all, eventually,
    no_error_loop, run_test, t7_runtime, ticks,
};
use tokio::time::Instant;

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
/// `Soak`'s attempt budget (see its options).
const SOAK_MAX_ATTEMPTS: i64 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_sigkill_soak_loses_nothing() {
    run_test("T1", Duration::from_secs(170), t1()).await;
}

async fn t1() {
    let scope = Scope::new().await;
    let backend = scope.backend();
    let producer = scope.producer();
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);

    let enqueue_started = Instant::now();
    // In batches (one statement per 1,000 jobs): the single-enqueue path is exercised by
    // the other tests, and T1's time is better spent running jobs.
    let ids = producer
        .client()
        .enqueue_many((0..T1_JOBS).map(|n| Soak {
            n,
            sleep_ms: T1_SLEEP_MS,
        }))
        .await
        .expect("enqueue acknowledged");
    let enqueue_time = enqueue_started.elapsed();
    let expected: HashMap<JobId, u32> = ids.iter().copied().zip(0..).collect();
    assert_eq!(expected.len(), T1_JOBS as usize, "unique ids");

    let started = Instant::now();
    let mut workers = Workers::start(
        &scope,
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
    let mut killed = Vec::new();
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
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..20))).await;
        workers.assert_all_alive();
        let slot = rng.usize(..T1_WORKERS);
        killed.push(workers.pid(slot));
        workers.kill(slot);
        workers.spawn(slot);
    }
    let kills = killed.len();
    drained(&backend, Duration::from_secs(90)).await;
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
    for id in &ids {
        let status = backend.status(*id).await.expect("status");
        let ran = per_job.contains_key(id);
        match status {
            Some(s) if s.state == JobState::Succeeded && ran => {}
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
    // Every execution that was repeated ran on a process that was then SIGKILLed: no job
    // was taken from a live worker (its lease lapsing while it ran, or a double claim).
    // Per killed process, how many of its executions had to run again.
    let mut redone: HashMap<u32, usize> = killed.iter().map(|pid| (*pid, 0)).collect();
    let mut redone_from_live = Vec::new();
    for v in per_job.values().filter(|v| v.len() > 1) {
        let mut v = v.clone();
        v.sort_by_key(|r| r.attempt);
        for r in &v[..v.len() - 1] {
            match redone.get_mut(&r.pid) {
                Some(n) => *n += 1,
                None => redone_from_live.push((r.id, r.attempt, r.pid)),
            }
        }
    }
    let most_redone = redone.values().copied().max().unwrap_or(0);
    let attempts_repeated: Vec<_> = per_job
        .values()
        .filter(|v| {
            let attempts: HashSet<u32> = v.iter().map(|r| r.attempt).collect();
            attempts.len() != v.len()
        })
        .collect();
    // The rows themselves: all succeeded, none leased, counters within their budgets, and
    // the sharded counts equal to the rows.
    let rows = scope.scalar("SELECT count(*) FROM {jobs}").await;
    let not_succeeded = scope
        .scalar("SELECT count(*) FROM {jobs} WHERE state <> 4")
        .await;
    let leased = scope
        .scalar(
            "SELECT count(*) FROM {jobs} WHERE state = 2 OR lease IS NOT NULL OR lease_expires IS NOT NULL",
        )
        .await;
    let max_attempt = scope.scalar("SELECT max(attempt)::int8 FROM {jobs}").await;
    let max_recoveries = scope
        .scalar("SELECT max(recoveries)::int8 FROM {jobs}")
        .await;
    let counted = scope
        .scalar("SELECT sum(ready + scheduled + running + dead)::int8 FROM {counts}")
        .await;
    let recovered = scope
        .scalar("SELECT count(*) FROM {jobs} WHERE recoveries > 0")
        .await;
    // Each kill loses the attempts running on the process (at most `concurrency`) and the
    // successes still waiting for their batched acknowledgement: one batch in flight at a
    // time, in which no more than `concurrency` jobs of T1_SLEEP_MS finish within a round
    // trip. Prefetched jobs that never started are not duplicates. One kill can cost more
    // than `concurrency`: the successes of the ack batch in flight, and of the one filling
    // behind it, are redone too, and how many those are depends on how long a round trip
    // takes (up to 12 seen at 8 on a quiet machine, 18 once in CI with the binary's other
    // tests loading both cores). So no bound per kill is asserted (the figures line prints
    // the worst), and the total is bounded by twice kills x concurrency, as in
    // redis_chaos.rs; in seven runs on 2 cores the totals were 104-163 of the 160 that
    // kills x concurrency would allow, 184 in that CI run, and the figures line says
    // whether that tighter bound held.
    let bound = kills * T1_CONCURRENCY as usize * 2;
    let pids: HashSet<u32> = runs.iter().map(|r| r.pid).collect();
    eprintln!(
        "T1 figures (Postgres): jobs={T1_JOBS} workers={T1_WORKERS} concurrency={T1_CONCURRENCY} kills={kills} \
         lost={} unexpected={} duplicates={duplicates} (bound {bound}, within_kills_x_concurrency={}) \
         executions={} most_redone_per_kill={most_redone} jobs_recovered={recovered} worker_processes={} max_attempt={max_attempt} \
         max_recoveries={max_recoveries} enqueued_in={:.1}s drained_in={:.1}s elapsed={:.1}s seed={seed}",
        lost.len(),
        unexpected.len(),
        duplicates <= kills * T1_CONCURRENCY as usize,
        runs.len(),
        pids.len(),
        enqueue_time.as_secs_f64(),
        drain_time.as_secs_f64(),
        enqueue_started.elapsed().as_secs_f64(),
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
        redone_from_live.is_empty(),
        "executions on workers that were never killed ran again (id, attempt, pid): {redone_from_live:?}"
    );
    assert_eq!(rows, i64::from(T1_JOBS), "one row per job");
    assert_eq!(not_succeeded, 0, "every row succeeded");
    assert_eq!(leased, 0, "no row left leased or running");
    assert!(
        max_attempt <= SOAK_MAX_ATTEMPTS && max_attempt <= T1_MAX_RECOVERIES as i64,
        "attempt counter {max_attempt} beyond the budget"
    );
    assert!(
        max_recoveries < T1_MAX_RECOVERIES as i64,
        "a job was recovered {max_recoveries} times"
    );
    assert_eq!(
        (stats.ready, stats.scheduled, stats.running, stats.dead),
        (0, 0, 0, 0),
        "nothing left ready, scheduled, reserved or dead: {stats:?}"
    );
    assert_eq!(counted, 0, "the counts agree with the rows");
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
    let scope = Scope::new().await;
    let backend = scope.backend();
    let producer = scope.producer();
    let mut workers = Workers::start(
        &scope,
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
    let claims: Vec<(JobId, u32)> = spans.iter().map(|s| (s.id, s.attempt)).collect();
    let unique: HashSet<&(JobId, u32)> = claims.iter().collect();
    assert_eq!(
        unique.len(),
        claims.len(),
        "an (id, attempt) was claimed twice"
    );
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
        assert_eq!(status.attempts, 1, "job {n} reserved once");
    }
    assert!(per_job.values().all(Vec::is_empty), "unexpected executions");
    let pids: HashSet<u32> = spans.iter().map(|s| s.pid).collect();
    assert_eq!(pids.len(), 2, "both worker processes took jobs");
    // SIGTERM: a graceful stop, exit status 0.
    workers.terminate_all(Duration::from_secs(10)).await;
    eprintln!(
        "two workers (Postgres): jobs={} executions={} processes={}",
        ids.len(),
        spans.len(),
        pids.len()
    );
    producer.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// T4: poison pill.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_a_job_that_kills_its_worker_is_dead_lettered_after_three_recoveries() {
    run_test("T4", Duration::from_secs(60), t4()).await;
}

async fn t4() {
    let scope = Scope::new().await;
    let backend = scope.backend();
    let producer = scope.producer();
    let id = producer
        .client()
        .enqueue(Pill { n: 0 })
        .await
        .expect("enqueued");
    let mut workers = Workers::start(
        &scope,
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
    let status = backend.status(id).await.expect("status").expect("kept");
    assert_eq!(status.last_error.as_deref(), Some(reason.as_str()));
    assert_eq!(
        scope
            .scalar("SELECT recoveries::int8 FROM {jobs} WHERE state = 5")
            .await,
        3,
        "recovered three times"
    );

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
    eprintln!("T4 (Postgres): runs=3 deaths={deaths:?} reason={reason:?}");
    producer.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// T6: leases against slow-but-alive and stalled workers.

/// Executions per job id, of the in-process T6 runtimes.
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

const T6_LEASE: Duration = Duration::from_millis(500);

/// Runs for three lease lengths (and a bit), politely: the runtime keeps heartbeating.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Slow;

impl Job for Slow {
    const NAME: &'static str = "chaos-slow";
    type Error = std::io::Error;
    type Output = ();
    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        record(cx.id());
        tokio::time::sleep(T6_LEASE * 3 + Duration::from_millis(100)).await;
        Ok(())
    }
}

/// On its first attempt, blocks its whole (single-threaded) runtime, heartbeat included, for
/// five leases.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Blocker;

impl Job for Blocker {
    const NAME: &'static str = "chaos-blocker";
    type Error = std::io::Error;
    type Output = ();
    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        record(cx.id());
        if cx.attempt() == 1 {
            std::thread::sleep(T6_LEASE * 5);
        }
        Ok(())
    }
}

async fn wait_status(backend: &dyn Backend, id: JobId, state: JobState) -> JobStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = backend.status(id).await.unwrap()
            && s.state == state
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "job never reached {state:?}: {:?}",
            backend.status(id).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t6_a_heartbeating_job_three_leases_long_is_not_redelivered() {
    run_test("T6 heartbeat", Duration::from_secs(30), t6_heartbeat()).await;
}

async fn t6_heartbeat() {
    let scope = Scope::new().await;
    let backend = scope.backend();
    // A second process watching with a fast reaper: it would recover the job the moment its
    // lease ran out.
    let watcher = JobRuntime::builder()
        .register::<Slow>()
        .backend(scope.backend())
        .queues(["chaos-idle"])
        .lease(T6_LEASE)
        .reap_interval(Duration::from_millis(50))
        .start()
        .unwrap();
    let rt = JobRuntime::builder()
        .register::<Slow>()
        .backend(scope.backend())
        .lease(T6_LEASE)
        .reap_interval(Duration::from_millis(50))
        .start()
        .unwrap();
    let id = rt.client().enqueue(Slow).await.unwrap();
    let started = Instant::now();
    let status = wait_status(&backend, id, JobState::Succeeded).await;
    let took = started.elapsed();
    assert!(took >= T6_LEASE * 3, "ran three leases: {took:?}");
    assert_eq!(status.attempts, 1, "reserved once");
    assert_eq!(runs(id), 1, "never redelivered");
    assert_eq!(rt.stats().lease_lost, 0);
    assert_eq!(
        scope.scalar("SELECT recoveries::int8 FROM {jobs}").await,
        0,
        "never recovered"
    );
    eprintln!("T6 heartbeat (Postgres): lease={T6_LEASE:?} ran={took:?} runs=1");
    rt.shutdown().await;
    watcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t6_a_job_whose_heartbeat_stops_is_redelivered_once_and_the_stale_ack_refused() {
    run_test("T6 stalled", Duration::from_secs(30), t6_stalled()).await;
}

async fn t6_stalled() {
    let scope = Scope::new().await;
    let (tx, rx) = std::sync::mpsc::channel();
    // Worker process A: one thread, so a blocked job also blocks its heartbeat.
    let a = std::thread::spawn({
        let backend = scope.backend();
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let a = JobRuntime::builder()
                    .register::<Blocker>()
                    .backend(backend)
                    .lease(T6_LEASE)
                    .reap_interval(Duration::from_secs(3_600))
                    .concurrency(1)
                    .start()
                    .unwrap();
                // Delayed a little, so the id reaches the test before the job blocks this
                // thread (enqueue awaits I/O, and the fetcher could run first).
                let id = a
                    .client()
                    .enqueue_in(Blocker, Duration::from_millis(300))
                    .await
                    .unwrap();
                tx.send(id).unwrap();
                tokio::time::sleep(T6_LEASE * 8).await;
                let stats = a.stats();
                a.shutdown().await;
                stats
            })
        }
    });
    let id = tokio::task::spawn_blocking(move || rx.recv().unwrap())
        .await
        .unwrap();
    let backend = scope.backend();
    wait_status(&backend, id, JobState::Running).await;

    // Worker process B: reaps A's expired lease and runs the job again.
    let b = JobRuntime::builder()
        .register::<Blocker>()
        .backend(scope.backend())
        .lease(T6_LEASE)
        .reap_interval(Duration::from_millis(50))
        .start()
        .unwrap();
    let status = wait_status(&backend, id, JobState::Succeeded).await;
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
    assert_eq!(
        scope.scalar("SELECT recoveries::int8 FROM {jobs}").await,
        1,
        "recovered once"
    );
    assert_eq!(b.stats().lease_lost, 0);
    eprintln!(
        "T6 stalled (Postgres): lease={T6_LEASE:?} runs=2 attempts=2 stale_acks_refused={}",
        a_stats.lease_lost
    );
    b.shutdown().await;
}

/// The same at the backend's level, with the token in hand: a lease taken over by another
/// reservation cannot be renewed, acknowledged, retried, dead-lettered or released by its
/// first holder, and nothing it tries changes the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t6_the_stale_holder_of_a_recovered_lease_gets_lease_lost_for_every_write_back() {
    run_test("T6 fencing", Duration::from_secs(30), t6_fencing()).await;
}

async fn t6_fencing() {
    use job_core::backend::{Reservation, Retry};
    let scope = Scope::new().await;
    let producer = scope.producer();
    let (a, b) = (scope.backend(), scope.backend());
    let id = producer
        .client()
        .enqueue(Soak { n: 0, sleep_ms: 0 })
        .await
        .unwrap();
    let queues = vec![pg_chaos::jobs::QUEUE.to_owned()];
    let token = |r: &Reservation| match r {
        Reservation::Job { envelope, token } => (envelope.id, envelope.attempt, token.clone()),
        other @ Reservation::Malformed { .. } => panic!("expected a job, got {other:?}"),
    };
    let got = a.reserve(&queues, 1, T6_LEASE).await.unwrap();
    let (got_id, attempt, stale) = token(&got[0]);
    assert_eq!((got_id, attempt), (id, 1));
    tokio::time::sleep(T6_LEASE + Duration::from_millis(100)).await;
    let reaped = b.reap(3).await.unwrap();
    assert_eq!(reaped.recovered, vec![id]);
    let got = b
        .reserve(&queues, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let (_, attempt, fresh) = token(&got[0]);
    assert_eq!(attempt, 2);

    let lost = |r: Result<(), BackendError>, what: &str| match r {
        Err(BackendError::LeaseLost(x)) if x == id => {}
        other => panic!("{what} with the stale token: expected LeaseLost, got {other:?}"),
    };
    assert_eq!(
        a.extend(&[(id, stale.clone())], T6_LEASE)
            .await
            .unwrap()
            .lost,
        vec![id],
        "renewal refused"
    );
    lost(a.ack(id, stale.clone()).await, "ack");
    assert_eq!(a.ack_batch(&[(id, stale.clone())]).await.unwrap(), vec![id]);
    lost(
        a.retry(
            id,
            stale.clone(),
            Retry {
                at: std::time::SystemTime::now(),
                error: "stale".into(),
            },
        )
        .await,
        "retry",
    );
    lost(a.release(id, stale.clone()).await, "release");
    let status = a.status(id).await.unwrap().unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Running, 2));
    // The current holder is unaffected.
    b.ack(id, fresh.clone()).await.unwrap();
    let status = a.status(id).await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Succeeded);
    lost(
        a.ack(id, stale.clone()).await,
        "ack after the job succeeded",
    );
    assert_eq!(
        a.extend(&[(id, stale.clone())], T6_LEASE)
            .await
            .unwrap()
            .lost,
        vec![id],
        "renewal after the job succeeded, stale token"
    );
    // The holder's own renewal racing its acknowledgement (the heartbeat does, while a batch
    // of acks is in flight) finds the outcome written: not a lost lease, and no change.
    assert_eq!(
        b.extend(&[(id, fresh.clone())], T6_LEASE)
            .await
            .unwrap()
            .lost,
        vec![],
        "renewal after its own ack"
    );
    let status = a.status(id).await.unwrap().unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Succeeded, 2));
    producer.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// T7: backend outage (connections terminated, a hung server) without a server restart.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t7_terminated_connections_workers_resume_and_nothing_acknowledged_is_lost() {
    run_test(
        "T7 terminate",
        Duration::from_secs(90),
        t7_terminate_connections(),
    )
    .await;
}

async fn t7_terminate_connections() {
    let scope = Scope::new().await;
    let (rt, ledger) = t7_runtime(&scope, Duration::from_secs(2));
    let mut ids = enqueue_all(&rt, (0..500).map(|_| Tick { sleep_ms: 20 }).collect()).await;
    eventually(Duration::from_secs(10), "jobs running", || async {
        !ledger.runs().is_empty()
    })
    .await;
    let mut report = String::new();
    // Several rounds, so that the kills hit each kind of call (reserve, ack, renew, listen).
    for round in 0..8 {
        let killed = scope.terminate_backend_connections().await;
        let done = ledger.runs().len();
        let _ = write!(
            report,
            " round {round}: {killed} connections terminated at {done} jobs run;"
        );
        assert!(
            killed >= 1,
            "round {round}: the runtime had no connection to terminate:{report}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        ledger.runs().len() < ids.len(),
        "the kills landed after the run:{report}"
    );
    // Workers resume by themselves: the jobs acknowledged before, and new ones.
    ids.extend(ticks(&rt, 20, 1).await);
    all_succeed(&rt, &ledger, &ids, Duration::from_secs(40)).await;
    all_workers_alive(&rt).await;
    eventually(Duration::from_secs(5), "healthy", || async {
        rt.health().status == HealthStatus::Healthy
    })
    .await;
    no_error_loop(&rt, &ledger, Duration::from_secs(2)).await;
    let runs = ledger.runs();
    let duplicates: u32 = ids.iter().map(|id| runs[id] - 1).sum();
    eprintln!(
        "T7 terminate (Postgres):{report} jobs={} lost=0 duplicates={duplicates} lease_lost={}",
        ids.len(),
        rt.stats().lease_lost
    );
    rt.shutdown().await;
}

/// Statement timeout of the hung-server test's runtime.
const HANG_TIMEOUT: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t7_hung_server_calls_time_out_enqueue_fails_loudly_workers_survive_and_resume() {
    run_test("T7 hang", Duration::from_secs(90), t7_hang()).await;
}

/// The apalis-redis#76 shape on Postgres: the job table is locked (ACCESS EXCLUSIVE, held by
/// another connection) for five statement timeouts, so every statement on it waits. Calls
/// must fail with `Unavailable` within the bound, not hang; enqueue must fail loudly; no
/// worker may die of it; and once the lock goes, everything completes.
async fn t7_hang() {
    const HANG: Duration = Duration::from_secs(5);
    let scope = Scope::new().await;
    let (rt, ledger) = t7_runtime(&scope, HANG_TIMEOUT);
    // Another process's backend, to time single calls.
    let probe = scope
        .builder()
        .statement_timeout(HANG_TIMEOUT)
        .max_connections(2)
        .build()
        .expect("backend settings");
    probe.connect().await.expect("probe connects");
    let ids = ticks(&rt, 150, 25).await;
    eventually(Duration::from_secs(10), "jobs running", || async {
        ledger.runs().len() >= 20
    })
    .await;

    let mut lock = scope.admin.begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        scope.table("jobs")
    )))
    .execute(&mut *lock)
    .await
    .expect("lock the job table");
    let hang = Instant::now();
    let ran_before = ledger.runs().len();

    // A reservation and a status read: Unavailable within the statement timeout.
    let queues = vec!["default".to_owned()];
    let t = Instant::now();
    let reserved = probe.reserve(&queues, 1, Duration::from_secs(2)).await;
    let reserve_failed_in = t.elapsed();
    assert!(
        matches!(reserved, Err(BackendError::Unavailable(_))),
        "reserve on a locked table: {reserved:?}"
    );
    let t = Instant::now();
    let status = probe.status(ids[0]).await;
    let status_failed_in = t.elapsed();
    assert!(
        matches!(status, Err(BackendError::Unavailable(_))),
        "status on a locked table: {status:?}"
    );
    // Enqueue: EnqueueError::Backend, never a hang (a pool connection and a statement, each
    // bounded by the timeout).
    let t = Instant::now();
    let refused = match rt.client().enqueue(Tick { sleep_ms: 1 }).await {
        Err(EnqueueError::Backend { message, .. }) => (t.elapsed(), message),
        other => panic!("enqueue on a locked table: expected EnqueueError::Backend, got {other:?}"),
    };
    let bound = HANG_TIMEOUT * 2 + Duration::from_millis(500);
    for (what, took) in [
        ("reserve", reserve_failed_in),
        ("status", status_failed_in),
        ("enqueue", refused.0),
    ] {
        assert!(
            took >= HANG_TIMEOUT.mul_f64(0.9) && took < bound,
            "{what} failed after {took:?}, not within the statement timeout ({HANG_TIMEOUT:?}, bound {bound:?})"
        );
    }
    eventually(HANG, "health degraded", || async {
        rt.health().status == HealthStatus::Degraded
    })
    .await;
    tokio::time::sleep(HANG.saturating_sub(hang.elapsed())).await;
    let ran_during = ledger.runs().len() - ran_before;
    lock.rollback().await.expect("release the lock");

    all_succeed(&rt, &ledger, &ids, Duration::from_secs(40)).await;
    all_workers_alive(&rt).await;
    eventually(Duration::from_secs(5), "healthy again", || async {
        rt.health().status == HealthStatus::Healthy
    })
    .await;
    no_error_loop(&rt, &ledger, Duration::from_secs(2)).await;
    let runs = ledger.runs();
    let duplicates: u32 = ids.iter().map(|id| runs[id] - 1).sum();
    eprintln!(
        "T7 hang (Postgres): jobs={} ran_before_lock={ran_before} ran_during_lock={ran_during} \
         locked_for={HANG:?} statement_timeout={HANG_TIMEOUT:?} reserve_failed_in={reserve_failed_in:?} \
         status_failed_in={status_failed_in:?} enqueue_refused_in={:?} ({}) lost=0 duplicates={duplicates} \
         lease_lost={}",
        ids.len(),
        refused.0,
        refused.1,
        rt.stats().lease_lost
    );
    assert!(ran_before < ids.len(), "the lock landed after the run");
    rt.shutdown().await;
}
