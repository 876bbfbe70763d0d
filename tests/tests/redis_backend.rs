//! `RedisBackend` against a real Redis at `JOB_REDIS_URL` (default `redis://127.0.0.1:6379`),
//! through the `Backend` trait and, where the point is what is stored, raw Redis commands.
//!
//! Each test works under its own random key prefix (so the tests run in parallel on one
//! server) and deletes its keys when it ends, pass or fail. A missing server fails the test
//! with the command that starts one; nothing here skips.

mod common;

use std::time::{Duration, SystemTime};

use job_core::backend::memory::MemoryBackend;
use job_core::backend::redis::{RedisBackend, RedisBackendBuilder, RedisConfigError};
use job_core::backend::{
    Backend, BackendError, Envelope, LeaseToken, Reservation, Retry, from_unix_ms, unix_ms,
};
use job_core::{DeadLetter, JobId, JobState};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde_json::json;
use tokio::time::Instant;

const START_REDIS: &str =
    r#"redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no"#;

fn url() -> String {
    std::env::var("JOB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn unreachable(what: &str, e: impl std::fmt::Display) -> ! {
    panic!(
        "Redis is not reachable at {} ({what}: {e}). Start it with:\n    {START_REDIS}\nor point JOB_REDIS_URL at a server.",
        url()
    )
}

/// A backend on its own prefix, a raw connection, and cleanup of the prefix's keys on drop.
struct Fixture {
    backend: RedisBackend,
    raw: MultiplexedConnection,
    prefix: String,
}

impl Fixture {
    async fn new() -> Self {
        Self::with(|b| b).await
    }

    async fn with(configure: impl FnOnce(RedisBackendBuilder) -> RedisBackendBuilder) -> Self {
        let prefix = format!("t-{}", JobId::new());
        let client = redis::Client::open(url()).unwrap_or_else(|e| unreachable("bad URL", e));
        let raw = match tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => unreachable("connecting", e),
            Err(e) => unreachable("connecting", e),
        };
        let backend = configure(RedisBackend::builder(url()).prefix(&prefix))
            .build()
            .expect("valid settings");
        if let Err(e) = backend.connect().await {
            unreachable("connect()", e);
        }
        Self {
            backend,
            raw,
            prefix,
        }
    }

    /// A second backend on the same prefix (another process, as far as Redis can tell).
    fn other(&self) -> RedisBackend {
        RedisBackend::builder(url())
            .prefix(&self.prefix)
            .build()
            .expect("valid settings")
    }

    fn key(&self, rest: &str) -> String {
        format!("{{{}}}:{rest}", self.prefix)
    }

    fn job_key(&self, id: JobId) -> String {
        self.key(&format!("job:{id}"))
    }

    async fn hget(&mut self, id: JobId, field: &str) -> Option<String> {
        let key = self.job_key(id);
        self.raw.hget(key, field).await.expect("HGET")
    }

    async fn pttl(&mut self, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut self.raw)
            .await
            .expect("PTTL")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Synchronous, so it also runs when a test panics.
        common::delete_prefix(&url(), &self.prefix);
    }
}

fn queues(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn envelope(queue: &str, n: u64) -> Envelope {
    Envelope {
        id: JobId::new(),
        job: "probe".to_owned(),
        queue: queue.to_owned(),
        payload: json!({ "n": n, "list": [], "big": 9_007_199_254_740_993_u64 }).into(),
        attempt: 0,
        max_attempts: 5,
        recoveries: 0,
        enqueued_at: unix_ms(SystemTime::now()),
        not_before: None,
        lease: None,
    }
}

fn delayed(queue: &str, n: u64, delay: Duration) -> Envelope {
    Envelope {
        not_before: Some(unix_ms(SystemTime::now() + delay)),
        ..envelope(queue, n)
    }
}

const CAP: u64 = 1000;
const LEASE: Duration = Duration::from_secs(30);

fn job(r: Reservation) -> (Envelope, LeaseToken) {
    match r {
        Reservation::Job { envelope, token } => (envelope, token),
        other @ Reservation::Malformed { .. } => panic!("expected a job, got {other:?}"),
    }
}

async fn reserve_one(b: &impl Backend, queue: &str, lease: Duration) -> (Envelope, LeaseToken) {
    let mut list = b
        .reserve(&queues(&[queue]), 1, lease)
        .await
        .expect("reserve");
    assert_eq!(list.len(), 1, "expected one job in {queue}: {list:?}");
    job(list.remove(0))
}

async fn reserve_none(b: &impl Backend, queue: &str) {
    let list = b
        .reserve(&queues(&[queue]), 10, LEASE)
        .await
        .expect("reserve");
    assert!(
        list.is_empty(),
        "expected nothing ready in {queue}: {list:?}"
    );
}

fn retry_at(at: SystemTime, error: &str) -> Retry {
    Retry {
        at,
        error: error.to_owned(),
    }
}

/// `DeadLetter` is `#[non_exhaustive]` and has no public constructor, so a record is taken
/// from the reference backend (a poison pill) and its public fields overwritten.
async fn dead_record(envelope: &Envelope, attempts: u32, error: &[&str]) -> DeadLetter {
    let memory = MemoryBackend::new();
    memory
        .enqueue(envelope.clone(), 1)
        .await
        .expect("memory enqueue");
    memory
        .reserve(&queues(&[&envelope.queue]), 1, Duration::ZERO)
        .await
        .expect("memory reserve");
    let mut record = memory
        .reap(0)
        .await
        .expect("memory reap")
        .dead
        .pop()
        .expect("a dead record");
    record.job_id = envelope.id;
    record.job = envelope.job.clone();
    record.queue = envelope.queue.clone();
    record.payload = envelope.payload.to_value();
    record.attempts = attempts;
    record.error = error.iter().map(|s| (*s).to_owned()).collect();
    record.enqueued_at = from_unix_ms(envelope.enqueued_at);
    record.died_at = SystemTime::now();
    record
}

fn lease_lost<T: std::fmt::Debug>(r: Result<T, BackendError>, id: JobId) {
    assert!(
        matches!(r, Err(BackendError::LeaseLost(x)) if x == id),
        "expected LeaseLost({id}), got {r:?}"
    );
}

#[tokio::test]
async fn fifo_within_a_queue_and_queues_in_order() {
    let f = Fixture::new().await;
    let b = &f.backend;
    let a: Vec<Envelope> = (0..5).map(|n| envelope("a", n)).collect();
    for e in &a {
        b.enqueue(e.clone(), CAP).await.unwrap();
    }
    let other = envelope("b", 99);
    b.enqueue(other.clone(), CAP).await.unwrap();
    // The same id again is a no-op: a retried enqueue does not duplicate the job.
    b.enqueue(a[0].clone(), CAP).await.unwrap();

    let stats = b.stats().await.unwrap();
    assert_eq!((stats.ready, stats.running), (6, 0));

    let first = b.reserve(&queues(&["a"]), 2, LEASE).await.unwrap();
    let second = b.reserve(&queues(&["a", "b"]), 10, LEASE).await.unwrap();
    let got: Vec<Envelope> = first.into_iter().chain(second).map(|r| job(r).0).collect();
    let ids: Vec<JobId> = got.iter().map(|e| e.id).collect();
    let want: Vec<JobId> = a.iter().chain([&other]).map(|e| e.id).collect();
    assert_eq!(ids, want, "FIFO within a queue, queues in the order given");
    for (e, sent) in got.iter().zip(a.iter().chain([&other])) {
        assert_eq!(e.attempt, 1);
        assert!(e.lease.is_some());
        // The payload comes back byte for byte: no `[]` -> `{}`, no rounded integers.
        assert_eq!(e.payload, sent.payload);
        assert_eq!(
            (&e.job, &e.queue, e.max_attempts, e.enqueued_at),
            (&sent.job, &sent.queue, sent.max_attempts, sent.enqueued_at)
        );
    }
    let stats = b.stats().await.unwrap();
    assert_eq!((stats.ready, stats.running), (0, 6));
    reserve_none(b, "a").await;
}

#[tokio::test]
async fn capacity_counts_ready_scheduled_and_running() {
    let f = Fixture::new().await;
    let b = &f.backend;
    b.enqueue(envelope("q", 1), 3).await.unwrap();
    b.enqueue(delayed("q", 2, Duration::from_secs(60)), 3)
        .await
        .unwrap();
    b.enqueue(envelope("other", 3), 3).await.unwrap();
    let r = b.enqueue(envelope("q", 4), 3).await;
    assert!(matches!(r, Err(BackendError::Full)), "{r:?}");
    // Running jobs still count.
    let (e, token) = reserve_one(b, "q", LEASE).await;
    assert!(matches!(
        b.enqueue(envelope("q", 5), 3).await,
        Err(BackendError::Full)
    ));
    // A finished job frees its slot.
    b.ack(e.id, token.clone()).await.unwrap();
    b.enqueue(envelope("q", 6), 3).await.unwrap();
    let stats = b.stats().await.unwrap();
    assert_eq!(stats.depth(), 3);
}

#[tokio::test]
async fn delayed_job_waits_for_its_time() {
    let f = Fixture::new().await;
    let b = &f.backend;
    let delay = Duration::from_millis(800);
    let e = delayed("q", 1, delay);
    let ready_at = Instant::now() + delay;
    b.enqueue(e.clone(), CAP).await.unwrap();
    assert_eq!(
        b.status(e.id).await.unwrap().unwrap().state,
        JobState::Scheduled
    );
    assert_eq!(b.stats().await.unwrap().scheduled, 1);
    reserve_none(b, "q").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    reserve_none(b, "q").await;
    tokio::time::sleep_until(ready_at + Duration::from_millis(50)).await;
    let (got, _) = reserve_one(b, "q", LEASE).await;
    assert_eq!(got.id, e.id);
    assert_eq!(got.not_before, e.not_before);
    assert_eq!(b.stats().await.unwrap().scheduled, 0);
}

/// Finished records are deleted once their retention has passed: by the next ack call (which
/// sweeps what expired before it lists its own), or by a reaper pass when no acks come.
/// Entries this crate did not write are dropped without deleting anything.
#[tokio::test]
async fn expired_finished_records_are_swept_by_later_acks_and_by_the_reaper() {
    // Long enough that a stall of this loaded machine between two steps does not expire a
    // record early; the sleeps below outlast it.
    let retention = Duration::from_secs(1);
    let mut f = Fixture::with(|b| b.finished_retention(retention)).await;
    let jobs: Vec<Envelope> = (0..3).map(|n| envelope("q", n)).collect();
    for e in &jobs {
        f.backend.enqueue(e.clone(), CAP).await.unwrap();
    }
    let mut tokens = Vec::new();
    for e in &jobs {
        let (got, token) = reserve_one(&f.backend, "q", LEASE).await;
        assert_eq!(got.id, e.id);
        tokens.push(token);
    }
    // A foreign entry ahead of ours, naming a key that is not a job of ours.
    let bystander = f.key("bystander");
    let _: () = f.raw.set(&bystander, "keep me").await.unwrap();
    let _: () = f
        .raw
        .rpush(f.key("finished"), format!("soon {bystander}"))
        .await
        .unwrap();
    f.backend.ack(jobs[0].id, tokens[0].clone()).await.unwrap();
    f.backend.ack(jobs[1].id, tokens[1].clone()).await.unwrap();
    for e in &jobs[..2] {
        let s = f.backend.status(e.id).await.unwrap().unwrap();
        assert_eq!(s.state, JobState::Succeeded, "kept within the retention");
    }
    let listed: Vec<String> = f.raw.lrange(f.key("finished"), 0, -1).await.unwrap();
    assert_eq!(listed.len(), 2, "the foreign entry was dropped: {listed:?}");
    let kept: Option<String> = f.raw.get(&bystander).await.unwrap();
    assert_eq!(kept.as_deref(), Some("keep me"));

    tokio::time::sleep(retention + Duration::from_millis(200)).await;
    // This ack sweeps the two expired records, and keeps its own.
    f.backend.ack(jobs[2].id, tokens[2].clone()).await.unwrap();
    for e in &jobs[..2] {
        assert_eq!(f.backend.status(e.id).await.unwrap(), None, "swept");
    }
    let s = f.backend.status(jobs[2].id).await.unwrap().unwrap();
    assert_eq!(s.state, JobState::Succeeded);
    let listed: Vec<String> = f.raw.lrange(f.key("finished"), 0, -1).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].ends_with(&jobs[2].id.to_string()));

    // No more acks: the reaper sweeps.
    f.backend.reap(3).await.unwrap();
    assert!(
        f.backend.status(jobs[2].id).await.unwrap().is_some(),
        "not yet"
    );
    tokio::time::sleep(retention + Duration::from_millis(200)).await;
    f.backend.reap(3).await.unwrap();
    assert_eq!(f.backend.status(jobs[2].id).await.unwrap(), None);
    let left: i64 = f.raw.llen(f.key("finished")).await.unwrap();
    assert_eq!(left, 0);
}

