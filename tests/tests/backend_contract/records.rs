//! Checks of what a backend reports: malformed records, statuses, counts and dead letters.

use super::support::*;

/// A stored record that is not a job envelope comes out of `reserve` as
/// `Reservation::Malformed` with its id, queue, bytes and a reason, leased like a job, so the
/// runtime can dead-letter it with that reason; the jobs behind it are not held up.
pub(crate) async fn malformed_records_are_reserved_as_malformed(s: Store) {
    let bad = JobId::new();
    s.plant_raw(bad, "bad", "{not json").await;
    let good = enqueued(&s, "bad", 1).await;
    let got = s
        .b()
        .reserve(&queues(&["bad"]), 10, LONG_LEASE)
        .await
        .unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    let (token, reason) = match &got[0] {
        Reservation::Malformed {
            id,
            token,
            queue,
            raw,
            reason,
        } => {
            assert_eq!((*id, queue.as_str()), (bad, "bad"));
            assert!(raw.contains("{not json"), "raw bytes: {raw:?}");
            assert!(!reason.is_empty());
            (token.clone(), reason.clone())
        }
        other @ Reservation::Job { .. } => {
            panic!("expected the planted record as malformed, got {other:?}")
        }
    };
    assert_eq!(got[1].id(), good.id);

    let dead = DeadLetter::new(
        bad,
        "",
        "bad",
        serde_json::Value::String("{not json".to_owned()),
        1,
        vec![reason.clone()],
        SystemTime::now(),
        SystemTime::now(),
    );
    s.b().dead_letter(bad, token.clone(), dead).await.unwrap();
    if let Some(listed) = listed(&s, 10).await {
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!((listed[0].job_id, &listed[0].error), (bad, &vec![reason]));
    }
    let st = if caps(&s).status_by_id {
        s.b().status(bad).await.unwrap()
    } else {
        status_if(&s, bad).await
    };
    if let Some(st) = st {
        assert_eq!(st.state, JobState::Dead);
    }
    s.b().ack(good.id, got[1].token().clone()).await.unwrap();
    assert_counts(&s, counts(0, 0, 0, 1)).await;
}

/// The status follows a job through every state, with its attempts and last error; an
/// unknown id has none.
pub(crate) async fn status_follows_every_state(s: Store) {
    if !caps(&s).status_by_id {
        // Not declared: the backend must answer Unsupported instead.
        let env = enqueued(&s, "life", 1).await;
        assert_eq!(status_if(&s, env.id).await, None);
        return;
    }
    assert_eq!(s.b().status(JobId::new()).await.unwrap(), None);

    let env = enqueued(&s, "life", 1).await;
    let st = status(&s, env.id).await;
    assert_eq!(
        (st.state, st.attempts, st.last_error, st.last_failure),
        (JobState::Queued, 0, None, None)
    );
    assert_eq!((st.job.as_ref(), st.queue.as_ref()), (JOB, "life"));

    let mut later = envelope("life", 2);
    later.not_before = Some(at_ms_from_now(3_600_000));
    enqueue(&s, &later).await;
    let st = status(&s, later.id).await;
    assert_eq!((st.state, st.attempts), (JobState::Scheduled, 0));

    let (_, token) = reserve_one(&s, "life", LONG_LEASE).await;
    let st = status(&s, env.id).await;
    assert_eq!((st.state, st.attempts), (JobState::Running, 1));

    let at = SystemTime::now() + Duration::from_millis(200);
    s.b()
        .retry(env.id, token.clone(), retry_at(at, "smtp timed out"))
        .await
        .unwrap();
    let st = status(&s, env.id).await;
    assert_eq!((st.state, st.attempts), (JobState::Retrying, 1));
    assert_eq!(st.last_error.as_deref(), Some("smtp timed out"));
    assert_eq!(st.last_failure.as_deref(), Some("smtp timed out"));

    let (got, token) = reserve_soon(&s, "life", LONG_LEASE).await;
    assert_eq!((got.id, got.attempt), (env.id, 2));
    let st = status(&s, env.id).await;
    assert_eq!((st.state, st.attempts), (JobState::Running, 2));

    s.b().ack(env.id, token.clone()).await.unwrap();
    let st = status(&s, env.id).await;
    assert_eq!((st.state, st.attempts), (JobState::Succeeded, 2));
    // Succeeded after a retry: no current error, the failure kept as the latest one.
    assert_eq!(st.last_error, None, "a succeeded job has no current error");
    assert_eq!(st.last_failure.as_deref(), Some("smtp timed out"));

    let doomed = enqueued(&s, "life", 3).await;
    let (got, token) = reserve_one(&s, "life", LONG_LEASE).await;
    let dead = record(&got, "invalid address");
    s.b()
        .dead_letter(doomed.id, token.clone(), dead.clone())
        .await
        .unwrap();
    let st = status(&s, doomed.id).await;
    assert_eq!((st.state, st.attempts), (JobState::Dead, 1));
    assert_eq!(st.last_error, Some(dead.error_message()));
    assert_eq!(st.last_failure, Some(dead.error_message()));
}

