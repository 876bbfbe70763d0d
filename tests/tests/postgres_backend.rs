//! The Postgres backend against a real server (`JOB_POSTGRES_URL`, default the local `test`
//! database): what is particular to Postgres — the schema and its migrations, enqueue inside
//! the caller's transaction, wake-ups by LISTEN/NOTIFY, counts that never scan the job table,
//! retention. The trait contract itself is the conformance suite's. Each test works in a
//! schema of its own, dropped afterwards; a missing server fails, never skips.

mod common;

use std::time::{Duration, SystemTime};

use common::pg::{postgres_backend, postgres_url};
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
        b.extend(&[(a.id, ta)], Duration::from_secs(30))
            .await
            .unwrap(),
        vec![]
    );
    assert!(b.ack_batch(&[(a.id, ta)]).await.unwrap().is_empty());
    assert!(
        b.ack_batch(&[(a.id, ta)]).await.unwrap().is_empty(),
        "repeat is fine"
    );
    b.retry(
        c.id,
        tc,
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
    b.dead_letter(c2.id, tc2, dead).await.unwrap();
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
        b.ack(c3.id, tc3).await,
        Err(BackendError::LeaseLost(_))
    ));
    let (c4, tc4) = job(b
        .reserve(&q, 10, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0));
    assert_eq!(c4.recoveries, 1);
    b.release(c4.id, tc4).await.unwrap();
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