/// After a burst, with no acks to sweep as they go, one reaper pass deletes every expired
/// finished record, beyond its first batch of 1,000.
#[tokio::test]
async fn a_reaper_pass_sweeps_a_whole_burst_of_expired_records() {
    let retention = Duration::from_secs(1);
    let mut f = Fixture::with(|b| b.finished_retention(retention)).await;
    let jobs: Vec<Envelope> = (0..1_500).map(|n| envelope("q", n)).collect();
    assert_eq!(f.backend.enqueue_batch(&jobs, 10_000).await.unwrap(), 1_500);
    let reserved = f
        .backend
        .reserve(&queues(&["q"]), 1_500, LEASE)
        .await
        .unwrap();
    let acks: Vec<(JobId, LeaseToken)> = reserved
        .iter()
        .map(|r| (r.id(), r.token().clone()))
        .collect();
    assert_eq!(acks.len(), 1_500);
    assert!(f.backend.ack_batch(&acks).await.unwrap().is_empty());
    let entries: i64 = f.raw.llen(f.key("finished")).await.unwrap();
    assert_eq!(entries, 3, "one entry per ack script call of at most 500");

    tokio::time::sleep(retention + Duration::from_millis(200)).await;
    f.backend.reap(3).await.unwrap();
    let left: i64 = f.raw.llen(f.key("finished")).await.unwrap();
    assert_eq!(left, 0);
    let pattern = f.key("job:*");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut f.raw)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{} job records left", keys.len());
}

#[tokio::test]
async fn ack_finishes_and_lists_the_record_for_deletion() {
    let mut f = Fixture::with(|b| b.finished_retention(Duration::from_secs(60))).await;
    let e = envelope("q", 1);
    f.backend.enqueue(e.clone(), CAP).await.unwrap();
    let (_, token) = reserve_one(&f.backend, "q", LEASE).await;
    let before = unix_ms(SystemTime::now());
    f.backend.ack(e.id, token.clone()).await.unwrap();

    let status = f.backend.status(e.id).await.unwrap().unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Succeeded, 1));
    let key = f.job_key(e.id);
    assert_eq!(
        f.pttl(&key).await,
        -1,
        "no TTL of its own: the sweep deletes it"
    );
    let listed: Vec<String> = f.raw.lrange(f.key("finished"), 0, -1).await.unwrap();
    let [entry] = listed.as_slice() else {
        panic!("one entry per ack call, got {listed:?}")
    };
    let (deadline, ids) = entry.split_once(' ').expect("deadline, then ids");
    let deadline: u64 = deadline.parse().expect("a deadline in ms");
    assert!(
        deadline >= before + 59_000 && deadline <= before + 61_000,
        "deadline {deadline} is the ack time plus 60 s (ack at about {before})"
    );
    assert_eq!(ids, e.id.to_string());
    assert_eq!(
        f.hget(e.id, "p").await.as_deref(),
        Some(""),
        "the payload is emptied"
    );
    assert_eq!(f.hget(e.id, "l").await.as_deref(), Some(""), "no lease");
    // A heartbeat that still carries the token (it raced the ack) renews nothing: the job
    // does not go back into the leased set, where the reaper would run it again; and its
    // lease is not reported lost (the ack wrote the outcome).
    let lost = f
        .backend
        .extend(&[(e.id, token.clone())], Duration::from_secs(60))
        .await
        .unwrap()
        .lost;
    assert!(lost.is_empty(), "{lost:?}");
    let leased: Option<f64> = f
        .raw
        .zscore(f.key("leased"), e.id.to_string())
        .await
        .unwrap();
    assert_eq!(leased, None);
    let stats = f.backend.stats().await.unwrap();
    assert_eq!(stats.depth(), 0);
    // The same ack again (as after a lost reply): accepted, and nothing changes.
    f.backend.ack(e.id, token.clone()).await.unwrap();
    let again = f.backend.status(e.id).await.unwrap().unwrap();
    assert_eq!((again.state, again.attempts), (JobState::Succeeded, 1));
    assert_eq!(again.updated_at, status.updated_at);
    // Any other token is refused.
    lease_lost(
        f.backend
            .ack(e.id, job_core::backend::LeaseToken::random())
            .await,
        e.id,
    );
}

