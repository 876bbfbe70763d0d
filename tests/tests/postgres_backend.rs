//! The Postgres backend against a real server (`JOB_POSTGRES_URL`, default the local `test`
//! database): what is particular to Postgres — the schema and its migrations, enqueue inside
//! the caller's transaction, wake-ups by LISTEN/NOTIFY, counts that never scan the job table,
//! retention. The trait contract itself is the conformance suite's. Each test works in a
//! schema of its own, dropped afterwards; a missing server fails, never skips.

mod common;

use std::time::{Duration, SystemTime};

use common::pg::{postgres_backend, postgres_backend_with, postgres_url};
use job_core::backend::postgres::PostgresBackend;
use job_core::backend::{Backend, BackendError, Envelope, LeaseToken, Reservation, Retry, unix_ms};
use job_core::prelude::*;

fn envelope(queue: &str, n: u64) -> Envelope {
    Envelope {
        id: JobId::new(),
        job: "probe".to_owned(),
        queue: queue.to_owned(),
        payload: serde_json::json!({ "key": n, "behavior": "Succeed" }).into(),
        attempt: 0,
        max_attempts: 3,
        recoveries: 0,
        enqueued_at: unix_ms(SystemTime::now()),
        not_before: None,
        lease: None,
    }
}

fn job(r: Reservation) -> (Envelope, LeaseToken) {
    match r {
        Reservation::Job { envelope, token } => (envelope, token),
        other @ Reservation::Malformed { .. } => panic!("expected a job, got {other:?}"),
    }
}

