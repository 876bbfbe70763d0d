//! Error classification ([`Classify`], [`ErrorClass`]) and the runtime's own errors.

use std::fmt;
use std::time::Duration;

use crate::job::JobId;

/// A boxed error, used at trait-object boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error and its sources, outermost first. A source that prints the same as the error
/// before it (an error whose message already includes its source's, or a context layer that
/// adds nothing) is listed once.
pub(crate) fn chain_of(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut chain: Vec<String> = Vec::new();
    for e in std::iter::successors(Some(e), |e| e.source()) {
        let s = e.to_string();
        if chain.last().is_none_or(|last| *last != s) {
            chain.push(s);
        }
    }
    chain
}

/// An error and its sources as one line: `error: source: source` (see [`chain_of`]).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    chain_of(e).join(": ")
}

/// What the runtime does with a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry after the job's backoff, until its attempts run out.
    Transient,
    /// Dead-letter now: retrying cannot help.
    Permanent,
    /// Retry after exactly this long (a rate limit said so); still counts as an attempt.
    RetryAfter(Duration),
}

/// Decides whether an error is worth retrying.
///
/// Derive it with [`#[derive(JobError)]`](crate::JobError), which makes you mark every
/// variant. Provided impls:
///
/// | type | class |
/// |---|---|
/// | `std::io::Error` | transient for `TimedOut`, `Interrupted`, `WouldBlock`, `ConnectionRefused`, `ConnectionReset`, `ConnectionAborted`, `NotConnected`, `BrokenPipe`, `UnexpectedEof`, `AddrInUse`, `AddrNotAvailable`, `ResourceBusy`, `HostUnreachable`, `NetworkUnreachable`, `NetworkDown`; permanent for every other kind |
/// | `anyhow::Error` (feature `anyhow`) | transient, unless its chain holds a [`Permanent`] |
/// | `Box<dyn Error + Send + Sync>` | transient, unless it is or wraps a [`Permanent`] |
/// | `std::convert::Infallible` | never happens |
///
/// # Examples
/// ```
/// use job_core::{Classify, ErrorClass};
///
/// #[derive(Debug)]
/// struct Bounce;
/// impl Classify for Bounce {
///     fn classify(&self) -> ErrorClass { ErrorClass::Permanent }
/// }
/// assert_eq!(Bounce.classify(), ErrorClass::Permanent);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not say whether it is worth retrying",
    label = "the job's error type must implement `job_core::Classify`",
    note = "derive it with `#[derive(JobError)]` and mark each variant `#[job(transient)]`, `#[job(permanent)]` or `#[job(retry_after)]`, or return `anyhow::Error`, `std::io::Error` or `Box<dyn Error + Send + Sync>`"
)]
pub trait Classify {
    /// The class of this error.
    fn classify(&self) -> ErrorClass;
}

impl Classify for std::io::Error {
    fn classify(&self) -> ErrorClass {
        use std::io::ErrorKind as K;
        match self.kind() {
            K::TimedOut
            | K::Interrupted
            | K::WouldBlock
            | K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::UnexpectedEof
            | K::AddrInUse
            | K::AddrNotAvailable
            | K::ResourceBusy
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }
}

impl Classify for BoxError {
    fn classify(&self) -> ErrorClass {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self.as_ref());
        while let Some(e) = cur {
            if e.is::<Permanent>() {
                return ErrorClass::Permanent;
            }
            cur = e.source();
        }
        ErrorClass::Transient
    }
}

#[cfg(feature = "anyhow")]
impl Classify for anyhow::Error {
    fn classify(&self) -> ErrorClass {
        if self.chain().any(|e| e.is::<Permanent>()) {
            ErrorClass::Permanent
        } else {
            ErrorClass::Transient
        }
    }
}

impl Classify for std::convert::Infallible {
    fn classify(&self) -> ErrorClass {
        match *self {}
    }
}

