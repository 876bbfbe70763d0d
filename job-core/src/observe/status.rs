//! Job status by id: a sharded map of compact records. Live jobs are bounded by capacity;
//! finished ones (succeeded or dead) expire after the retention time or once more than the
//! retention count are kept, oldest first.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Cancelled by id ([`Client::cancel`](crate::Client::cancel)) before it finished: it
    /// will not run (again). Kept for the retention time, like a succeeded job.
    Cancelled,
}

impl JobState {
    /// True for `Succeeded`, `Dead` and `Cancelled`: the job will not run again (unless a
    /// dead one is requeued).
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Dead | Self::Cancelled)
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
            Self::Cancelled => "cancelled",
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
    /// The job's current error, as `error: source: source`: the failure of its latest failed
    /// attempt while it is retrying, running again after it, or dead; `None` before any
    /// attempt failed and once the job succeeded (an old failure is not the current error
    /// of a job that then succeeded: see [`last_failure`](Self::last_failure)).
    pub last_error: Option<String>,
    /// The error of the latest failed attempt, kept through a later success (`None` when no
    /// attempt has failed). This is the latest entry of the job's attempt history; a full
    /// per-attempt history comes with the dashboard.
    pub last_failure: Option<String>,
    /// What the job last reported with [`JobContext::progress`](crate::JobContext::progress)
    /// (a percentage, or any small JSON value), kept after it finished; `None` before it
    /// reported any.
    pub progress: Option<serde_json::Value>,
    /// What the job produced, as JSON, once it succeeded (see [`Job::Output`](crate::Job::Output));
    /// `None` for a job that keeps no result. Read it typed with
    /// [`Client::result`](crate::Client::result).
    pub result: Option<serde_json::Value>,
    /// When it was enqueued.
    #[serde(with = "system_time_rfc3339")]
    pub enqueued_at: SystemTime,
    /// When its status last changed.
    #[serde(with = "system_time_rfc3339")]
    pub updated_at: SystemTime,
}

impl JobStatus {
    /// A status; for backends written outside this crate (the struct is non-exhaustive).
    ///
    /// `last_error` is the current error (pass `None` for a succeeded job);
    /// [`last_failure`](Self::last_failure) starts equal to it: a backend that keeps the
    /// failure of a job that then succeeded sets it with
    /// [`with_last_failure`](Self::with_last_failure).
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use job_core::{JobId, JobState, JobStatus};
    ///
    /// let now = SystemTime::now();
    /// let st = JobStatus::new(JobId::new(), "send_email", "email", JobState::Succeeded, 2, None, now, now)
    ///     .with_last_failure(Some("SMTP timed out".to_owned()));
    /// assert_eq!(st.last_error, None);
    /// assert_eq!(st.last_failure.as_deref(), Some("SMTP timed out"));
    /// ```
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
            last_failure: last_error.clone(),
            last_error,
            progress: None,
            result: None,
            enqueued_at,
            updated_at,
        }
    }

    /// The result the job produced (see [`result`](Self::result)).
    #[must_use]
    pub fn with_result(mut self, result: Option<serde_json::Value>) -> Self {
        self.result = result;
        self
    }

    /// The progress the job last reported (see [`progress`](Self::progress)).
    #[must_use]
    pub fn with_progress(mut self, progress: Option<serde_json::Value>) -> Self {
        self.progress = progress;
        self
    }

    /// The same status with `last_failure` (the error of the latest failed attempt).
    #[must_use]
    pub fn with_last_failure(mut self, last_failure: Option<String>) -> Self {
        self.last_failure = last_failure;
        self
    }

    /// A status from what a store keeps: the latest failure, from which the current error
    /// follows (none once the job succeeded).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_failure(
        job_id: JobId,
        job: impl Into<Cow<'static, str>>,
        queue: impl Into<Cow<'static, str>>,
        state: JobState,
        attempts: u32,
        failure: Option<String>,
        enqueued_at: SystemTime,
        updated_at: SystemTime,
    ) -> Self {
        let current = failure.clone().filter(|_| state != JobState::Succeeded);
        Self::new(
            job_id,
            job,
            queue,
            state,
            attempts,
            current,
            enqueued_at,
            updated_at,
        )
        .with_last_failure(failure)
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
    /// The latest failure (kept through a success; the current error follows from `state`).
    last_error: Option<Box<str>>,
    /// What the job reported and produced, for the few jobs that do (boxed: a record of a
    /// job that does neither stays one pointer larger, not two payloads).
    kept: Option<Box<Kept>>,
}