fn queues(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn smoke_every_statement_runs() {
    let (b, _cleanup) = postgres_backend().await;
    let q = queues(&["default"]);
    let first = envelope("default", 1);
    let second = envelope("default", 2);
    b.enqueue(first.clone(), 100).await.unwrap();
    assert_eq!(
        b.enqueue_batch(std::slice::from_ref(&second), 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(b.stats().await.unwrap().ready, 2);
    let got = b.reserve(&q, 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 2);
    let (a, ta) = job(got[0].clone());
    let (c, tc) = job(got[1].clone());
    assert_eq!((a.id, c.id), (first.id, second.id));
    assert_eq!(a.attempt, 1);
    assert_eq!(
        b.extend(&[(a.id, ta.clone())], Duration::from_secs(30))
            .await
            .unwrap()
            .lost,
        vec![]
    );
    assert!(b.ack_batch(&[(a.id, ta.clone())]).await.unwrap().is_empty());
    assert!(
        b.ack_batch(&[(a.id, ta.clone())]).await.unwrap().is_empty(),
        "repeat is fine"
    );
    b.retry(
        c.id,
        tc.clone(),
        Retry {
            at: SystemTime::now(),
            error: "boom".into(),
        },
    )
    .await
    .unwrap();
    let (c2, tc2) = job(b
        .reserve(&q, 10, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0));
    assert_eq!(c2.attempt, 2);
    let dead = job_core::DeadLetter::new(
        c2.id,
        "probe",
        "default",
        c2.payload.to_value(),
        2,
        vec!["bad".into()],
        SystemTime::now(),
        SystemTime::now(),
    );
    b.dead_letter(c2.id, tc2.clone(), dead).await.unwrap();
    let stats = b.stats().await.unwrap();
    assert_eq!(
        (stats.ready, stats.scheduled, stats.running, stats.dead),
        (0, 0, 0, 1)
    );
    assert_eq!(b.dead_letters(10).await.unwrap().len(), 1);
    b.requeue(c2.id).await.unwrap();
    let (c3, tc3) = job(b
        .reserve(&q, 10, Duration::from_millis(50))
        .await
        .unwrap()
        .remove(0));
    assert_eq!(c3.attempt, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reaped = b.reap(3).await.unwrap();
    assert_eq!(reaped.recovered, vec![c3.id]);
    assert!(matches!(
        b.ack(c3.id, tc3.clone()).await,
        Err(BackendError::LeaseLost(_))
    ));
    let (c4, tc4) = job(b
        .reserve(&q, 10, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0));
    assert_eq!(c4.recoveries, 1);
    b.release(c4.id, tc4.clone()).await.unwrap();
    assert_eq!(
        b.status(c4.id).await.unwrap().unwrap().state,
        JobState::Queued
    );
    assert_eq!(
        b.status(a.id).await.unwrap().unwrap().state,
        JobState::Succeeded
    );
    let _ = postgres_url();
    let _ = PostgresBackend::schema_version();
}

/// A runtime on `backend` with the probe registered, short leases and reaper interval.
fn on(
    backend: &std::sync::Arc<PostgresBackend>,
    rec: &std::sync::Arc<common::Recorder>,
) -> job_core::JobRuntimeBuilder {
    common::builder(rec)
        .backend(backend.clone())
        .lease(Duration::from_secs(5))
        .reap_interval(Duration::from_millis(300))
}

async fn rows_by_state(pool: &sqlx::PgPool, schema: &str) -> std::collections::BTreeMap<i16, i64> {
    let sql = format!("SELECT state, count(*) FROM \"{schema}\".jobs GROUP BY state");
    sqlx::query_as::<_, (i16, i64)>(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn processes_that_start_together_create_the_schema_once() {
    let schema = common::pg::fresh_schema();
    let _cleanup = common::pg::PgCleanup {
        schema: schema.clone(),
    };
    let backends: Vec<PostgresBackend> = (0..8)
        .map(|_| {
            PostgresBackend::builder(&postgres_url())
                .schema(schema.as_str())
                .build()
                .unwrap()
        })
        .collect();
    let results = futures_util::future::join_all(backends.iter().map(|b| b.connect())).await;
    for r in results {
        r.unwrap();
    }
    let pool = backends[0].pool();
    let versions: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM \"{schema}\".schema_version ORDER BY version"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        versions,
        (1..=PostgresBackend::schema_version() as i32).collect::<Vec<_>>()
    );
    // Connecting again changes nothing.
    backends[1].migrate().await.unwrap();
    let again: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\".schema_version"
    )))
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(again, versions.len() as i64);
}

#[tokio::test]
async fn a_schema_newer_than_this_build_is_refused_and_left_alone() {
    let (b, cleanup) = postgres_backend().await;
    let kept = envelope("default", 1);
    b.enqueue(kept.clone(), 100).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{}\".schema_version (version) VALUES (99)",
        cleanup.schema
    )))
    .execute(b.pool())
    .await
    .unwrap();
    let newer = PostgresBackend::builder(&postgres_url())
        .schema(cleanup.schema.as_str())
        .build()
        .unwrap();
    let err = newer.connect().await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, BackendError::Corrupt(_)), "{err:?}");
    assert!(
        message.contains("version 99, newer than this build"),
        "{message}"
    );
    assert!(
        matches!(
            newer.enqueue(envelope("default", 2), 100).await,
            Err(BackendError::Corrupt(_))
        ),
        "every call refuses"
    );
    // Nothing was changed: the job stored before is still there.
    assert_eq!(
        b.status(kept.id).await.unwrap().unwrap().state,
        JobState::Queued
    );
}