/// Marks an error as permanent for the catch-all error types (`anyhow::Error`,
/// `Box<dyn Error + Send + Sync>`), which are otherwise retried.
///
/// # Examples
/// ```
/// use job_core::{Classify, ErrorClass, Permanent};
///
/// let err = anyhow::Error::new(Permanent::new("address does not exist"));
/// assert_eq!(err.classify(), ErrorClass::Permanent);
/// let err = anyhow::anyhow!("connection reset");
/// assert_eq!(err.classify(), ErrorClass::Transient);
/// ```
#[derive(Debug)]
pub struct Permanent(BoxError);

impl Permanent {
    /// Wraps an error (or a message) as permanent.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self(error.into())
    }
}

impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Permanent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Why a job could not be enqueued. Every variant gives the job back
/// ([`into_inner`](EnqueueError::into_inner)), so nothing is lost.
#[non_exhaustive]
pub enum EnqueueError<J> {
    /// The runtime is at capacity (only from `try_enqueue` and `enqueue_if_room`; `enqueue`
    /// waits).
    QueueFull(J),
    /// The runtime is shutting down and takes no new work.
    ShuttingDown(J),
    /// `Job::enqueue` was called while no runtime is running.
    NoRuntime(J),
    /// The job's type is not registered with this runtime.
    NotRegistered(J),
    /// The serialized job is larger than the runtime's payload limit.
    PayloadTooLarge {
        /// The job.
        job: J,
        /// Its serialized size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The durable backend could not store the job (unreachable, or it answered with an
    /// error). The job was not enqueued.
    Backend {
        /// The job.
        job: J,
        /// What went wrong, with its causes.
        message: String,
    },
    /// `try_enqueue` on a runtime with a durable backend: storing a job there means network
    /// I/O, which `try_enqueue` never waits for. Use `enqueue_if_room` (the store's round
    /// trip, no wait for room) or `enqueue` (it waits while the backend is full).
    WouldBlock(J),
    /// The job could not be serialized (its `Serialize` impl failed).
    Serialize {
        /// The job.
        job: J,
        /// What serde said.
        message: String,
    },
    /// The runtime's backend cannot do what was asked (`enqueue_tx` needs the Postgres
    /// backend). The job was not enqueued.
    Unsupported {
        /// The job.
        job: J,
        /// What was asked, and of which backend.
        message: String,
    },
}

impl<J> EnqueueError<J> {
    /// The job that was not enqueued.
    pub fn into_inner(self) -> J {
        match self {
            Self::QueueFull(j)
            | Self::ShuttingDown(j)
            | Self::NoRuntime(j)
            | Self::NotRegistered(j)
            | Self::WouldBlock(j) => j,
            Self::PayloadTooLarge { job, .. }
            | Self::Serialize { job, .. }
            | Self::Backend { job, .. }
            | Self::Unsupported { job, .. } => job,
        }
    }

    /// A reference to the job that was not enqueued.
    pub fn job(&self) -> &J {
        match self {
            Self::QueueFull(j)
            | Self::ShuttingDown(j)
            | Self::NoRuntime(j)
            | Self::NotRegistered(j)
            | Self::WouldBlock(j) => j,
            Self::PayloadTooLarge { job, .. }
            | Self::Serialize { job, .. }
            | Self::Backend { job, .. }
            | Self::Unsupported { job, .. } => job,
        }
    }

    /// True for [`EnqueueError::QueueFull`].
    pub fn is_full(&self) -> bool {
        matches!(self, Self::QueueFull(_))
    }

