//! What the checks share: constants, envelopes, polls with deadlines, snapshots and
//! write-backs; the checks' modules import all of it (with the types they use).

pub(crate) use std::time::{Duration, SystemTime};

pub(crate) use job_core::backend::{
    BackendError, BackendStats, Capabilities, Envelope, LeaseToken, Payload, Reaped, Reservation,
    Retry, from_unix_ms, unix_ms,
};
pub(crate) use job_core::prelude::*;
pub(crate) use tokio::time::Instant;

pub(crate) use crate::Store;

/// The lease of every reservation that is meant to expire.
pub(crate) const LEASE: Duration = Duration::from_millis(300);
/// The lease of reservations that must not expire during a check.
pub(crate) const LONG_LEASE: Duration = Duration::from_secs(60);
/// How long a poll waits for what must happen before it fails the check.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);
/// A capacity no check reaches, for enqueues that are not about capacity.
pub(crate) const ROOMY: u64 = 10_000;
/// The job name every envelope carries.
pub(crate) const JOB: &str = "contract.probe";

pub(crate) fn queues(names: &[&str]) -> Vec<String> {
    names.iter().map(|&q| q.to_owned()).collect()
}

/// A fresh job for `queue` whose payload is `{"n": n}`.
pub(crate) fn envelope(queue: &str, n: u64) -> Envelope {
    Envelope {
        id: JobId::new(),
        job: JOB.to_owned(),
        queue: queue.to_owned(),
        payload: Payload::from(serde_json::json!({ "n": n })),
        attempt: 0,
        max_attempts: 3,
        recoveries: 0,
        enqueued_at: unix_ms(SystemTime::now()),
        not_before: None,
        lease: None,
    }
}

pub(crate) fn at_ms_from_now(ms: i64) -> u64 {
    let now = unix_ms(SystemTime::now());
    now.saturating_add_signed(ms)
}

pub(crate) async fn enqueue(s: &Store, env: &Envelope) {
    s.b()
        .enqueue(env.clone(), ROOMY)
        .await
        .unwrap_or_else(|e| panic!("enqueue of {} failed: {e:?}", env.id));
}

/// A fresh job enqueued in `queue`.
pub(crate) async fn enqueued(s: &Store, queue: &str, n: u64) -> Envelope {
    let env = envelope(queue, n);
    enqueue(s, &env).await;
    env
}

/// Reserves exactly one job from `queue`, which must be ready now.
pub(crate) async fn reserve_one(s: &Store, queue: &str, lease: Duration) -> (Envelope, LeaseToken) {
    let mut got = s.b().reserve(&queues(&[queue]), 1, lease).await.unwrap();
    assert_eq!(got.len(), 1, "expected one job ready in {queue}: {got:?}");
    match got.pop() {
        Some(Reservation::Job { envelope, token }) => (envelope, token),
        other => panic!("expected a job envelope, got {other:?}"),
    }
}

/// Reserves from `queue` until something comes (a retry or delayed job falling due).
pub(crate) async fn reserve_soon(
    s: &Store,
    queue: &str,
    lease: Duration,
) -> (Envelope, LeaseToken) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut got = s.b().reserve(&queues(&[queue]), 1, lease).await.unwrap();
        match got.pop() {
            Some(Reservation::Job { envelope, token }) => return (envelope, token),
            Some(other) => panic!("expected a job envelope, got {other:?}"),
            None => {}
        }
        assert!(Instant::now() < deadline, "nothing became ready in {queue}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reaps until a pass finds an expired lease.
pub(crate) async fn reap_soon(s: &Store, max_recoveries: u32) -> Reaped {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reaped = s.b().reap(max_recoveries).await.unwrap();
        if !reaped.recovered.is_empty() || !reaped.dead.is_empty() {
            return reaped;
        }
        assert!(
            Instant::now() < deadline,
            "no lease expired within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn status(s: &Store, id: JobId) -> JobStatus {
    s.b()
        .status(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("the backend has no status for job {id}"))
}

pub(crate) async fn stats(s: &Store) -> BackendStats {
    s.b().stats().await.unwrap()
}

/// What the backend declares it can do.
pub(crate) fn caps(s: &Store) -> Capabilities {
    s.b().capabilities()
}

/// The status of `id` where the backend declares status by id; where it does not, asserts
/// that it answers `Unsupported` and gives `None`.
pub(crate) async fn status_if(s: &Store, id: JobId) -> Option<JobStatus> {
    if caps(s).status_by_id {
        return Some(status(s, id).await);
    }
    let r = s.b().status(id).await;
    assert!(
        matches!(r, Err(BackendError::Unsupported(_))),
        "a backend without status by id must answer Unsupported, got {r:?}"
    );
    None
}

/// Asserts the state of `id` (where status by id is declared; else that it is unsupported).
pub(crate) async fn assert_state(s: &Store, id: JobId, state: JobState) {
    if let Some(st) = status_if(s, id).await {
        assert_eq!(st.state, state, "state of {id}");
    }
}

/// Asserts the counts where the backend declares exact depth; else only that it counts.
pub(crate) async fn assert_counts(s: &Store, expected: BackendStats) {
    let got = stats(s).await;
    if caps(s).exact_depth {
        assert_eq!(got, expected);
    }
}

pub(crate) fn counts(ready: u64, scheduled: u64, running: u64, dead: u64) -> BackendStats {
    BackendStats {
        ready,
        scheduled,
        running,
        dead,
    }
}

pub(crate) async fn dead_ids(s: &Store) -> Vec<JobId> {
    let dead = s.b().dead_letters(100).await.unwrap();
    dead.iter().map(|d| d.job_id).collect()
}

/// The dead letters (at most `limit`) where the backend declares listing; where it does
/// not, asserts that it answers `Unsupported` and gives `None`.
pub(crate) async fn listed(s: &Store, limit: usize) -> Option<Vec<DeadLetter>> {
    let r = s.b().dead_letters(limit).await;
    if caps(s).dead_letter_listing {
        return Some(r.unwrap());
    }
    assert!(
        matches!(r, Err(BackendError::Unsupported(_))),
        "a backend without dead-letter listing must answer Unsupported, got {r:?}"
    );
    None
}

pub(crate) fn retry_at(at: SystemTime, error: &str) -> Retry {
    Retry {
        at,
        error: error.to_owned(),
    }
}

pub(crate) fn record(env: &Envelope, error: &str) -> DeadLetter {
    DeadLetter::new(
        env.id,
        env.job.clone(),
        env.queue.clone(),
        env.payload.to_value(),
        env.attempt,
        vec![error.to_owned(), "its source".to_owned()],
        from_unix_ms(env.enqueued_at),
        SystemTime::now(),
    )
}

pub(crate) fn assert_lost<T: std::fmt::Debug>(
    result: Result<T, BackendError>,
    id: JobId,
    what: &str,
) {
    assert!(
        matches!(result, Err(BackendError::LeaseLost(x)) if x == id),
        "{what}: expected LeaseLost({id}), got {result:?}"
    );
}

/// Everything a write-back could change, to compare before and after one that must not.
/// The status's `updated_at` is left out (set to the epoch): it has a check of its own,
/// `status_time_moves_only_with_the_job` in `records.rs`, so that a backend that dates it
/// wrongly fails that check alone.
#[derive(Debug, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) status: Option<JobStatus>,
    pub(crate) stats: BackendStats,
    pub(crate) dead: Vec<DeadLetter>,
}

pub(crate) async fn snapshot(s: &Store, id: JobId) -> Snapshot {
    // Without status by id (or exact counts) the snapshot holds what the backend has.
    let status = status_if(s, id).await.map(|mut st| {
        st.updated_at = SystemTime::UNIX_EPOCH;
        st
    });
    let counted = stats(s).await;
    Snapshot {
        status,
        stats: if caps(s).exact_depth {
            counted
        } else {
            BackendStats::default()
        },
        dead: listed(s, 100).await.unwrap_or_default(),
    }
}

/// A write-back that ends a lease.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Outcome {
    Ack,
    AckBatch,
    Retry,
    DeadLetter,
    Release,
}