/// A status's `updated_at` is when the job last changed: it stands still while nothing
/// happens to the job (also through a refused write-back or an enqueue of its id), and
/// moves, never back, when the job changes.
pub(crate) async fn status_time_moves_only_with_the_job(s: Store) {
    if !caps(&s).status_by_id {
        // Not declared: the backend must answer Unsupported instead.
        let env = enqueued(&s, "life", 1).await;
        assert_eq!(status_if(&s, env.id).await, None);
        return;
    }
    let env = enqueued(&s, "time", 1).await;
    let mut later = envelope("time", 2);
    later.not_before = Some(at_ms_from_now(3_600_000));
    enqueue(&s, &later).await;
    let updated = |id| {
        let s = &s;
        async move { status(s, id).await.updated_at }
    };
    for job in [&env, &later] {
        let first = updated(job.id).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            updated(job.id).await,
            first,
            "a job that stands still was updated"
        );
        s.b().enqueue(job.clone(), ROOMY).await.unwrap();
        let again = updated(job.id).await;
        assert_eq!(again, first, "an enqueue of a stored id updated the job");
    }
    let queued = updated(env.id).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, token) = reserve_one(&s, "time", LONG_LEASE).await;
    let running = updated(env.id).await;
    assert!(running > queued, "the reservation did not move updated_at");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stale = LeaseToken::random();
    assert_lost(
        s.b().ack(env.id, stale.clone()).await,
        env.id,
        "ack with a made-up token",
    );
    assert_eq!(
        updated(env.id).await,
        running,
        "a refused ack updated the job"
    );
    s.b().ack(env.id, token.clone()).await.unwrap();
    assert!(
        updated(env.id).await > running,
        "the ack did not move updated_at"
    );
}

