//! The Azure Queue backend at the trait level, where the store's own primitives make it
//! differ from the others (the shared contract suite covers the rest): recoveries counted
//! from the dequeue count at the next delivery, the poison queue, renewals that replace the
//! pop receipt, delays that hop, the payload limit, and what it declares unsupported.
//!
//! Against the shared Azurite (`JOB_AZURE_QUEUE`, default 127.0.0.1:10001), each test on a
//! fresh queue prefix; a missing emulator fails the test with how to start it.

mod common;

use std::time::{Duration, SystemTime};

use job_core::backend::azure::MAX_PAYLOAD;
use job_core::backend::{
    Backend, BackendError, Envelope, LeaseToken, Payload, Reservation, unix_ms,
};
use job_core::prelude::*;
use tokio::time::Instant;

fn envelope(queue: &str) -> Envelope {
    Envelope {
        id: JobId::new(),
        job: "azure.probe".to_owned(),
        queue: queue.to_owned(),
        payload: Payload::from(serde_json::json!({ "n": 1 })),
        attempt: 0,
        max_attempts: 5,
        recoveries: 0,
        enqueued_at: unix_ms(SystemTime::now()),
        not_before: None,
        lease: None,
    }
}

/// Reserves from `queue` until one job comes, within 20 s.
async fn reserve_soon(b: &dyn Backend, queue: &str, lease: Duration) -> (Envelope, LeaseToken) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut got = b.reserve(&[queue.to_owned()], 1, lease).await.unwrap();
        match got.pop() {
            Some(Reservation::Job { envelope, token }) => return (envelope, token),
            Some(other) => panic!("expected a job, got {other:?}"),
            None => {}
        }
        assert!(Instant::now() < deadline, "nothing came in {queue}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_lapsed_lease_comes_back_as_a_recovery_and_the_third_goes_to_the_poison_queue() {
    let (b, _cleanup) = common::azure::azure_backend().await;
    let env = envelope("crash");
    b.enqueue(env.clone(), 1_000).await.unwrap();
    let mut stale = Vec::new();
    for n in 1..=3 {
        let (got, token) = reserve_soon(&b, "crash", Duration::from_secs(1)).await;
        assert_eq!((got.id, got.attempt, got.recoveries), (env.id, n, n - 1));
        stale.push(token);
        if n > 1 {
            let reaped = b.reap(3).await.unwrap();
            assert_eq!(reaped.recovered, [env.id], "{reaped:?}");
        }
    }
    // The fourth delivery finds three recoveries: parked, not handed out.
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.poison_count("crash").await.unwrap() == 0 {
        let got = b
            .reserve(&["crash".to_owned()], 1, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(got.is_empty(), "a poison pill was handed out: {got:?}");
        assert!(Instant::now() < deadline, "never parked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reaped = b.reap(3).await.unwrap();
    let [dead] = reaped.dead.as_slice() else {
        panic!("expected the poison pill: {reaped:?}");
    };
    assert_eq!(dead.job_id, env.id);
    assert!(dead.error_message().contains("poison pill"), "{dead:?}");
    // Every earlier holder is stale.
    for token in stale {
        assert!(matches!(
            b.ack(env.id, token).await,
            Err(BackendError::LeaseLost(_))
        ));
    }
    let listed = b.peek_dead_letters(10).await.unwrap();
    assert_eq!(
        listed.iter().map(|d| d.job_id).collect::<Vec<_>>(),
        [env.id]
    );
    // Requeued by id: a fresh budget.
    b.requeue(env.id).await.unwrap();
    assert_eq!(b.poison_count("crash").await.unwrap(), 0);
    let (got, token) = reserve_soon(&b, "crash", Duration::from_secs(30)).await;
    assert_eq!((got.id, got.attempt, got.recoveries), (env.id, 1, 0));
    b.ack(env.id, token).await.unwrap();
    assert!(matches!(
        b.requeue(env.id).await,
        Err(BackendError::NotFound(_))
    ));
}

#[tokio::test]
async fn extend_replaces_the_pop_receipt_and_keeps_the_job_hidden() {
    let (b, _cleanup) = common::azure::azure_backend().await;
    let env = envelope("ext");
    b.enqueue(env.clone(), 1_000).await.unwrap();
    let (_, first) = reserve_soon(&b, "ext", Duration::from_secs(1)).await;
    let mut token = first.clone();
    // A lease with more than three quarters of it left is not renewed yet: its token stays.
    let ext = b
        .extend(&[(env.id, token.clone())], Duration::from_secs(1))
        .await
        .unwrap();
    assert!(ext.renewed.is_empty() && ext.lost.is_empty(), "{ext:?}");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let ext = b
            .extend(&[(env.id, token.clone())], Duration::from_secs(1))
            .await
            .unwrap();
        assert!(ext.lost.is_empty(), "{ext:?}");
        let [(id, renewed)] = ext.renewed.as_slice() else {
            panic!("one renewed token expected: {ext:?}");
        };
        assert_eq!(*id, env.id);
        assert_ne!(*renewed, token, "a renewal issues a new receipt");
        token = renewed.clone();
        // Past the first lease, still hidden from everyone else.
        let got = b
            .reserve(&["ext".to_owned()], 1, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(
            got.is_empty(),
            "an extended lease was handed out again: {got:?}"
        );
    }
    // The spent receipt renews nothing and deletes nothing.
    let ext = b
        .extend(&[(env.id, first.clone())], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(ext.lost, [env.id]);
    assert!(matches!(
        b.ack(env.id, first).await,
        Err(BackendError::LeaseLost(_))
    ));
    b.ack(env.id, token).await.unwrap();
}

#[tokio::test]
async fn retries_and_releases_are_not_recoveries_and_retries_wait() {
    let (b, _cleanup) = common::azure::azure_backend().await;
    let env = envelope("retry");
    b.enqueue(env.clone(), 1_000).await.unwrap();
    let (got, token) = reserve_soon(&b, "retry", Duration::from_secs(30)).await;
    assert_eq!(got.attempt, 1);
    let at = SystemTime::now() + Duration::from_secs(2);
    b.retry(
        env.id,
        token,
        job_core::backend::Retry {
            at,
            error: "transient".to_owned(),
        },
    )
    .await
    .unwrap();
    let (got, token) = reserve_soon(&b, "retry", Duration::from_secs(30)).await;
    assert!(
        SystemTime::now() + Duration::from_millis(50) >= at,
        "a retry started early"
    );
    assert_eq!((got.attempt, got.recoveries), (2, 0));
    b.release(env.id, token).await.unwrap();
    let (got, token) = reserve_soon(&b, "retry", Duration::from_secs(30)).await;
    assert_eq!(
        (got.attempt, got.recoveries),
        (2, 0),
        "a release counts nothing"
    );
    b.ack(env.id, token).await.unwrap();
}

#[tokio::test]
async fn a_start_time_beyond_the_visibility_timeout_hops_and_is_not_counted() {
    let (b, _cleanup) = common::azure::azure_backend().await;
    // As a delay longer than 7 days surfaces after 7 days: visible now, due in 2 s.
    let id = JobId::new();
    let due = unix_ms(SystemTime::now()) + 2_000;
    let record = serde_json::json!({
        "j": "azure.probe", "q": "hop", "p": {"n": 1}, "a": 0, "m": 5, "r": 0,
        "e": unix_ms(SystemTime::now()), "nb": due, "d": 0
    });
    b.insert_raw(id, "hop", &record.to_string()).await.unwrap();
    let got = b
        .reserve(&["hop".to_owned()], 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        got.is_empty(),
        "a job was handed out before its start time: {got:?}"
    );
    let (env, token) = reserve_soon(&b, "hop", Duration::from_secs(30)).await;
    assert!(unix_ms(SystemTime::now()) >= due, "started before its time");
    assert_eq!(
        (env.id, env.attempt, env.recoveries),
        (id, 1, 0),
        "the hop counted nothing"
    );
    b.ack(id, token).await.unwrap();
}

#[tokio::test]
async fn payloads_over_a_message_are_refused_whole_and_the_limit_is_declared() {
    let (b, _cleanup) = common::azure::azure_backend().await;
    assert_eq!(b.capabilities().max_payload, Some(MAX_PAYLOAD));
    let mut fits = envelope("big");
    fits.payload = Payload::encode(&"x".repeat(MAX_PAYLOAD - 2)).unwrap();
    b.enqueue(fits.clone(), 1_000).await.unwrap();
    let (got, token) = reserve_soon(&b, "big", Duration::from_secs(30)).await;
    assert_eq!(got.payload, fits.payload, "stored whole");
    b.ack(got.id, token).await.unwrap();
    let mut over = envelope("big");
    over.payload = Payload::encode(&"x".repeat(MAX_PAYLOAD)).unwrap();
    assert!(
        b.enqueue(over, 1_000).await.is_err(),
        "an oversized payload was stored"
    );
    let got = b
        .reserve(&["big".to_owned()], 1, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test]
async fn what_the_store_cannot_do_is_declared_and_answered_unsupported() {
    let (b, _cleanup) = common::azure::azure_backend().await;
    let caps = b.capabilities();
    assert!(!caps.status_by_id && !caps.exact_depth && !caps.dead_letter_listing);
    assert!(caps.requeue_by_id);
    assert!(!caps.idempotent_enqueue && !caps.ordered);
    assert!(matches!(
        b.status(JobId::new()).await,
        Err(BackendError::Unsupported(_))
    ));
    assert!(matches!(
        b.dead_letters(10).await,
        Err(BackendError::Unsupported(_))
    ));
    // The trait's default lookup scans the listing, so it is unsupported too.
    assert!(matches!(
        b.find_dead_letter(JobId::new()).await,
        Err(BackendError::Unsupported(_))
    ));
}

#[tokio::test]
async fn a_wrong_account_key_is_refused_at_connect() {
    let conn = common::azure::azure_conn();
    let parsed = job_core::backend::azure::ConnectionString::parse(&conn).unwrap();
    let wrong = format!(
        "AccountName={};AccountKey=d3Jvbmc=;QueueEndpoint={}",
        parsed.account(),
        parsed.queue_endpoint()
    );
    let b = job_core::backend::azure::AzureQueueBackend::new(wrong).unwrap();
    let e = b.connect().await.unwrap_err();
    assert!(format!("{e:?}").contains("403"), "{e:?}");
}
