//! [`PostgresBackendBuilder`]: where the backend connects, its schema, and its retention.

use std::fmt;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::PostgresBackend;

/// Why a [`PostgresBackendBuilder`] was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresConfigError {
    /// The schema name does not match `[a-z_][a-z0-9_]{0,49}`.
    #[error(
        "invalid schema name {0:?}: expected 1 to 50 characters from [a-z0-9_], not starting with a digit"
    )]
    InvalidSchema(String),
    /// The URL is not one sqlx accepts.
    #[error("invalid postgres url")]
    InvalidUrl(#[source] sqlx::Error),
    /// A duration or size that must be positive was zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

/// Where the connections come from.
#[derive(Clone)]
pub(super) enum Source {
    /// A pool this backend made from a URL (and owns).
    Options(Box<PgConnectOptions>),
    /// The application's pool, shared.
    Pool(PgPool),
}

/// Settings for a [`PostgresBackend`]; see [`PostgresBackend::builder`] and
/// [`PostgresBackend::builder_from_pool`].
#[derive(Clone)]
pub struct PostgresBackendBuilder {
    pub(super) source: Result<Source, String>,
    pub(super) schema: String,
    pub(super) dead_letter_capacity: usize,
    pub(super) dead_letter_retention: Duration,
    pub(super) finished_retention: Duration,
    pub(super) statement_timeout: Duration,
    pub(super) max_connections: u32,
    pub(super) poll_interval: Duration,
}

impl fmt::Debug for PostgresBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: it is left out.
        f.debug_struct("PostgresBackendBuilder")
            .field("schema", &self.schema)
            .field("dead_letter_capacity", &self.dead_letter_capacity)
            .field("dead_letter_retention", &self.dead_letter_retention)
            .field("finished_retention", &self.finished_retention)
            .field("statement_timeout", &self.statement_timeout)
            .field("max_connections", &self.max_connections)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl PostgresBackendBuilder {
    pub(super) fn with_source(source: Result<Source, String>) -> Self {
        Self {
            source,
            schema: "jobs".to_owned(),
            dead_letter_capacity: 10_000,
            dead_letter_retention: Duration::from_secs(7 * 24 * 3600),
            finished_retention: Duration::from_secs(600),
            statement_timeout: Duration::from_secs(5),
            max_connections: 10,
            poll_interval: Duration::from_secs(5),
        }
    }

    /// The schema that holds the backend's tables (default `jobs`), created at
    /// [`connect`](crate::backend::Backend::connect). Several backends with different
    /// schemas share one database without seeing each other's jobs. Must match
    /// `[a-z_][a-z0-9_]{0,49}`; checked by [`build`](Self::build).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Dead letters kept (default 10,000); beyond it the oldest are deleted by the reaper,
    /// and logged.
    pub fn dead_letter_capacity(mut self, capacity: usize) -> Self {
        self.dead_letter_capacity = capacity;
        self
    }

    /// How long a dead letter is kept (default 7 days). Must be positive.
    pub fn dead_letter_retention(mut self, retention: Duration) -> Self {
        self.dead_letter_retention = retention;
        self
    }

    /// How long a succeeded job's row (its status; the payload is dropped at once) is kept
    /// (default 10 minutes; zero deletes the row in the acknowledgement itself). Rows past
    /// their retention are deleted by the reaper in batches of 1,000, so a row can outlive
    /// its retention by up to one reaper interval.
    pub fn finished_retention(mut self, retention: Duration) -> Self {
        self.finished_retention = retention;
        self
    }

    /// Limit on one statement, waiting for a pooled connection included (default 5 s). Must
    /// be positive. A statement that takes longer fails with
    /// [`BackendError::Unavailable`](crate::backend::BackendError::Unavailable), so a hung
    /// server never hangs a worker; on a pool this backend made, the server's own
    /// `statement_timeout` is set to the same value.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Connections in the pool this backend makes from a URL (default 10; ignored with a
    /// shared pool). The notification listener uses one more, of its own.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// The fallback poll (default 5 s): how long an idle worker waits for a notification
    /// before it looks for work anyway. Enqueues, retries and requeues notify listeners on
    /// commit, and a worker sleeps until the next delayed job is due, so this only bounds
    /// how late a job starts while the listener's connection is down. Must be positive.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Checks the settings and builds the backend. Does not connect: the first call does
    /// (and creates or migrates the schema), so a runtime can start while Postgres is down.
    ///
    /// # Errors
    /// An invalid schema name or URL, or a zero where a positive value is needed.
    pub fn build(self) -> Result<PostgresBackend, PostgresConfigError> {
        if !is_valid_schema(&self.schema) {
            return Err(PostgresConfigError::InvalidSchema(self.schema));
        }
        for (name, d) in [
            ("dead_letter_retention", self.dead_letter_retention),
            ("statement_timeout", self.statement_timeout),
            ("poll_interval", self.poll_interval),
        ] {
            if d.is_zero() {
                return Err(PostgresConfigError::Zero(name));
            }
        }
        if self.max_connections == 0 {
            return Err(PostgresConfigError::Zero("max_connections"));
        }
        let pool = match &self.source {
            Ok(Source::Pool(pool)) => pool.clone(),
            Ok(Source::Options(options)) => {
                let timeout_ms = self.statement_timeout.as_millis().to_string();
                let options = (**options)
                    .clone()
                    .application_name("job-core")
                    // Not `plan_cache_mode = force_generic_plan`: the generic plans of the
                    // batch insert and the reserve cost 4x their throughput (BENCHMARKS.md,
                    // session 7); the single enqueue has a statement with plain parameters,
                    // which Postgres caches a generic plan for by itself.
                    .options([("statement_timeout", timeout_ms.as_str())]);
                // No ping before each use: a statement on a connection that died fails,
                // and the runtime retries it; the ping was a round trip per statement.
                PgPoolOptions::new()
                    .max_connections(self.max_connections)
                    .acquire_timeout(self.statement_timeout)
                    .test_before_acquire(false)
                    .connect_lazy_with(options)
            }
            Err(e) => {
                return Err(PostgresConfigError::InvalidUrl(sqlx::Error::Configuration(
                    e.clone().into(),
                )));
            }
        };
        Ok(PostgresBackend::from_settings(pool, self))
    }
}

/// `[a-z_][a-z0-9_]{0,49}`: a schema name that needs no quoting and leaves room in the
/// 63-byte identifier limit for the notification channel's suffix.
pub(super) fn is_valid_schema(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && name.len() <= 50
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::is_valid_schema;

    #[test]
    fn schema_names() {
        assert!(is_valid_schema("jobs"));
        assert!(is_valid_schema("_t1_x"));
        assert!(!is_valid_schema(""));
        assert!(!is_valid_schema("1jobs"));
        assert!(!is_valid_schema("Jobs"));
        assert!(!is_valid_schema("jobs\"; drop table x; --"));
        assert!(!is_valid_schema(&"a".repeat(51)));
    }
}