#[tokio::test]
async fn retry_persists_the_attempt_count() {
    let mut f = Fixture::new().await;
    let e = envelope("q", 1);
    f.backend.enqueue(e.clone(), CAP).await.unwrap();
    let (got, token) = reserve_one(&f.backend, "q", LEASE).await;
    assert_eq!(got.attempt, 1);
    let at = SystemTime::now() + Duration::from_millis(500);
    f.backend
        .retry(e.id, token.clone(), retry_at(at, "boom: cause"))
        .await
        .unwrap();
    let status = f.backend.status(e.id).await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Retrying);
    assert_eq!(status.attempts, 1);
    assert_eq!(status.last_error.as_deref(), Some("boom: cause"));
    assert_eq!(f.backend.stats().await.unwrap().scheduled, 1);
    reserve_none(&f.backend, "q").await;
    tokio::time::sleep(Duration::from_millis(650)).await;

    // Another backend instance (as another process would) sees the persisted count.
    let other = f.other();
    let (again, token) = reserve_one(&other, "q", LEASE).await;
    assert_eq!((again.id, again.attempt), (e.id, 2));
    assert_eq!(again.not_before, Some(unix_ms(at)));
    assert_eq!(f.hget(e.id, "a").await.as_deref(), Some("2"));
    // A retry due now is ready at once.
    other
        .retry(e.id, token.clone(), retry_at(SystemTime::now(), "again"))
        .await
        .unwrap();
    let (third, token) = reserve_one(&f.backend, "q", LEASE).await;
    assert_eq!(third.attempt, 3);
    f.backend.ack(e.id, token.clone()).await.unwrap();
}

#[tokio::test]
async fn a_stale_lease_holder_changes_nothing() {
    let mut f = Fixture::new().await;
    let e = envelope("q", 1);
    f.backend.enqueue(e.clone(), CAP).await.unwrap();
    let (_, stale) = reserve_one(&f.backend, "q", Duration::from_millis(300)).await;
    // Not expired yet: the reaper leaves it alone.
    assert_eq!(f.backend.reap(3).await.unwrap().recovered, []);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reaped = f.backend.reap(3).await.unwrap();
    assert_eq!(reaped.recovered, [e.id]);
    assert!(reaped.dead.is_empty());
    assert_eq!(
        f.backend.status(e.id).await.unwrap().unwrap().state,
        JobState::Queued
    );

    let (again, fresh) = reserve_one(&f.backend, "q", LEASE).await;
    assert_ne!(stale, fresh);
    assert_eq!((again.id, again.attempt, again.recoveries), (e.id, 2, 1));
    let leased = f.key("leased");
    let before: Option<f64> = f.raw.zscore(&leased, e.id.to_string()).await.unwrap();

    lease_lost(f.backend.ack(e.id, stale.clone()).await, e.id);
    lease_lost(
        f.backend
            .retry(e.id, stale.clone(), retry_at(SystemTime::now(), "stale"))
            .await,
        e.id,
    );
    let record = dead_record(&e, 1, &["stale"]).await;
    lease_lost(
        f.backend.dead_letter(e.id, stale.clone(), record).await,
        e.id,
    );
    lease_lost(f.backend.release(e.id, stale.clone()).await, e.id);
    assert_eq!(
        f.backend
            .extend(&[(e.id, stale.clone())], Duration::from_secs(60))
            .await
            .unwrap()
            .lost,
        [e.id]
    );

    // Nothing changed.
    let status = f.backend.status(e.id).await.unwrap().unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Running, 2));
    assert_eq!(status.last_error, None);
    assert_eq!(
        f.hget(e.id, "l").await.as_deref(),
        Some(fresh.to_string().as_str())
    );
    let after: Option<f64> = f.raw.zscore(&leased, e.id.to_string()).await.unwrap();
    assert_eq!(after, before, "the lease expiry did not move");
    let stats = f.backend.stats().await.unwrap();
    assert_eq!(
        (stats.ready, stats.scheduled, stats.running, stats.dead),
        (0, 0, 1, 0)
    );
    assert!(f.backend.dead_letters(10).await.unwrap().is_empty());

    // The current holder is unaffected.
    assert!(
        f.backend
            .extend(&[(e.id, fresh.clone())], LEASE)
            .await
            .unwrap()
            .lost
            .is_empty()
    );
    f.backend.ack(e.id, fresh.clone()).await.unwrap();
}

#[tokio::test]
async fn extend_keeps_a_lease_alive_past_its_first_expiry() {
    let f = Fixture::new().await;
    let b = &f.backend;
    let e = envelope("q", 1);
    b.enqueue(e.clone(), CAP).await.unwrap();
    let lease = Duration::from_millis(600);
    let (_, token) = reserve_one(b, "q", lease).await;
    let started = Instant::now();
    while started.elapsed() < lease * 3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            b.extend(&[(e.id, token.clone())], lease)
                .await
                .unwrap()
                .lost
                .is_empty()
        );
        assert!(b.reap(3).await.unwrap().recovered.is_empty());
    }
    assert_eq!(
        b.status(e.id).await.unwrap().unwrap().state,
        JobState::Running
    );
    // Heartbeat stops: the lease runs out and the job is recovered.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert_eq!(b.reap(3).await.unwrap().recovered, [e.id]);
    lease_lost(b.ack(e.id, token.clone()).await, e.id);
}

/// A renewal that races its holder's own write-back (the runtime's heartbeat reads the held
/// set while a batch of acks is in flight) finds the outcome written with the same token: it
/// reports nothing lost and changes nothing. A token that does not hold its job, and wrote
/// no outcome for it, is still reported.
#[tokio::test]
async fn extend_racing_the_holders_own_write_back_reports_nothing_lost() {
    let mut f = Fixture::new().await;
    let jobs: Vec<Envelope> = (0..3).map(|n| envelope("q", n)).collect();
    assert_eq!(f.backend.enqueue_batch(&jobs, CAP).await.unwrap(), 3);
    let got = f.backend.reserve(&queues(&["q"]), 3, LEASE).await.unwrap();
    let held: Vec<(JobId, LeaseToken)> = got.iter().map(|r| (r.id(), r.token().clone())).collect();
    let (acked, retried, running) = (held[0].clone(), held[1].clone(), held[2].clone());
    f.backend.ack(acked.0, acked.1.clone()).await.unwrap();
    let at = SystemTime::now() + Duration::from_secs(3600);
    f.backend
        .retry(retried.0, retried.1.clone(), retry_at(at, "later"))
        .await
        .unwrap();
    let leased = f.key("leased");
    let before: Vec<(String, f64)> = f.raw.zrange_withscores(&leased, 0, -1).await.unwrap();
    let key = f.job_key(acked.0);
    let record: Vec<(String, String)> = f.raw.hgetall(&key).await.unwrap();

    let stale = (running.0, LeaseToken::random());
    let lost = f
        .backend
        .extend(&[acked, retried.clone(), stale.clone()], LEASE)
        .await
        .unwrap()
        .lost;
    assert_eq!(lost, [stale.0], "only the token that never held its job");
    let after: Vec<(String, f64)> = f.raw.zrange_withscores(&leased, 0, -1).await.unwrap();
    assert_eq!(after, before, "no lease renewed or added");
    let again: Vec<(String, String)> = f.raw.hgetall(&key).await.unwrap();
    assert_eq!(again, record);
    assert_eq!(
        f.backend.status(retried.0).await.unwrap().unwrap().state,
        JobState::Retrying
    );
    assert!(
        f.backend
            .extend(&[running], LEASE)
            .await
            .unwrap()
            .lost
            .is_empty()
    );
}

