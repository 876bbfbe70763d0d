//! [`RedisBackendBuilder`]: where the backend connects, its key prefix, its retention and its
//! timeouts.

use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ::redis::{Client, RedisError};

use super::RedisBackend;
use super::scripts::Scripts;
use crate::job::is_valid_name;

/// Why a [`RedisBackendBuilder`] was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConfigError {
    /// The key prefix does not match `[A-Za-z0-9_.-]{1,64}`.
    #[error("invalid key prefix {0:?}: expected 1 to 64 characters from [A-Za-z0-9_.-]")]
    InvalidPrefix(String),
    /// The URL is not a Redis URL redis-rs accepts.
    #[error("invalid redis url")]
    InvalidUrl(#[source] RedisError),
    /// A duration that must be positive was zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
}

/// Settings for a [`RedisBackend`]; see [`RedisBackend::builder`].
#[derive(Clone)]
pub struct RedisBackendBuilder {
    pub(super) url: String,
    pub(super) prefix: String,
    pub(super) dead_letter_capacity: usize,
    pub(super) dead_letter_retention: Duration,
    pub(super) finished_retention: Duration,
    pub(super) connection_timeout: Duration,
    pub(super) response_timeout: Duration,
}

impl fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: it is left out.
        f.debug_struct("RedisBackendBuilder")
            .field("prefix", &self.prefix)
            .field("dead_letter_capacity", &self.dead_letter_capacity)
            .field("dead_letter_retention", &self.dead_letter_retention)
            .field("finished_retention", &self.finished_retention)
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBackendBuilder {
    /// The key prefix (default `jobs`): keys are `{prefix}:...`. Must match
    /// `[A-Za-z0-9_.-]{1,64}`; checked by [`build`](Self::build).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Dead letters kept (default 10,000); beyond it the oldest are evicted and logged.
    pub fn dead_letter_capacity(mut self, capacity: usize) -> Self {
        self.dead_letter_capacity = capacity;
        self
    }

    /// How long a dead letter is kept (default 7 days). Must be positive.
    pub fn dead_letter_retention(mut self, retention: Duration) -> Self {
        self.dead_letter_retention = retention;
        self
    }

    /// How long the status of a succeeded job is kept (default 10 minutes; zero deletes it at
    /// once, which also makes each acknowledgement cheaper). A cancelled job's status is
    /// kept as long (with a TTL on its record).
    ///
    /// The record is deleted by the first acknowledgement or reaper pass (every
    /// `reap_interval` of each runtime) after the retention has passed, so it can outlive
    /// it by up to a reaper interval.
    ///
    /// A succeeded job's record (its payload emptied) takes about 300 bytes of Redis memory,
    /// so this costs about `jobs per second × retention × 300 B`: 180 MB at 1,000 jobs/s for
    /// 10 minutes, 1 GB for an hour. Redis refuses writes when full (`noeviction`), so size
    /// this to the throughput.
    pub fn finished_retention(mut self, retention: Duration) -> Self {
        self.finished_retention = retention;
        self
    }

    /// Limit on opening one connection (default 1 s). Must be positive.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Limit on waiting for one reply (default 2 s). Must be positive. Blocking waits get
    /// their own, longer deadline.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Checks the settings and builds the backend. Does not connect: the first call does,
    /// so a runtime can start while Redis is down (it retries and reports degraded health).
    ///
    /// # Errors
    /// An invalid prefix or URL, or a zero duration where one must be positive.
    pub fn build(self) -> Result<RedisBackend, RedisConfigError> {
        if !is_valid_name(&self.prefix) {
            return Err(RedisConfigError::InvalidPrefix(self.prefix));
        }
        for (name, d) in [
            ("dead_letter_retention", self.dead_letter_retention),
            ("connection_timeout", self.connection_timeout),
            ("response_timeout", self.response_timeout),
        ] {
            if d.is_zero() {
                return Err(RedisConfigError::ZeroDuration(name));
            }
        }
        let client = Client::open(self.url.as_str()).map_err(RedisConfigError::InvalidUrl)?;
        Ok(RedisBackend {
            client,
            manager: OnceLock::new(),
            waiters: Mutex::new(Vec::new()),
            keys: [
                "queues",
                "scheduled",
                "leased",
                "dead",
                "garbage",
                "live",
                "finished",
            ]
            .map(|k| format!("{{{}}}:{k}", self.prefix)),
            base: format!("{{{}}}:", self.prefix),
            ended: super::watch::Ended::new(),
            scripts: Scripts::new(),
            settings: self,
        })
    }
}