    /// True for [`EnqueueError::ShuttingDown`].
    pub fn is_shutting_down(&self) -> bool {
        matches!(self, Self::ShuttingDown(_))
    }
}

impl<J> fmt::Display for EnqueueError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QueueFull(_) => f.write_str("job queue is full"),
            Self::ShuttingDown(_) => f.write_str("job runtime is shutting down"),
            Self::NoRuntime(_) => f.write_str(
                "no job runtime is running: call `JobRuntime::builder().start()` first, or enqueue through `runtime.client()`",
            ),
            Self::NotRegistered(_) => f.write_str(
                "job type is not registered with this runtime: use `#[job]`, or `JobRuntimeBuilder::register::<J>()` for a hand-written impl",
            ),
            Self::PayloadTooLarge { size, limit, .. } => {
                write!(f, "job payload is {size} bytes, over the {limit}-byte limit")
            }
            Self::Serialize { message, .. } => write!(f, "job payload does not serialize: {message}"),
            Self::Backend { message, .. } => write!(f, "job backend failed to store the job: {message}"),
            Self::WouldBlock(_) => f.write_str(
                "try_enqueue cannot store a job on a durable backend without waiting: use enqueue_if_room or enqueue",
            ),
            Self::Unsupported { message, .. } => write!(f, "not supported: {message}"),
        }
    }
}

impl<J> fmt::Debug for EnqueueError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::QueueFull(_) => "QueueFull",
            Self::ShuttingDown(_) => "ShuttingDown",
            Self::NoRuntime(_) => "NoRuntime",
            Self::NotRegistered(_) => "NotRegistered",
            Self::PayloadTooLarge { .. } => "PayloadTooLarge",
            Self::Serialize { .. } => "Serialize",
            Self::Backend { .. } => "Backend",
            Self::WouldBlock(_) => "WouldBlock",
            Self::Unsupported { .. } => "Unsupported",
        };
        f.debug_struct("EnqueueError")
            .field("kind", &name)
            .field("message", &self.to_string())
            .finish_non_exhaustive()
    }
}

impl<J> std::error::Error for EnqueueError<J> {}

/// Why [`Client::enqueue_many`](crate::Client::enqueue_many) stopped before the end. Jobs are
/// enqueued in order: those before the failure are enqueued (their ids are here), the one
/// that failed is in `error`, and the rest were not tried; nothing is lost.
pub struct EnqueueManyError<J> {
    /// Ids of the jobs enqueued before the failure, in order.
    pub enqueued: Vec<JobId>,
    /// The failure, holding the first job that was not enqueued.
    pub error: EnqueueError<J>,
    /// The jobs after it, not tried, in order.
    pub remaining: Vec<J>,
}

impl<J> EnqueueManyError<J> {
    /// Every job that was not enqueued, in order: the failed one, then the rest.
    pub fn into_jobs(self) -> Vec<J> {
        let mut jobs = Vec::with_capacity(self.remaining.len() + 1);
        jobs.push(self.error.into_inner());
        jobs.extend(self.remaining);
        jobs
    }
}

impl<J> fmt::Display for EnqueueManyError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (after {} jobs were enqueued; {} not enqueued)",
            self.error,
            self.enqueued.len(),
            self.remaining.len() + 1
        )
    }
}

impl<J> fmt::Debug for EnqueueManyError<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnqueueManyError")
            .field("enqueued", &self.enqueued.len())
            .field("error", &self.error)
            .field("remaining", &self.remaining.len())
            .finish()
    }
}

impl<J> std::error::Error for EnqueueManyError<J> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        None
    }
}

/// Why a runtime refused to start. Every problem found is listed, not just the first.
#[derive(Debug, thiserror::Error)]
#[error("job runtime refused to start: {}", .problems.join("; "))]
pub struct StartError {
    /// One line per problem.
    pub problems: Vec<String>,
}

/// Why a question about jobs (a status, the dead letters) got no answer. A store that could
/// not be reached is an error the caller sees, never an empty answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The backend cannot answer this at all (a broker cannot look a job up by id): see
    /// [`Capabilities`](crate::backend::Capabilities).
    #[error("{what} is not supported by the {backend} backend")]
    Unsupported {
        /// The backend's name ("amqp").
        backend: &'static str,
        /// What was asked ("status by id").
        what: &'static str,
    },
    /// The store failed or could not be reached.
    #[error("job backend failed")]
    Backend(#[source] crate::backend::BackendError),
}

