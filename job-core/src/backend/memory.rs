//! [`MemoryBackend`]: the [`Backend`] contract kept in process memory.
//!
//! It stores serialized envelopes with leases, fencing, recoveries and dead letters exactly
//! as a durable store would, but in this process: it survives nothing. It exists as the
//! reference implementation of the contract, for tests of the durable code path without a
//! server (lease expiry follows tokio's clock, so paused-time tests can expire leases), and
//! as a model for new backends. The runtime's default (no `.backend(..)`) is the faster
//! typed in-memory queue, not this.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Backend, BackendError, BackendStats, BoxFuture, CancelOutcome, Envelope, Extended, LeaseToken,
    Payload, Reaped, Reservation, Retry, from_unix_ms, unix_ms,
};
use crate::dead_letter::DeadLetter;
use crate::job::JobId;
use crate::observe::status::{JobState, JobStatus};
use crate::unique::{Enqueued, UniqueKey, UniqueUntil};

enum Body {
    Envelope(Envelope),
    Raw { queue: String, raw: String },
}

struct Stored {
    body: Body,
    state: JobState,
    last_error: Option<String>,
    updated_ms: u64,
    lease: Option<(LeaseToken, Instant)>,
    /// The token whose outcome was written last, and which outcome: a write-back repeated
    /// with it (its reply lost, in a real store) succeeds again and changes nothing; any
    /// other write-back with it is refused as a lost lease (the Redis backend's `d` field,
    /// the Postgres backend's `done_token`).
    done: Option<(LeaseToken, Outcome)>,
    /// A cancel was requested while the job was reserved (see [`CancelOutcome::Requested`]).
    cancel_requested: bool,
    /// What the job reported last (see [`Backend::record_progress`]).
    progress: Option<Payload>,
    /// What its successful attempt produced (see [`Backend::ack_results`]).
    result: Option<Payload>,
}

/// A write-back that ends a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ack,
    Retry,
    DeadLetter,
    Release,
    Cancel,
}

/// What a write-back's token is to the job.
enum Fence<'a> {
    /// The current lease: the write-back goes ahead.
    Held(&'a mut Stored),
    /// The token whose outcome (this same one) was written last: nothing to do.
    Repeated,
}

#[derive(Default)]
struct State {
    jobs: HashMap<JobId, Stored>,
    ready: HashMap<String, VecDeque<JobId>>,
    scheduled: BTreeSet<(u64, JobId)>,
    dead: VecDeque<DeadLetter>,
    finished: VecDeque<(Instant, JobId)>,
    /// Uniqueness keys: the job holding each, until when, and whether its end frees it.
    uniques: HashMap<String, (JobId, Instant, UniqueUntil)>,
}

impl State {
    /// Stores a new job (see [`Backend::enqueue`]); false when the id was stored already.
    fn store(&mut self, envelope: Envelope, capacity: u64) -> Result<bool, BackendError> {
        if self.jobs.contains_key(&envelope.id) {
            // Already stored (an enqueue repeated after a lost reply, in a real store):
            // counts as stored and changes nothing, even when the store is full.
            return Ok(false);
        }
        let live = self
            .jobs
            .values()
            .filter(|s| !s.state.is_finished())
            .count() as u64;
        if live >= capacity {
            return Err(BackendError::Full);
        }
        let id = envelope.id;
        let now_ms = unix_ms(SystemTime::now());
        let delayed = envelope.not_before.filter(|&t| t > now_ms);
        let queue = envelope.queue.clone();
        self.jobs.insert(
            id,
            Stored {
                body: Body::Envelope(envelope),
                state: if delayed.is_some() {
                    JobState::Scheduled
                } else {
                    JobState::Queued
                },
                last_error: None,
                updated_ms: now_ms,
                lease: None,
                done: None,
                cancel_requested: false,
                progress: None,
                result: None,
            },
        );
        match delayed {
            Some(at) => {
                self.scheduled.insert((at, id));
            }
            None => self.ready.entry(queue).or_default().push_back(id),
        }
        Ok(true)
    }

    /// The job holding `key`, if one does (a job gone from the store has finished).
    fn key_holder(&self, key: &str) -> Option<JobId> {
        let &(id, until, mode) = self.uniques.get(key)?;
        if Instant::now() >= until {
            return None;
        }
        let live = || self.jobs.get(&id).is_some_and(|s| !s.state.is_finished());
        (mode == UniqueUntil::Window || live()).then_some(id)
    }
}