#[tokio::test]
async fn enqueue_tx_runs_the_job_only_when_the_caller_commits() {
    let (b, cleanup) = postgres_backend().await;
    let b = std::sync::Arc::new(b);
    let rec = common::Recorder::new();
    let rt = on(&b, &rec).start().unwrap();
    let users = format!("\"{}\".users", cleanup.schema);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {users} (email text PRIMARY KEY)"
    )))
    .execute(b.pool())
    .await
    .unwrap();

    let mut tx = b.pool().begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {users} VALUES ('ada@example.com')"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    let id = rt
        .client()
        .enqueue_tx(&mut tx, common::Probe::new(1, common::Behavior::Succeed))
        .await
        .unwrap();
    // Not visible, so not run, before the commit.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        rt.status(id).await.unwrap().is_none(),
        "visible before commit"
    );
    assert!(rec.runs().is_empty(), "ran before commit");
    tx.commit().await.unwrap();
    let done = common::wait_state(&rt, id, JobState::Succeeded, Duration::from_secs(10)).await;
    assert_eq!(done.job_id, id);
    assert_eq!(rec.attempts_of(1).len(), 1);
    assert_eq!(rec.attempts_of(1)[0].id, id, "the id returned is the job's");

    // A rolled-back transaction leaves neither the row nor the job.
    let mut tx = b.pool().begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {users} VALUES ('bob@example.com')"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    let gone = rt
        .client()
        .enqueue_tx(&mut tx, common::Probe::new(2, common::Behavior::Succeed))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(rt.status(gone).await.unwrap().is_none());
    assert!(rec.attempts_of(2).is_empty(), "a rolled-back job ran");
    let stats = b.stats().await.unwrap();
    assert_eq!(stats.depth(), 0, "{stats:?}");
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {users}")))
        .fetch_one(b.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);

    // On a plain connection (no transaction) it is stored at once; through the ambient
    // runtime with `Job::enqueue_tx` too.
    let mut conn = b.pool().acquire().await.unwrap();
    let plain = common::Probe::new(3, common::Behavior::Succeed)
        .enqueue_tx(&mut *conn)
        .await;
    let plain = match plain {
        Ok(id) => id,
        // Another test's runtime may be the ambient one in this process.
        Err(e) => rt
            .client()
            .enqueue_tx(&mut *conn, e.into_inner())
            .await
            .unwrap(),
    };
    common::wait_state(&rt, plain, JobState::Succeeded, Duration::from_secs(10)).await;
    rt.shutdown().await;
}