#[tokio::test]
async fn release_returns_to_the_front_without_counting_an_attempt() {
    let f = Fixture::new().await;
    let b = &f.backend;
    let first = envelope("q", 1);
    let second = envelope("q", 2);
    b.enqueue(first.clone(), CAP).await.unwrap();
    b.enqueue(second.clone(), CAP).await.unwrap();
    let (got, token) = reserve_one(b, "q", LEASE).await;
    assert_eq!((got.id, got.attempt), (first.id, 1));
    lease_lost(
        b.release(
            first.id,
            LeaseToken::from_u128(token.as_u128().unwrap() ^ 1),
        )
        .await,
        first.id,
    );
    b.release(first.id, token.clone()).await.unwrap();
    let status = b.status(first.id).await.unwrap().unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Queued, 0));
    let (again, _) = reserve_one(b, "q", LEASE).await;
    assert_eq!(
        (again.id, again.attempt, again.recoveries),
        (first.id, 1, 0),
        "released to the front, attempt not counted"
    );
    let (next, _) = reserve_one(b, "q", LEASE).await;
    assert_eq!(next.id, second.id);
}

#[tokio::test]
async fn recovered_jobs_go_first_and_poison_pills_die() {
    let f = Fixture::new().await;
    let b = &f.backend;
    let pill = envelope("q", 1);
    let behind = envelope("q", 2);
    b.enqueue(pill.clone(), CAP).await.unwrap();
    b.enqueue(behind.clone(), CAP).await.unwrap();
    let lease = Duration::from_millis(200);
    for n in 1..=3 {
        let (got, _) = reserve_one(b, "q", lease).await;
        assert_eq!(
            (got.id, got.attempt, got.recoveries),
            (pill.id, n, n - 1),
            "a recovered job goes back to the front"
        );
        tokio::time::sleep(lease + Duration::from_millis(150)).await;
        let reaped = b.reap(3).await.unwrap();
        if n < 3 {
            assert_eq!(reaped.recovered, [pill.id]);
            assert!(reaped.dead.is_empty());
        } else {
            assert!(reaped.recovered.is_empty());
            assert_eq!(reaped.dead.len(), 1);
            let dead = &reaped.dead[0];
            assert_eq!((dead.job_id, dead.attempts), (pill.id, 3));
            assert_eq!((&dead.job, &dead.queue), (&pill.job, &pill.queue));
            assert_eq!(dead.payload, pill.payload.to_value());
            assert!(dead.error_message().contains("poison pill"), "{dead:?}");
            assert!(dead.error_message().contains("3 times"), "{dead:?}");
        }
    }
    let status = b.status(pill.id).await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Dead);
    assert!(status.last_error.unwrap().contains("poison pill"));
    let listed = b.dead_letters(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].job_id, pill.id);
    assert_eq!(listed[0].payload, pill.payload.to_value());
    let stats = b.stats().await.unwrap();
    assert_eq!((stats.ready, stats.running, stats.dead), (1, 0, 1));
    let (next, _) = reserve_one(b, "q", LEASE).await;
    assert_eq!(next.id, behind.id);
}

#[tokio::test]
async fn dead_letters_are_listed_requeued_and_bounded() {
    let mut f = Fixture::with(|b| {
        b.dead_letter_capacity(2)
            .dead_letter_retention(Duration::from_secs(600))
    })
    .await;
    let jobs: Vec<Envelope> = (0..3).map(|n| envelope("q", n)).collect();
    for e in &jobs {
        f.backend.enqueue(e.clone(), CAP).await.unwrap();
    }
    for e in &jobs {
        let (got, token) = reserve_one(&f.backend, "q", LEASE).await;
        assert_eq!(got.id, e.id);
        let record = dead_record(e, 1, &["permanent failure", "root cause"]).await;
        f.backend
            .dead_letter(e.id, token.clone(), record)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Capacity 2: the oldest was evicted with its record.
    let listed = f.backend.dead_letters(10).await.unwrap();
    let ids: Vec<JobId> = listed.iter().map(|d| d.job_id).collect();
    assert_eq!(
        ids,
        [jobs[1].id, jobs[2].id],
        "oldest first, oldest evicted"
    );
    assert!(f.backend.status(jobs[0].id).await.unwrap().is_none());
    assert_eq!(f.backend.dead_letters(1).await.unwrap().len(), 1);
    let dead = &listed[0];
    assert_eq!(dead.error, ["permanent failure", "root cause"]);
    assert_eq!((dead.attempts, &dead.job), (1, &jobs[1].job));
    assert_eq!(dead.payload, jobs[1].payload.to_value());
    assert_eq!(unix_ms(dead.enqueued_at), jobs[1].enqueued_at);
    let status = f.backend.status(jobs[1].id).await.unwrap().unwrap();
    assert_eq!(status.state, JobState::Dead);
    assert_eq!(
        status.last_error.as_deref(),
        Some("permanent failure: root cause")
    );
    let key = f.job_key(jobs[1].id);
    let ttl = f.pttl(&key).await;
    assert!(ttl > 590_000 && ttl <= 600_000, "dead hash TTL {ttl} ms");
    assert_eq!(f.backend.stats().await.unwrap().dead, 2);

    // Requeue: back in its queue with a fresh attempt budget, kept until it finishes.
    f.backend.requeue(jobs[1].id).await.unwrap();
    assert_eq!(f.pttl(&key).await, -1, "a requeued job no longer expires");
    let status = f.backend.status(jobs[1].id).await.unwrap().unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Queued, 0));
    assert_eq!(status.last_error, None);
    let (again, token) = reserve_one(&f.backend, "q", LEASE).await;
    assert_eq!(
        (again.id, again.attempt, again.recoveries),
        (jobs[1].id, 1, 0)
    );
    assert_eq!(again.payload, jobs[1].payload);
    f.backend.ack(again.id, token.clone()).await.unwrap();

    for id in [jobs[1].id, jobs[0].id, JobId::new()] {
        let r = f.backend.requeue(id).await;
        assert!(
            matches!(r, Err(BackendError::NotFound(x)) if x == id),
            "{r:?}"
        );
    }
    assert_eq!(f.backend.stats().await.unwrap().dead, 1);
}

#[tokio::test]
async fn status_follows_the_job() {
    let f = Fixture::new().await;
    let b = &f.backend;
    assert!(b.status(JobId::new()).await.unwrap().is_none());
    let later = delayed("q", 0, Duration::from_secs(60));
    b.enqueue(later.clone(), CAP).await.unwrap();
    assert_eq!(
        b.status(later.id).await.unwrap().unwrap().state,
        JobState::Scheduled
    );

    let e = envelope("q", 1);
    b.enqueue(e.clone(), CAP).await.unwrap();
    let s = b.status(e.id).await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.attempts, s.last_error),
        (JobState::Queued, 0, None)
    );
    assert_eq!((s.job.as_ref(), s.queue.as_ref()), ("probe", "q"));
    assert_eq!(unix_ms(s.enqueued_at), e.enqueued_at);

    let (_, token) = reserve_one(b, "q", LEASE).await;
    let s = b.status(e.id).await.unwrap().unwrap();
    assert_eq!((s.state, s.attempts), (JobState::Running, 1));
    b.retry(e.id, token.clone(), retry_at(SystemTime::now(), "flaky"))
        .await
        .unwrap();
    let s = b.status(e.id).await.unwrap().unwrap();
    assert_eq!((s.state, s.attempts), (JobState::Retrying, 1));
    assert_eq!(s.last_error.as_deref(), Some("flaky"));
    let (_, token) = reserve_one(b, "q", LEASE).await;
    let s = b.status(e.id).await.unwrap().unwrap();
    assert_eq!((s.state, s.attempts), (JobState::Running, 2));
    b.ack(e.id, token.clone()).await.unwrap();
    let s = b.status(e.id).await.unwrap().unwrap();
    assert_eq!((s.state, s.attempts), (JobState::Succeeded, 2));
    assert!(s.updated_at >= s.enqueued_at);
}