/// The counts match the jobs after a mixed sequence of every kind of change.
pub(crate) async fn stats_count_every_state(s: Store) {
    if !caps(&s).exact_depth {
        // Not declared: the counts are approximate; they must still be given.
        enqueued(&s, "count", 1).await;
        stats(&s).await;
        return;
    }
    assert_counts(&s, counts(0, 0, 0, 0)).await;
    let jobs: Vec<Envelope> = (0..5).map(|n| envelope("mix", n)).collect();
    assert_eq!(s.b().enqueue_batch(&jobs, ROOMY).await.unwrap(), 5);
    let mut later = envelope("mix", 9);
    later.not_before = Some(at_ms_from_now(3_600_000));
    enqueue(&s, &later).await;
    assert_counts(&s, counts(5, 1, 0, 0)).await;

    let got = s
        .b()
        .reserve(&queues(&["mix"]), 4, LONG_LEASE)
        .await
        .unwrap();
    assert_eq!(got.len(), 4);
    assert_counts(&s, counts(1, 1, 4, 0)).await;
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| (got[i].id(), got[i].token().clone()));
    s.b().ack(a.0, a.1).await.unwrap();
    assert_counts(&s, counts(1, 1, 3, 0)).await;
    let hour = SystemTime::now() + Duration::from_secs(3600);
    s.b()
        .retry(b.0, b.1, retry_at(hour, "later"))
        .await
        .unwrap();
    assert_counts(&s, counts(1, 2, 2, 0)).await;
    let dying = jobs
        .iter()
        .find(|e| e.id == c.0)
        .expect("reserved from the batch");
    s.b()
        .dead_letter(c.0, c.1, record(dying, "dead"))
        .await
        .unwrap();
    assert_counts(&s, counts(1, 2, 1, 1)).await;
    s.b().release(d.0, d.1).await.unwrap();
    assert_counts(&s, counts(2, 2, 0, 1)).await;
    s.b().requeue(c.0).await.unwrap();
    assert_counts(&s, counts(3, 2, 0, 0)).await;
    let got = s.b().reserve(&queues(&["mix"]), 10, LEASE).await.unwrap();
    assert_eq!(got.len(), 3);
    assert_counts(&s, counts(0, 2, 3, 0)).await;
    // The three leases expire; each is its job's first recovery of two allowed.
    let mut recovered = Vec::new();
    while recovered.len() < 3 {
        let reaped = reap_soon(&s, 2).await;
        assert!(reaped.dead.is_empty(), "{reaped:?}");
        recovered.extend(reaped.recovered);
    }
    assert_counts(&s, counts(3, 2, 0, 0)).await;
}

