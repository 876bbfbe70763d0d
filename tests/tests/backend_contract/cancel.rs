//! Cancel by id ([`Backend::cancel`](job_core::backend::Backend::cancel) and
//! [`finish_cancelled`](job_core::backend::Backend::finish_cancelled)), as the trait's docs
//! promise it, on the backends that declare `cancel_by_id`.

use job_core::backend::CancelOutcome;

use crate::support::*;

/// Waiting jobs (ready, scheduled) are cancelled at once and never reserved; a reserved one
/// is marked, `extend` reports the mark, and `finish_cancelled` ends it (fenced, repeatable);
/// a retry, a release or an expired lease of a marked job cancels it, an ack ends it
/// succeeded; finished jobs answer `Finished`, unknown ids `NotFound`. The counts follow.
pub(crate) async fn cancels_end_jobs_as_the_trait_says(s: Store) {
    if !caps(&s).cancel_by_id {
        let env = enqueued(&s, "c", 1).await;
        let r = s.b().cancel(env.id).await;
        assert!(
            matches!(r, Err(BackendError::Unsupported(_))),
            "a backend without cancel by id must answer Unsupported, got {r:?}"
        );
        return;
    }
    let b = s.b();
    let cancel = |id: JobId| b.cancel(id);

    // Waiting jobs.
    let ready = enqueued(&s, "c", 1).await;
    let mut later = envelope("c", 2);
    later.not_before = Some(at_ms_from_now(3_600_000));
    enqueue(&s, &later).await;
    assert_counts(&s, counts(1, 1, 0, 0)).await;
    assert_eq!(cancel(ready.id).await.unwrap(), CancelOutcome::Removed);
    assert_eq!(cancel(later.id).await.unwrap(), CancelOutcome::Removed);
    assert_state(&s, ready.id, JobState::Cancelled).await;
    assert_state(&s, later.id, JobState::Cancelled).await;
    assert_counts(&s, counts(0, 0, 0, 0)).await;
    let got = s
        .b()
        .reserve(&queues(&["c"]), 10, LONG_LEASE)
        .await
        .unwrap();
    assert!(got.is_empty(), "a cancelled job was reserved: {got:?}");
    assert_eq!(
        cancel(ready.id).await.unwrap(),
        CancelOutcome::Finished(JobState::Cancelled)
    );
    let unknown = JobId::new();
    let r = cancel(unknown).await;
    assert!(
        matches!(r, Err(BackendError::NotFound(x)) if x == unknown),
        "{r:?}"
    );

    // A reserved job: marked, reported by extend, ended by finish_cancelled.
    let a = enqueued(&s, "c", 3).await;
    let (_, ta) = reserve_one(&s, "c", LONG_LEASE).await;
    assert_eq!(cancel(a.id).await.unwrap(), CancelOutcome::Requested);
    assert_state(&s, a.id, JobState::Running).await;
    assert_counts(&s, counts(0, 0, 1, 0)).await;
    let extended = s
        .b()
        .extend(&[(a.id, ta.clone())], LONG_LEASE)
        .await
        .unwrap();
    assert!(extended.lost.is_empty(), "{extended:?}");
    assert_eq!(extended.cancelled, vec![a.id]);
    s.b().finish_cancelled(a.id, ta.clone()).await.unwrap();
    s.b()
        .finish_cancelled(a.id, ta.clone())
        .await
        .expect("a repeat with the same token succeeds and changes nothing");
    assert_state(&s, a.id, JobState::Cancelled).await;
    assert_counts(&s, counts(0, 0, 0, 0)).await;
    let r = s.b().ack(a.id, ta.clone()).await;
    assert!(matches!(r, Err(BackendError::LeaseLost(_))), "{r:?}");
    let r = s.b().finish_cancelled(a.id, LeaseToken::random()).await;
    assert!(matches!(r, Err(BackendError::LeaseLost(_))), "{r:?}");

    // A marked job's retry or release cancels it; its ack ends it succeeded.
    for (n, outcome) in [(4, "retry"), (5, "release"), (6, "ack")] {
        let env = enqueued(&s, "c", n).await;
        let (_, t) = reserve_one(&s, "c", LONG_LEASE).await;
        assert_eq!(cancel(env.id).await.unwrap(), CancelOutcome::Requested);
        match outcome {
            "retry" => s
                .b()
                .retry(env.id, t, retry_at(SystemTime::now(), "failed"))
                .await
                .unwrap(),
            "release" => s.b().release(env.id, t).await.unwrap(),
            _ => s.b().ack(env.id, t).await.unwrap(),
        }
        let expected = if outcome == "ack" {
            JobState::Succeeded
        } else {
            JobState::Cancelled
        };
        assert_state(&s, env.id, expected).await;
        assert_counts(&s, counts(0, 0, 0, 0)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = s
        .b()
        .reserve(&queues(&["c"]), 10, LONG_LEASE)
        .await
        .unwrap();
    assert!(got.is_empty(), "a cancelled job came back: {got:?}");

    // A marked job whose holder died: the reaper cancels it, it is not recovered.
    let e = enqueued(&s, "c", 7).await;
    let _ = reserve_one(&s, "c", LEASE).await;
    assert_eq!(cancel(e.id).await.unwrap(), CancelOutcome::Requested);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reaped = s.b().reap(3).await.unwrap();
        assert!(
            !reaped.recovered.contains(&e.id),
            "a job whose cancel was requested was recovered: {reaped:?}"
        );
        if status(&s, e.id).await.state == JobState::Cancelled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the expired lease was never reaped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_counts(&s, counts(0, 0, 0, 0)).await;
    let got = s
        .b()
        .reserve(&queues(&["c"]), 10, LONG_LEASE)
        .await
        .unwrap();
    assert!(got.is_empty(), "the reaped job came back: {got:?}");
}
