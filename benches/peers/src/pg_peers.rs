//! Postgres workloads (issue 12): job-core's `PostgresBackend` (leases, at-least-once,
//! fenced acks, LISTEN/NOTIFY) against `apalis-postgres` 1.0 (`PostgresStorage` with its
//! default config, as a user gets it), both on the same server, each child in a database
//! of its own made fresh before it runs (`PEERS_POSTGRES_URL` names the server and a
//! maintenance database; the children use `peers_bench` beside it).
//!
//! Postgres' CPU is read from `/proc`: every live `postgres` process's user + system time,
//! plus the postmaster's reaped children, so connections that closed are counted too. The
//! server is shared with whatever else runs on the machine: run on a quiet one.

use std::time::{Duration, Instant};

use apalis::prelude::{TaskSink, WorkerBuilder, WorkerBuilderExt};
use apalis_postgres::PostgresStorage;
use job_core::JobRuntime;
use job_core::backend::postgres::PostgresBackend;
use sqlx::{Connection, PgPool};

use crate::common::{
    Noop, Timed, done, expect, finished, latency_percentiles, latency_slots, mark_at, marked_ns,
    noop, noop_body, now_ns, report, runtime, timed_body,
};
use crate::mem::concurrency;

const DATABASE: &str = "peers_bench";

/// The maintenance URL (the server, and a database that is not the benchmark's).
pub fn server_url() -> String {
    std::env::var("PEERS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The benchmark database's URL.
fn url() -> String {
    let server = server_url();
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    format!("{base}/{DATABASE}")
}

/// Drops and recreates the benchmark database, so no run sees another's rows or bloat.
async fn fresh_database() {
    let mut conn = sqlx::PgConnection::connect(&server_url())
        .await
        .expect("connect to PEERS_POSTGRES_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .expect("drop the benchmark database");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {DATABASE}")))
        .execute(&mut conn)
        .await
        .expect("create the benchmark database");
}

async fn pool() -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(&url())
        .await
        .expect("connect to the benchmark database")
}

/// Our runtime on Postgres (schema `peers`). `consume: false` points its workers at a
/// queue nobody uses, so it only produces.
async fn ours(consume: bool) -> JobRuntime {
    let backend = PostgresBackend::builder(&url())
        .schema("peers")
        .build()
        .expect("postgres backend");
    // Create the schema before anything is timed.
    job_core::backend::Backend::connect(&backend)
        .await
        .expect("connect and create the schema");
    let mut b = JobRuntime::builder()
        .backend(backend)
        .register::<Noop>()
        .register::<Timed>()
        .capacity(10_000_000)
        .concurrency(concurrency());
    if !consume {
        b = b.queues(["idle"]);
    }
    b.start().expect("start job-core runtime")
}

async fn apalis_storage<T>(pool: &PgPool) -> PostgresStorage<T> {
    PostgresStorage::setup(pool)
        .await
        .expect("apalis-postgres migrations");
    PostgresStorage::new(pool)
}

async fn apalis_noop(_job: Noop) {
    noop_body().await;
}

async fn apalis_timed(job: Timed) {
    timed_body(&job);
}

/// Bytes of the tables, their indexes and TOAST in `schema`.
async fn schema_bytes(pool: &PgPool, schema: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
    )
    .bind(schema)
    .fetch_one(pool)
    .await
    .expect("relation sizes")
}

fn schema_of(which: &str) -> &'static str {
    if which == "ours" { "peers" } else { "apalis" }
}

