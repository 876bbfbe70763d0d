//! `enqueue_if_room`: enqueue without waiting for room, on every backend. In memory it is
//! `try_enqueue`; on a durable store it makes the round trip and answers `QueueFull` at once
//! when the store is full, and `Ok` only once the store has the job.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Behavior, Probe, Recorder, builder, eventually};
use job_core::backend::Backend;
use job_core::prelude::*;

const LONG: Duration = Duration::from_secs(20);
/// A full store must answer well within this (`enqueue` would wait for room instead).
const AT_ONCE: Duration = Duration::from_secs(1);

/// Two gated jobs fill a runtime of capacity 2; the third is answered `QueueFull` at once
/// with the job given back; once the gate opens, room comes back and it goes in.
async fn full_answers_at_once(rt: JobRuntime, rec: &Arc<Recorder>) -> Vec<JobId> {
    let client = rt.client();
    let mut ids = Vec::new();
    for key in [1, 2] {
        let id = tokio::time::timeout(
            AT_ONCE,
            client.enqueue_if_room(Probe::new(key, Behavior::Gate)),
        )
        .await
        .expect("a store with room answers at once")
        .expect("a store with room takes the job");
        ids.push(id);
    }
    let refused = tokio::time::timeout(
        AT_ONCE,
        client.enqueue_if_room(Probe::new(3, Behavior::Succeed)),
    )
    .await
    .expect("a full store is answered at once, not waited for");
    let err = refused.expect_err("the store is full");
    assert!(err.is_full(), "{err}");
    assert_eq!(err.into_inner().key, 3);
    assert_eq!(rt.stats().enqueued, 2, "the refused job was not counted");

    rec.open(2);
    eventually(LONG, "the gated jobs succeed", || rec.successes() == 2).await;
    let mut after = None;
    let deadline = tokio::time::Instant::now() + LONG;
    while after.is_none() {
        match client
            .enqueue_if_room(Probe::new(4, Behavior::Succeed))
            .await
        {
            Ok(id) => after = Some(id),
            Err(e) if e.is_full() && tokio::time::Instant::now() < deadline => {
                // A durable store frees the room when the acks land.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("room never came back: {e}"),
        }
    }
    ids.extend(after);
    eventually(LONG, "the last job succeeds", || rec.successes() == 3).await;
    rt.shutdown().await;
    ids
}

#[tokio::test]
async fn in_memory_a_full_runtime_answers_queue_full_at_once() {
    let rec = Recorder::new();
    let rt = builder(&rec).capacity(2).concurrency(1).start().unwrap();
    full_answers_at_once(rt, &rec).await;
}

#[tokio::test]
async fn on_redis_a_full_store_answers_queue_full_at_once_and_a_store_with_room_has_the_job() {
    let (redis, _cleanup) = common::redis_backend().await;
    let redis = Arc::new(redis);
    let rec = Recorder::new();
    let rt = builder(&rec)
        .backend(redis.clone())
        .capacity(2)
        .concurrency(1)
        .start()
        .unwrap();
    // `try_enqueue` cannot make the round trip; `enqueue_if_room` can.
    let err = rt
        .client()
        .try_enqueue(Probe::new(9, Behavior::Succeed))
        .unwrap_err();
    assert!(matches!(err, EnqueueError::WouldBlock(_)), "{err}");

    let ids = full_answers_at_once(rt, &rec).await;
    // Ok meant stored: the store has every accepted job, by id.
    for id in ids {
        let status = redis.status(id).await.unwrap();
        assert!(status.is_some(), "job {id} is not in the store");
    }
}

#[tokio::test]
async fn on_postgres_a_full_store_answers_queue_full_at_once() {
    let (pg, _cleanup) = common::pg::postgres_backend().await;
    let pg = Arc::new(pg);
    let rec = Recorder::new();
    let rt = builder(&rec)
        .backend(pg.clone())
        .capacity(2)
        .concurrency(1)
        .start()
        .unwrap();
    let ids = full_answers_at_once(rt, &rec).await;
    for id in ids {
        assert!(
            pg.status(id).await.unwrap().is_some(),
            "job {id} is not in the store"
        );
    }
}