/// The backend contract in process memory. See the [module docs](self).
pub struct MemoryBackend {
    state: Mutex<State>,
    work: Notify,
    /// Fired each time a job ends: every waiter of every runtime on this backend reads its
    /// job's status again (a process's memory: there is nothing to announce across).
    finished: Arc<Notify>,
    dead_capacity: usize,
    retention: Duration,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend").finish_non_exhaustive()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty backend keeping 10,000 dead letters and finished statuses for an hour.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            work: Notify::new(),
            finished: Arc::new(Notify::new()),
            dead_capacity: 10_000,
            retention: Duration::from_secs(3600),
        }
    }

    /// Wakes fetchers waiting now, and leaves a permit for one that is about to wait.
    fn wake(&self) {
        self.work.notify_waiters();
        self.work.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores bytes that are not a valid envelope under `id` in `queue`, as a corrupted or
    /// foreign record would appear in a real store (for tests of the bad-payload path).
    pub fn insert_raw(&self, id: JobId, queue: &str, raw: &str) {
        let mut st = self.lock();
        st.jobs.insert(
            id,
            Stored {
                body: Body::Raw {
                    queue: queue.to_owned(),
                    raw: raw.to_owned(),
                },
                state: JobState::Queued,
                last_error: None,
                updated_ms: unix_ms(SystemTime::now()),
                lease: None,
                done: None,
                cancel_requested: false,
                progress: None,
                result: None,
            },
        );
        st.ready.entry(queue.to_owned()).or_default().push_back(id);
        drop(st);
        self.wake();
    }

    fn promote(st: &mut State, now_ms: u64) {
        while let Some(&(at, id)) = st.scheduled.first() {
            if at > now_ms {
                break;
            }
            st.scheduled.pop_first();
            let queue = match st.jobs.get(&id).map(|s| &s.body) {
                Some(Body::Envelope(e)) => e.queue.clone(),
                Some(Body::Raw { queue, .. }) => queue.clone(),
                None => continue,
            };
            st.ready.entry(queue).or_default().push_back(id);
        }
    }

    /// Job `id` has ended: kept for the retention, and announced to waiters.
    fn retire(&self, st: &mut State, id: JobId) {
        self.finished.notify_waiters();
        let now = Instant::now();
        st.finished.push_back((now, id));
        while let Some(&(at, old)) = st.finished.front() {
            if now.saturating_duration_since(at) < self.retention {
                break;
            }
            st.finished.pop_front();
            if st.jobs.get(&old).is_some_and(|s| s.state.is_finished()) {
                st.jobs.remove(&old);
            }
        }
    }

    /// Finishes a held job as succeeded, keeping `result` (a repeat changes nothing).
    fn ack_with(
        &self,
        st: &mut State,
        id: JobId,
        token: LeaseToken,
        result: Option<Payload>,
    ) -> Result<(), BackendError> {
        let acked = Self::fence(st, id, token, Outcome::Ack).map(|f| match f {
            Fence::Held(s) => {
                s.lease = None;
                s.state = JobState::Succeeded;
                s.updated_ms = unix_ms(SystemTime::now());
                s.result = result;
                true
            }
            Fence::Repeated => false,
        })?;
        if acked {
            self.retire(st, id);
        }
        Ok(())
    }

    /// Checks the lease and returns the stored job.
    fn held(st: &mut State, id: JobId, token: LeaseToken) -> Result<&mut Stored, BackendError> {
        match st.jobs.get_mut(&id) {
            Some(s) if s.lease.as_ref().is_some_and(|(t, _)| *t == token) => Ok(s),
            _ => Err(BackendError::LeaseLost(id)),
        }
    }

    /// Fences a write-back of `outcome`: the lease holder goes ahead (and the token is
    /// recorded as the one whose outcome is written); a repeat of the outcome written last
    /// with its token changes nothing; anything else is a lost lease.
    fn fence(
        st: &mut State,
        id: JobId,
        token: LeaseToken,
        outcome: Outcome,
    ) -> Result<Fence<'_>, BackendError> {
        match st.jobs.get_mut(&id) {
            Some(s) if s.lease.as_ref().is_some_and(|(t, _)| *t == token) => {
                s.done = Some((token, outcome));
                Ok(Fence::Held(s))
            }
            Some(s) if s.done == Some((token, outcome)) => Ok(Fence::Repeated),
            _ => Err(BackendError::LeaseLost(id)),
        }
    }

    fn push_dead(&self, st: &mut State, record: DeadLetter) {
        if st.dead.len() >= self.dead_capacity {
            st.dead.pop_front();
        }
        st.dead.push_back(record);
    }
}