/// A record's progress and result.
#[derive(Default)]
struct Kept {
    /// The progress the job reported last, once an attempt that reported one ended (while
    /// it runs, the worker's progress cell has it).
    progress: Option<crate::backend::Payload>,
    /// The result of its successful attempt.
    result: Option<crate::backend::Payload>,
}

/// Hashes a [`JobId`] without SipHash: the ids are made by [`JobId::new`] and never chosen by
/// a caller. The bucket comes from the id's sequence number (consecutive jobs, which also
/// run one after the other, land in neighbouring buckets: the lookups of the worker follow
/// the inserts of the producer through memory instead of jumping at random), the tag bits
/// from its random bits.
#[derive(Clone, Copy, Default)]
struct IdHasherBuilder;

#[derive(Default)]
struct IdHasher(u64);

impl std::hash::BuildHasher for IdHasherBuilder {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // A `JobId` writes its 16 bytes at once: take the last 8 (random bits, sequence).
        // Anything else is folded in 8 bytes at a time.
        if let Some(tail) = bytes.last_chunk::<8>()
            && bytes.len() == 16
        {
            self.0 = u64::from_be_bytes(*tail);
            return;
        }
        self.0 = crate::registry::fold_bytes(self.0, bytes);
    }

    fn write_usize(&mut self, _len: usize) {
        // The length prefix of the id's byte array: the same for every key.
    }

    fn finish(&self) -> u64 {
        // The sequence picks the shard (`shard_of`) and the bucket within it; the top bits
        // (hashbrown's tag) mix the random bits.
        let sequence = self.0 & 0xFFFF_FFFF;
        let random = self.0 >> 32;
        let tag = random.wrapping_mul(0x9E37_79B9_7F4A_7C15) & 0xFFFF_FFFF_0000_0000;
        tag | bucket_of(sequence)
    }
}

#[derive(Default)]
struct Shard {
    live: HashMap<JobId, Record, IdHasherBuilder>,
    /// Finished jobs, oldest first, with when they finished (ms on the store's monotonic
    /// clock).
    finished: VecDeque<(u64, JobId)>,
}

/// The attempt one worker is running: job, attempt number, start. A worker writes only its
/// own board, so starting an attempt takes no shard lock and no map lookup; a reader merges
/// the board with the job's record (see [`StatusStore::get`]).
#[derive(Default)]
#[repr(align(128))]
struct Board(Mutex<Option<(JobId, u32, Instant)>>);

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(JobId, u32, Instant)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

const SHARDS: usize = 32;
/// Consecutive ids go to one shard in runs of this many (then the next shard): a worker
/// walking the queue then reads runs of neighbouring buckets, which the hardware prefetches,
/// rather than one bucket in each of 32 tables in turn.
const RUN: u64 = 16;

/// The shard of a sequence number: runs of [`RUN`] consecutive ids per shard, round robin.
fn shard_of(sequence: u64) -> usize {
    ((sequence / RUN) % SHARDS as u64) as usize
}

/// The bucket of a sequence number within its shard: consecutive in a run, and the runs of
/// one shard one after the other.
fn bucket_of(sequence: u64) -> u64 {
    (sequence / (RUN * SHARDS as u64)) * RUN + sequence % RUN
}

/// Bounded status store.
///
/// Callers pass the instant of each change (one clock read per transition, shared with the
/// attempt's duration); the wall-clock time recorded is derived from it (see [`Clock`]).
pub(crate) struct StatusStore {
    shards: Box<[Mutex<Shard>]>,
    /// One per worker.
    boards: Box<[Board]>,
    kinds: Vec<(&'static str, &'static str)>,
    retention: Duration,
    retention_ms: u64,
    max_finished_per_shard: usize,
    clock: Clock,
}

/// Wall-clock milliseconds from a monotonic instant: `offset_ms` is the Unix time of
/// `anchor`, re-read from the system clock by [`StatusStore::prune`] every second, so a step
/// of the system clock shows within a second.
struct Clock {
    anchor: Instant,
    offset_ms: AtomicU64,
}

impl Clock {
    fn new() -> Self {
        let clock = Self {
            anchor: Instant::now(),
            offset_ms: AtomicU64::new(0),
        };
        clock.sync();
        clock
    }

    fn sync(&self) {
        let since = Instant::now().saturating_duration_since(self.anchor);
        self.offset_ms.store(
            now_ms().saturating_sub(since.as_millis() as u64),
            Ordering::Relaxed,
        );
    }

