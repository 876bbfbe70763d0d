//! Checks of enqueue and reserve: stored ids, capacity, delays, order, queues, the envelope
//! handed back, full reservations and wake-ups.

use super::support::*;

/// Enqueueing an id already stored succeeds and changes nothing (the trait docs of
/// `enqueue` and `enqueue_batch`: it "counts as stored and changes nothing"), whatever state
/// the job is in and even when the store is full.
pub(crate) async fn enqueue_of_a_stored_id_changes_nothing(s: Store) {
    if !declares(&s, "idempotent_enqueue", |c| c.idempotent_enqueue) {
        return;
    }
    let env = enqueued(&s, "dup", 1).await;
    let mut other = envelope("dup", 2);
    other.id = env.id;
    other.attempt = 2;
    other.not_before = Some(at_ms_from_now(3_600_000));

    let before = snapshot(&s, env.id).await;
    s.b().enqueue(other.clone(), ROOMY).await.unwrap();
    assert_eq!(snapshot(&s, env.id).await, before, "while queued");
    // Even when full: the id is stored already.
    s.b().enqueue(other.clone(), 1).await.unwrap();
    assert_eq!(
        snapshot(&s, env.id).await,
        before,
        "while queued, store full"
    );

    let (got, token) = reserve_one(&s, "dup", LONG_LEASE).await;
    assert_eq!((got.payload, got.attempt), (env.payload.clone(), 1));
    let before = snapshot(&s, env.id).await;
    s.b().enqueue(other.clone(), ROOMY).await.unwrap();
    assert_eq!(snapshot(&s, env.id).await, before, "while running");

    s.b().ack(env.id, token.clone()).await.unwrap();
    let before = snapshot(&s, env.id).await;
    s.b().enqueue(other.clone(), ROOMY).await.unwrap();
    assert_eq!(snapshot(&s, env.id).await, before, "once succeeded");
    let again = s
        .b()
        .reserve(&queues(&["dup"]), 10, LONG_LEASE)
        .await
        .unwrap();
    assert!(again.is_empty(), "a succeeded job came back: {again:?}");
}

/// The same through `enqueue_batch`, with the stored id among fresh jobs of its kind.
pub(crate) async fn enqueue_batch_of_a_stored_id_changes_nothing(s: Store) {
    if !declares(&s, "idempotent_enqueue", |c| c.idempotent_enqueue) {
        return;
    }
    let env = enqueued(&s, "dupb", 1).await;
    let mut other = envelope("dupb", 2);
    other.id = env.id;
    let batch = [envelope("dupb", 3), other, envelope("dupb", 4)];
    let before = snapshot(&s, env.id).await;
    assert_eq!(s.b().enqueue_batch(&batch, ROOMY).await.unwrap(), 3);
    assert_eq!(snapshot(&s, env.id).await.status, before.status);
    assert_stats(&s, counts(3, 0, 0, 0)).await;
    let got = s
        .b()
        .reserve(&queues(&["dupb"]), 10, LONG_LEASE)
        .await
        .unwrap();
    let payloads: Vec<(JobId, String)> = got
        .iter()
        .map(|r| match r {
            Reservation::Job { envelope, .. } => {
                (envelope.id, envelope.payload.as_str().to_owned())
            }
            other @ Reservation::Malformed { .. } => {
                panic!("expected a job envelope, got {other:?}")
            }
        })
        .collect();
    let expected = [&env, &batch[0], &batch[2]].map(|e| (e.id, e.payload.as_str().to_owned()));
    assert_eq!(payloads, expected, "the stored job must keep its payload");
}