fn ready_now<T>(value: T) -> BoxFuture<'static, T>
where
    T: Send + 'static,
{
    Box::pin(std::future::ready(value))
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn connect(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        ready_now(Ok(()))
    }

    fn enqueue(
        &self,
        envelope: Envelope,
        capacity: u64,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let stored = self.lock().store(envelope, capacity);
        if matches!(stored, Ok(true)) {
            self.wake();
        }
        ready_now(stored.map(|_| ()))
    }

    fn enqueue_unique<'a>(
        &'a self,
        envelope: Envelope,
        capacity: u64,
        unique: &'a UniqueKey,
    ) -> BoxFuture<'a, Result<Enqueued, BackendError>> {
        let mut st = self.lock();
        let id = envelope.id;
        if st.jobs.contains_key(&id) {
            return ready_now(Ok(Enqueued::New(id)));
        }
        if let Some(holder) = st.key_holder(&unique.key) {
            return ready_now(Ok(Enqueued::Existing(holder)));
        }
        if let Err(e) = st.store(envelope, capacity) {
            return ready_now(Err(e));
        }
        let now = Instant::now();
        if st.uniques.len() >= 1024 && st.uniques.len().is_power_of_two() {
            st.uniques.retain(|_, &mut (_, until, _)| until > now);
        }
        st.uniques
            .insert(unique.key.clone(), (id, now + unique.window, unique.until));
        drop(st);
        self.wake();
        ready_now(Ok(Enqueued::New(id)))
    }

    fn reserve<'a>(
        &'a self,
        queues: &'a [String],
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Reservation>, BackendError>> {
        let mut st = self.lock();
        let now_ms = unix_ms(SystemTime::now());
        Self::promote(&mut st, now_ms);
        let expiry = Instant::now() + lease;
        let mut out = Vec::new();
        'queues: for queue in queues {
            while out.len() < max {
                let Some(id) = st.ready.get_mut(queue).and_then(VecDeque::pop_front) else {
                    continue 'queues;
                };
                let Some(stored) = st.jobs.get_mut(&id) else {
                    continue;
                };
                let token = LeaseToken::random();
                stored.lease = Some((token.clone(), expiry));
                stored.state = JobState::Running;
                stored.updated_ms = now_ms;
                match &mut stored.body {
                    Body::Envelope(env) => {
                        env.attempt += 1;
                        env.lease = Some(token.clone());
                        out.push(Reservation::Job {
                            envelope: env.clone(),
                            token,
                        });
                    }
                    Body::Raw { raw, .. } => out.push(Reservation::Malformed {
                        id,
                        token,
                        queue: queue.clone(),
                        raw: raw.clone(),
                        reason: "stored record is not a job envelope".to_owned(),
                    }),
                }
            }
            break;
        }
        ready_now(Ok(out))
    }

    fn wait_for_work<'a>(&'a self, _queues: &'a [String], timeout: Duration) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let _ = tokio::time::timeout(timeout, self.work.notified()).await;
        })
    }

    fn ack(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut st = self.lock();
        ready_now(self.ack_with(&mut st, id, token, None))
    }

    fn ack_results<'a>(
        &'a self,
        acks: &'a [(JobId, LeaseToken, Payload)],
    ) -> BoxFuture<'a, Result<Vec<JobId>, BackendError>> {
        let mut st = self.lock();
        let mut lost = Vec::new();
        for (id, token, result) in acks {
            match self.ack_with(&mut st, *id, token.clone(), Some(result.clone())) {
                Ok(()) => {}
                Err(BackendError::LeaseLost(id)) => lost.push(id),
                Err(e) => return ready_now(Err(e)),
            }
        }
        ready_now(Ok(lost))
    }

    fn retry(
        &self,
        id: JobId,
        token: LeaseToken,
        retry: Retry,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut st = self.lock();
        let at = unix_ms(retry.at);
        let result = Self::fence(&mut st, id, token, Outcome::Retry).map(|f| match f {
            Fence::Held(s) if s.cancel_requested => {
                s.lease = None;
                s.state = JobState::Cancelled;
                s.last_error = Some(retry.error);
                s.updated_ms = unix_ms(SystemTime::now());
                false
            }
            Fence::Held(s) => {
                s.lease = None;
                s.state = JobState::Retrying;
                s.last_error = Some(retry.error);
                s.updated_ms = unix_ms(SystemTime::now());
                if let Body::Envelope(env) = &mut s.body {
                    env.lease = None;
                    env.not_before = Some(at);
                }
                true
            }
            Fence::Repeated => false,
        });
        if matches!(result, Ok(true)) {
            st.scheduled.insert((at, id));
        } else if st
            .jobs
            .get(&id)
            .is_some_and(|s| s.state == JobState::Cancelled)
        {
            self.retire(&mut st, id);
        }
        drop(st);
        self.wake();
        ready_now(result.map(drop))
    }

    fn dead_letter(
        &self,
        id: JobId,
        token: LeaseToken,
        record: DeadLetter,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut st = self.lock();
        let result = Self::fence(&mut st, id, token, Outcome::DeadLetter).map(|f| match f {
            Fence::Held(s) => {
                s.lease = None;
                s.state = JobState::Dead;
                s.last_error = Some(record.error_message());
                s.updated_ms = unix_ms(SystemTime::now());
                true
            }
            Fence::Repeated => false,
        });
        if matches!(result, Ok(true)) {
            self.push_dead(&mut st, record);
            self.retire(&mut st, id);
        }
        ready_now(result.map(drop))
    }

    fn extend<'a>(
        &'a self,
        leases: &'a [(JobId, LeaseToken)],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Extended, BackendError>> {
        let mut st = self.lock();
        let expiry = Instant::now() + lease;
        let (mut lost, mut cancelled) = (Vec::new(), Vec::new());
        for (id, token) in leases {
            match Self::held(&mut st, *id, token.clone()) {
                Ok(s) => {
                    s.lease = Some((token.clone(), expiry));
                    if s.cancel_requested {
                        cancelled.push(*id);
                    }
                }
                Err(_) => lost.push(*id),
            }
        }
        ready_now(Ok(Extended {
            lost,
            renewed: Vec::new(),
            cancelled,
        }))
    }

    fn release(&self, id: JobId, token: LeaseToken) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut st = self.lock();
        let mut cancelled = false;
        let result = Self::fence(&mut st, id, token, Outcome::Release).map(|f| match f {
            Fence::Held(s) if s.cancel_requested => {
                s.lease = None;
                s.state = JobState::Cancelled;
                s.updated_ms = unix_ms(SystemTime::now());
                cancelled = true;
                None
            }
            Fence::Held(s) => {
                s.lease = None;
                s.state = JobState::Queued;
                s.updated_ms = unix_ms(SystemTime::now());
                Some(match &mut s.body {
                    Body::Envelope(env) => {
                        // The interrupted attempt does not count.
                        env.attempt = env.attempt.saturating_sub(1);
                        env.lease = None;
                        env.queue.clone()
                    }
                    Body::Raw { queue, .. } => queue.clone(),
                })
            }
            Fence::Repeated => None,
        });
        if let Ok(Some(queue)) = &result {
            st.ready.entry(queue.clone()).or_default().push_front(id);
        }
        if cancelled {
            self.retire(&mut st, id);
        }
        let result = result.map(drop);
        drop(st);
        self.wake();
        ready_now(result)
    }

    fn reap(&self, max_recoveries: u32) -> BoxFuture<'_, Result<Reaped, BackendError>> {
        let mut st = self.lock();
        let now = Instant::now();
        let now_ms = unix_ms(SystemTime::now());
        let expired: Vec<JobId> = st
            .jobs
            .iter()
            .filter(|(_, s)| s.lease.as_ref().is_some_and(|(_, exp)| *exp <= now))
            .map(|(id, _)| *id)
            .collect();
        let mut reaped = Reaped::default();
        for id in expired {
            let Some(s) = st.jobs.get_mut(&id) else {
                continue;
            };
            s.lease = None;
            s.updated_ms = now_ms;
            if s.cancel_requested {
                // Its holder died after the cancel: it ends cancelled, not recovered.
                s.state = JobState::Cancelled;
                self.retire(&mut st, id);
                continue;
            }
            let (queue, poison) = match &mut s.body {
                Body::Envelope(env) => {
                    env.lease = None;
                    env.recoveries += 1;
                    (env.queue.clone(), env.recoveries >= max_recoveries)
                }
                Body::Raw { queue, .. } => (queue.clone(), true),
            };
            if poison {
                let reason = format!(
                    "worker lost {max_recoveries} times while running this job (crash-recovered); dead-lettered as a poison pill"
                );
                s.state = JobState::Dead;
                s.last_error = Some(reason.clone());
                let record = match &s.body {
                    Body::Envelope(env) => DeadLetter {
                        job_id: id,
                        job: env.job.clone(),
                        queue: env.queue.clone(),
                        payload: env.payload.to_value(),
                        attempts: env.attempt,
                        error: vec![reason],
                        enqueued_at: from_unix_ms(env.enqueued_at),
                        died_at: SystemTime::now(),
                    },
                    Body::Raw { queue, raw } => DeadLetter {
                        job_id: id,
                        job: String::new(),
                        queue: queue.clone(),
                        payload: serde_json::Value::String(raw.clone()),
                        attempts: 0,
                        error: vec![reason],
                        enqueued_at: SystemTime::now(),
                        died_at: SystemTime::now(),
                    },
                };
                self.push_dead(&mut st, record.clone());
                self.retire(&mut st, id);
                reaped.dead.push(record);
            } else {
                s.state = JobState::Queued;
                st.ready.entry(queue).or_default().push_front(id);
                reaped.recovered.push(id);
            }
        }
        drop(st);
        if !reaped.recovered.is_empty() {
            self.wake();
        }
        ready_now(Ok(reaped))
    }

    fn status(&self, id: JobId) -> BoxFuture<'_, Result<Option<JobStatus>, BackendError>> {
        let st = self.lock();
        let status = st.jobs.get(&id).map(|s| {
            let (job, queue, attempts, enqueued) = match &s.body {
                Body::Envelope(e) => (e.job.clone(), e.queue.clone(), e.attempt, e.enqueued_at),
                Body::Raw { queue, .. } => (String::new(), queue.clone(), 0, s.updated_ms),
            };
            JobStatus::from_failure(
                id,
                job,
                queue,
                s.state,
                attempts,
                s.last_error.clone(),
                from_unix_ms(enqueued),
                from_unix_ms(s.updated_ms),
            )
            .with_progress(s.progress.as_ref().map(Payload::to_value))
            .with_result(s.result.as_ref().map(Payload::to_value))
        });
        ready_now(Ok(status))
    }

    fn stats(&self) -> BoxFuture<'_, Result<BackendStats, BackendError>> {
        let st = self.lock();
        let mut stats = BackendStats {
            ready: st.ready.values().map(|q| q.len() as u64).sum(),
            scheduled: st.scheduled.len() as u64,
            dead: st.dead.len() as u64,
            ..BackendStats::default()
        };
        stats.running = st.jobs.values().filter(|s| s.lease.is_some()).count() as u64;
        ready_now(Ok(stats))
    }

    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, BackendError>> {
        let st = self.lock();
        ready_now(Ok(st.dead.iter().take(limit).cloned().collect()))
    }

    fn find_dead_letter(
        &self,
        id: JobId,
    ) -> BoxFuture<'_, Result<Option<DeadLetter>, BackendError>> {
        let st = self.lock();
        ready_now(Ok(st.dead.iter().find(|d| d.job_id == id).cloned()))
    }

    fn cancel(&self, id: JobId) -> BoxFuture<'_, Result<CancelOutcome, BackendError>> {
        let mut st = self.lock();
        let Some(s) = st.jobs.get_mut(&id) else {
            return ready_now(Err(BackendError::NotFound(id)));
        };
        if s.state.is_finished() {
            return ready_now(Ok(CancelOutcome::Finished(s.state)));
        }
        if s.lease.is_some() {
            s.cancel_requested = true;
            return ready_now(Ok(CancelOutcome::Requested));
        }
        s.state = JobState::Cancelled;
        s.updated_ms = unix_ms(SystemTime::now());
        let queue = match &s.body {
            Body::Envelope(e) => e.queue.clone(),
            Body::Raw { queue, .. } => queue.clone(),
        };
        if let Some(q) = st.ready.get_mut(&queue) {
            q.retain(|j| *j != id);
        }
        st.scheduled.retain(|(_, j)| *j != id);
        self.retire(&mut st, id);
        ready_now(Ok(CancelOutcome::Removed))
    }

    fn watch_finish(&self, id: JobId) -> BoxFuture<'_, Result<Arc<Notify>, BackendError>> {
        // Every end fires the signal: nothing to record per job.
        let known = self.lock().jobs.contains_key(&id);
        ready_now(match known {
            true => Ok(self.finished.clone()),
            false => Err(BackendError::NotFound(id)),
        })
    }

    fn record_progress<'a>(
        &'a self,
        updates: &'a [(JobId, LeaseToken, Payload)],
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        let mut st = self.lock();
        for (id, token, value) in updates {
            if let Ok(s) = Self::held(&mut st, *id, token.clone()) {
                s.progress = Some(value.clone());
            }
        }
        ready_now(Ok(()))
    }

    fn finish_cancelled(
        &self,
        id: JobId,
        token: LeaseToken,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut st = self.lock();
        let result = Self::fence(&mut st, id, token, Outcome::Cancel).map(|f| match f {
            Fence::Held(s) => {
                s.lease = None;
                s.state = JobState::Cancelled;
                s.updated_ms = unix_ms(SystemTime::now());
                true
            }
            Fence::Repeated => false,
        });
        if matches!(result, Ok(true)) {
            self.retire(&mut st, id);
        }
        ready_now(result.map(drop))
    }

    fn requeue(&self, id: JobId) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut st = self.lock();
        let Some(pos) = st.dead.iter().position(|d| d.job_id == id) else {
            return ready_now(Err(BackendError::NotFound(id)));
        };
        let Some(record) = st.dead.remove(pos) else {
            return ready_now(Err(BackendError::NotFound(id)));
        };
        let now_ms = unix_ms(SystemTime::now());
        let envelope = match st.jobs.remove(&id).map(|s| s.body) {
            Some(Body::Envelope(mut env)) => {
                env.attempt = 0;
                env.recoveries = 0;
                env.not_before = None;
                env.lease = None;
                env
            }
            _ => Envelope {
                id,
                job: record.job.clone(),
                queue: record.queue.clone(),
                payload: Payload::from(&record.payload),
                attempt: 0,
                max_attempts: record.attempts.max(1),
                recoveries: 0,
                enqueued_at: unix_ms(record.enqueued_at),
                not_before: None,
                lease: None,
            },
        };
        let queue = envelope.queue.clone();
        st.jobs.insert(
            id,
            Stored {
                body: Body::Envelope(envelope),
                state: JobState::Queued,
                last_error: None,
                updated_ms: now_ms,
                lease: None,
                done: None,
                cancel_requested: false,
                progress: None,
                result: None,
            },
        );
        st.ready.entry(queue).or_default().push_back(id);
        drop(st);
        self.wake();
        ready_now(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(queue: &str) -> Envelope {
        Envelope {
            id: JobId::new(),
            job: "j".to_owned(),
            queue: queue.to_owned(),
            payload: serde_json::json!({}).into(),
            attempt: 0,
            max_attempts: 3,
            recoveries: 0,
            enqueued_at: unix_ms(SystemTime::now()),
            not_before: None,
            lease: None,
        }
    }

    fn queues() -> Vec<String> {
        vec!["q".to_owned()]
    }

    async fn reserve_one(b: &MemoryBackend, lease: Duration) -> (JobId, LeaseToken, u32) {
        let mut r = b.reserve(&queues(), 1, lease).await.unwrap();
        match r.pop() {
            Some(Reservation::Job { envelope, token }) => (envelope.id, token, envelope.attempt),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_lease_holder_changes_nothing() {
        let b = MemoryBackend::new();
        b.enqueue(envelope("q"), 10).await.unwrap();
        let (id, stale, attempt) = reserve_one(&b, Duration::from_secs(1)).await;
        assert_eq!(attempt, 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        let reaped = b.reap(3).await.unwrap();
        assert_eq!(reaped.recovered, [id]);
        let (id2, fresh, attempt) = reserve_one(&b, Duration::from_secs(1)).await;
        assert_eq!((id2, attempt), (id, 2));
        for r in [
            b.ack(id, stale.clone()).await,
            b.release(id, stale.clone()).await,
            b.retry(
                id,
                stale.clone(),
                Retry {
                    at: SystemTime::now(),
                    error: "x".to_owned(),
                },
            )
            .await,
        ] {
            assert!(
                matches!(r, Err(BackendError::LeaseLost(x)) if x == id),
                "{r:?}"
            );
        }
        assert_eq!(
            b.extend(&[(id, stale.clone())], Duration::from_secs(1))
                .await
                .unwrap()
                .lost,
            [id]
        );
        assert_eq!(
            b.status(id).await.unwrap().unwrap().state,
            JobState::Running
        );
        b.ack(id, fresh.clone()).await.unwrap();
        assert_eq!(
            b.status(id).await.unwrap().unwrap().state,
            JobState::Succeeded
        );
    }

    #[tokio::test(start_paused = true)]
    async fn extending_keeps_the_lease_and_poison_pills_die() {
        let b = MemoryBackend::new();
        b.enqueue(envelope("q"), 10).await.unwrap();
        let (id, token, _) = reserve_one(&b, Duration::from_secs(1)).await;
        for _ in 0..5 {
            tokio::time::advance(Duration::from_millis(600)).await;
            assert!(
                b.extend(&[(id, token.clone())], Duration::from_secs(1))
                    .await
                    .unwrap()
                    .lost
                    .is_empty()
            );
            assert!(b.reap(3).await.unwrap().recovered.is_empty());
        }
        // Now the worker "dies" three times.
        for n in 1..=3 {
            tokio::time::advance(Duration::from_secs(2)).await;
            let reaped = b.reap(3).await.unwrap();
            if n < 3 {
                assert_eq!(reaped.recovered, [id]);
                reserve_one(&b, Duration::from_secs(1)).await;
            } else {
                assert!(reaped.recovered.is_empty());
                assert_eq!(reaped.dead.len(), 1);
                assert!(reaped.dead[0].error_message().contains("poison pill"));
            }
        }
        assert_eq!(b.status(id).await.unwrap().unwrap().state, JobState::Dead);
        assert_eq!(b.dead_letters(10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn capacity_and_release() {
        let b = MemoryBackend::new();
        b.enqueue(envelope("q"), 2).await.unwrap();
        b.enqueue(envelope("q"), 2).await.unwrap();
        assert!(matches!(
            b.enqueue(envelope("q"), 2).await,
            Err(BackendError::Full)
        ));
        let (id, token, _) = reserve_one(&b, Duration::from_secs(5)).await;
        b.release(id, token.clone()).await.unwrap();
        let (again, _, attempt) = reserve_one(&b, Duration::from_secs(5)).await;
        assert_eq!(
            (again, attempt),
            (id, 1),
            "released to the front, attempt not counted"
        );
    }
    #[tokio::test]
    async fn enqueueing_a_stored_id_changes_nothing() {
        let b = MemoryBackend::new();
        let first = envelope("q");
        b.enqueue(first.clone(), 1).await.unwrap();
        let mut again = first.clone();
        again.payload = serde_json::json!({ "other": true }).into();
        again.attempt = 2;
        // Succeeds even though the store is full: the id is stored already.
        b.enqueue(again, 1).await.unwrap();
        let (id, _, attempt) = reserve_one(&b, Duration::from_secs(5)).await;
        assert_eq!((id, attempt), (first.id, 1));
        assert!(
            b.reserve(&queues(), 1, Duration::from_secs(5))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_repeated_write_back_succeeds_and_another_one_is_refused() {
        let b = MemoryBackend::new();
        b.enqueue(envelope("q"), 10).await.unwrap();
        let (id, token, _) = reserve_one(&b, Duration::from_secs(5)).await;
        b.ack(id, token.clone()).await.unwrap();
        let before = b.status(id).await.unwrap();
        b.ack(id, token.clone()).await.unwrap();
        assert_eq!(b.status(id).await.unwrap(), before);
        assert!(matches!(
            b.release(id, token.clone()).await,
            Err(BackendError::LeaseLost(x)) if x == id
        ));
        assert_eq!(b.status(id).await.unwrap(), before);
    }
}