pub(crate) const OUTCOMES: [Outcome; 5] = [
    Outcome::Ack,
    Outcome::AckBatch,
    Outcome::Retry,
    Outcome::DeadLetter,
    Outcome::Release,
];

impl Outcome {
    /// Whether the two write the same outcome (an ack alone or in a batch).
    pub(crate) fn same(self, other: Self) -> bool {
        let ack = |o| matches!(o, Self::Ack | Self::AckBatch);
        self == other || (ack(self) && ack(other))
    }
}

/// Writes `outcome` back for `env` under `token`; `Err(LeaseLost)` also for an `ack_batch`
/// that reports the id lost.
pub(crate) async fn write_back(
    s: &Store,
    env: &Envelope,
    token: LeaseToken,
    outcome: Outcome,
) -> Result<(), BackendError> {
    let id = env.id;
    match outcome {
        Outcome::Ack => s.b().ack(id, token.clone()).await,
        Outcome::AckBatch => {
            let lost = s.b().ack_batch(&[(id, token.clone())]).await?;
            match lost.as_slice() {
                [] => Ok(()),
                [x] if *x == id => Err(BackendError::LeaseLost(id)),
                other => panic!("ack_batch of {id} reported {other:?} lost"),
            }
        }
        Outcome::Retry => {
            let r = retry_at(SystemTime::now(), "transient failure");
            s.b().retry(id, token.clone(), r).await
        }
        Outcome::DeadLetter => {
            s.b()
                .dead_letter(id, token.clone(), record(env, "gave up"))
                .await
        }
        Outcome::Release => s.b().release(id, token.clone()).await,
    }
}

/// Asserts that every write-back of `env` with `token`, but those of `except` (the outcome
/// the token was spent on, if any), is refused as a lost lease and changes nothing.
pub(crate) async fn assert_refused_but(
    s: &Store,
    env: &Envelope,
    token: LeaseToken,
    except: Option<Outcome>,
    why: &str,
) {
    let before = snapshot(s, env.id).await;
    for outcome in OUTCOMES {
        if except.is_some_and(|e| e.same(outcome)) {
            continue;
        }
        let r = write_back(s, env, token.clone(), outcome).await;
        assert_lost(r, env.id, &format!("{outcome:?} {why}"));
        let after = snapshot(s, env.id).await;
        assert_eq!(after, before, "{outcome:?} {why} changed the store");
    }
    // `extend` renews only the lease `token` holds now. With a stale token the lease is
    // lost and must be reported; with a token its own holder just spent (a heartbeat racing
    // the ack) the trait leaves the answer open, but nothing may change.
    let lost = s
        .b()
        .extend(&[(env.id, token.clone())], LONG_LEASE)
        .await
        .unwrap()
        .lost;
    if except.is_none() {
        assert_eq!(lost, [env.id], "extend {why} must report the lease lost");
    } else {
        assert!(
            lost.is_empty() || lost == [env.id],
            "extend {why}: {lost:?}"
        );
    }
    assert_eq!(
        snapshot(s, env.id).await,
        before,
        "extend {why} changed the store"
    );
}