/// An enqueue beyond capacity is refused with `Full` and stores nothing; capacity counts
/// ready, scheduled and running jobs, not finished ones; `enqueue_batch` stores the longest
/// prefix that fits and returns its length (a stored id counts as stored).
pub(crate) async fn capacity_refuses_what_does_not_fit(s: Store) {
    if !declares(&s, "exact_depth", |c| c.exact_depth) {
        return;
    }
    const CAP: u64 = 3;
    let mut delayed = envelope("cap", 0);
    delayed.not_before = Some(at_ms_from_now(3_600_000));
    s.b().enqueue(delayed, CAP).await.unwrap();
    let running = envelope("cap", 1);
    s.b().enqueue(running.clone(), CAP).await.unwrap();
    let (_, token) = reserve_one(&s, "cap", LONG_LEASE).await;
    s.b().enqueue(envelope("cap", 2), CAP).await.unwrap();
    assert_stats(&s, counts(1, 1, 1, 0)).await;

    let over = envelope("cap", 3);
    let r = s.b().enqueue(over.clone(), CAP).await;
    assert!(
        matches!(r, Err(BackendError::Full)),
        "enqueue beyond capacity: {r:?}"
    );
    assert_eq!(
        s.b().status(over.id).await.unwrap(),
        None,
        "a refused job was stored"
    );
    assert_stats(&s, counts(1, 1, 1, 0)).await;

    let fresh = [envelope("cap", 4), envelope("cap", 5)];
    assert_eq!(s.b().enqueue_batch(&fresh, CAP).await.unwrap(), 0);
    for e in &fresh {
        assert_eq!(
            s.b().status(e.id).await.unwrap(),
            None,
            "a refused job was stored"
        );
    }
    // A stored id counts as stored even when full; the fresh one behind it does not fit.
    let mut stored = envelope("cap", 6);
    stored.id = running.id;
    let mixed = [stored, envelope("cap", 7)];
    assert_eq!(s.b().enqueue_batch(&mixed, CAP).await.unwrap(), 1);
    assert_eq!(s.b().status(mixed[1].id).await.unwrap(), None);

    // A finished job frees its slot.
    s.b().ack(running.id, token.clone()).await.unwrap();
    assert_stats(&s, counts(1, 1, 0, 0)).await;
    let batch = [envelope("cap", 8), envelope("cap", 9), envelope("cap", 10)];
    assert_eq!(s.b().enqueue_batch(&batch, CAP).await.unwrap(), 1);
    assert!(s.b().status(batch[0].id).await.unwrap().is_some());
    for e in &batch[1..] {
        assert_eq!(s.b().status(e.id).await.unwrap(), None, "beyond the prefix");
    }
    assert_stats(&s, counts(2, 1, 0, 0)).await;
    let r = s.b().enqueue(over.clone(), CAP).await;
    assert!(
        matches!(r, Err(BackendError::Full)),
        "enqueue beyond capacity: {r:?}"
    );
    // More room: the whole batch fits.
    let more = [envelope("cap", 11), envelope("cap", 12)];
    assert_eq!(s.b().enqueue_batch(&more, CAP + 2).await.unwrap(), 2);
    assert_stats(&s, counts(4, 1, 0, 0)).await;
}

