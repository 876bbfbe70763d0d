//! [`AmqpBackendBuilder`]: where the backend connects, its name prefix, its queue type and
//! the broker settings it must agree with (delivery limit, `consumer_timeout`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lapin::uri::AMQPUri;

use super::AmqpBackend;
use crate::job::is_valid_name;

/// Why an [`AmqpBackendBuilder`] was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpConfigError {
    /// The name prefix does not match `[A-Za-z0-9_.-]{1,64}`.
    #[error("invalid name prefix {0:?}: expected 1 to 64 characters from [A-Za-z0-9_.-]")]
    InvalidPrefix(String),
    /// The URL is not an `amqp://` URL.
    #[error("invalid AMQP url: {0}")]
    InvalidUrl(String),
    /// A duration or count that must be positive was zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

/// The kind of RabbitMQ queue the work, wait, parking and dead-letter queues are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueType {
    /// Quorum queues (the default): replicated with Raft, the broker counts deliveries
    /// (`x-delivery-count`) and parks a message after `x-delivery-limit` returns, and
    /// dead-lettering from the wait queues is at-least-once.
    Quorum,
    /// Classic queues, for a broker without quorum queues. The broker keeps no delivery
    /// count (only a `redelivered` flag) and has no delivery limit, and its dead-lettering
    /// (how delayed jobs and retries come back) is at-most-once: see the module docs for
    /// what that costs.
    Classic,
}

/// Settings for an [`AmqpBackend`]; see [`AmqpBackend::builder`].
#[derive(Clone)]
pub struct AmqpBackendBuilder {
    pub(super) url: String,
    pub(super) prefix: String,
    pub(super) queue_type: QueueType,
    pub(super) max_recoveries: u32,
    pub(super) consumer_timeout: Duration,
    pub(super) prefetch: u16,
    pub(super) dead_letter_capacity: u32,
    pub(super) dead_letter_retention: Duration,
    pub(super) max_message_size: usize,
    pub(super) connection_timeout: Duration,
}

impl fmt::Debug for AmqpBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: it is left out.
        f.debug_struct("AmqpBackendBuilder")
            .field("prefix", &self.prefix)
            .field("queue_type", &self.queue_type)
            .field("max_recoveries", &self.max_recoveries)
            .field("consumer_timeout", &self.consumer_timeout)
            .field("prefetch", &self.prefetch)
            .field("dead_letter_capacity", &self.dead_letter_capacity)
            .field("dead_letter_retention", &self.dead_letter_retention)
            .field("max_message_size", &self.max_message_size)
            .field("connection_timeout", &self.connection_timeout)
            .finish_non_exhaustive()
    }
}

impl AmqpBackendBuilder {
    /// The name prefix (default `jobs`): exchanges and queues are `<prefix>.…`. Must match
    /// `[A-Za-z0-9_.-]{1,64}`; checked by [`build`](Self::build).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Quorum (default) or classic queues. Fixed when the queues are first declared: a
    /// broker refuses to redeclare a queue with another type (change the prefix instead).
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// Crash recoveries before a job is parked as a poison pill (default 3, as the
    /// runtime's `max_recoveries`). On quorum queues this becomes the work queues'
    /// `x-delivery-limit` (`max_recoveries - 1` returns, so the return that makes
    /// `max_recoveries` recoveries parks the message), a queue argument fixed when the queue
    /// is declared: the broker itself counts and parks, even when no process of ours
    /// survives to do it. The runtime's own setting is not used by this backend; the reaper
    /// warns once when the two differ.
    pub fn max_recoveries(mut self, max_recoveries: u32) -> Self {
        self.max_recoveries = max_recoveries;
        self
    }

    /// The broker's `consumer_timeout` (default 30 minutes, RabbitMQ's default): a delivery
    /// held longer than this is taken back by the broker, which closes the channel. It is
    /// a broker setting this backend cannot change; tell it here, and the runtime refuses to
    /// start with a job whose `timeout` is longer (or that has none): see
    /// [`Capabilities::max_attempt_duration`](crate::backend::Capabilities::max_attempt_duration).
    pub fn consumer_timeout(mut self, timeout: Duration) -> Self {
        self.consumer_timeout = timeout;
        self
    }

    /// Unacknowledged deliveries per work queue consumer (`basic.qos`, default 32): the
    /// most jobs of one queue this process holds at once, running or waiting for a free
    /// worker. Size it to the runtime's concurrency plus its prefetch. A delivery held but
    /// not yet started when the process dies counts as a recovery all the same (the broker
    /// cannot tell), so a large prefetch makes false poison pills likelier.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Dead letters kept (default 10,000): the dead-letter queue's `x-max-length`; beyond
    /// it the broker drops the oldest.
    pub fn dead_letter_capacity(mut self, capacity: u32) -> Self {
        self.dead_letter_capacity = capacity;
        self
    }

    /// How long a dead letter is kept (default 7 days): the dead-letter queue's
    /// `x-message-ttl`.
    pub fn dead_letter_retention(mut self, retention: Duration) -> Self {
        self.dead_letter_retention = retention;
        self
    }

    /// The broker's `max_message_size` (default 128 MiB, RabbitMQ's default): payloads
    /// that cannot fit in one message with its headers are refused at enqueue with
    /// `PayloadTooLarge`.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Limit on opening one connection (default 2 s). An enqueue while the broker is down
    /// fails after about this long.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Checks the settings and builds the backend. Does not connect: the first call does,
    /// so a runtime can start while the broker is down.
    ///
    /// # Errors
    /// An invalid prefix or URL, or a zero where a positive value is needed.
    pub fn build(self) -> Result<AmqpBackend, AmqpConfigError> {
        if !is_valid_name(&self.prefix) {
            return Err(AmqpConfigError::InvalidPrefix(self.prefix));
        }
        AMQPUri::from_str(&self.url).map_err(AmqpConfigError::InvalidUrl)?;
        for (name, d) in [
            ("consumer_timeout", self.consumer_timeout),
            ("dead_letter_retention", self.dead_letter_retention),
            ("connection_timeout", self.connection_timeout),
        ] {
            if d.is_zero() {
                return Err(AmqpConfigError::Zero(name));
            }
        }
        if self.prefetch == 0 {
            return Err(AmqpConfigError::Zero("prefetch"));
        }
        if self.dead_letter_capacity == 0 {
            return Err(AmqpConfigError::Zero("dead_letter_capacity"));
        }
        Ok(AmqpBackend::from_settings(self))
    }
}
