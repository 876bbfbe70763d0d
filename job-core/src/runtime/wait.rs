//! Waiting for one job to finish, [`Client::wait`](super::Client::wait), and reading what
//! it produced, [`Client::result`](super::Client::result).
//!
//! Workers signal [`Finished`] each time a job they ran lets go (in memory: once its status
//! says how it ended; on a durable store: once the outcome is written back). A waiter checks
//! the status, and sleeps until the next signal: in memory that is the whole story (no
//! polling: the status cannot change without a signal). A durable store's job may finish in
//! another process, which sends no signal here: where the store announces the ends of
//! watched jobs ([`Backend::watch_finish`](crate::backend::Backend::watch_finish)), the
//! waiter watches its job and also wakes on the store's signal, reading the status again
//! every [`WATCHED_RECHECK`] at most in case an announcement was lost; elsewhere it reads
//! the status again at a growing interval ([`DURABLE_RECHECK_MAX`] at most).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{QueryError, ResultError, WaitError};
use crate::job::{Job, JobId};
use crate::observe::status::{JobState, JobStatus};

use super::Client;

/// The longest a waiter on a durable store sleeps between two reads of the status.
pub(crate) const DURABLE_RECHECK_MAX: Duration = Duration::from_millis(250);
/// Its first sleep (doubled after each read that finds the job still live).
const DURABLE_RECHECK_MIN: Duration = Duration::from_millis(5);
/// The longest a waiter whose job the store announces sleeps between two reads of the
/// status (a safety net: announcements are sent once, and a lost connection is noticed
/// and signalled, so this only matters when something else lost one).
pub(crate) const WATCHED_RECHECK: Duration = Duration::from_secs(2);

/// Wakes the tasks waiting for jobs to finish. Costs one atomic load per signal while
/// nobody waits.
#[derive(Debug, Default)]
pub(crate) struct Finished {
    waiters: AtomicUsize,
    notify: Notify,
}

impl Finished {
    /// A job may have finished: its status already says so.
    pub(crate) fn signal(&self) {
        // Pairs with the fence in `Waiting::new`: either this load sees the waiter, or the
        // waiter's status read (after its fence) sees the change made before this one.
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// A registered waiter; unregisters when dropped (also when its future is).
struct Waiting<'a>(&'a Finished);

impl<'a> Waiting<'a> {
    fn new(f: &'a Finished) -> Self {
        f.waiters.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Self(f)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) async fn wait(
    client: &Client,
    id: JobId,
    timeout: Duration,
) -> Result<JobStatus, WaitError> {
    let deadline = Instant::now() + timeout;
    let durable = client.inner.durable.as_ref();
    let finished = durable.map_or(&client.inner.finished, |d| &d.finished);
    let _waiting = Waiting::new(finished);
    let mut recheck = DURABLE_RECHECK_MIN;
    // The store is asked once, after the first read finds the job live.
    let mut to_watch = durable.filter(|d| d.caps.finish_wakeups);
    let mut announced: Option<Arc<Notify>> = None;
    loop {
        // Registered before the status is read: a signal after the read wakes this one.
        let signalled = finished.notify.notified();
        let store_signal = announced.clone();
        let heard = store_signal.as_deref().map(Notify::notified);
        let status = match client.status(id).await {
            Ok(Some(status)) => status,
            Ok(None) => return Err(WaitError::NotFound(id)),
            Err(QueryError::Unsupported { backend, .. }) => {
                return Err(WaitError::Unsupported { backend });
            }
            Err(e) => return Err(WaitError::Query(e)),
        };
        if status.state.is_finished() {
            return Ok(status);
        }
        if let Some(d) = to_watch.take() {
            match d.backend.watch_finish(id).await {
                Ok(signal) => {
                    // Read again: the job may have ended before the watch began.
                    announced = Some(signal);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(job_id = %id, error = %e, "the store cannot announce this job's end; reading its status at intervals");
                }
            }
        }
        let wake = match (durable, &announced) {
            (None, _) => deadline,
            (Some(_), Some(_)) => (Instant::now() + WATCHED_RECHECK).min(deadline),
            (Some(_), None) => {
                let at = (Instant::now() + recheck).min(deadline);
                recheck = (recheck * 2).min(DURABLE_RECHECK_MAX);
                at
            }
        };
        let heard = async {
            match heard {
                Some(heard) => heard.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = signalled => {}
            () = heard => {}
            () = tokio::time::sleep_until(wake) => {
                if wake >= deadline {
                    return Err(WaitError::TimedOut(Box::new(status)));
                }
            }
        }
    }
}

/// The typed result of job `id`, a `J`; see [`Client::result`](super::Client::result).
pub(crate) async fn result<J: Job>(client: &Client, id: JobId) -> Result<J::Output, ResultError> {
    if let Some(d) = client.inner.durable.as_ref()
        && !d.caps.results
    {
        return Err(ResultError::Unsupported {
            backend: d.backend.name(),
        });
    }
    let status = match client.status(id).await {
        Ok(Some(status)) => status,
        Ok(None) => return Err(ResultError::NotFound(id)),
        Err(QueryError::Unsupported { backend, .. }) => {
            return Err(ResultError::Unsupported { backend });
        }
        Err(e) => return Err(ResultError::Query(e)),
    };
    read_result::<J>(status)
}

/// The typed result a status holds.
pub(crate) fn read_result<J: Job>(status: JobStatus) -> Result<J::Output, ResultError> {
    let id = status.job_id;
    if status.job != J::NAME {
        return Err(ResultError::WrongJob {
            id,
            expected: J::NAME,
            found: status.job.into_owned(),
        });
    }
    match status.state {
        JobState::Succeeded => {}
        state if state.is_finished() => return Err(ResultError::Failed { id, state }),
        state => return Err(ResultError::NotFinished { id, state }),
    }
    let value = match status.result {
        Some(value) => value,
        // `()` keeps nothing: there is nothing to lose.
        None if std::any::TypeId::of::<J::Output>() == std::any::TypeId::of::<()>() => {
            serde_json::Value::Null
        }
        None => return Err(ResultError::NotKept(id)),
    };
    serde_json::from_value(value).map_err(|e| ResultError::Decode {
        id,
        message: e.to_string(),
    })
}