/// Why [`Client::wait`](crate::Client::wait) returned without the job's final status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The job had not finished when the timeout ran out; its status then.
    #[error("job {} had not finished when the wait timed out (it is {})", .0.job_id, .0.state.as_str())]
    TimedOut(Box<crate::JobStatus>),
    /// No status is kept for this id: no such job, or it finished longer ago than the status
    /// retention.
    #[error("no job with id {0} is known (never enqueued, or its status expired)")]
    NotFound(JobId),
    /// The backend cannot look a job up by id, so it cannot be waited for by id.
    #[error("waiting for a job by id is not supported by the {backend} backend")]
    Unsupported {
        /// The backend's name ("amqp").
        backend: &'static str,
    },
    /// The store failed or could not be reached.
    #[error("reading the job's status failed")]
    Query(#[source] QueryError),
}

/// Why [`Client::result`](crate::Client::result) returned no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    /// The job has not finished yet (queued, scheduled, running or retrying): wait for it
    /// with [`Client::wait`](crate::Client::wait) first.
    #[error("job {id} has not finished yet (it is {})", .state.as_str())]
    NotFinished {
        /// The job.
        id: JobId,
        /// Where it is.
        state: crate::JobState,
    },
    /// The job finished without succeeding (dead or cancelled), so it produced nothing.
    #[error("job {id} finished {} and produced no result", .state.as_str())]
    Failed {
        /// The job.
        id: JobId,
        /// How it ended.
        state: crate::JobState,
    },
    /// No status is kept for this id: no such job, or it finished longer ago than the status
    /// retention (results are kept as long as statuses).
    #[error("no job with id {0} is known (never enqueued, or its status expired)")]
    NotFound(JobId),
    /// The id is another job's: its result is not the type asked for.
    #[error("job {id} is a `{found}` job, not `{expected}`")]
    WrongJob {
        /// The job.
        id: JobId,
        /// The name of the job type asked for.
        expected: &'static str,
        /// The job's name.
        found: String,
    },
    /// The job succeeded but its result was not kept: it was larger than
    /// [`RESULT_LIMIT`](crate::RESULT_LIMIT) or did not serialize (both logged when the job
    /// ended), or a process that ran it kept no results.
    #[error(
        "job {0} succeeded, but its result was not kept (over the limit, or it did not serialize)"
    )]
    NotKept(JobId),
    /// The kept result does not decode as the job's `Output` (the type changed since).
    #[error("the result of job {id} does not decode as the job's output: {message}")]
    Decode {
        /// The job.
        id: JobId,
        /// serde's error.
        message: String,
    },
    /// The backend keeps no results (see
    /// [`Capabilities::results`](crate::backend::Capabilities::results)).
    #[error("job results are not supported by the {backend} backend")]
    Unsupported {
        /// The backend's name ("amqp").
        backend: &'static str,
    },
    /// The store failed or could not be reached.
    #[error("reading the job's status failed")]
    Query(#[source] QueryError),
}

/// Why [`JobContext::progress`](crate::JobContext::progress) recorded nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProgressError {
    /// The value's JSON is longer than the limit.
    #[error("progress of {size} bytes of JSON is over the limit of {limit} bytes")]
    TooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit ([`PROGRESS_LIMIT`](crate::PROGRESS_LIMIT)).
        limit: usize,
    },
    /// The value did not serialize.
    #[error("progress does not serialize: {0}")]
    Serialize(String),
}

/// What [`Client::cancel`](crate::Client::cancel) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cancellation {
    /// The job was waiting (queued, scheduled or retrying): it is now `cancelled` and will
    /// not run.
    Removed,
    /// The job was running: its attempt's token has fired (at once when this process runs
    /// it; at the next lease renewal of the process that does, on a durable store), and when
    /// the attempt returns, or the grace period after the token ends, the job is
    /// `cancelled`, whatever the attempt returned.
    Requested,
}

