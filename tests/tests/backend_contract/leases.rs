//! Checks of leases: fencing, repeated and spent write-backs, release, extend, expiry and
//! poison pills.

use super::support::*;

/// After a lease expires and another reservation takes the job with a new token, every
/// write-back with the stale token is refused as a lost lease and changes nothing; the new
/// holder's still work.
pub(crate) async fn stale_lease_holders_change_nothing(s: Store) {
    let env = enqueued(&s, "fence", 1).await;
    let (first, stale) = reserve_one(&s, "fence", LEASE).await;
    assert_eq!((first.id, first.attempt), (env.id, 1));
    let reaped = reap_soon(&s, 3).await;
    assert_eq!(reaped.recovered, [env.id], "{reaped:?}");
    let (second, fresh) = reserve_one(&s, "fence", LONG_LEASE).await;
    assert_eq!((second.id, second.attempt), (env.id, 2));
    assert_ne!(fresh, stale, "a new reservation must have a new token");

    assert_refused_but(&s, &env, stale.clone(), None, "with a stale token").await;
    if let Some(held) = status_if(&s, env.id).await {
        assert_eq!((held.state, held.attempts), (JobState::Running, 2));
        assert_eq!(held.last_error, None);
    }
    assert_counts(&s, counts(0, 0, 1, 0)).await;

    // A token that was never issued is as stale as an old one.
    assert_refused_but(&s, &env, LeaseToken::random(), None, "with a made-up token").await;

    s.b().ack(env.id, fresh.clone()).await.unwrap();
    assert_state(&s, env.id, JobState::Succeeded).await;
    assert_counts(&s, counts(0, 0, 0, 0)).await;
    assert_lost(
        s.b().ack(env.id, stale.clone()).await,
        env.id,
        "ack with the stale token after the ack",
    );
}

/// A write-back repeated with the token whose outcome was written last (its reply lost)
/// succeeds again and changes nothing, also once the job is held by someone else.
pub(crate) async fn repeated_write_backs_succeed_and_change_nothing(s: Store) {
    for outcome in OUTCOMES {
        let env = enqueued(&s, "repeat", 1).await;
        let (_, token) = reserve_one(&s, "repeat", LONG_LEASE).await;
        write_back(&s, &env, token.clone(), outcome)
            .await
            .unwrap_or_else(|e| panic!("{outcome:?} by the holder failed: {e:?}"));
        let before = snapshot(&s, env.id).await;
        for again in OUTCOMES.into_iter().filter(|o| o.same(outcome)) {
            let r = write_back(&s, &env, token.clone(), again).await;
            assert!(r.is_ok(), "{again:?} repeating {outcome:?}: {r:?}");
            assert_eq!(
                snapshot(&s, env.id).await,
                before,
                "{again:?} repeating {outcome:?}"
            );
        }
        match outcome {
            Outcome::Retry | Outcome::Release => {
                // The job runs again under a new token; the old outcome repeated still
                // succeeds and still changes nothing.
                let (next, fresh) = reserve_soon(&s, "repeat", LONG_LEASE).await;
                assert_eq!(next.id, env.id);
                let held = snapshot(&s, env.id).await;
                let r = write_back(&s, &env, token.clone(), outcome).await;
                assert!(r.is_ok(), "{outcome:?} repeated under a new holder: {r:?}");
                assert_eq!(snapshot(&s, env.id).await, held, "{outcome:?} repeated");
                s.b().ack(env.id, fresh.clone()).await.unwrap();
            }
            Outcome::Ack | Outcome::AckBatch | Outcome::DeadLetter => {}
        }
    }
}

/// A write-back of another outcome with a token whose outcome was written already is not a
/// repeat: the caller no longer holds the job, so it is refused as a lost lease.
pub(crate) async fn other_write_backs_with_a_spent_token_are_refused(s: Store) {
    for outcome in OUTCOMES {
        let env = enqueued(&s, "spent", 1).await;
        let (_, token) = reserve_one(&s, "spent", LONG_LEASE).await;
        write_back(&s, &env, token.clone(), outcome)
            .await
            .unwrap_or_else(|e| panic!("{outcome:?} by the holder failed: {e:?}"));
        let why = format!("with the token {outcome:?} spent");
        assert_refused_but(&s, &env, token.clone(), Some(outcome), &why).await;
        match outcome {
            Outcome::Retry | Outcome::Release => {
                let (_, fresh) = reserve_soon(&s, "spent", LONG_LEASE).await;
                let why = format!("with the token {outcome:?} spent, under a new holder");
                assert_refused_but(&s, &env, token.clone(), Some(outcome), &why).await;
                s.b().ack(env.id, fresh.clone()).await.unwrap();
            }
            Outcome::Ack | Outcome::AckBatch | Outcome::DeadLetter => {}
        }
    }
}