/// A job with a future `not_before` is scheduled, not reserved before its time, and is
/// reserved once it has come; one whose time has passed is ready at once.
pub(crate) async fn delayed_jobs_wait_for_their_time(s: Store) {
    let mut delayed = envelope("later", 1);
    let due = at_ms_from_now(1_000);
    delayed.not_before = Some(due);
    enqueue(&s, &delayed).await;
    let mut past = envelope("later", 2);
    past.not_before = Some(at_ms_from_now(-1_000));
    enqueue(&s, &past).await;
    if let Some(st) = status_kept(&s, delayed.id).await {
        assert_eq!(st.state, JobState::Scheduled);
    }
    if let Some(st) = status_kept(&s, past.id).await {
        assert_eq!(st.state, JobState::Queued);
    }
    assert_stats(&s, counts(1, 1, 0, 0)).await;

    let (got, _) = reserve_one(&s, "later", LONG_LEASE).await;
    assert_eq!(got.id, past.id);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = s
            .b()
            .reserve(&queues(&["later"]), 10, LONG_LEASE)
            .await
            .unwrap();
        let returned = unix_ms(SystemTime::now());
        if let Some(r) = got.first() {
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(r.id(), delayed.id);
            assert!(
                returned >= due,
                "reserved {} ms before its time",
                due - returned
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the delayed job never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(st) = status_kept(&s, delayed.id).await {
        assert_eq!(st.state, JobState::Running);
    }
    assert_stats(&s, counts(0, 0, 2, 0)).await;
}

/// Jobs of one queue are reserved in the order they were enqueued, one at a time or many.
pub(crate) async fn fifo_within_a_queue(s: Store) {
    if !declares(&s, "ordered", |c| c.ordered) {
        return;
    }
    let mut order = Vec::new();
    for n in 0..4 {
        order.push(enqueued(&s, "fifo", n).await.id);
    }
    let batch: Vec<Envelope> = (4..8).map(|n| envelope("fifo", n)).collect();
    assert_eq!(s.b().enqueue_batch(&batch, ROOMY).await.unwrap(), 4);
    order.extend(batch.iter().map(|e| e.id));
    for n in 8..12 {
        order.push(enqueued(&s, "fifo", n).await.id);
    }
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(reserve_one(&s, "fifo", LONG_LEASE).await.0.id);
    }
    let rest = s
        .b()
        .reserve(&queues(&["fifo"]), 100, LONG_LEASE)
        .await
        .unwrap();
    got.extend(rest.iter().map(Reservation::id));
    assert_eq!(got, order);
}

/// Queues are independent: a reservation takes jobs only from the queues it names.
pub(crate) async fn queues_are_independent(s: Store) {
    let mut in_a = Vec::new();
    let mut in_b = Vec::new();
    for n in 0..3 {
        in_a.push(enqueued(&s, "qa", n).await.id);
        in_b.push(enqueued(&s, "qb", n).await.id);
    }
    let none = s
        .b()
        .reserve(&queues(&["qc"]), 10, LONG_LEASE)
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    let b: Vec<JobId> = s
        .b()
        .reserve(&queues(&["qb"]), 10, LONG_LEASE)
        .await
        .unwrap()
        .iter()
        .map(Reservation::id)
        .collect();
    assert_eq!(b, in_b);
    assert_stats(&s, counts(3, 0, 3, 0)).await;
    let a: Vec<JobId> = s
        .b()
        .reserve(&queues(&["qb", "qa"]), 10, LONG_LEASE)
        .await
        .unwrap()
        .iter()
        .map(Reservation::id)
        .collect();
    assert_eq!(a, in_a);
}

/// `reserve` hands back the envelope as it was stored: the payload's bytes exactly as the
/// client wrote them (key order, `[]`, integers beyond 2^53), name, queue, limits and times,
/// with `attempt` counting this reservation and the lease token in the envelope.
pub(crate) async fn reserve_hands_back_the_envelope_as_stored(s: Store) {
    let text = r#"{"z":1,"a":[],"o":{},"big":12345678901234567890,"s":"\u00e9\n"}"#;
    let mut env = envelope("bytes", 0);
    env.payload = Payload::from_json(text.to_owned()).unwrap();
    env.max_attempts = 7;
    env.enqueued_at -= 60_000;
    env.not_before = Some(at_ms_from_now(-1_000));
    enqueue(&s, &env).await;
    let (got, token) = reserve_one(&s, "bytes", LONG_LEASE).await;
    assert_eq!(got.payload.as_str(), text, "the payload's bytes changed");
    assert_eq!(got.lease, Some(token.clone()));
    let expected = Envelope {
        attempt: 1,
        lease: Some(token),
        ..env
    };
    assert_eq!(got, expected);
}

/// `reserve` returns fewer than `max` jobs only when no more are ready: the runtime takes
/// a short answer to mean the queues are drained and waits before it asks again.
pub(crate) async fn reserve_fills_max_when_enough_are_ready(s: Store) {
    // More than any backend's internal batch (Postgres reserves 1,000 per statement,
    // Redis 10,000 per script call).
    const N: usize = 10_050;
    const MAX: usize = 10_010;
    let jobs: Vec<Envelope> = (0..N as u64).map(|n| envelope("many", n)).collect();
    assert_eq!(
        s.b().enqueue_batch(&jobs, ROOMY + N as u64).await.unwrap(),
        N
    );
    let got = s
        .b()
        .reserve(&queues(&["many"]), MAX, LONG_LEASE)
        .await
        .unwrap();
    assert_eq!(got.len(), MAX, "{N} jobs were ready");
    let rest = s
        .b()
        .reserve(&queues(&["many"]), N, LONG_LEASE)
        .await
        .unwrap();
    assert_eq!(rest.len(), N - MAX);
}

/// `wait_for_work` returns when work arrives in its queues (spurious wake-ups are allowed,
/// a missed enqueue is not), and by its timeout when none does.
pub(crate) async fn wait_for_work_wakes_on_enqueue(s: Store) {
    let q = queues(&["wake"]);
    // Drain any wake-up left from before (a backend may keep one for the next waiter).
    s.b().wait_for_work(&q, Duration::from_millis(50)).await;
    let started = Instant::now();
    s.b().wait_for_work(&q, Duration::from_millis(300)).await;
    assert!(started.elapsed() < PATIENCE, "the wait overran its timeout");

    let waited = Instant::now();
    let wait = s.b().wait_for_work(&q, Duration::from_secs(60));
    let arrive = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        enqueued(&s, "wake", 1).await;
    };
    let ((), ()) = tokio::join!(wait, arrive);
    assert!(
        waited.elapsed() < Duration::from_secs(30),
        "an enqueue did not end the wait ({:?})",
        waited.elapsed()
    );
}
