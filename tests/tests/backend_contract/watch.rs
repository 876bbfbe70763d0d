//! Announced job ends ([`Backend::watch_finish`](job_core::backend::Backend::watch_finish)),
//! as the trait's docs promise them, on the backends that declare `finish_wakeups`.

use std::future::Future;

use crate::support::*;

/// Watches job `id`, runs `end`, and asserts that the watch's signal fires.
async fn announced(s: &Store, id: JobId, what: &str, end: impl Future<Output = ()>) {
    let signal = s
        .b()
        .watch_finish(id)
        .await
        .unwrap_or_else(|e| panic!("the watch of {what} failed: {e:?}"));
    let heard = signal.notified();
    tokio::pin!(heard);
    heard.as_mut().enable();
    end.await;
    tokio::time::timeout(PATIENCE, heard)
        .await
        .unwrap_or_else(|_| panic!("the end of {what} was not announced"));
}

/// Every way a watched job ends is announced: an ack (one, a batch, with a result), a dead
/// letter, a cancel of a waiting job, the end of a cancelled attempt, a retry or release of
/// a job whose cancel was requested, and an expired lease (cancelled, or a poison pill).
/// A finished job can be watched (there is nothing left to announce); an unknown id is
/// `NotFound`; a backend without announcements answers `Unsupported`.
pub(crate) async fn watched_ends_are_announced(s: Store) {
    let s = &s;
    let b = s.b();
    if !caps(s).finish_wakeups {
        let env = enqueued(s, "w", 1).await;
        let r = b.watch_finish(env.id).await;
        assert!(
            matches!(r, Err(BackendError::Unsupported(_))),
            "a backend without finish wake-ups must answer Unsupported, got {r:?}"
        );
        return;
    }
    let (a, ta) = {
        let env = enqueued(s, "w", 1).await;
        (env, reserve_one(s, "w", LONG_LEASE).await.1)
    };
    announced(s, a.id, "an ack", async {
        b.ack(a.id, ta).await.unwrap();
    })
    .await;
    assert_state(s, a.id, JobState::Succeeded).await;

    let x = enqueued(s, "w", 2).await;
    let (_, tx) = reserve_one(s, "w", LONG_LEASE).await;
    let y = enqueued(s, "w", 3).await;
    let (_, ty) = reserve_one(s, "w", LONG_LEASE).await;
    announced(s, y.id, "a batch ack", async {
        let lost = b.ack_batch(&[(x.id, tx), (y.id, ty)]).await.unwrap();
        assert!(lost.is_empty(), "{lost:?}");
    })
    .await;

    if caps(s).results {
        let r = enqueued(s, "w", 4).await;
        let (_, tr) = reserve_one(s, "w", LONG_LEASE).await;
        let value = Payload::encode(&serde_json::json!({ "n": 4 })).unwrap();
        announced(s, r.id, "an ack with a result", async {
            let lost = b.ack_results(&[(r.id, tr, value)]).await.unwrap();
            assert!(lost.is_empty(), "{lost:?}");
        })
        .await;
    }

    let d = enqueued(s, "w", 5).await;
    let (denv, td) = reserve_one(s, "w", LONG_LEASE).await;
    announced(s, d.id, "a dead letter", async {
        let record = DeadLetter::new(
            d.id,
            denv.job.clone(),
            denv.queue.clone(),
            denv.payload.to_value(),
            1,
            vec!["permanent".to_owned()],
            from_unix_ms(denv.enqueued_at),
            SystemTime::now(),
        );
        b.dead_letter(d.id, td, record).await.unwrap();
    })
    .await;
    assert_state(s, d.id, JobState::Dead).await;

    if caps(s).cancel_by_id {
        let w = enqueued(s, "w", 6).await;
        announced(s, w.id, "a cancel of a waiting job", async {
            b.cancel(w.id).await.unwrap();
        })
        .await;
        assert_state(s, w.id, JobState::Cancelled).await;

        // Reserved, then cancelled: each way its attempt can end.
        for how in ["finish_cancelled", "retry", "release", "expiry"] {
            let env = enqueued(s, "w", 7).await;
            let lease = if how == "expiry" { LEASE } else { LONG_LEASE };
            let (_, token) = reserve_one(s, "w", lease).await;
            b.cancel(env.id).await.unwrap();
            let what = format!("a cancelled job's {how}");
            announced(s, env.id, &what, async {
                match how {
                    "finish_cancelled" => b.finish_cancelled(env.id, token).await.unwrap(),
                    "retry" => {
                        let retry = Retry {
                            at: SystemTime::now(),
                            error: "transient".to_owned(),
                        };
                        b.retry(env.id, token, retry).await.unwrap();
                    }
                    "release" => b.release(env.id, token).await.unwrap(),
                    _ => {
                        // An expired lease of a cancelled job is neither recovered nor
                        // dead: reap until the job shows cancelled.
                        let deadline = Instant::now() + PATIENCE;
                        while status(s, env.id).await.state != JobState::Cancelled {
                            assert!(Instant::now() < deadline, "never reaped");
                            b.reap(3).await.unwrap();
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
            .await;
            assert_state(s, env.id, JobState::Cancelled).await;
        }
    }

    // A poison pill: its lease expires past the recoveries allowed.
    let p = enqueued(s, "w", 8).await;
    let _held = reserve_one(s, "w", LEASE).await;
    announced(s, p.id, "a poison pill", async {
        let reaped = reap_soon(s, 1).await;
        assert_eq!(reaped.dead.len(), 1, "{reaped:?}");
    })
    .await;
    assert_state(s, p.id, JobState::Dead).await;

    // Finished already: the watch succeeds (its status tells the end).
    b.watch_finish(a.id).await.unwrap();
    let unknown = JobId::new();
    let r = b.watch_finish(unknown).await;
    assert!(
        matches!(r, Err(BackendError::NotFound(x)) if x == unknown),
        "{r:?}"
    );
}