/// `release` gives the job back to the front of its queue, reservable at once, without
/// counting the attempt or a recovery.
pub(crate) async fn release_makes_the_job_reservable_at_once(s: Store) {
    let first = enqueued(&s, "rel", 1).await;
    let second = enqueued(&s, "rel", 2).await;
    let (got, token) = reserve_one(&s, "rel", LONG_LEASE).await;
    assert_eq!((got.id, got.attempt), (first.id, 1));
    s.b().release(first.id, token.clone()).await.unwrap();
    if let Some(st) = status_if(&s, first.id).await {
        assert_eq!((st.state, st.attempts), (JobState::Queued, 0));
    }
    assert_counts(&s, counts(2, 0, 0, 0)).await;

    // Where the backend does not declare order, the released job may come after the other.
    let (mut again, mut token) = reserve_one(&s, "rel", LONG_LEASE).await;
    let second_done = !caps(&s).ordered && again.id == second.id;
    if second_done {
        s.b().ack(second.id, token.clone()).await.unwrap();
        (again, token) = reserve_one(&s, "rel", LONG_LEASE).await;
    }
    assert_eq!(
        again.id, first.id,
        "a released job goes to the front of its queue"
    );
    assert_eq!((again.attempt, again.recoveries), (1, 0));
    assert_eq!(s.b().reap(1).await.unwrap(), Reaped::default());
    if !second_done {
        let (next, other) = reserve_one(&s, "rel", LONG_LEASE).await;
        assert_eq!(next.id, second.id);
        s.b().ack(second.id, other.clone()).await.unwrap();
    }
    // Once more after a failed attempt: the release does not undo that one.
    s.b()
        .retry(first.id, token.clone(), retry_at(SystemTime::now(), "x"))
        .await
        .unwrap();
    let (third, token) = reserve_soon(&s, "rel", LONG_LEASE).await;
    assert_eq!(third.id, first.id);
    assert_eq!(third.attempt, 2);
    s.b().release(first.id, token.clone()).await.unwrap();
    if let Some(st) = status_if(&s, first.id).await {
        assert_eq!(st.attempts, 1);
    }
    let (fourth, _) = reserve_one(&s, "rel", LONG_LEASE).await;
    assert_eq!(
        (fourth.id, fourth.attempt, fourth.recoveries),
        (first.id, 2, 0)
    );
}

/// `extend` moves the lease's expiry: an extended job is not reaped when its first lease
/// would have expired (one reserved with it and not extended is), and its holder keeps it.
pub(crate) async fn extend_moves_the_lease_expiry(s: Store) {
    let kept = enqueued(&s, "ext", 1).await;
    let left = enqueued(&s, "ext", 2).await;
    let reserving = Instant::now();
    let got = s.b().reserve(&queues(&["ext"]), 2, LEASE).await.unwrap();
    assert_eq!(
        got.iter().map(Reservation::id).collect::<Vec<_>>(),
        [kept.id, left.id]
    );
    let mut token = got[0].token().clone();
    let extended = s
        .b()
        .extend(&[(kept.id, token.clone())], LONG_LEASE)
        .await
        .unwrap();
    assert!(extended.lost.is_empty(), "{extended:?}");
    // A store that issues a new token with the renewal: later write-backs use it.
    if let Some((id, renewed)) = extended.renewed.into_iter().next() {
        assert_eq!(id, kept.id);
        token = renewed;
    }
    assert!(s.b().extend(&[], LONG_LEASE).await.unwrap().lost.is_empty());

    let reaped = reap_soon(&s, 3).await;
    // (A few ms of slack: stores count lease expiry in whole ms of their own clock.)
    let lived = reserving.elapsed() + Duration::from_millis(20);
    assert!(lived >= LEASE, "a lease expired early: {reaped:?}");
    assert_eq!(
        reaped.recovered,
        [left.id],
        "only the lease not extended expires"
    );
    tokio::time::sleep(LEASE).await;
    assert_eq!(s.b().reap(3).await.unwrap(), Reaped::default());
    assert_state(&s, kept.id, JobState::Running).await;
    s.b().ack(kept.id, token.clone()).await.unwrap();
    assert_state(&s, kept.id, JobState::Succeeded).await;
}

/// A job whose lease expires goes back to its queue, counted as a recovery apart from its
/// attempts; the expiry that makes `max_recoveries` recoveries dead-letters it as a poison
/// pill with that reason. A requeue starts its count again.
pub(crate) async fn expired_leases_are_recovered_then_dead_lettered_as_poison_pills(s: Store) {
    const MAX: u32 = 3;
    let env = enqueued(&s, "crash", 1).await;
    let safe = enqueued(&s, "safe", 1).await;
    let (_, safe_token) = reserve_one(&s, "safe", LONG_LEASE).await;
    for n in 1..=MAX {
        let (got, _) = reserve_one(&s, "crash", LEASE).await;
        assert_eq!((got.id, got.attempt, got.recoveries), (env.id, n, n - 1));
        let reaped = reap_soon(&s, MAX).await;
        if n < MAX {
            assert_eq!(reaped.recovered, [env.id], "{reaped:?}");
            assert!(reaped.dead.is_empty(), "{reaped:?}");
            if let Some(st) = status_if(&s, env.id).await {
                assert_eq!((st.state, st.attempts), (JobState::Queued, n));
            }
        } else {
            assert!(reaped.recovered.is_empty(), "{reaped:?}");
            let [dead] = reaped.dead.as_slice() else {
                panic!("expected one poison pill: {reaped:?}");
            };
            assert_eq!((dead.job_id, dead.job.as_str()), (env.id, JOB));
            assert!(dead.error_message().contains("poison pill"), "{dead:?}");
            if let Some(st) = status_if(&s, env.id).await {
                assert_eq!(st.state, JobState::Dead);
                assert_eq!(st.last_error, Some(dead.error_message()));
            }
            if let Some(listed) = listed(&s, 10).await {
                assert_eq!(listed.len(), 1, "{listed:?}");
                assert_eq!((listed[0].job_id, &listed[0].error), (env.id, &dead.error));
            }
        }
    }
    assert_counts(&s, counts(0, 0, 1, 1)).await;
    s.b().requeue(env.id).await.unwrap();
    let (got, token) = reserve_one(&s, "crash", LONG_LEASE).await;
    assert_eq!((got.id, got.attempt, got.recoveries), (env.id, 1, 0));
    s.b().ack(env.id, token.clone()).await.unwrap();
    // The job whose lease lived was never touched.
    assert_state(&s, safe.id, JobState::Running).await;
    s.b().ack(safe.id, safe_token.clone()).await.unwrap();
}