/// CPU seconds used by the Postgres server so far (see the module docs).
pub fn server_cpu_secs() -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let postmaster: Option<u64> = std::env::var("PEERS_POSTGRES_PID")
        .ok()
        .and_then(|p| p.parse().ok());
    let mut total = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return f64::NAN;
    };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ... : split after the command's closing parenthesis.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(postgres") {
            continue;
        }
        let pid: u64 = head
            .split(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14-17 of stat (utime stime cutime cstime) are 11-14 after the comm.
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let ppid = n(1);
        // A private cluster (run.sh): only its postmaster and that postmaster's children.
        if let Some(root) = postmaster
            && pid != root
            && ppid != root
        {
            continue;
        }
        total += n(11) + n(12);
        // The postmaster (its parent is not postgres) also holds its reaped children.
        let parent_is_postgres = std::fs::read_to_string(format!("/proc/{ppid}/comm"))
            .is_ok_and(|c| c.trim() == "postgres");
        if !parent_is_postgres {
            total += n(13) + n(14);
        }
    }
    total as f64 / tick
}

/// `jobs` enqueued one after another, each awaited, while nothing consumes.
pub fn single(which: &str, jobs: usize) {
    runtime().block_on(async move {
        fresh_database().await;
        let elapsed = match which {
            "ours" => {
                let rt = ours(false).await;
                let client = rt.client();
                client.enqueue(noop(0)).await.expect("warm-up enqueue");
                let t = Instant::now();
                for i in 0..jobs {
                    client.enqueue(noop(i as u64)).await.expect("enqueue");
                }
                let e = t.elapsed();
                rt.shutdown().await;
                e
            }
            "apalis" => {
                let pool = pool().await;
                let mut storage = apalis_storage::<Noop>(&pool).await;
                storage.push(noop(0)).await.expect("warm-up push");
                let t = Instant::now();
                for i in 0..jobs {
                    storage.push(noop(i as u64)).await.expect("push");
                }
                t.elapsed()
            }
            other => panic!("unknown implementation {other}"),
        };
        report("single_enqueue", jobs as f64 / elapsed.as_secs_f64());
    });
}

/// Enqueues `jobs` in batches of `batch` (ours `enqueue_many`, apalis `push_bulk`).
async fn fill(which: &str, jobs: usize, batch: usize) -> Duration {
    match which {
        "ours" => {
            let rt = ours(false).await;
            let client = rt.client();
            client.enqueue(noop(0)).await.expect("warm-up enqueue");
            let t = Instant::now();
            for b in 0..jobs / batch {
                let v = (0..batch).map(|i| noop((b * batch + i) as u64));
                client.enqueue_many(v).await.expect("enqueue_many");
            }
            let e = t.elapsed();
            rt.shutdown().await;
            e
        }
        "apalis" => {
            let pool = pool().await;
            let mut storage = apalis_storage::<Noop>(&pool).await;
            storage.push(noop(0)).await.expect("warm-up push");
            let t = Instant::now();
            for b in 0..jobs / batch {
                let v: Vec<Noop> = (0..batch).map(|i| noop((b * batch + i) as u64)).collect();
                storage.push_bulk(v).await.expect("push_bulk");
            }
            t.elapsed()
        }
        other => panic!("unknown implementation {other}"),
    }
}

/// Batched enqueue rate, then table + index bytes per queued job.
pub fn batched(which: &str, jobs: usize, batch: usize) {
    runtime().block_on(async move {
        fresh_database().await;
        let elapsed = fill(which, jobs, batch).await;
        let pool = pool().await;
        let bytes = schema_bytes(&pool, schema_of(which)).await;
        report("batch_enqueue", jobs as f64 / elapsed.as_secs_f64());
        report("pg_bytes_per_job", bytes as f64 / (jobs + 1) as f64);
    });
}

