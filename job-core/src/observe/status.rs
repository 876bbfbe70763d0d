//! Job status by id: a sharded map of compact records. Live jobs are bounded by capacity;
//! finished ones (succeeded or dead) expire after the retention time or once more than the
//! retention count are kept, oldest first.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::job::JobId;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// Waiting for its start time (`enqueue_in` / `enqueue_at`).
    Scheduled,
    /// An attempt is running. On a durable backend: reserved by a worker process, which
    /// includes the few jobs a process fetches ahead of its workers when jobs are short (see
    /// [`prefetch`](crate::JobRuntimeBuilder::prefetch)).
    Running,
    /// An attempt failed; waiting for the next one.
    Retrying,
    /// Finished successfully.
    Succeeded,
    /// Dead-lettered: out of attempts, a permanent error, or a panic.
    Dead,
}

impl JobState {
    /// True for `Succeeded` and `Dead`.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Dead)
    }

    /// The lowercase name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
        }
    }
}

/// The status of one job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct JobStatus {
    /// The job's id.
    pub job_id: JobId,
    /// The job's name.
    pub job: Cow<'static, str>,
    /// The job's queue.
    pub queue: Cow<'static, str>,
    /// Where it is.
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    /// The last failure, as `error: source: source`.
    pub last_error: Option<String>,
    /// When it was enqueued.
    #[serde(with = "system_time_rfc3339")]
    pub enqueued_at: SystemTime,
    /// When its status last changed.
    #[serde(with = "system_time_rfc3339")]
    pub updated_at: SystemTime,
}

impl JobStatus {
    /// A status; for backends written outside this crate (the struct is non-exhaustive).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job_id: JobId,
        job: impl Into<Cow<'static, str>>,
        queue: impl Into<Cow<'static, str>>,
        state: JobState,
        attempts: u32,
        last_error: Option<String>,
        enqueued_at: SystemTime,
        updated_at: SystemTime,
    ) -> Self {
        Self {
            job_id,
            job: job.into(),
            queue: queue.into(),
            state,
            attempts,
            last_error,
            enqueued_at,
            updated_at,
        }
    }
}

mod system_time_rfc3339 {
    use std::time::SystemTime;

    pub(super) fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let dt: chrono::DateTime<chrono::Utc> = (*t).into();
        s.collect_str(&dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }
}

struct Record {
    kind: u16,
    state: JobState,
    attempts: u32,
    enqueued_ms: u64,
    updated_ms: u64,
    last_error: Option<Box<str>>,
}

#[derive(Default)]
struct Shard {
    live: HashMap<JobId, Record>,
    finished: VecDeque<(Instant, JobId)>,
}

const SHARDS: usize = 32;

