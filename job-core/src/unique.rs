//! Unique jobs: a job enqueued while another with the same key holds it is not enqueued
//! again; the caller gets the id of the one that holds the key.
//!
//! A key is declared on the job (`#[job(unique(by = [to, subject], for = "10m"))]`, from
//! the named arguments' values; `unique(for = "10m")` alone keys on all of them) or given
//! per call ([`Client::enqueue_unique`](crate::Client::enqueue_unique), for keys known only
//! at run time, such as an HTTP request's `Idempotency-Key`). Keys belong to one job type:
//! the same key on two jobs never collides.
//!
//! **What holds a key.** The first enqueue with a key takes it for its window (`for`),
//! measured from that enqueue:
//! * [`UniqueUntil::Window`] (the default): for the whole window, whatever happens to the
//!   job: a duplicate an hour after the first job succeeded, inside a 24 h window, is still
//!   a duplicate (Stripe's idempotency keys, Oban's default).
//! * [`UniqueUntil::Finished`] (`until = "finished"`): until the window ends or the job
//!   finishes (succeeded, dead-lettered or cancelled), whichever is first: one job at a
//!   time, and a new one may be enqueued as soon as the last one is done.
//!
//! The check and the enqueue are one atomic step in the store (the enqueue script on
//! Redis, one transaction holding the key's row on Postgres, the admission lock in
//! memory), so sixteen producers racing with one key make one job. Stores that cannot keep
//! keys (RabbitMQ, Azure Queue Storage) answer
//! [`EnqueueError::Unsupported`](crate::EnqueueError::Unsupported) for a unique enqueue;
//! see [`Capabilities::unique_keys`](crate::backend::Capabilities::unique_keys).

use std::fmt;
use std::time::Duration;

use crate::job::JobId;

/// How long a key keeps later jobs out: see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UniqueUntil {
    /// For the whole window, also after the job finished.
    #[default]
    Window,
    /// Until the window ends or the job finishes, whichever is first.
    Finished,
}

/// A uniqueness key with its window. Built per call with [`Unique::new`]; the job's
/// declared key comes from [`Job::unique`](crate::Job::unique).
///
/// ```
/// use std::time::Duration;
/// use job_core::unique::{Unique, UniqueUntil};
///
/// let day = Unique::new("order-42-receipt", Duration::from_secs(24 * 3600));
/// assert_eq!(day.until(), UniqueUntil::Window);
/// let one_at_a_time = Unique::new("sync-account-7", Duration::from_secs(600)).until_finished();
/// assert_eq!(one_at_a_time.until(), UniqueUntil::Finished);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Unique {
    /// The raw key (`k:` + a caller's key, `d:` + a declared key's JSON), or why the
    /// declared key could not be encoded.
    raw: Result<String, String>,
    window: Duration,
    until: UniqueUntil,
}

impl Unique {
    /// The key `key` for `window` from the first enqueue ([`UniqueUntil::Window`]).
    pub fn new(key: impl AsRef<str>, window: Duration) -> Self {
        Self {
            raw: Ok(format!("k:{}", key.as_ref())),
            window,
            until: UniqueUntil::Window,
        }
    }

    /// Frees the key as soon as its job finishes ([`UniqueUntil::Finished`]).
    #[must_use]
    pub fn until_finished(mut self) -> Self {
        self.until = UniqueUntil::Finished;
        self
    }

    /// How long the key is held at most.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// What frees the key before its window ends.
    pub fn until(&self) -> UniqueUntil {
        self.until
    }

    /// What `#[job(unique(by = [..], for = "..", until = ".."))]` expands to: the key is
    /// the JSON of `fields` (a tuple of references to the named arguments, or the whole
    /// payload).
    #[doc(hidden)]
    pub fn __declared<T: serde::Serialize + ?Sized>(
        fields: &T,
        window_ms: u64,
        until_finished: bool,
    ) -> Self {
        Self {
            raw: serde_json::to_string(fields)
                .map(|json| format!("d:{json}"))
                .map_err(|e| e.to_string()),
            window: Duration::from_millis(window_ms),
            until: if until_finished {
                UniqueUntil::Finished
            } else {
                UniqueUntil::Window
            },
        }
    }

    /// The key as a store keeps it for job `job`: 32 hex digits (a name-based UUID of the
    /// job's name and the raw key), so a key of any length or content is one short, safe
    /// store key, and two job types never share one.
    ///
    /// # Errors
    /// When the declared key's fields could not be serialized.
    pub(crate) fn for_job(&self, job: &str) -> Result<UniqueKey, String> {
        const NAMESPACE: uuid::Uuid =
            uuid::Uuid::from_u128(0x6a0b_5e1c_7d2f_4c3a_9e81_2f5d_0c47_b913);
        let raw = self.raw.as_ref().map_err(Clone::clone)?;
        let mut name = Vec::with_capacity(job.len() + 1 + raw.len());
        name.extend_from_slice(job.as_bytes());
        name.push(0);
        name.extend_from_slice(raw.as_bytes());
        Ok(UniqueKey {
            key: uuid::Uuid::new_v5(&NAMESPACE, &name).simple().to_string(),
            window: self.window,
            until: self.until,
        })
    }
}

impl fmt::Debug for Unique {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unique")
            .field("key", &self.raw)
            .field("window", &self.window)
            .field("until", &self.until)
            .finish()
    }
}

/// A uniqueness key as a backend receives it
/// ([`Backend::enqueue_unique`](crate::backend::Backend::enqueue_unique)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UniqueKey {
    /// 32 lowercase hex digits, already scoped to the job type.
    pub key: String,
    /// How long the key is held at most, from this enqueue.
    pub window: Duration,
    /// Whether the job's end frees the key earlier.
    pub until: UniqueUntil,
}

impl UniqueKey {
    /// A key as a backend test builds it (`key` must be what a store can keep as is).
    pub fn new(key: impl Into<String>, window: Duration, until: UniqueUntil) -> Self {
        Self {
            key: key.into(),
            window,
            until,
        }
    }
}

/// What a unique enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Enqueued {
    /// The job was enqueued under this id.
    New(JobId),
    /// Another job holds the key: nothing was enqueued; this is the other job's id.
    Existing(JobId),
}

impl Enqueued {
    /// The id of the job that runs: the new one, or the one holding the key.
    pub fn id(self) -> JobId {
        match self {
            Self::New(id) | Self::Existing(id) => id,
        }
    }

    /// Whether this call enqueued the job.
    pub fn is_new(self) -> bool {
        matches!(self, Self::New(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_hex_and_scoped_by_job() {
        let u = Unique::new("same", Duration::from_secs(1));
        let a = u.for_job("a").unwrap();
        let b = u.for_job("b").unwrap();
        assert_eq!(a.key.len(), 32);
        assert!(a.key.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.key, b.key);
        assert_eq!(a, u.for_job("a").unwrap());
        // A caller's key never equals a declared key with the same text.
        let declared = Unique::__declared(&("same",), 1000, false);
        assert_ne!(declared.for_job("a").unwrap().key, a.key);
        // Hostile text is only hashed.
        let hostile = Unique::new("\u{0}'; DROP TABLE jobs; --{p}:*", Duration::from_secs(1));
        assert_eq!(hostile.for_job("a").unwrap().key.len(), 32);
    }
}