/// Why a job could not be cancelled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CancelError {
    /// The job had already finished (succeeded, dead, or cancelled): nothing was changed.
    #[error("job {id} has already finished (it is {})", .state.as_str())]
    Finished {
        /// The job's id.
        id: JobId,
        /// How it finished.
        state: crate::JobState,
    },
    /// No job with this id is known (never enqueued, or finished longer ago than the
    /// status retention).
    #[error("no job with id {0} is known (never enqueued, or its status expired)")]
    NotFound(JobId),
    /// The backend cannot cancel a job by id (a broker cannot find one message in a queue).
    #[error("cancel by id is not supported by the {backend} backend")]
    Unsupported {
        /// The backend's name ("amqp").
        backend: &'static str,
    },
    /// The store failed or could not be reached: the job may or may not be cancelled.
    #[error("job backend failed")]
    Backend(#[source] crate::backend::BackendError),
}

/// Why a dead job could not be requeued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequeueError {
    /// No dead letter with this id is stored (never died, already requeued, or evicted).
    #[error("no dead letter with id {0}")]
    NotFound(JobId),
    /// The stored payload no longer decodes as the job's type.
    #[error("dead letter {id} does not decode as job `{job}`: {message}")]
    Decode {
        /// The job id.
        id: JobId,
        /// The job name.
        job: String,
        /// What serde said.
        message: String,
    },
    /// The job name is not registered with this runtime.
    #[error("dead letter {id} names job `{job}`, which this runtime does not know")]
    UnknownJob {
        /// The job id.
        id: JobId,
        /// The job name.
        job: String,
    },
    /// The runtime is shutting down.
    #[error("job runtime is shutting down")]
    ShuttingDown,
    /// The runtime is at capacity.
    #[error("job queue is full")]
    QueueFull,
    /// The durable backend failed.
    #[error("job backend failed: {0}")]
    Backend(String),
    /// The backend cannot requeue a dead job by id: see
    /// [`Capabilities`](crate::backend::Capabilities).
    #[error("requeue by id is not supported by the {backend} backend")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn io_errors() {
        assert_eq!(
            io::Error::from(io::ErrorKind::TimedOut).classify(),
            ErrorClass::Transient
        );
        assert_eq!(
            io::Error::from(io::ErrorKind::ConnectionReset).classify(),
            ErrorClass::Transient
        );
        assert_eq!(
            io::Error::from(io::ErrorKind::NotFound).classify(),
            ErrorClass::Permanent
        );
        assert_eq!(
            io::Error::from(io::ErrorKind::InvalidData).classify(),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn boxed_and_anyhow() {
        let e: BoxError = "flaky".into();
        assert_eq!(e.classify(), ErrorClass::Transient);
        let e: BoxError = Box::new(Permanent::new("bad"));
        assert_eq!(e.classify(), ErrorClass::Permanent);
        let e = anyhow::Error::new(Permanent::new("bad")).context("sending");
        assert_eq!(e.classify(), ErrorClass::Permanent);
        assert_eq!(anyhow::anyhow!("x").classify(), ErrorClass::Transient);
    }

    #[test]
    fn enqueue_error_gives_the_job_back() {
        let e = EnqueueError::QueueFull(7);
        assert!(e.is_full());
        assert_eq!(e.to_string(), "job queue is full");
        assert_eq!(e.into_inner(), 7);
        let e = EnqueueError::PayloadTooLarge {
            job: 1,
            size: 10,
            limit: 5,
        };
        assert_eq!(
            e.to_string(),
            "job payload is 10 bytes, over the 5-byte limit"
        );
        assert!(format!("{e:?}").contains("PayloadTooLarge"));
    }
}