    /// Milliseconds from the anchor to `at`, monotonic.
    fn mono_ms(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.anchor);
        since.as_secs() * 1000 + u64::from(since.subsec_millis())
    }

    fn unix_ms_of_mono(&self, mono: u64) -> u64 {
        self.offset_ms.load(Ordering::Relaxed) + mono
    }
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
    /// `kinds[i]` is the (job, queue) of kind index `i`; `workers`: how many workers report
    /// attempts (`running`, `succeeded` and `failed` take a worker index below it).
    pub(crate) fn new(
        kinds: Vec<(&'static str, &'static str)>,
        retention: Duration,
        max_finished: usize,
        workers: usize,
    ) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            boards: (0..workers).map(|_| Board::default()).collect(),
            kinds,
            retention,
            retention_ms: u64::try_from(retention.as_millis()).unwrap_or(u64::MAX),
            max_finished_per_shard: max_finished.div_ceil(SHARDS).max(1),
            clock: Clock::new(),
        }
    }

    fn shard(&self, id: &JobId) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[shard_of(id.shard_key() & 0xFFFF_FFFF)]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a new job; its enqueue time is the one its id carries.
    pub(crate) fn insert(&self, id: JobId, kind: u16, state: JobState) {
        let now = id.unix_ms().unwrap_or_else(now_ms);
        self.shard(&id).live.insert(
            id,
            Record {
                kind,
                state,
                attempts: 0,
                enqueued_ms: now,
                updated_ms: now,
                last_error: None,
                kept: None,
            },
        );
    }

    /// Worker `worker` starts attempt `attempt` of `id` at `at` (only its board changes).
    pub(crate) fn running(&self, worker: usize, id: JobId, attempt: u32, at: Instant) {
        if let Some(board) = self.boards.get(worker) {
            *board.lock() = Some((id, attempt, at));
        }
    }

    /// Attempt `attempt` of `id`, run by `worker`, failed; the job is now in `state`
    /// (retrying or dead).
    pub(crate) fn failed(
        &self,
        worker: usize,
        id: JobId,
        attempt: u32,
        state: JobState,
        error: &str,
    ) {
        let mono = self.clock.mono_ms(Instant::now());
        let now = self.clock.unix_ms_of_mono(mono);
        {
            let mut shard = self.shard(&id);
            if let Some(r) = shard.live.get_mut(&id) {
                r.state = state;
                r.attempts = attempt;
                r.updated_ms = now.max(r.enqueued_ms);
                r.last_error = Some(error.into());
            }
            if state.is_finished() {
                self.retire(&mut shard, id, mono);
            }
        }
        self.clear_board(worker);
    }

    /// Attempt `attempt` of `id`, run by `worker`, succeeded at `at`, producing `result`.
    pub(crate) fn succeeded(
        &self,
        worker: usize,
        id: JobId,
        attempt: u32,
        at: Instant,
        result: crate::registry::Produced,
    ) {
        let mono = self.clock.mono_ms(at);
        let now = self.clock.unix_ms_of_mono(mono);
        {
            let mut shard = self.shard(&id);
            if let Some(r) = shard.live.get_mut(&id) {
                r.state = JobState::Succeeded;
                r.attempts = attempt;
                r.updated_ms = now.max(r.enqueued_ms);
                if result.is_some() {
                    r.kept.get_or_insert_default().result = result;
                }
            }
            self.retire(&mut shard, id, mono);
        }
        self.clear_board(worker);
    }

    /// A cancel found `id` waiting (queued, scheduled or retrying): it is cancelled now.
    /// Returns the state the cancel found, the record left as it was when that is not a
    /// waiting one (finished, or running); `None` when no record is kept.
    pub(crate) fn cancel_waiting(&self, id: JobId) -> Option<JobState> {
        let mono = self.clock.mono_ms(Instant::now());
        let now = self.clock.unix_ms_of_mono(mono);
        let mut shard = self.shard(&id);
        let r = shard.live.get(&id)?;
        if r.state.is_finished() {
            return Some(r.state);
        }
        if self.on_board(id, r.attempts).is_some() {
            return Some(JobState::Running);
        }
        let was = r.state;
        if let Some(r) = shard.live.get_mut(&id) {
            r.state = JobState::Cancelled;
            r.updated_ms = now.max(r.enqueued_ms);
        }
        self.retire(&mut shard, id, mono);
        Some(was)
    }

    /// `id` is cancelled: its attempt `attempt.1`, run by worker `attempt.0`, ended by a
    /// cancel, or (`None`) a worker dropped it before it started. A finished record is
    /// left alone.
    pub(crate) fn cancelled(&self, attempt: Option<(usize, u32)>, id: JobId) {
        let mono = self.clock.mono_ms(Instant::now());
        let now = self.clock.unix_ms_of_mono(mono);
        {
            let mut shard = self.shard(&id);
            let changed = match shard.live.get_mut(&id) {
                Some(r) if !r.state.is_finished() => {
                    r.state = JobState::Cancelled;
                    if let Some((_, n)) = attempt {
                        r.attempts = n;
                    }
                    r.updated_ms = now.max(r.enqueued_ms);
                    true
                }
                _ => false,
            };
            if changed {
                self.retire(&mut shard, id, mono);
            }
        }
        if let Some((worker, _)) = attempt {
            self.clear_board(worker);
        }
    }

    /// After the record says how the attempt ended, so that a reader never sees neither.
    /// Before the caller publishes the end anywhere else (the dead-letter store, from which
    /// a job can be requeued), so that a requeued job's record never meets a stale board.
    fn clear_board(&self, worker: usize) {
        if let Some(board) = self.boards.get(worker) {
            *board.lock() = None;
        }
    }

    /// The attempt running `id` now, if any: number and start. Call with `id`'s shard
    /// locked and its record's count of ended attempts: a board whose attempt is not newer
    /// is one whose end the record already has.
    fn on_board(&self, id: JobId, ended: u32) -> Option<(u32, Instant)> {
        self.boards.iter().find_map(|b| match *b.lock() {
            Some((on, attempt, at)) if on == id && attempt > ended => Some((attempt, at)),
            _ => None,
        })
    }

    /// Keeps the progress the attempt of `id` that just ended reported last.
    pub(crate) fn set_progress(&self, id: JobId, progress: crate::backend::Payload) {
        if let Some(r) = self.shard(&id).live.get_mut(&id) {
            r.kept.get_or_insert_default().progress = Some(progress);
        }
    }

    /// The registered kind of `id`, while a record is kept.
    pub(crate) fn kind_of(&self, id: JobId) -> Option<u16> {
        self.shard(&id).live.get(&id).map(|r| r.kind)
    }

    /// Drops a record (a job handed back to its caller).
    pub(crate) fn forget(&self, id: JobId) {
        self.shard(&id).live.remove(&id);
    }

    /// Resets a dead job for requeue: queued again, attempts from zero, and no error (a fresh
    /// start, as the durable stores record it).
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
            kept: None,
        });
        record.state = JobState::Queued;
        record.attempts = 0;
        record.updated_ms = now;
        record.last_error = None;
    }

    fn retire(&self, shard: &mut Shard, id: JobId, now: u64) {
        shard.finished.push_back((now, id));
        while let Some(&(at, old)) = shard.finished.front() {
            let expired = now.saturating_sub(at) >= self.retention_ms;
            if !expired && shard.finished.len() <= self.max_finished_per_shard {
                break;
            }
            shard.finished.pop_front();
            // A requeued job is live again; only drop records that are still finished.
            drop_if_finished(&mut shard.live, old);
        }
    }

    /// Drops expired finished records in every shard (called by the maintenance tick).
    pub(crate) fn prune(&self) {
        self.clock.sync();
        let now = self.clock.mono_ms(Instant::now());
        for shard in self.shards.iter() {
            let mut shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            while let Some(&(at, old)) = shard.finished.front() {
                if now.saturating_sub(at) < self.retention_ms {
                    break;
                }
                shard.finished.pop_front();
                drop_if_finished(&mut shard.live, old);
            }
        }
    }

    pub(crate) fn get(&self, id: JobId) -> Option<JobStatus> {
        let shard = self.shard(&id);
        let r = shard.live.get(&id)?;
        let (job, queue) = self.kinds.get(r.kind as usize).copied()?;
        let (state, attempts, updated_ms) = match self.on_board(id, r.attempts) {
            Some((attempt, at)) if !r.state.is_finished() => {
                let started = self.clock.unix_ms_of_mono(self.clock.mono_ms(at));
                (JobState::Running, attempt, started.max(r.enqueued_ms))
            }
            _ => (r.state, r.attempts, r.updated_ms),
        };
        Some(
            JobStatus::from_failure(
                id,
                Cow::Borrowed(job),
                Cow::Borrowed(queue),
                state,
                attempts,
                r.last_error.as_deref().map(str::to_owned),
                from_ms(r.enqueued_ms),
                from_ms(updated_ms),
            )
            .with_progress(
                r.kept
                    .as_ref()
                    .and_then(|k| k.progress.as_ref())
                    .map(crate::backend::Payload::to_value),
            )
            .with_result(
                r.kept
                    .as_ref()
                    .and_then(|k| k.result.as_ref())
                    .map(crate::backend::Payload::to_value),
            ),
        )
    }

    /// Ids of the jobs whose attempt started and has not ended (used at shutdown, for the
    /// attempts its abort dropped).
    pub(crate) fn running_ids(&self) -> Vec<JobId> {
        let started: Vec<(JobId, u32)> = self
            .boards
            .iter()
            .filter_map(|b| b.lock().map(|(id, attempt, _)| (id, attempt)))
            .collect();
        started
            .into_iter()
            .filter(|&(id, attempt)| {
                self.shard(&id)
                    .live
                    .get(&id)
                    .is_some_and(|r| !r.state.is_finished() && attempt > r.attempts)
            })
            .map(|(id, _)| id)
            .collect()
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

/// Removes `id`'s record if it is finished, with one lookup.
fn drop_if_finished(live: &mut HashMap<JobId, Record, IdHasherBuilder>, id: JobId) {
    if let std::collections::hash_map::Entry::Occupied(e) = live.entry(id)
        && e.get().state.is_finished()
    {
        e.remove();
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
        StatusStore::new(vec![("a", "q")], Duration::from_secs(60), max, 2)
    }

    #[tokio::test(start_paused = true)]
    async fn lifecycle_and_expiry() {
        let s = store(1000);
        let id = JobId::new();
        s.insert(id, 0, JobState::Queued);
        assert_eq!(s.get(id).unwrap().state, JobState::Queued);
        s.running(0, id, 1, Instant::now());
        s.failed(0, id, 1, JobState::Retrying, "boom");
        let st = s.get(id).unwrap();
        assert_eq!((st.state, st.attempts), (JobState::Retrying, 1));
        assert_eq!(st.last_error.as_deref(), Some("boom"));
        s.running(1, id, 2, Instant::now());
        s.succeeded(1, id, 2, Instant::now(), None);
        let st = s.get(id).unwrap();
        assert_eq!((st.state, st.attempts), (JobState::Succeeded, 2));
        // Succeeded: no current error; the failure stays as the latest in the history.
        assert_eq!(st.last_error, None);
        assert_eq!(st.last_failure.as_deref(), Some("boom"));
        assert!(st.updated_at >= st.enqueued_at);
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
            s.succeeded(0, id, 1, Instant::now(), None);
        }
        assert!(s.len() <= SHARDS * 3, "{}", s.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_attempt_reads_as_running_until_its_end_is_recorded() {
        let s = store(1000);
        let (id, other) = (JobId::new(), JobId::new());
        s.insert(id, 0, JobState::Queued);
        s.insert(other, 0, JobState::Queued);
        tokio::time::advance(Duration::from_millis(5)).await;
        let started = Instant::now();
        s.running(1, id, 1, started);
        let st = s.get(id).unwrap();
        assert_eq!((st.state, st.attempts), (JobState::Running, 1));
        assert!(
            st.updated_at > st.enqueued_at,
            "updated at the start of the attempt"
        );
        assert_eq!(s.get(other).unwrap().state, JobState::Queued);
        assert_eq!(s.running_ids(), vec![id]);

        // A retry: the record holds the failed attempt; the next one runs on another worker.
        s.failed(1, id, 1, JobState::Retrying, "boom");
        assert_eq!(s.get(id).unwrap().state, JobState::Retrying);
        assert!(s.running_ids().is_empty());
        s.running(0, id, 2, Instant::now());
        let st = s.get(id).unwrap();
        assert_eq!((st.state, st.attempts), (JobState::Running, 2));
        assert_eq!(st.last_error.as_deref(), Some("boom"));

        // Dead, then requeued by id: queued again with no attempts, never "running".
        s.failed(0, id, 2, JobState::Dead, "boom again");
        assert_eq!(s.get(id).unwrap().state, JobState::Dead);
        s.requeued(id, 0);
        let st = s.get(id).unwrap();
        assert_eq!((st.state, st.attempts), (JobState::Queued, 0));
        assert_eq!(
            (st.last_error, st.last_failure),
            (None, None),
            "a fresh start"
        );
        assert!(s.running_ids().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_dropped_mid_run_stays_running() {
        // Shutdown aborts a worker between `running` and its end: the id must be named.
        let s = store(1000);
        let id = JobId::new();
        s.insert(id, 0, JobState::Queued);
        s.running(0, id, 1, Instant::now());
        assert_eq!(s.running_ids(), vec![id]);
        assert_eq!(s.get(id).unwrap().state, JobState::Running);
    }
}
