//! Crash and chaos tests of the durable runtime on Azure Queue Storage (Azurite), after
//! RELIABILITY.md §2: T1 (SIGKILL soak), T4 (poison pill), T6 (heartbeat and fencing by pop
//! receipt), T7 (emulator restarted on the same data directory).
//!
//! What the queue claims is checked against what the jobs saw: the `soak_worker` jobs record
//! each execution in the shared Redis (`JOB_REDIS_URL`) under the test's prefix, the
//! in-process jobs in memory. The store cannot be asked for a job's status, so "nothing
//! lost" is: every acknowledged job ran to the end of its handler, and the queue and its
//! poison queue are empty afterwards (a message leaves the queue only by an ack or a move
//! to the poison queue).
//!
//! T1, T4 and T6 use the shared emulator (`JOB_AZURE_QUEUE`, default Azurite on
//! 127.0.0.1:10001), each on its own queue prefix; T7 starts a private Azurite on a free
//! port and stops (SIGTERM) and restarts it on the same data directory. (A SIGKILL of
//! Azurite loses the writes of its last few seconds, which it keeps in memory between saves:
//! the emulator's durability, not the service's, so T7 does not test it.) The worker harness is the Postgres chaos tests'
//! (`pg_chaos`), given `--azure-queue` flags. A missing emulator, Redis or Azurite binary
//! fails the test with what to start.

mod common;
mod pg_chaos;

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use job_core::backend::Backend;
use job_core::backend::azure::AzureQueueBackend;
use job_core::prelude::*;
use job_core::{EnqueueError, HealthStatus};
use pg_chaos::jobs::{Pill, QUEUE, Soak, record_key};
use pg_chaos::{Exec, Workers, enqueue_all, eventually, run_test};
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use common::azure::{Azurite, azure_conn, fresh_prefix};

/// One test's queues (on the shared emulator) and records (in the shared Redis); both are
/// deleted when it ends.
struct Scope {
    conn: String,
    prefix: String,
    redis: MultiplexedConnection,
    _queues: common::azure::AzureCleanup,
    _records: common::RedisCleanup,
}

impl Scope {
    async fn new() -> Self {
        Self::on(azure_conn()).await
    }

    /// On the emulator of `conn`.
    async fn on(conn: String) -> Self {
        let prefix = fresh_prefix();
        let cleanup = common::azure::AzureCleanup {
            conn: conn.clone(),
            prefix: prefix.clone(),
        };
        let check = AzureQueueBackend::builder(conn.as_str())
            .prefix(prefix.as_str())
            .build()
            .expect("valid Azure settings");
        if let Err(e) = check.connect().await {
            panic!(
                "Azure Queue Storage (Azurite) is not reachable through {conn:?} ({e:?}). Start it with:\n    {}",
                common::azure::START_AZURITE
            );
        }
        let client = redis::Client::open(common::redis_url()).expect("Redis URL");
        let redis = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| {
            panic!(
                "the chaos jobs record their runs in Redis at {}; start it with:\n    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no",
                common::redis_url()
            )
        });
        Self {
            _records: common::RedisCleanup {
                prefix: prefix.clone(),
            },
            conn,
            prefix,
            redis,
            _queues: cleanup,
        }
    }

    fn backend(&self) -> AzureQueueBackend {
        AzureQueueBackend::builder(self.conn.as_str())
            .prefix(self.prefix.as_str())
            .build()
            .expect("valid backend settings")
    }

    /// A runtime that only enqueues (it takes jobs from a queue nobody uses).
    fn producer(&self) -> JobRuntime {
        JobRuntime::builder()
            .backend(self.backend())
            .queues(["chaos-producer-idle"])
            .reap_interval(Duration::from_secs(3_600))
            .capacity(1_000_000)
            .concurrency(1)
            .register::<Soak>()
            .register::<Pill>()
            .start()
            .expect("producer runtime starts")
    }

    fn workers(&self, count: usize, settings: &[(&str, u64)]) -> Workers {
        let store = [
            "--azure-queue".to_owned(),
            self.conn.clone(),
            "--prefix".to_owned(),
            self.prefix.clone(),
        ];
        Workers::with_store(
            &format!("azure-chaos-{}", self.prefix),
            &store,
            count,
            settings,
        )
    }

    async fn records(&mut self, kind: &str) -> Vec<Exec> {
        let lines: Vec<String> = redis::cmd("LRANGE")
            .arg(record_key(&self.prefix, kind))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.redis)
            .await
            .expect("LRANGE");
        lines.iter().map(|l| Exec::parse(l)).collect()
    }

    async fn count(&mut self, kind: &str) -> u64 {
        redis::cmd("LLEN")
            .arg(record_key(&self.prefix, kind))
            .query_async(&mut self.redis)
            .await
            .expect("LLEN")
    }
}