#[tokio::test]
async fn the_status_of_a_job_that_stands_still_does_not_change() {
    let f = Fixture::new().await;
    let b = &f.backend;
    // Neither has changed since its enqueue (no `u` field yet): it was updated when enqueued.
    let queued = envelope("q", 1);
    let later = delayed("q", 2, Duration::from_secs(60));
    b.enqueue_batch(&[queued.clone(), later.clone()], CAP)
        .await
        .unwrap();
    let mut first = Vec::new();
    for e in [&queued, &later] {
        let s = b.status(e.id).await.unwrap().unwrap();
        assert_eq!(unix_ms(s.updated_at), e.enqueued_at, "{:?}", s.state);
        first.push(s);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (e, before) in [&queued, &later].into_iter().zip(&first) {
        let again = b.status(e.id).await.unwrap().unwrap();
        assert_eq!(&again, before, "nothing happened to the job");
    }
    assert_eq!(
        (first[0].state, first[1].state),
        (JobState::Queued, JobState::Scheduled)
    );
}

#[tokio::test]
async fn enqueue_batch_stores_in_order_up_to_capacity() {
    let f = Fixture::new().await;
    let b = &f.backend;
    let first = envelope("q", 0);
    b.enqueue(first.clone(), 5).await.unwrap();
    // The stored one again (as after a lost reply) counts as stored and adds nothing.
    let mut batch = vec![first.clone()];
    batch.extend((1..8).map(|n| envelope("q", n)));
    let stored = b.enqueue_batch(&batch, 5).await.unwrap();
    assert_eq!(stored, 5, "a prefix, as many as fit under capacity 5");
    assert_eq!(b.stats().await.unwrap().ready, 5);
    let got = b.reserve(&queues(&["q"]), 10, LEASE).await.unwrap();
    let ids: Vec<JobId> = got.iter().map(Reservation::id).collect();
    let want: Vec<JobId> = batch.iter().take(5).map(|e| e.id).collect();
    assert_eq!(ids, want, "stored once each, in order");
    for r in got {
        let (e, token) = job(r);
        b.ack(e.id, token.clone()).await.unwrap();
    }
    // The rest goes in once there is room; an empty batch is a no-op.
    assert_eq!(b.enqueue_batch(&batch[5..], 5).await.unwrap(), 3);
    assert_eq!(b.enqueue_batch(&[], 5).await.unwrap(), 0);
    assert_eq!(b.stats().await.unwrap().ready, 3);
}

#[tokio::test]
async fn enqueue_batch_of_mixed_jobs_keeps_each_ones_fields() {
    let f = Fixture::new().await;
    let b = &f.backend;
    let mut later = delayed("b", 2, Duration::from_secs(60));
    later.max_attempts = 9;
    let mut retried = envelope("a", 3);
    retried.attempt = 2;
    retried.recoveries = 1;
    let batch = vec![envelope("a", 1), later.clone(), retried.clone()];
    assert_eq!(b.enqueue_batch(&batch, CAP).await.unwrap(), 3);
    let stats = b.stats().await.unwrap();
    assert_eq!((stats.ready, stats.scheduled), (2, 1));
    let got = b.reserve(&queues(&["a", "b"]), 10, LEASE).await.unwrap();
    let envelopes: Vec<Envelope> = got.into_iter().map(|r| job(r).0).collect();
    assert_eq!(envelopes.len(), 2);
    assert_eq!(envelopes[0].id, batch[0].id);
    assert_eq!(
        (
            envelopes[1].id,
            envelopes[1].attempt,
            envelopes[1].recoveries
        ),
        (retried.id, 3, 1)
    );
    let s = b.status(later.id).await.unwrap().unwrap();
    assert_eq!((s.state, s.queue.as_ref()), (JobState::Scheduled, "b"));
}

#[tokio::test]
async fn enqueue_batch_splits_long_batches() {
    let f = Fixture::new().await;
    let batch: Vec<Envelope> = (0..1_203).map(|n| envelope("q", n)).collect();
    let stored = f.backend.enqueue_batch(&batch, 10_000).await.unwrap();
    assert_eq!(stored, batch.len());
    let got = f
        .backend
        .reserve(&queues(&["q"]), 2_000, LEASE)
        .await
        .unwrap();
    let ids: Vec<JobId> = got.iter().map(Reservation::id).collect();
    let want: Vec<JobId> = batch.iter().map(|e| e.id).collect();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn a_repeated_batch_of_fresh_jobs_duplicates_nothing_in_any_state() {
    let mut f = Fixture::new().await;
    // Fresh jobs of one type: the script's shared-fields mode, one HSET per job.
    let batch: Vec<Envelope> = (0..4).map(|n| envelope("q", n)).collect();
    assert_eq!(f.backend.enqueue_batch(&batch, CAP).await.unwrap(), 4);
    let got = f.backend.reserve(&queues(&["q"]), 2, LEASE).await.unwrap();
    let mut got = got.into_iter().map(job);
    let (done, token) = got.next().unwrap();
    let (running, _) = got.next().unwrap();
    assert_eq!((done.id, running.id), (batch[0].id, batch[1].id));
    f.backend.ack(done.id, token.clone()).await.unwrap();
    assert_eq!(
        f.hget(done.id, "p").await.as_deref(),
        Some(""),
        "an ack empties the payload"
    );

    // The same batch again, as after a lost reply: every job counts as stored, none is
    // queued twice, and the finished one does not get its payload back.
    assert_eq!(f.backend.enqueue_batch(&batch, CAP).await.unwrap(), 4);
    let stats = f.backend.stats().await.unwrap();
    assert_eq!((stats.ready, stats.running), (2, 1));
    assert_eq!(f.hget(done.id, "p").await.as_deref(), Some(""));
    let s = f.backend.status(done.id).await.unwrap().unwrap();
    assert_eq!(s.state, JobState::Succeeded);
    let s = f.backend.status(running.id).await.unwrap().unwrap();
    assert_eq!((s.state, s.attempts), (JobState::Running, 1));

    // At capacity (3 live), the stored ids still pass; a new job does not.
    let mut more = batch.clone();
    more.push(envelope("q", 9));
    assert_eq!(f.backend.enqueue_batch(&more, 3).await.unwrap(), 4);

    // A key that holds something else stops the batch there, loudly; what came before it
    // is stored.
    let planted = envelope("q", 10);
    let key = f.job_key(planted.id);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("not a job")
        .query_async(&mut f.raw)
        .await
        .unwrap();
    let fresh = envelope("q", 11);
    let r = f
        .backend
        .enqueue_batch(&[fresh.clone(), planted, envelope("q", 12)], CAP)
        .await;
    assert!(matches!(r, Err(BackendError::Corrupt(_))), "{r:?}");

    let rest = f.backend.reserve(&queues(&["q"]), 10, LEASE).await.unwrap();
    let ids: Vec<JobId> = rest.iter().map(Reservation::id).collect();
    assert_eq!(
        ids,
        [batch[2].id, batch[3].id, fresh.id],
        "each once, in order"
    );
}

/// A batch of fresh jobs of one type (the script's shared-fields mode) that repeats a stored
/// id with another payload and enqueue time leaves that record as it was, field by field,
/// queued, running or succeeded.
#[tokio::test]
async fn a_batch_repeating_a_stored_id_leaves_its_record_untouched() {
    let mut f = Fixture::new().await;
    let stored: Vec<Envelope> = (0..3).map(|n| envelope("q", n)).collect();
    assert_eq!(f.backend.enqueue_batch(&stored, CAP).await.unwrap(), 3);
    let got = f.backend.reserve(&queues(&["q"]), 2, LEASE).await.unwrap();
    let mut got = got.into_iter().map(job);
    let (done, token) = got.next().unwrap();
    f.backend.ack(done.id, token.clone()).await.unwrap();
    let mut records = Vec::new();
    for e in &stored {
        let r: Vec<(String, String)> = f.raw.hgetall(f.job_key(e.id)).await.unwrap();
        records.push(r);
    }
    let batch: Vec<Envelope> = stored
        .iter()
        .map(|e| Envelope {
            id: e.id,
            enqueued_at: e.enqueued_at + 1000,
            ..envelope("q", 99)
        })
        .collect();
    assert_eq!(f.backend.enqueue_batch(&batch, CAP).await.unwrap(), 3);
    for (e, before) in stored.iter().zip(&records) {
        let after: Vec<(String, String)> = f.raw.hgetall(f.job_key(e.id)).await.unwrap();
        assert_eq!(&after, before, "the record of {}", e.id);
    }
    let stats = f.backend.stats().await.unwrap();
    assert_eq!((stats.ready, stats.running), (1, 1));
}

/// The enqueue script checks a whole batch for stored ids at once; an id twice in one fresh
/// batch, and a batch mixing fresh and stored ids, are still stored once each.
#[tokio::test]
async fn a_batch_with_an_id_twice_or_a_stored_one_queues_each_job_once() {
    let f = Fixture::new().await;
    let twice = envelope("q", 1);
    let batch = vec![twice.clone(), twice.clone(), envelope("q", 2)];
    assert_eq!(f.backend.enqueue_batch(&batch, CAP).await.unwrap(), 3);
    assert_eq!(f.backend.stats().await.unwrap().ready, 2);
    let mixed = vec![envelope("q", 3), twice.clone(), envelope("q", 4)];
    assert_eq!(f.backend.enqueue_batch(&mixed, CAP).await.unwrap(), 3);
    assert_eq!(f.backend.stats().await.unwrap().ready, 4);
    let got = f.backend.reserve(&queues(&["q"]), 10, LEASE).await.unwrap();
    let mut ids: Vec<JobId> = got.into_iter().map(|r| job(r).0.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "each job reserved once");
}

#[tokio::test]
async fn ack_batch_reports_lost_leases_and_repeats_safely() {
    let f = Fixture::new().await;
    let b = &f.backend;
    for n in 0..3 {
        b.enqueue(envelope("q", n), CAP).await.unwrap();
    }
    let got = b.reserve(&queues(&["q"]), 3, LEASE).await.unwrap();
    let mut acks: Vec<(JobId, LeaseToken)> =
        got.iter().map(|r| (r.id(), r.token().clone())).collect();
    let stale = (acks[1].0, LeaseToken::random());
    acks[1] = stale.clone();
    let lost = b.ack_batch(&acks).await.unwrap();
    assert_eq!(lost, [stale.0], "only the wrong token is refused");
    // The same batch again, as after a lost reply: the done ones succeed again.
    assert_eq!(b.ack_batch(&acks).await.unwrap(), [stale.0]);
    for (id, _) in [acks[0].clone(), acks[2].clone()] {
        let s = b.status(id).await.unwrap().unwrap();
        assert_eq!(s.state, JobState::Succeeded);
    }
    let s = b.status(stale.0).await.unwrap().unwrap();
    assert_eq!(s.state, JobState::Running, "a refused ack changes nothing");
    let stats = b.stats().await.unwrap();
    assert_eq!((stats.ready, stats.running), (0, 1));
}

/// A write-back's outcome is stored with its token (`o` beside `d`); a record written before
/// `o` existed has a `d` alone, and its token keeps the old rule: any write-back with it is
/// a repeat, answered Ok without changing anything.
#[tokio::test]
async fn a_spent_token_without_its_outcome_keeps_the_token_only_rule() {
    let mut f = Fixture::new().await;
    let e = envelope("q", 1);
    f.backend.enqueue(e.clone(), CAP).await.unwrap();
    let (_, token) = reserve_one(&f.backend, "q", LEASE).await;
    f.backend.ack(e.id, token.clone()).await.unwrap();
    assert_eq!(f.hget(e.id, "o").await.as_deref(), Some("ack"));
    // A retry with the token the ack spent is another outcome: refused.
    lease_lost(
        f.backend
            .retry(e.id, token.clone(), retry_at(SystemTime::now(), "late"))
            .await,
        e.id,
    );

    // The same record as the previous code wrote it: no `o`.
    let key = f.job_key(e.id);
    let _: () = f.raw.hdel(&key, "o").await.unwrap();
    let before: Vec<(String, String)> = f.raw.hgetall(&key).await.unwrap();
    f.backend
        .retry(e.id, token.clone(), retry_at(SystemTime::now(), "late"))
        .await
        .unwrap();
    f.backend.release(e.id, token.clone()).await.unwrap();
    let record = dead_record(&e, 1, &["late"]).await;
    f.backend
        .dead_letter(e.id, token.clone(), record)
        .await
        .unwrap();
    f.backend.ack(e.id, token.clone()).await.unwrap();
    let after: Vec<(String, String)> = f.raw.hgetall(&key).await.unwrap();
    assert_eq!(after, before, "a repeat changes nothing");
    assert_eq!(
        f.backend.status(e.id).await.unwrap().unwrap().state,
        JobState::Succeeded
    );
    // Another token is refused as before.
    lease_lost(f.backend.ack(e.id, LeaseToken::random()).await, e.id);
}

async fn encoding(raw: &mut MultiplexedConnection, key: &str) -> String {
    redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(key)
        .query_async(raw)
        .await
        .expect("OBJECT ENCODING")
}

#[tokio::test]
async fn small_job_records_stay_compact() {
    let mut f = Fixture::new().await;
    let e = envelope("q", 1);
    f.backend.enqueue(e.clone(), CAP).await.unwrap();
    let key = f.job_key(e.id);
    // Redis 7 calls the compact encoding listpack, Redis 6.2 ziplist.
    let compact = ["listpack", "ziplist"];
    let queued = encoding(&mut f.raw, &key).await;
    assert!(compact.contains(&queued.as_str()), "queued: {queued}");
    let (_, token) = reserve_one(&f.backend, "q", LEASE).await;
    let running = encoding(&mut f.raw, &key).await;
    assert!(compact.contains(&running.as_str()), "running: {running}");
    f.backend.ack(e.id, token.clone()).await.unwrap();
    let done = encoding(&mut f.raw, &key).await;
    assert!(compact.contains(&done.as_str()), "succeeded: {done}");
}

#[tokio::test]
async fn a_drifted_capacity_count_is_recounted_by_stats() {
    let mut f = Fixture::new().await;
    f.backend.enqueue(envelope("q", 1), 10).await.unwrap();
    // As if a foreign tool or a bug had bumped the count.
    let live = f.key("live");
    let _: () = f.raw.set(&live, 1_000).await.unwrap();
    assert!(matches!(
        f.backend.enqueue(envelope("q", 2), 10).await,
        Err(BackendError::Full)
    ));
    let stats = f.backend.stats().await.unwrap();
    assert_eq!(stats.depth(), 1);
    let count: i64 = f.raw.get(&live).await.unwrap();
    assert_eq!(count, 1, "recounted from the lists and sets");
    f.backend.enqueue(envelope("q", 2), 10).await.unwrap();
}

#[tokio::test]
async fn malformed_records_come_back_as_malformed() {
    let mut f = Fixture::new().await;
    let not_json = JobId::new();
    let wrong_shape = JobId::new();
    let foreign = JobId::new();
    let ready = f.key("ready:q");
    // Planted with raw commands, as a corrupted or foreign writer would leave them.
    let _: () = redis::pipe()
        .hset_multiple(
            f.job_key(not_json),
            &[("p", "{not json"), ("j", "probe"), ("q", "q"), ("m", "3")],
        )
        // A record with none of the fields a job record has (another layout, another tool).
        .hset(f.job_key(wrong_shape), "body", r#"{"id":"x","payload":1}"#)
        .set(f.job_key(foreign), b"\xff\xfebinary".as_slice())
        .rpush(&ready, not_json.to_string())
        .rpush(&ready, "definitely-not-an-id")
        .rpush(&ready, wrong_shape.to_string())
        .rpush(&ready, foreign.to_string())
        .query_async(&mut f.raw)
        .await
        .unwrap();
    let good = envelope("q", 7);
    f.backend.enqueue(good.clone(), CAP).await.unwrap();

    let got = f.backend.reserve(&queues(&["q"]), 10, LEASE).await.unwrap();
    assert_eq!(got.len(), 4, "{got:?}");
    let mut bad = Vec::new();
    for r in got {
        match r {
            Reservation::Malformed {
                id,
                token,
                queue,
                raw,
                reason,
            } => {
                assert_eq!(queue, "q", "the queue it came from");
                bad.push((id, token, raw, reason));
            }
            Reservation::Job { envelope, .. } => assert_eq!(envelope.id, good.id),
        }
    }
    let ids: Vec<JobId> = bad.iter().map(|b| b.0).collect();
    assert_eq!(ids, [not_json, wrong_shape, foreign]);
    assert_eq!(bad[0].2, "{not json");
    assert_eq!(
        bad[2].2, "\u{fffd}\u{fffd}binary",
        "raw bytes, lossily as text"
    );
    for (_, _, _, reason) in &bad {
        assert!(reason.contains("not a job envelope"), "{reason}");
    }
    assert!(bad[0].3.contains("the payload is not JSON"), "{}", bad[0].3);
    assert!(bad[1].3.contains("it has no payload"), "{}", bad[1].3);
    assert!(bad[2].3.contains("it names no job"), "{}", bad[2].3);
    // The entry that is not an id was set aside, not lost and not retried forever.
    let garbage: Vec<String> = f.raw.lrange(f.key("garbage"), 0, -1).await.unwrap();
    assert_eq!(garbage, ["definitely-not-an-id"]);

    // The runtime dead-letters them with the reason; the lease works like any other.
    for (id, token, raw, reason) in &bad {
        let mut record = dead_record(&good, 0, &[reason.as_str()]).await;
        record.job_id = *id;
        record.payload = serde_json::Value::String(raw.clone());
        f.backend
            .dead_letter(*id, token.clone(), record)
            .await
            .unwrap();
    }
    let dead = f.backend.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 3);
    assert!(
        dead.iter()
            .all(|d| d.error_message().contains("not a job envelope"))
    );
    reserve_none(&f.backend, "q").await;
}

#[tokio::test]
async fn records_with_malformed_numbers_come_back_malformed_not_as_zero() {
    let mut f = Fixture::new().await;
    // Job-shaped records, each with one count or time that is not a number.
    let planted = [
        ("a", "two", "attempt count"),
        ("r", "x", "recovery count"),
        ("nb", "soon", "start time"),
        ("e", "yesterday", "enqueue time"),
    ];
    let mut ids = Vec::new();
    for (field, value, _) in planted {
        let id = JobId::new();
        let mut fields = vec![("p", "{}"), ("j", "probe"), ("q", "q"), ("m", "3")];
        if field != "e" {
            fields.push(("e", "1000"));
        }
        fields.push((field, value));
        let _: () = redis::pipe()
            .hset_multiple(f.job_key(id), &fields)
            .rpush(f.key("ready:q"), id.to_string())
            .query_async(&mut f.raw)
            .await
            .unwrap();
        ids.push(id);
    }
    let got = f.backend.reserve(&queues(&["q"]), 10, LEASE).await.unwrap();
    assert_eq!(got.len(), planted.len(), "{got:?}");
    for ((r, id), (_, _, what)) in got.iter().zip(&ids).zip(planted) {
        match r {
            Reservation::Malformed {
                id: got, reason, ..
            } => {
                assert_eq!(got, id);
                assert!(reason.contains(what), "{what}: {reason}");
            }
            other @ Reservation::Job { .. } => panic!("{what}: {other:?}"),
        }
    }
    // The bad count is kept as it was (not rewritten as a first attempt), and the status
    // says the record is corrupt instead of reading it as 0.
    assert_eq!(f.hget(ids[0], "a").await.as_deref(), Some("two"));
    let r = f.backend.status(ids[0]).await;
    assert!(matches!(r, Err(BackendError::Corrupt(_))), "{r:?}");
}

#[tokio::test]
async fn entries_that_are_not_canonical_ids_are_set_aside_even_with_a_record() {
    // Each names a job-shaped record, so only the id check keeps it from being run: an
    // uppercase id, a hyphen out of place, a character that is not hex.
    let mut f = Fixture::new().await;
    let real = JobId::new().to_string();
    let upper = real.to_uppercase();
    let shifted = format!("{}-{}", &real[..7], &real[7..35].replace('-', "0"));
    let not_hex = format!("{}g", &real[..35]);
    let bad = [upper, shifted, not_hex];
    for s in &bad {
        assert_eq!(s.len(), 36, "{s}");
        let _: () = redis::pipe()
            .hset_multiple(
                f.key(&format!("job:{s}")),
                &[
                    ("p", "{}"),
                    ("j", "probe"),
                    ("q", "q"),
                    ("m", "3"),
                    ("e", "1"),
                ],
            )
            .rpush(f.key("ready:q"), s)
            .query_async(&mut f.raw)
            .await
            .unwrap();
    }
    let good = envelope("q", 1);
    f.backend.enqueue(good.clone(), CAP).await.unwrap();
    let got = f.backend.reserve(&queues(&["q"]), 10, LEASE).await.unwrap();
    let ids: Vec<JobId> = got.iter().map(Reservation::id).collect();
    assert_eq!(ids, [good.id]);
    let garbage: Vec<String> = f.raw.lrange(f.key("garbage"), 0, -1).await.unwrap();
    let mut want: Vec<String> = bad.to_vec();
    want.reverse();
    assert_eq!(garbage, want, "newest first");
}

#[tokio::test]
async fn insert_raw_plants_a_malformed_record() {
    let f = Fixture::new().await;
    let id = JobId::new();
    f.backend.insert_raw(id, "q", "garbage").await.unwrap();
    let got = f.backend.reserve(&queues(&["q"]), 1, LEASE).await.unwrap();
    match got.as_slice() {
        [Reservation::Malformed { id: got, raw, .. }] => {
            assert_eq!((*got, raw.as_str()), (id, "garbage"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wait_for_work_wakes_on_enqueue() {
    let f = Fixture::new().await;
    let b = &f.backend;
    let q = queues(&["q"]);

    // Nothing to do: the wait lasts its timeout (and not much more).
    let t = Instant::now();
    b.wait_for_work(&q, Duration::from_millis(300)).await;
    let idle = t.elapsed();
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_secs(2),
        "{idle:?}"
    );

    // A cancelled wait must not leave a blocked command in front of the next one.
    let _ = tokio::time::timeout(
        Duration::from_millis(100),
        b.wait_for_work(&q, Duration::from_secs(5)),
    )
    .await;

    let mut woke = Vec::new();
    for n in 0..3 {
        let enqueue_at = Instant::now() + Duration::from_millis(200);
        let (waited, ()) = tokio::join!(
            async {
                let t = Instant::now();
                b.wait_for_work(&q, Duration::from_secs(5)).await;
                t.elapsed()
            },
            async {
                tokio::time::sleep_until(enqueue_at).await;
                b.enqueue(envelope("q", n), CAP).await.unwrap();
            }
        );
        assert!(
            waited < Duration::from_millis(1500),
            "woke after {waited:?}"
        );
        woke.push(waited.saturating_sub(Duration::from_millis(200)));
        let (e, token) = reserve_one(b, "q", LEASE).await;
        b.ack(e.id, token.clone()).await.unwrap();
    }
    eprintln!("wait_for_work woke {woke:?} after the enqueue");
}

#[tokio::test]
async fn a_closed_port_is_unavailable_quickly() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let b = RedisBackend::builder(format!("redis://127.0.0.1:{port}"))
        .prefix("closed")
        .connection_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let q = queues(&["q"]);
    let t = Instant::now();
    let results = [
        b.connect().await.err(),
        b.enqueue(envelope("q", 1), CAP).await.err(),
        b.reserve(&q, 1, LEASE).await.err(),
        b.ack(JobId::new(), LeaseToken::random()).await.err(),
        b.stats().await.err(),
        b.reap(3).await.err(),
        b.status(JobId::new()).await.err(),
    ];
    let elapsed = t.elapsed();
    for r in &results {
        assert!(
            matches!(r, Some(BackendError::Unavailable(_))),
            "expected Unavailable, got {r:?}"
        );
    }
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    eprintln!("7 calls against a closed port failed in {elapsed:?}");
    let t = Instant::now();
    b.wait_for_work(&q, Duration::from_millis(300)).await;
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[tokio::test]
async fn names_are_checked_before_they_become_keys() {
    for bad in ["", "a:b", "{x}", "a b", &"x".repeat(65)] {
        let r = RedisBackend::builder(url()).prefix(bad).build();
        assert!(
            matches!(r, Err(RedisConfigError::InvalidPrefix(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        RedisBackend::new("not a url"),
        Err(RedisConfigError::InvalidUrl(_))
    ));
    let mut f = Fixture::new().await;
    for (queue, job) in [("bad:queue", "probe"), ("q", "bad{job}")] {
        let e = Envelope {
            job: job.to_owned(),
            ..envelope(queue, 1)
        };
        let r = f.backend.enqueue(e.clone(), CAP).await;
        assert!(r.is_err(), "{queue} / {job}: {r:?}");
        let exists: bool = f.raw.exists(f.job_key(e.id)).await.unwrap();
        assert!(!exists);
    }
    assert!(
        f.backend
            .reserve(&queues(&["a}b"]), 1, LEASE)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn many_jobs_leave_nothing_behind() {
    let f = Fixture::new().await;
    let b = &f.backend;
    let n = 2000;
    let t = Instant::now();
    for i in 0..n {
        b.enqueue(envelope("q", i), CAP * 10).await.unwrap();
    }
    let enqueued = t.elapsed();
    let t = Instant::now();
    let mut done = 0;
    loop {
        let got = b.reserve(&queues(&["q"]), 64, LEASE).await.unwrap();
        if got.is_empty() {
            break;
        }
        for r in got {
            let (e, token) = job(r);
            b.ack(e.id, token.clone()).await.unwrap();
            done += 1;
        }
    }
    let processed = t.elapsed();
    assert_eq!(done, n);
    let stats = b.stats().await.unwrap();
    assert_eq!(
        (stats.ready, stats.scheduled, stats.running, stats.dead),
        (0, 0, 0, 0)
    );
    eprintln!(
        "{n} jobs: enqueue {:.0}/s, reserve(64)+ack {:.0}/s (sequential, one connection)",
        n as f64 / enqueued.as_secs_f64(),
        n as f64 / processed.as_secs_f64()
    );
}

/// A `redis-server` of this test's own on a free port, with an append-only file fsynced on
/// every write in a temporary directory, so it can be stalled, killed and restarted.
struct OwnServer {
    child: Option<std::process::Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl OwnServer {
    async fn start() -> Self {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(format!("job-redis-test-{}", JobId::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            child: None,
            port,
            dir,
        };
        server.restart().await;
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e}); install Redis 7"));
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal("-CONT");
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Retries `op` until it succeeds or `within` passes.
async fn eventually<T, F, Fut>(within: Duration, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BackendError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(Instant::now() < deadline, "still failing: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn stalls_and_restarts_are_errors_then_recovered() {
    let mut server = OwnServer::start().await;
    let b = RedisBackend::builder(server.url())
        .connection_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    b.connect().await.unwrap();
    let q = queues(&["q"]);
    let kept: Vec<Envelope> = (0..20).map(|n| envelope("q", n)).collect();
    for e in &kept {
        b.enqueue(e.clone(), CAP).await.unwrap();
    }
    let (held, token) = reserve_one(&b, "q", LEASE).await;

    // A server that stops answering (the apalis-redis#76 shape): errors, not hangs.
    server.signal("-STOP");
    let t = Instant::now();
    let r = b.enqueue(envelope("q", 100), CAP).await;
    assert!(matches!(r, Err(BackendError::Unavailable(_))), "{r:?}");
    let r = b.reserve(&q, 1, LEASE).await;
    assert!(matches!(r, Err(BackendError::Unavailable(_))), "{r:?}");
    b.wait_for_work(&q, Duration::from_millis(200)).await;
    let stalled = t.elapsed();
    assert!(stalled < Duration::from_secs(4), "{stalled:?}");
    eprintln!("stopped server: enqueue, reserve and a 200 ms wait returned in {stalled:?}");
    server.signal("-CONT");
    eventually(Duration::from_secs(5), || b.stats()).await;

    // Killed and restarted with its append-only file: everything acknowledged is there,
    // and the same backend value works again without being rebuilt.
    server.kill();
    let t = Instant::now();
    let r = b.enqueue(envelope("q", 101), CAP).await;
    assert!(matches!(r, Err(BackendError::Unavailable(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    b.wait_for_work(&q, Duration::from_millis(200)).await;
    let down = t.elapsed();
    server.restart().await;
    let t = Instant::now();
    let after = envelope("q", 102);
    eventually(Duration::from_secs(5), || b.enqueue(after.clone(), CAP)).await;
    eprintln!(
        "killed server: enqueue and a 200 ms wait returned in {down:?}; first enqueue after the restart succeeded {:?} after it answered PING",
        t.elapsed()
    );
    // The enqueue and the reserve sent while the server was stopped may have run after it
    // resumed (Redis does not cancel a command whose caller gave up): one more job, and one
    // leased to nobody (its lease will expire and the reaper will bring it back).
    let stats = b.stats().await.unwrap();
    assert!(matches!(stats.depth(), 21 | 22), "{stats:?}");
    assert!(matches!(stats.running, 1 | 2), "{stats:?}");
    assert_eq!(
        b.status(held.id).await.unwrap().unwrap().state,
        JobState::Running
    );
    b.ack(held.id, token.clone()).await.unwrap();
    for e in kept.iter().skip(1).chain([&after]) {
        let state = b.status(e.id).await.unwrap().map(|s| s.state);
        assert!(
            matches!(state, Some(JobState::Queued | JobState::Running)),
            "acknowledged enqueue lost: {state:?}"
        );
    }
    // Blocking waits reconnect too.
    let (waited, ()) = tokio::join!(
        async {
            let t = Instant::now();
            b.wait_for_work(&q, Duration::from_secs(5)).await;
            t.elapsed()
        },
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            // The trigger, not what is tested: retried if this loaded machine lets it run
            // past the 300 ms response timeout (the one flake this test has shown).
            let e = envelope("q", 103);
            eventually(Duration::from_secs(5), || b.enqueue(e.clone(), CAP)).await;
        }
    );
    assert!(waited < Duration::from_secs(2), "woke after {waited:?}");
}

/// A job for the runtime smoke test: fails its first attempt when `flaky`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Count {
    n: u64,
    flaky: bool,
}

static COUNT_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl job_core::Job for Count {
    const NAME: &'static str = "redis_smoke_count";
    type Error = std::io::Error;
    type Output = ();

    fn options() -> job_core::JobOptions {
        job_core::JobOptions::new()
            .queue("redis-smoke")
            .backoff(job_core::Backoff::new(
                Duration::from_millis(50),
                Duration::from_millis(50),
                0.0,
            ))
    }

    async fn run(&self, cx: &job_core::JobContext) -> Result<(), Self::Error> {
        COUNT_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.flaky && cx.attempt() == 1 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("flaky {}", self.n),
            ));
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_runtime_runs_jobs_on_redis() {
    let f = Fixture::new().await;
    let backend = std::sync::Arc::new(f.other());
    let runtime = job_core::JobRuntime::builder()
        .backend(backend.clone())
        .lease(Duration::from_secs(5))
        .register::<Count>()
        .concurrency(4)
        .start()
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..20 {
        let job = Count {
            n,
            flaky: n % 5 == 0,
        };
        ids.push(runtime.client().enqueue(job).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for (n, id) in ids.iter().enumerate() {
        loop {
            let status = backend.status(*id).await.unwrap().unwrap();
            if status.state == JobState::Succeeded {
                assert_eq!(status.attempts, if n % 5 == 0 { 2 } else { 1 });
                break;
            }
            assert!(
                status.state != JobState::Dead && Instant::now() < deadline,
                "{status:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    runtime.shutdown().await;
    assert_eq!(COUNT_RUNS.load(std::sync::atomic::Ordering::SeqCst), 24);
    let stats = backend.stats().await.unwrap();
    assert_eq!((stats.depth(), stats.dead), (0, 0));
}

/// A backend whose pub/sub connection is killed (`CLIENT KILL TYPE pubsub`) subscribes
/// again and still hears the end of the job it watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_ends_are_heard_after_the_pubsub_connection_was_killed() {
    let (b, _cleanup) = common::redis_backend().await;
    let mut raw = redis::Client::open(url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| unreachable("connecting", e));
    let kill = async move {
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(killed >= 1, "no pub/sub connection to kill");
    };
    common::an_end_is_heard_after_a_lost_listener(&b, kill).await;
}