/// Workers start on a backlog of `backlog` jobs while one producer enqueues `produce`
/// more, one at a time, as in the Redis workload of the same shape; also the server's CPU
/// time per job run.
pub fn backlog(which: &str, backlog: usize, produce: usize, window: Duration) {
    runtime().block_on(async move {
        fresh_database().await;
        if backlog > 0 {
            fill(which, backlog, 1000).await;
        }
        let extra = usize::from(backlog > 0);
        let total = backlog + extra + produce;
        expect(total);
        if backlog > 0 && produce > 0 {
            mark_at(backlog + extra);
        }
        let deadline = tokio::time::sleep(window);
        tokio::pin!(deadline);
        let mut failure = None;
        let mut produced_in = None;
        let cpu;
        let (t, t_ns) = match which {
            "ours" => {
                let rt = ours(true).await;
                let (t, t_ns, cpu0) = (Instant::now(), now_ns(), server_cpu_secs());
                let client = rt.client();
                let producer = tokio::spawn(async move {
                    let t = Instant::now();
                    for i in 0..produce {
                        if client.enqueue(noop(i as u64)).await.is_err() {
                            break;
                        }
                    }
                    t.elapsed()
                });
                tokio::select! {
                    () = finished() => {}
                    () = &mut deadline => {}
                }
                cpu = server_cpu_secs() - cpu0;
                if producer.is_finished() {
                    produced_in = producer.await.ok();
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), rt.shutdown()).await;
                (t, t_ns)
            }
            "apalis" => {
                let pool = pool().await;
                let storage = apalis_storage::<Noop>(&pool).await;
                let mut push = storage.clone();
                let worker = WorkerBuilder::new("peers-pg")
                    .backend(storage)
                    .concurrency(concurrency())
                    .build(apalis_noop);
                let (t, t_ns, cpu0) = (Instant::now(), now_ns(), server_cpu_secs());
                let mut handle = tokio::spawn(worker.run());
                let producer = tokio::spawn(async move {
                    let t = Instant::now();
                    for i in 0..produce {
                        if push.push(noop(i as u64)).await.is_err() {
                            break;
                        }
                    }
                    t.elapsed()
                });
                tokio::select! {
                    () = finished() => {}
                    () = &mut deadline => {}
                    r = &mut handle => {
                        failure = Some(match r {
                            Ok(Ok(())) => "worker stopped".to_owned(),
                            Ok(Err(e)) => format!("worker error: {e}"),
                            Err(e) => format!("worker panicked: {e}"),
                        });
                    }
                }
                cpu = server_cpu_secs() - cpu0;
                if producer.is_finished() {
                    produced_in = producer.await.ok();
                }
                handle.abort();
                (t, t_ns)
            }
            other => panic!("unknown implementation {other}"),
        };
        let elapsed = t.elapsed().min(window);
        let ran = done();
        if let Some(f) = failure {
            println!("ERROR {f} (after {ran} jobs in {elapsed:?})");
        }
        report("ran", ran as f64);
        report("run_rate", ran as f64 / elapsed.as_secs_f64());
        report("complete", if ran >= total { 1.0 } else { 0.0 });
        if ran > 0 {
            report("pg_cpu_us_per_job", cpu * 1e6 / ran as f64);
        }
        if let Some(p) = produced_in {
            report("produce_rate", produce as f64 / p.as_secs_f64());
        }
        match marked_ns() {
            Some(ns) => {
                let secs = ns.saturating_sub(t_ns) as f64 / 1e9;
                report("backlog_rate", (backlog + extra) as f64 / secs);
            }
            // Still in the backlog when the window closed: every job it ran, it ran with a
            // backlog to take from.
            None if backlog > 0 && produce > 0 => {
                report("backlog_rate", ran as f64 / elapsed.as_secs_f64());
            }
            None => {}
        }
    });
}