/// Waits until the store's count of messages in the chaos queue is 0.
async fn drained(backend: &AzureQueueBackend, limit: Duration) {
    let queues = [QUEUE.to_owned()];
    // Reserving nothing makes the backend know the queue, so its stats count it.
    let _ = backend.reserve(&queues, 0, Duration::from_secs(1)).await;
    eventually(limit, "the queue drained", || async {
        // (A failed read is a "not yet": the poll has its deadline.)
        backend
            .stats()
            .await
            .is_ok_and(|s| s.ready + s.running == 0)
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// T1: SIGKILL soak.

/// Jobs in T1: 2,000 by default (`AZURE_T1_JOBS=10000` for the figure). Azurite is
/// one Node process: on a 2-core machine shared with builds, 10,000 jobs (each a put, a
/// receive share, renewals and a delete) kept it past its requests' timeouts for tens of
/// seconds, and the renewals that timed out spent their pop receipts.
fn t1_jobs() -> u32 {
    std::env::var("AZURE_T1_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000)
}
const T1_WORKERS: usize = 4;
const T1_KILLS: usize = 20;
const T1_CONCURRENCY: u64 = 4;
const T1_SLEEP_MS: u64 = 10;
/// Azure's visibility timeouts are whole seconds, and every renewal is one request per job:
/// a long lease keeps the heartbeat traffic within what Azurite serves on a small machine.
const T1_LEASE_MS: u64 = 10_000;
/// Recoveries allowed before the poison queue: a job may be caught by several kills.
const T1_MAX_RECOVERIES: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_sigkill_soak_loses_nothing() {
    run_test("T1", Duration::from_secs(900), t1()).await;
}

async fn t1() {
    // A private emulator that keeps its data in memory: the shared one saves its database
    // to disk, and each save of a 10,000-message queue stalls it for seconds.
    let azurite = Azurite::start_in_memory().await;
    let mut scope = Scope::on(azurite.conn()).await;
    let backend = scope.backend();
    let producer = scope.producer();
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let total = t1_jobs();

    let enqueueing = Instant::now();
    let jobs = (0..total)
        .map(|n| Soak {
            n,
            sleep_ms: T1_SLEEP_MS,
        })
        .collect();
    let ids = enqueue_all(&producer, jobs).await;
    let enqueue_time = enqueueing.elapsed();
    let expected: HashMap<JobId, u32> = ids.iter().copied().zip(0..).collect();
    assert_eq!(expected.len(), total as usize, "unique ids");

    let started = Instant::now();
    let mut workers = scope.workers(
        T1_WORKERS,
        &[
            ("concurrency", T1_CONCURRENCY),
            ("lease-ms", T1_LEASE_MS),
            ("reap-ms", 500),
            ("max-recoveries", T1_MAX_RECOVERIES),
        ],
    );
    let first = f64::from(total) * 0.03;
    let slice = f64::from(total) * 0.9 / T1_KILLS as f64;
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
                moved.elapsed() < Duration::from_secs(30),
                "no job started for 30 s, at {count} executions (kill {k}); logs in {}",
                workers.logs.display()
            );
            workers.assert_all_alive();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..20))).await;
        workers.assert_all_alive();
        let slot = rng.usize(..T1_WORKERS);
        workers.kill(slot);
        kills += 1;
        workers.spawn(slot);
    }
    drained(&backend, Duration::from_secs(400)).await;
    let drain_time = started.elapsed();
    // Two leases later nothing may have come back (a lease left running would).
    tokio::time::sleep(Duration::from_millis(2 * T1_LEASE_MS)).await;
    workers.assert_all_alive();
    let stats = backend.stats().await.expect("stats");
    let poisoned = backend.poison_count(QUEUE).await.expect("poison count");

    let runs = scope.records("runs").await;
    let mut per_job: HashMap<JobId, Vec<&Exec>> = HashMap::new();
    let mut unexpected = Vec::new();
    for r in &runs {
        match expected.get(&r.id) {
            Some(&n) if n == r.n => per_job.entry(r.id).or_default().push(r),
            _ => unexpected.push(r),
        }
    }
    let lost: Vec<_> = ids.iter().filter(|id| !per_job.contains_key(id)).collect();
    let duplicates: usize = per_job.values().map(|v| v.len() - 1).sum();
    let attempts_repeated: Vec<_> = per_job
        .values()
        .filter(|v| v.iter().map(|r| r.attempt).collect::<HashSet<_>>().len() != v.len())
        .collect();
    let max_attempt = runs.iter().map(|r| r.attempt).max().unwrap_or(0);
    // As on Redis: a kill loses the attempts running (at most `concurrency`) and the
    // successes whose batched ack was not yet written.
    let bound = kills * T1_CONCURRENCY as usize * 2;
    let pids: HashSet<u32> = runs.iter().map(|r| r.pid).collect();
    println!(
        "T1 figures (Azure Queue on Azurite): jobs={total} workers={T1_WORKERS} concurrency={T1_CONCURRENCY} \
         kills={kills} lost={} unexpected={} duplicates={duplicates} (bound {bound}) executions={} \
         worker_processes={} max_attempt={max_attempt} poisoned={poisoned} enqueued_in={:.1}s \
         drained_in={:.1}s seed={seed}",
        lost.len(),
        unexpected.len(),
        runs.len(),
        pids.len(),
        enqueue_time.as_secs_f64(),
        drain_time.as_secs_f64(),
    );
    assert_eq!(kills, T1_KILLS);
    assert!(lost.is_empty(), "jobs that never ran: {lost:?}");
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
        "one delivery (attempt) executed twice: {attempts_repeated:?}"
    );
    assert_eq!(poisoned, 0, "nothing crash-looped into the poison queue");
    assert_eq!((stats.ready, stats.running), (0, 0), "{stats:?}");
    assert!(pids.len() > T1_WORKERS, "restarted workers ran jobs too");
    producer.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// T4: a job that aborts its process is parked in the poison queue after 3 recoveries.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_a_job_that_aborts_its_worker_is_parked_in_the_poison_queue_after_three_recoveries() {
    run_test("T4", Duration::from_secs(120), t4()).await;
}