/// Bounded status store.
pub(crate) struct StatusStore {
    shards: Box<[Mutex<Shard>]>,
    kinds: Vec<(&'static str, &'static str)>,
    retention: Duration,
    max_finished_per_shard: usize,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

impl StatusStore {
    /// `kinds[i]` is the (job, queue) of kind index `i`.
    pub(crate) fn new(
        kinds: Vec<(&'static str, &'static str)>,
        retention: Duration,
        max_finished: usize,
    ) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            kinds,
            retention,
            max_finished_per_shard: max_finished.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, id: &JobId) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(id.shard_key() as usize) % SHARDS]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn insert(&self, id: JobId, kind: u16, state: JobState) {
        let now = now_ms();
        self.shard(&id).live.insert(
            id,
            Record {
                kind,
                state,
                attempts: 0,
                enqueued_ms: now,
                updated_ms: now,
                last_error: None,
            },
        );
    }

    /// Sets the state of a live job (and the attempt count when given).
    pub(crate) fn set(&self, id: JobId, state: JobState, attempts: Option<u32>) {
        let now = now_ms();
        if let Some(r) = self.shard(&id).live.get_mut(&id) {
            r.state = state;
            r.updated_ms = now;
            if let Some(a) = attempts {
                r.attempts = a;
            }
        }
    }

    /// Records a failure and the state it led to (retrying or dead).
    pub(crate) fn failed(&self, id: JobId, state: JobState, error: &str) {
        let now = now_ms();
        let mut shard = self.shard(&id);
        if let Some(r) = shard.live.get_mut(&id) {
            r.state = state;
            r.updated_ms = now;
            r.last_error = Some(error.into());
        }
        if state.is_finished() {
            self.retire(&mut shard, id);
        }
    }

    pub(crate) fn succeeded(&self, id: JobId) {
        let now = now_ms();
        let mut shard = self.shard(&id);
        if let Some(r) = shard.live.get_mut(&id) {
            r.state = JobState::Succeeded;
            r.updated_ms = now;
        }
        self.retire(&mut shard, id);
    }

    /// Drops a record (a job handed back to its caller).
    pub(crate) fn forget(&self, id: JobId) {
        self.shard(&id).live.remove(&id);
    }

    /// Resets a dead job for requeue: queued again, attempts from zero, error kept.
    pub(crate) fn requeued(&self, id: JobId, kind: u16) {
        let now = now_ms();
        let mut shard = self.shard(&id);
        let record = shard.live.entry(id).or_insert(Record {
            kind,
            state: JobState::Queued,
            attempts: 0,
            enqueued_ms: now,
            updated_ms: now,
            last_error: None,
        });
        record.state = JobState::Queued;
        record.attempts = 0;
        record.updated_ms = now;
    }

    fn retire(&self, shard: &mut Shard, id: JobId) {
        let now = Instant::now();
        shard.finished.push_back((now, id));
        while let Some(&(at, old)) = shard.finished.front() {
            let expired = now.saturating_duration_since(at) >= self.retention;
            if !expired && shard.finished.len() <= self.max_finished_per_shard {
                break;
            }
            shard.finished.pop_front();
            // A requeued job is live again; only drop records that are still finished.
            if shard.live.get(&old).is_some_and(|r| r.state.is_finished()) {
                shard.live.remove(&old);
            }
        }
    }

    /// Drops expired finished records in every shard (called by the maintenance tick).
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            while let Some(&(at, old)) = shard.finished.front() {
                if now.saturating_duration_since(at) < self.retention {
                    break;
                }
                shard.finished.pop_front();
                if shard.live.get(&old).is_some_and(|r| r.state.is_finished()) {
                    shard.live.remove(&old);
                }
            }
        }
    }

    pub(crate) fn get(&self, id: JobId) -> Option<JobStatus> {
        let shard = self.shard(&id);
        let r = shard.live.get(&id)?;
        let (job, queue) = self.kinds.get(r.kind as usize).copied()?;
        Some(JobStatus {
            job_id: id,
            job: Cow::Borrowed(job),
            queue: Cow::Borrowed(queue),
            state: r.state,
            attempts: r.attempts,
            last_error: r.last_error.as_deref().map(str::to_owned),
            enqueued_at: from_ms(r.enqueued_ms),
            updated_at: from_ms(r.updated_ms),
        })
    }

    /// Ids of the jobs in `state` (used at shutdown).
    pub(crate) fn ids_in(&self, state: JobState) -> Vec<JobId> {
        let mut ids = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            ids.extend(
                shard
                    .live
                    .iter()
                    .filter(|(_, r)| r.state == state)
                    .map(|(id, _)| *id),
            );
        }
        ids
    }

    /// Records held, live and finished (for tests of boundedness).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .live
                    .len()
            })
            .sum()
    }
}

impl std::fmt::Debug for StatusStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusStore")
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: usize) -> StatusStore {
        StatusStore::new(vec![("a", "q")], Duration::from_secs(60), max)
    }

    #[tokio::test(start_paused = true)]
    async fn lifecycle_and_expiry() {
        let s = store(1000);
        let id = JobId::new();
        s.insert(id, 0, JobState::Queued);
        assert_eq!(s.get(id).unwrap().state, JobState::Queued);
        s.set(id, JobState::Running, Some(1));
        s.failed(id, JobState::Retrying, "boom");
        let st = s.get(id).unwrap();
        assert_eq!((st.state, st.attempts), (JobState::Retrying, 1));
        assert_eq!(st.last_error.as_deref(), Some("boom"));
        s.succeeded(id);
        assert_eq!(s.get(id).unwrap().state, JobState::Succeeded);
        tokio::time::advance(Duration::from_secs(61)).await;
        s.prune();
        assert!(s.get(id).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn finished_records_are_capped() {
        let s = store(SHARDS * 2);
        for _ in 0..10_000 {
            let id = JobId::new();
            s.insert(id, 0, JobState::Queued);
            s.succeeded(id);
        }
        assert!(s.len() <= SHARDS * 3, "{}", s.len());
    }
}