/// Dead letters are listed oldest first, at most `limit`; `requeue` moves one back to its
/// queue with a fresh attempt budget (the next reservation is attempt 1); an id that is not
/// a dead letter is `NotFound` and changes nothing.
pub(crate) async fn dead_letters_are_listed_oldest_first_and_requeued(s: Store) {
    if !caps(&s).dead_letter_listing {
        return dead_letters_unlisted_are_requeued(s).await;
    }
    let mut dead = Vec::new();
    for n in 0..3 {
        let env = enqueued(&s, "dl", n).await;
        let (got, token) = reserve_one(&s, "dl", LONG_LEASE).await;
        s.b()
            .dead_letter(env.id, token.clone(), record(&got, &format!("failure {n}")))
            .await
            .unwrap();
        dead.push(got);
        // Distinct times of death, so "oldest first" has one answer.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ids: Vec<JobId> = dead.iter().map(|e| e.id).collect();
    assert_eq!(dead_ids(&s).await, ids);
    let two = s.b().dead_letters(2).await.unwrap();
    assert_eq!(two.iter().map(|d| d.job_id).collect::<Vec<_>>(), ids[..2]);
    assert_eq!(two[1].error, ["failure 1", "its source"]);
    assert_eq!((two[1].job.as_str(), two[1].queue.as_str()), (JOB, "dl"));
    assert_eq!(two[1].payload, serde_json::json!({ "n": 1 }));
    assert_eq!(two[1].attempts, 1);
    assert!(s.b().dead_letters(0).await.unwrap().is_empty());

    let unknown = JobId::new();
    let r = s.b().requeue(unknown).await;
    assert!(
        matches!(r, Err(BackendError::NotFound(x)) if x == unknown),
        "{r:?}"
    );
    let queued = enqueued(&s, "dl", 7).await;
    let before = snapshot(&s, queued.id).await;
    let r = s.b().requeue(queued.id).await;
    assert!(
        matches!(r, Err(BackendError::NotFound(x)) if x == queued.id),
        "{r:?}"
    );
    assert_eq!(
        snapshot(&s, queued.id).await,
        before,
        "requeue of a queued job"
    );

    s.b().requeue(ids[1]).await.unwrap();
    assert_eq!(dead_ids(&s).await, [ids[0], ids[2]]);
    if let Some(st) = status_if(&s, ids[1]).await {
        assert_eq!((st.state, st.attempts), (JobState::Queued, 0));
    }
    let r = s.b().requeue(ids[1]).await;
    assert!(
        matches!(r, Err(BackendError::NotFound(_))),
        "requeued twice: {r:?}"
    );
    assert_counts(&s, counts(2, 0, 0, 2)).await;

    let got = s
        .b()
        .reserve(&queues(&["dl"]), 10, LONG_LEASE)
        .await
        .unwrap();
    let back = got
        .iter()
        .find_map(|r| match r {
            Reservation::Job { envelope, token } if envelope.id == ids[1] => {
                Some((envelope.clone(), token.clone()))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("the requeued job is not reservable: {got:?}"));
    assert_eq!((back.0.attempt, back.0.recoveries), (1, 0));
    assert_eq!(back.0.max_attempts, dead[1].max_attempts);
    assert_eq!(back.0.payload, dead[1].payload);
    s.b().ack(ids[1], back.1).await.unwrap();
    assert_state(&s, ids[1], JobState::Succeeded).await;
}

/// Where the backend declares no dead-letter listing: listing answers `Unsupported`, and
/// where it declares requeue by id, a dead letter goes back to its queue with a fresh
/// attempt budget and an unknown id is `NotFound`.
async fn dead_letters_unlisted_are_requeued(s: Store) {
    let env = enqueued(&s, "dl", 1).await;
    let (got, token) = reserve_one(&s, "dl", LONG_LEASE).await;
    s.b()
        .dead_letter(env.id, token.clone(), record(&got, "failure"))
        .await
        .unwrap();
    assert_eq!(listed(&s, 10).await, None);
    if !caps(&s).requeue_by_id {
        let r = s.b().requeue(env.id).await;
        assert!(matches!(r, Err(BackendError::Unsupported(_))), "{r:?}");
        return;
    }
    let unknown = JobId::new();
    let r = s.b().requeue(unknown).await;
    assert!(
        matches!(r, Err(BackendError::NotFound(x)) if x == unknown),
        "{r:?}"
    );
    s.b().requeue(env.id).await.unwrap();
    let r = s.b().requeue(env.id).await;
    assert!(
        matches!(r, Err(BackendError::NotFound(_))),
        "requeued twice: {r:?}"
    );
    let (back, token) = reserve_soon(&s, "dl", LONG_LEASE).await;
    assert_eq!(back.id, env.id);
    assert_eq!((back.attempt, back.recoveries), (1, 0));
    assert_eq!(back.payload, env.payload);
    s.b().ack(env.id, token).await.unwrap();
}

/// `find_dead_letter` finds a dead letter by its job's id, as the listing has it; an unknown
/// id, or the id of a job that is not dead, is `Ok(None)`. A backend that cannot list its
/// dead letters answers `Unsupported`.
pub(crate) async fn dead_letters_are_found_by_id(s: Store) {
    if !caps(&s).dead_letter_listing {
        let r = s.b().find_dead_letter(JobId::new()).await;
        assert!(matches!(r, Err(BackendError::Unsupported(_))), "{r:?}");
        return;
    }
    let mut dead = Vec::new();
    for n in 0..2 {
        let env = enqueued(&s, "dl-find", n).await;
        let (got, token) = reserve_one(&s, "dl-find", LONG_LEASE).await;
        s.b()
            .dead_letter(env.id, token.clone(), record(&got, &format!("failure {n}")))
            .await
            .unwrap();
        dead.push(got);
    }
    let listed = s.b().dead_letters(10).await.unwrap();
    for got in &dead {
        let found = s
            .b()
            .find_dead_letter(got.id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("dead letter {} not found by id", got.id));
        assert_eq!(found.job_id, got.id);
        let in_list = listed.iter().find(|d| d.job_id == got.id);
        assert_eq!(Some(&found), in_list, "as the listing has it");
    }
    assert_eq!(s.b().find_dead_letter(JobId::new()).await.unwrap(), None);
    let live = enqueued(&s, "dl-find", 9).await;
    assert_eq!(s.b().find_dead_letter(live.id).await.unwrap(), None);
}