async fn t4() {
    let mut scope = Scope::new().await;
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
    eventually(
        Duration::from_secs(60),
        "the pill in the poison queue",
        || {
            if let Some(status) = workers.exited(0) {
                deaths.push(status);
                assert!(deaths.len() <= 3, "the worker died {} times", deaths.len());
                workers.spawn(0);
            }
            let backend = &backend;
            async move { backend.poison_count(QUEUE).await.expect("poison count") == 1 }
        },
    )
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
    assert_eq!(pills.iter().map(|p| p.pid).collect::<HashSet<_>>().len(), 3);
    assert_eq!(deaths.len(), 3, "{deaths:?}");
    for d in &deaths {
        assert_eq!(d.signal(), Some(6), "died by abort (SIGABRT): {d}");
    }
    // The parked record names the job and the reason, and can be requeued by id.
    let dead = backend.peek_dead_letters(10).await.expect("dead letters");
    let record = dead
        .iter()
        .find(|d| d.job_id == id)
        .expect("the pill is listed");
    assert!(record.error_message().contains("poison pill"), "{record:?}");
    assert_eq!(record.job, "chaos-pill");

    // The worker goes on with other work; the pill does not come back.
    let next = producer
        .client()
        .enqueue(Soak { n: 1, sleep_ms: 1 })
        .await
        .expect("enqueued");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !scope.records("runs").await.iter().any(|r| r.id == next) {
        assert!(
            Instant::now() < deadline,
            "the next job did not run within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drained(&backend, Duration::from_secs(20)).await;
    workers.assert_all_alive();
    assert_eq!(scope.count("pills").await, 3, "no fourth run");
    println!(
        "T4 (Azure Queue): pill ran 3 times in 3 processes, each aborted; parked in {}-poison",
        backend.azure_queue_name(QUEUE)
    );
    producer.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// T6: heartbeat, and the pop receipt as fence.

/// Executions per job id, of the in-process runtimes.
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

/// Azure's shortest visibility timeout is a second.
const T6_LEASE: Duration = Duration::from_secs(1);

/// Runs three leases (and a bit), politely: the runtime keeps renewing.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Slow;

impl Job for Slow {
    const NAME: &'static str = "chaos-slow";
    type Error = std::io::Error;
    type Output = ();
    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        record(cx.id());
        tokio::time::sleep(T6_LEASE * 3 + Duration::from_millis(200)).await;
        record(cx.id());
        Ok(())
    }
}

/// On its first attempt blocks its whole (single-threaded) runtime, heartbeat included.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t6_a_heartbeating_job_three_leases_long_is_not_redelivered() {
    run_test("T6 heartbeat", Duration::from_secs(60), t6_heartbeat()).await;
}

async fn t6_heartbeat() {
    let scope = Scope::new().await;
    let backend = scope.backend();
    // A second process on the same queue: it would receive the job the moment its
    // visibility timeout ran out.
    let watcher = JobRuntime::builder()
        .register::<Slow>()
        .backend(scope.backend())
        .lease(T6_LEASE)
        .start()
        .unwrap();
    let rt = JobRuntime::builder()
        .register::<Slow>()
        .backend(scope.backend())
        .lease(T6_LEASE)
        .start()
        .unwrap();
    let id = rt.client().enqueue(Slow).await.unwrap();
    let started = Instant::now();
    eventually(Duration::from_secs(30), "the slow job finished", || async {
        runs(id) >= 2
    })
    .await;
    let took = started.elapsed();
    drained(&backend, Duration::from_secs(10)).await;
    // Longer than a lease more: a redelivery would have shown by now.
    tokio::time::sleep(T6_LEASE * 2).await;
    assert!(took >= T6_LEASE * 3, "ran three leases: {took:?}");
    assert_eq!(
        runs(id),
        2,
        "started once and finished once: never redelivered"
    );
    assert_eq!(rt.stats().lease_lost + watcher.stats().lease_lost, 0);
    println!("T6 heartbeat (Azure Queue): lease={T6_LEASE:?} ran={took:?} runs=1");
    rt.shutdown().await;
    watcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t6_a_job_whose_heartbeat_stops_is_redelivered_once_and_the_stale_delete_refused() {
    run_test("T6 stalled", Duration::from_secs(60), t6_stalled()).await;
}

async fn t6_stalled() {
    let scope = Scope::new().await;
    let (tx, rx) = std::sync::mpsc::channel();
    // Worker A: one thread, so the blocked job also blocks its heartbeat.
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
                    .concurrency(1)
                    .start()
                    .unwrap();
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
    eventually(Duration::from_secs(20), "A started the job", || async {
        runs(id) == 1
    })
    .await;
    // Worker B receives the message once A's visibility timeout runs out, and runs it.
    let b = JobRuntime::builder()
        .register::<Blocker>()
        .backend(scope.backend())
        .lease(T6_LEASE)
        .start()
        .unwrap();
    eventually(Duration::from_secs(20), "B ran the job again", || async {
        runs(id) == 2
    })
    .await;
    let a_stats = tokio::task::spawn_blocking(move || a.join().unwrap())
        .await
        .unwrap();
    let backend = scope.backend();
    drained(&backend, Duration::from_secs(10)).await;
    assert_eq!(
        a_stats.lease_lost, 1,
        "A's late delete (stale pop receipt) was refused"
    );
    assert_eq!(runs(id), 2, "redelivered exactly once");
    assert_eq!(b.stats().lease_lost, 0);
    println!(
        "T6 stalled (Azure Queue): lease={T6_LEASE:?} runs=2 stale_deletes_refused={}",
        a_stats.lease_lost
    );
    b.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// T7: the emulator stopped and restarted on the same data directory.

/// Executions and completions seen by the in-process T7 runtime.
#[derive(Default)]
struct Ledger {
    runs: Mutex<HashMap<JobId, u32>>,
    done: Mutex<HashSet<JobId>>,
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
        ledger.done.lock().unwrap().insert(cx.id());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t7_emulator_restart_enqueue_fails_loudly_workers_resume_nothing_acknowledged_is_lost() {
    run_test("T7 restart", Duration::from_secs(180), t7_restart()).await;
}

async fn t7_restart() {
    let mut azurite = Azurite::start().await;
    let prefix = fresh_prefix();
    let conn = azurite.conn();
    let backend = || {
        AzureQueueBackend::builder(conn.as_str())
            .prefix(prefix.as_str())
            .request_timeout(Duration::from_secs(2))
            .build()
            .expect("backend settings")
    };
    let ledger = Arc::new(Ledger::default());
    let rt = JobRuntime::builder()
        .backend(backend())
        .lease(Duration::from_secs(2))
        .reap_interval(Duration::from_millis(300))
        .concurrency(4)
        .capacity(100_000)
        .data(ledger.clone())
        .register::<Tick>()
        .start()
        .expect("runtime starts");
    let mut ids = Vec::new();
    for _ in 0..150 {
        ids.push(
            rt.client()
                .enqueue(Tick { sleep_ms: 100 })
                .await
                .expect("enqueued"),
        );
    }
    eventually(Duration::from_secs(20), "jobs running", || async {
        ledger.runs.lock().unwrap().len() >= 20
    })
    .await;

    azurite.stop();
    let ran_before = ledger.runs.lock().unwrap().len();
    let outage = Instant::now();
    let mut refused = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        match rt.client().enqueue(Tick { sleep_ms: 1 }).await {
            Err(EnqueueError::Backend { message, .. }) => refused.push((t.elapsed(), message)),
            other => panic!(
                "enqueue while the emulator is down: expected EnqueueError::Backend, got {other:?}"
            ),
        }
    }
    let slowest = refused.iter().map(|(d, _)| *d).max().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(6),
        "enqueue took {slowest:?} to fail: {refused:?}"
    );
    eventually(Duration::from_secs(15), "health degraded", || async {
        rt.health().status != HealthStatus::Healthy
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(outage.elapsed())).await;

    azurite.restart().await;
    let down_for = outage.elapsed();
    eventually(
        Duration::from_secs(60),
        "every acknowledged job ran to the end",
        || async {
            let done = ledger.done.lock().unwrap();
            ids.iter().all(|id| done.contains(id))
        },
    )
    .await;
    let after = rt
        .client()
        .enqueue(Tick { sleep_ms: 1 })
        .await
        .expect("enqueue works again");
    eventually(
        Duration::from_secs(20),
        "the job after the outage ran",
        || async { ledger.done.lock().unwrap().contains(&after) },
    )
    .await;
    let check = backend();
    eventually(Duration::from_secs(30), "the queue drained", || async {
        let _ = check
            .reserve(&["default".to_owned()], 0, Duration::from_secs(1))
            .await;
        check.stats().await.is_ok_and(|s| s.ready + s.running == 0)
    })
    .await;
    eventually(Duration::from_secs(10), "healthy again", || async {
        rt.health().status == HealthStatus::Healthy
    })
    .await;
    let runs = ledger.runs.lock().unwrap().clone();
    let duplicates: u32 = ids.iter().map(|id| runs[id] - 1).sum();
    println!(
        "T7 restart (Azure Queue): jobs={} ran_before_stop={ran_before} down_for={down_for:.1?} \
         enqueue_refused_in<={slowest:?} ({}) lost=0 duplicates={duplicates}",
        ids.len(),
        refused[0].1
    );
    assert!(ran_before < ids.len(), "the stop landed after the run");
    rt.shutdown().await;
}
