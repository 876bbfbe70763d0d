//! Dead letters: the record of a job that will not be retried, the hooks that receive it,
//! and the bounded store it can be listed from and requeued out of.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::job::JobId;

/// A job that died: out of attempts, failed permanently, panicked, or could not be decoded.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The job's id (kept on requeue).
    pub job_id: JobId,
    /// The job's name.
    pub job: String,
    /// The job's queue.
    pub queue: String,
    /// The job's arguments as JSON.
    pub payload: serde_json::Value,
    /// Attempts made.
    pub attempts: u32,
    /// The last error and its sources, outermost first.
    pub error: Vec<String>,
    /// When the job was first enqueued.
    #[serde(with = "rfc3339")]
    pub enqueued_at: SystemTime,
    /// When it died.
    #[serde(with = "rfc3339")]
    pub died_at: SystemTime,
}

impl DeadLetter {
    /// A record; for backends written outside this crate (the struct is non-exhaustive).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job_id: JobId,
        job: impl Into<String>,
        queue: impl Into<String>,
        payload: serde_json::Value,
        attempts: u32,
        error: Vec<String>,
        enqueued_at: SystemTime,
        died_at: SystemTime,
    ) -> Self {
        Self {
            job_id,
            job: job.into(),
            queue: queue.into(),
            payload,
            attempts,
            error,
            enqueued_at,
            died_at,
        }
    }

    /// The error chain joined as `error: source: source`.
    pub fn error_message(&self) -> String {
        self.error.join(": ")
    }
}

mod rfc3339 {
    use std::time::SystemTime;

    pub(super) fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let dt: chrono::DateTime<chrono::Utc> = (*t).into();
        s.collect_str(&dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }
}

/// What a dead-letter hook may return: `()` or a `Result` whose error is logged.
pub trait HookOutcome: Send {
    /// `Err(message)` when the hook failed.
    fn into_result(self) -> Result<(), String>;
}

impl HookOutcome for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display + Send> HookOutcome for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

pub(crate) type HookFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A dead-letter hook, type-erased.
#[derive(Clone)]
pub(crate) struct DeadLetterHook(pub(crate) Arc<dyn Fn(DeadLetter) -> HookFuture + Send + Sync>);

impl DeadLetterHook {
    pub(crate) fn new<F, Fut>(hook: F) -> Self
    where
        F: Fn(DeadLetter) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HookOutcome,
    {
        Self(Arc::new(move |dead| {
            let fut = hook(dead);
            Box::pin(async move { fut.await.into_result() })
        }))
    }
}

impl fmt::Debug for DeadLetterHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeadLetterHook")
    }
}

/// The bounded in-memory store of dead letters; the oldest is evicted (and logged) when full.
#[derive(Debug)]
pub(crate) struct DeadLetterStore {
    items: Mutex<VecDeque<DeadLetter>>,
    capacity: usize,
}

impl DeadLetterStore {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<DeadLetter>> {
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn push(&self, dead: DeadLetter) {
        if self.capacity == 0 {
            return;
        }
        let mut items = self.lock();
        while items.len() >= self.capacity {
            if let Some(old) = items.pop_front() {
                tracing::warn!(job_id = %old.job_id, job = %old.job, "dead-letter store full: evicting the oldest dead letter");
            }
        }
        items.push_back(dead);
    }

    pub(crate) fn list(&self) -> Vec<DeadLetter> {
        self.lock().iter().cloned().collect()
    }

    pub(crate) fn get(&self, id: JobId) -> Option<DeadLetter> {
        self.lock().iter().find(|d| d.job_id == id).cloned()
    }

    pub(crate) fn take(&self, id: JobId) -> Option<DeadLetter> {
        let mut items = self.lock();
        let pos = items.iter().position(|d| d.job_id == id)?;
        items.remove(pos)
    }

    pub(crate) fn put_back(&self, dead: DeadLetter) {
        self.lock().push_back(dead);
    }
}