/// Enqueue-to-start latency at `rate` jobs/s for `seconds` (the Redis workload's shape:
/// a pacer starts one enqueue task per job when it is due).
pub fn latency(which: &str, rate: f64, seconds: f64) {
    let total = (rate * seconds) as usize;
    latency_slots(total);
    expect(total);
    let _ = now_ns();
    runtime().block_on(async move {
        fresh_database().await;
        let mut ours_rt = None;
        let mut apalis_handle = None;
        let send: Box<dyn Fn(Timed) + Send> = match which {
            "ours" => {
                let rt = ours(true).await;
                let client = rt.client();
                ours_rt = Some(rt);
                Box::new(move |job| {
                    let client = client.clone();
                    tokio::spawn(async move { client.enqueue(job).await.map(|_| ()).ok() });
                })
            }
            "apalis" => {
                let pool = pool().await;
                let storage = apalis_storage::<Timed>(&pool).await;
                let push = storage.clone();
                let worker = WorkerBuilder::new("peers-pg")
                    .backend(storage)
                    .concurrency(concurrency())
                    .build(apalis_timed);
                apalis_handle = Some(tokio::spawn(worker.run()));
                Box::new(move |job| {
                    let mut push = push.clone();
                    tokio::spawn(async move { push.push(job).await.ok() });
                })
            }
            other => panic!("unknown implementation {other}"),
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        let mut sent = 0usize;
        while sent < total {
            let due = ((start.elapsed().as_secs_f64() * rate) as usize).min(total);
            while sent < due {
                send(Timed {
                    seq: sent as u64,
                    enqueued_ns: now_ns(),
                });
                sent += 1;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let took = start.elapsed();
        let all_ran = tokio::time::timeout(Duration::from_secs(30), finished())
            .await
            .is_ok();
        if let Some(rt) = ours_rt {
            let _ = tokio::time::timeout(Duration::from_secs(5), rt.shutdown()).await;
        }
        if let Some(h) = apalis_handle {
            h.abort();
        }
        if !all_ran {
            println!("ERROR not every job ran within 30 s");
        }
        let (p50, p99, n) = latency_percentiles();
        report("lat_p50_us", p50);
        report("lat_p99_us", p99);
        report("lat_offered_rate", n as f64 / took.as_secs_f64());
    });
}

/// Ours only: `jobs` no-op jobs through the runtime in batches of 10,000 while the reaper
/// deletes succeeded rows after a 1 s retention; the schema's bytes after 100,000, half and
/// all of them, and 3 s later (does the table grow without bound?).
pub fn churn(jobs: usize) {
    runtime().block_on(async move {
        fresh_database().await;
        let backend = PostgresBackend::builder(&url())
            .schema("peers")
            .finished_retention(Duration::from_secs(1))
            .build()
            .expect("postgres backend");
        let rt = JobRuntime::builder()
            .backend(backend)
            .register::<Noop>()
            .capacity(10_000_000)
            .concurrency(concurrency())
            .reap_interval(Duration::from_secs(1))
            .start()
            .expect("start job-core runtime");
        let pool = pool().await;
        let client = rt.client();
        let batch = 10_000;
        let t = Instant::now();
        let mut samples = Vec::new();
        for b in 0..jobs.div_ceil(batch) {
            expect(batch);
            for chunk in 0..batch / 1000 {
                let v = (0..1000).map(|i| noop((b * batch + chunk * 1000 + i) as u64));
                client.enqueue_many(v).await.expect("enqueue_many");
            }
            finished().await;
            let passed = (b + 1) * batch;
            if passed == 100_000 || passed == jobs / 2 || passed == jobs {
                samples.push((passed, schema_bytes(&pool, "peers").await));
            }
        }
        let elapsed = t.elapsed();
        // One retention and a few reaper passes, as in a steady state.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let end = schema_bytes(&pool, "peers").await;
        rt.shutdown().await;
        report("churn_rate", jobs as f64 / elapsed.as_secs_f64());
        for (passed, bytes) in samples {
            report(
                &format!("churn_mb_at_{}k", passed / 1000),
                bytes as f64 / 1e6,
            );
        }
        report("churn_mb_settled", end as f64 / 1e6);
    });
}

/// The ceiling: `pgbench` inserting one row per transaction (4 clients, 5 s) into a table
/// shaped like a job row, on the same server: what the server does per commit.
pub fn pgbench_insert() {
    runtime().block_on(async move {
        fresh_database().await;
        let pool = pool().await;
        sqlx::raw_sql(
            "CREATE TABLE one_row (id uuid PRIMARY KEY, queue text NOT NULL, payload text, \
             run_at timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&pool)
        .await
        .expect("create the pgbench table");
        pool.close().await;
    });
    let script = std::env::temp_dir().join("peers-pgbench-insert.sql");
    std::fs::write(
        &script,
        "INSERT INTO one_row (id, queue, payload) VALUES (gen_random_uuid(), 'default', '{\"n\":1,\"s\":\"hello\"}');\n",
    )
    .expect("write the pgbench script");
    let url = url();
    let out = std::process::Command::new("pgbench")
        .args(["-n", "-c", "4", "-j", "2", "-T", "5", "-f"])
        .arg(&script)
        .arg(&url)
        .output();
    let tps = out.ok().and_then(|o| {
        String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
            l.strip_prefix("tps = ")
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
    });
    match tps {
        Some(t) => report("insert_tps", t),
        None => println!("ERROR pgbench gave no tps (is pgbench installed?)"),
    }
}

// ---- the driver's Postgres part ------------------------------------------------------------

use crate::{Driver, cell, fmt_num, fmt_ratio, stats};

impl Driver {
    /// The Postgres rounds (A B A B), then the latency rounds at half our end-to-end rate.
    pub(crate) fn run_postgres(&mut self) {
        let rounds = self.rounds;
        for r in 0..rounds {
            eprintln!("round {}/{rounds}: postgres", r + 1);
            self.pair("pg-single", None);
            self.pair("pg-batch", None);
            self.pair("pg-e2e", None);
            self.pair("pg-backlog", None);
            if self.wanted("ceilings") {
                let m = self.spawn("pg-pgbench", "raw", None);
                self.ceiling(
                    "pgbench one-row INSERT per transaction, 4 clients (tps)",
                    m.get("insert_tps").copied(),
                );
                self.ceiling_ratio(
                    "ours 100,000 backlog + producer / pgbench one-row INSERT tps",
                    "pg-backlog",
                    "backlog_rate",
                    m.get("insert_tps").copied(),
                );
            }
        }
        if let Some(peak) = self.median_ours("pg-e2e", "run_rate") {
            for r in 0..rounds {
                eprintln!("round {}/{rounds}: postgres latency", r + 1);
                self.pair("pg-latency", Some(peak / 2.0));
            }
        }
        if self.wanted("pg-churn") {
            let m = self.spawn("pg-churn", "ours", None);
            for (k, v) in m {
                self.data
                    .entry(("pg-churn".to_owned(), k))
                    .or_default()
                    .ours
                    .push(v);
            }
        }
    }

    pub(crate) fn print_postgres(&self, out: &mut String) {
        out.push_str(&format!(
            "\n### Postgres (a fresh database per run), concurrency 4, {} rounds\n\n",
            self.rounds
        ));
        out.push_str(crate::TABLE_HEAD);
        let rows: &[(&str, &str, &str, &str)] = &[
            (
                "single enqueue, 10,000 awaited one by one",
                "pg-single",
                "single_enqueue",
                "jobs/s",
            ),
            (
                "batched enqueue, 100,000 in batches of 1,000",
                "pg-batch",
                "batch_enqueue",
                "jobs/s",
            ),
            (
                "table + index + TOAST bytes per queued job (100,000 queued)",
                "pg-batch",
                "pg_bytes_per_job",
                "B",
            ),
            (
                "end-to-end from empty: 20,000 jobs, producer + workers",
                "pg-e2e",
                "run_rate",
                "jobs/s",
            ),
            (
                "100,000 backlog + producer adding 20,000: the backlog runs at",
                "pg-backlog",
                "backlog_rate",
                "jobs/s",
            ),
            (
                "  … all jobs over the window (bound by the producer once the backlog is gone)",
                "pg-backlog",
                "run_rate",
                "jobs/s",
            ),
            (
                "  … its producer alone",
                "pg-backlog",
                "produce_rate",
                "jobs/s",
            ),
            (
                "  … all ran in the window (1 = yes)",
                "pg-backlog",
                "complete",
                "",
            ),
            (
                "  … Postgres CPU per job run",
                "pg-backlog",
                "pg_cpu_us_per_job",
                "µs",
            ),
        ];
        for (label, workload, metric, unit) in rows {
            self.row(out, label, workload, metric, unit);
        }
        if let Some(p) = self.median_ours("pg-e2e", "run_rate") {
            let half = fmt_num(p / 2.0);
            self.row(
                out,
                &format!("enqueue-to-start p50 at {half} jobs/s (half our end-to-end rate)"),
                "pg-latency",
                "lat_p50_us",
                "µs",
            );
            self.row(
                out,
                &format!("enqueue-to-start p99 at {half} jobs/s (half our end-to-end rate)"),
                "pg-latency",
                "lat_p99_us",
                "µs",
            );
        }
        if let Some(s) = self.series("pg-churn", "churn_rate") {
            let mut sizes: Vec<String> = self
                .data
                .iter()
                .filter(|((w, m), _)| w == "pg-churn" && m.starts_with("churn_mb_"))
                .map(|((_, m), v)| format!("{} {} MB", &m["churn_mb_".len()..], cell(&v.ours)))
                .collect();
            sizes.sort();
            out.push_str(&format!(
                "\nOurs alone, 1,000,000 jobs through in batches of 10,000 (1 s retention): {} jobs/s; \
                 table + index bytes: {}.\n",
                cell(&s.ours),
                sizes.join(", ")
            ));
        }
    }

    /// Issue 12's targets against this run.
    pub(crate) fn postgres_targets(&self, out: &mut String) {
        let ours = |w: &str, m: &str| self.series(w, m).and_then(|s| stats(&s.ours)).map(|s| s.0);
        let ratio = |w: &str, m: &str| self.series(w, m).and_then(|s| stats(&s.ratio));
        let min_ratio = |w: &str, m: &str| ratio(w, m).map(|s| s.1);
        let med_ratio = |w: &str, m: &str| ratio(w, m).map(|s| s.0);
        let ge = |v: Option<f64>, t: f64| v.map(|v| v >= t);
        let le = |v: Option<f64>, t: f64| v.map(|v| v <= t);
        let rows: Vec<(&str, Option<f64>, &str, Option<bool>)> = vec![
            {
                let v = ours("pg-backlog", "backlog_rate");
                (
                    "≥ 20,000 jobs/s, 100,000 backlog + producer (median)",
                    v,
                    "jobs/s",
                    ge(v, 20_000.0),
                )
            },
            {
                let v = min_ratio("pg-backlog", "backlog_rate");
                (
                    "≥ 20× apalis-postgres there, in every round (lowest round)",
                    v,
                    "×",
                    ge(v, 20.0),
                )
            },
            {
                let v = med_ratio("pg-batch", "batch_enqueue");
                ("batched enqueue ≥ 2× apalis-postgres", v, "×", ge(v, 2.0))
            },
            {
                let v = med_ratio("pg-single", "single_enqueue");
                (
                    "single awaited enqueue ≥ parity with apalis-postgres",
                    v,
                    "×",
                    ge(v, 1.0),
                )
            },
            {
                let v = ours("pg-latency", "lat_p99_us");
                (
                    "p99 enqueue-to-start ≤ 10 ms at half load",
                    v,
                    "µs",
                    le(v, 10_000.0),
                )
            },
            {
                let v = ours("pg-batch", "pg_bytes_per_job");
                (
                    "≤ 400 B of table + indexes per queued job",
                    v,
                    "B",
                    le(v, 400.0),
                )
            },
        ];
        out.push_str(
            "\n### Targets of issue 12 (this run)\n\n| target | measured | met |\n|---|---|---|\n",
        );
        for (what, v, unit, ok) in rows {
            let shown = match v {
                Some(x) if unit == "×" => format!("{}×", fmt_ratio(x)),
                Some(x) => format!("{} {unit}", fmt_num(x)),
                None => "—".to_owned(),
            };
            let met = match ok {
                None => "not measured",
                Some(true) => "yes",
                Some(false) => "**no**",
            };
            out.push_str(&format!("| {what} | {shown} | {met} |\n"));
        }
    }
}