#[tokio::test]
async fn enqueue_tx_on_another_backend_is_unsupported_and_gives_the_job_back() {
    let (b, _cleanup) = postgres_backend().await;
    let rec = common::Recorder::new();
    let rt = common::builder(&rec).start().unwrap();
    let mut tx = b.pool().begin().await.unwrap();
    let err = rt
        .client()
        .enqueue_tx(&mut tx, common::Probe::new(7, common::Behavior::Succeed))
        .await
        .unwrap_err();
    assert!(
        matches!(err, job_core::EnqueueError::Unsupported { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("needs the runtime to run on the Postgres backend"),
        "{err}"
    );
    assert_eq!(err.into_inner().key, 7);
    tx.rollback().await.unwrap();
    rt.shutdown().await;
}

#[tokio::test]
async fn an_idle_worker_is_woken_by_notifications_and_due_times_not_by_polling() {
    // The fallback poll is 60 s: every start below within a few seconds came from a
    // notification or from the due time the worker read or heard of.
    let (b, cleanup) = postgres_backend_with(|b| b.poll_interval(Duration::from_secs(60))).await;
    let b = std::sync::Arc::new(b);
    let rec = common::Recorder::new();
    let rt = on(&b, &rec).start().unwrap();
    // Another process's backend on the same schema: no in-process shortcut.
    let producer = PostgresBackend::builder(&postgres_url())
        .schema(cleanup.schema.as_str())
        .build()
        .unwrap();
    producer.connect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await; // the runtime is idle, waiting
    let probe = |key: u64, behavior: common::Behavior| Envelope {
        payload: serde_json::to_value(common::Probe::new(key, behavior))
            .unwrap()
            .into(),
        ..envelope("default", key)
    };
    let start = tokio::time::Instant::now();
    producer
        .enqueue(probe(1, common::Behavior::Succeed), 100)
        .await
        .unwrap();
    common::eventually(Duration::from_secs(3), "woken by the notification", || {
        rec.successes() == 1
    })
    .await;
    let woke = rec.attempts_of(1)[0].at - start;
    assert!(woke < Duration::from_secs(2), "{woke:?}");

    // A delayed job from the other process: the worker hears its due time and starts it then.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = tokio::time::Instant::now();
    producer
        .enqueue(
            Envelope {
                not_before: Some(unix_ms(SystemTime::now()) + 900),
                ..probe(2, common::Behavior::Succeed)
            },
            100,
        )
        .await
        .unwrap();
    common::eventually(Duration::from_secs(5), "the delayed job ran", || {
        rec.successes() == 2
    })
    .await;
    let at = rec.attempts_of(2)[0].at - start;
    assert!(
        at >= Duration::from_millis(850) && at < Duration::from_secs(3),
        "{at:?}"
    );

    // A retry 1 s out (RetryAfter) starts at its time too.
    let id = rt
        .client()
        .enqueue(common::Probe::new(
            3,
            common::Behavior::RetryAfterMs(1000, 1),
        ))
        .await
        .unwrap();
    common::wait_state(&rt, id, JobState::Succeeded, Duration::from_secs(5)).await;
    let runs = rec.attempts_of(3);
    let gap = runs[1].at - runs[0].at;
    assert!(
        gap >= Duration::from_millis(950) && gap < Duration::from_secs(3),
        "{gap:?}"
    );
    rt.shutdown().await;
}

/// Scans of the index reserves and due-time reads use, from the statistics collector
/// (which flushes about once a second).
async fn waiting_index_scans(pool: &sqlx::PgPool, schema: &str) -> i64 {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query_scalar(
        "SELECT idx_scan FROM pg_stat_user_indexes WHERE schemaname = $1 AND indexrelname = 'jobs_waiting'",
    )
    .bind(schema)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn work_for_another_queue_does_not_wake_an_idle_worker() {
    let (b, cleanup) = postgres_backend_with(|b| b.poll_interval(Duration::from_secs(60))).await;
    let b = std::sync::Arc::new(b);
    let rec = common::Recorder::new();
    let rt = on(&b, &rec).queues(["mine"]).start().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // idle, waiting
    let before = waiting_index_scans(b.pool(), &cleanup.schema).await;
    for key in 0..100 {
        b.enqueue(envelope("other", key), 1000).await.unwrap();
    }
    let after = waiting_index_scans(b.pool(), &cleanup.schema).await;
    assert!(
        after - before <= 4,
        "100 jobs for another queue made the idle runtime scan {} times",
        after - before
    );
    // Its own queue still wakes it at once.
    b.enqueue(
        Envelope {
            payload: serde_json::to_value(common::Probe::new(1, common::Behavior::Succeed))
                .unwrap()
                .into(),
            ..envelope("mine", 1)
        },
        1000,
    )
    .await
    .unwrap();
    common::eventually(Duration::from_secs(3), "woken for its own queue", || {
        rec.successes() == 1
    })
    .await;
    rt.shutdown().await;
}

#[tokio::test]
async fn counts_match_the_rows_after_a_mixed_workload() {
    let (b, cleanup) = postgres_backend().await;
    let b = std::sync::Arc::new(b);
    let rec = common::Recorder::new();
    let rt = on(&b, &rec).concurrency(4).start().unwrap();
    let mut ids = Vec::new();
    for key in 0..200u64 {
        let behavior = match key % 5 {
            0 => common::Behavior::Succeed,
            1 => common::Behavior::FailTimes(1),
            2 => common::Behavior::Permanent,
            3 => common::Behavior::FailTimes(9),
            _ => common::Behavior::SleepMs(2),
        };
        let job = common::Probe::new(key, behavior);
        ids.push(if key % 7 == 0 {
            rt.client()
                .enqueue_in(job, Duration::from_millis(200))
                .await
                .unwrap()
        } else {
            rt.client().enqueue(job).await.unwrap()
        });
    }
    for id in &ids {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let s = rt.status(*id).await.unwrap().unwrap();
            if s.state.is_finished() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{s:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    rt.shutdown().await;
    let rows = rows_by_state(b.pool(), &cleanup.schema).await;
    let stats = b.stats().await.unwrap();
    let row = |s: i16| rows.get(&s).copied().unwrap_or(0) as u64;
    assert_eq!(
        (stats.ready, stats.scheduled, stats.running, stats.dead),
        (row(0), row(1) + row(3), row(2), row(5)),
        "counts {stats:?} against rows {rows:?}"
    );
    assert_eq!(row(5), 80, "{rows:?}");
    assert_eq!(row(4), 120, "{rows:?}");
}

#[tokio::test]
async fn succeeded_rows_are_deleted_after_their_retention() {
    for retention in [Duration::ZERO, Duration::from_millis(300)] {
        let (b, cleanup) = postgres_backend_with(|b| b.finished_retention(retention)).await;
        let q = queues(&["default"]);
        let batch: Vec<Envelope> = (0..50).map(|n| envelope("default", n)).collect();
        assert_eq!(b.enqueue_batch(&batch, 1000).await.unwrap(), 50);
        let got = b.reserve(&q, 100, Duration::from_secs(30)).await.unwrap();
        let acks: Vec<_> = got
            .into_iter()
            .map(|r| (r.id(), r.token().clone()))
            .collect();
        assert!(b.ack_batch(&acks).await.unwrap().is_empty());
        let rows = rows_by_state(b.pool(), &cleanup.schema).await;
        if retention.is_zero() {
            assert!(rows.is_empty(), "deleted by the ack: {rows:?}");
            continue;
        }
        assert_eq!(rows.get(&4), Some(&50), "kept for the retention: {rows:?}");
        b.reap(3).await.unwrap();
        assert_eq!(
            rows_by_state(b.pool(), &cleanup.schema).await.get(&4),
            Some(&50)
        );
        tokio::time::sleep(retention + Duration::from_millis(100)).await;
        b.reap(3).await.unwrap();
        let rows = rows_by_state(b.pool(), &cleanup.schema).await;
        assert!(rows.is_empty(), "swept by the reaper: {rows:?}");
    }
}

#[tokio::test]
async fn dead_letters_beyond_capacity_are_evicted_oldest_first() {
    let (b, _cleanup) = postgres_backend_with(|b| b.dead_letter_capacity(3)).await;
    let q = queues(&["default"]);
    let mut order = Vec::new();
    for n in 0..5 {
        b.enqueue(envelope("default", n), 100).await.unwrap();
        let (e, t) = job(b
            .reserve(&q, 1, Duration::from_secs(30))
            .await
            .unwrap()
            .remove(0));
        let dead = job_core::DeadLetter::new(
            e.id,
            "probe",
            "default",
            e.payload.to_value(),
            1,
            vec!["x".into()],
            SystemTime::now(),
            SystemTime::now(),
        );
        b.dead_letter(e.id, t.clone(), dead).await.unwrap();
        order.push(e.id);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.reap(3).await.unwrap();
    let kept: Vec<JobId> = b
        .dead_letters(10)
        .await
        .unwrap()
        .iter()
        .map(|d| d.job_id)
        .collect();
    assert_eq!(kept, order[2..].to_vec());
    assert_eq!(b.stats().await.unwrap().dead, 3);
}

#[tokio::test]
async fn names_and_schemas_are_checked_before_they_reach_sql() {
    let err = PostgresBackend::builder(&postgres_url())
        .schema("jobs\"; DROP TABLE x; --")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("invalid schema name"), "{err}");
    assert!(PostgresBackend::new("mysql://nope").is_err());
    let (b, _cleanup) = postgres_backend().await;
    let bad = Envelope {
        queue: "no spaces".into(),
        ..envelope("default", 1)
    };
    assert!(matches!(
        b.enqueue(bad, 100).await,
        Err(BackendError::InvalidName(_))
    ));
    let q = queues(&["x'; --"]);
    assert!(matches!(
        b.reserve(&q, 1, Duration::from_secs(1)).await,
        Err(BackendError::InvalidName(_))
    ));
}

/// The pool lends connections without a ping: one the server terminated fails on use, and
/// an enqueue goes again on another, so the caller never sees the dead connections.
#[tokio::test]
async fn an_enqueue_after_its_pooled_connections_were_terminated_succeeds() {
    let (b, cleanup) = postgres_backend_with(|b| b.max_connections(3)).await;
    // Open all three connections, each with this schema in its last statement.
    let held: Vec<_> = futures_util::future::join_all((0..3).map(|_| b.pool().acquire())).await;
    for conn in held {
        let mut conn = conn.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{}\".counts",
            cleanup.schema
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    let mut admin = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&postgres_url()).await.unwrap()
    };
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'job-core' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
    )
    .bind(&cleanup.schema)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(killed.len() >= 3, "{killed:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A unique enqueue (its own transaction) goes again on another connection too.
    let key = job_core::unique::UniqueKey::new(
        "0123456789abcdef0123456789abcdef",
        Duration::from_secs(60),
        job_core::unique::UniqueUntil::Window,
    );
    let unique = envelope("default", 2);
    assert_eq!(
        b.enqueue_unique(unique.clone(), 100, &key).await.unwrap(),
        job_core::Enqueued::New(unique.id)
    );
    b.enqueue(envelope("default", 1), 100).await.unwrap();
    assert_eq!(b.stats().await.unwrap().ready, 2);
}

/// The reaper vacuums the job table itself once enough rows have churned (autovacuum
/// comes too late at high job rates): 50,000 jobs through, then a reaper pass, and the
/// table has a manual vacuum on record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_vacuums_the_job_table_after_heavy_churn() {
    let (b, cleanup) =
        postgres_backend_with(|b| b.statement_timeout(Duration::from_secs(30))).await;
    let vacuums = |pool: sqlx::PgPool, schema: String| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'jobs'",
        )
        .bind(schema)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    for chunk in 0..50u64 {
        let batch: Vec<Envelope> = (0..1000)
            .map(|i| envelope("default", chunk * 1000 + i))
            .collect();
        assert_eq!(b.enqueue_batch(&batch, 1_000_000).await.unwrap(), 1000);
    }
    let mut reserved = 0;
    while reserved < 50_000 {
        let got = b
            .reserve(&queues(&["default"]), 1000, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(!got.is_empty());
        reserved += got.len();
        let acks: Vec<(JobId, LeaseToken)> = got
            .into_iter()
            .map(|r| {
                let (e, token) = job(r);
                (e.id, token)
            })
            .collect();
        assert!(b.ack_batch(&acks).await.unwrap().is_empty());
    }
    assert_eq!(vacuums(b.pool().clone(), cleanup.schema.clone()).await, 0);
    b.reap(3).await.unwrap();
    // The statistics collector flushes about once a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while vacuums(b.pool().clone(), cleanup.schema.clone()).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no vacuum of the job table 20 s after 50,000 jobs churned and a reaper pass"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A backend whose `LISTEN` connection is terminated listens again and still hears the
/// end of the job it watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_ends_are_heard_after_the_listen_connection_was_terminated() {
    let (b, cleanup) = postgres_backend().await;
    let schema = cleanup.schema.clone();
    let kill = async move {
        let mut admin = {
            use sqlx::Connection;
            sqlx::PgConnection::connect(&postgres_url()).await.unwrap()
        };
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'job-core' AND query LIKE 'LISTEN%' || $1 || '%'",
        )
        .bind(&schema)
        .fetch_all(&mut admin)
        .await
        .unwrap();
        assert!(!killed.is_empty(), "no LISTEN connection to terminate");
    };
    common::an_end_is_heard_after_a_lost_listener(&b, kill).await;
}
