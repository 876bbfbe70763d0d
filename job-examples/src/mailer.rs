//! The mailer the jobs send through, its error type, and a fake that logs instead of sending.
//!
//! The fake can simulate failures, chosen by the recipient's address, so the retry, backoff
//! and dead-letter machinery can be watched over HTTP:
//!
//! | recipient | what the fake mailer does |
//! |---|---|
//! | `flaky+N@...` | times out (transient) on the first `N` sends of a message, then delivers it |
//! | `ratelimit+N@...` | answers "rate limited, retry after 1 s" `N` times, then delivers |
//! | `bounce@...` (or `bounce+anything@...`) | rejects the address (permanent): the job dies at once |
//! | anything else | delivers after the configured latency |

use std::collections::HashMap;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use job_core::JobError;

/// The future returned by [`Mailer::send`].
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Sent, EmailError>> + Send + 'a>>;

/// What the mail server answered for a message it accepted: the `send_email` job's result,
/// shown by `GET /jobs/{id}` as `"result": {"message_id": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sent {
    /// The message's id (the `Message-ID` header a real server assigns).
    pub message_id: String,
}

/// Sends email.
///
/// Registered once on the runtime builder as shared data,
/// `.data::<dyn Mailer>(Arc::new(FakeMailer::default()))`, and injected into jobs that
/// declare a `mailer: &dyn Mailer` parameter.
pub trait Mailer: Send + Sync + 'static {
    /// Sends one message; returns the id the server gave it.
    ///
    /// # Errors
    /// [`EmailError`], classified for the job runtime: timeouts and rate limits are retried,
    /// an invalid address is not.
    fn send<'a>(&'a self, to: &'a str, subject: &'a str, body: &'a str) -> SendFuture<'a>;
}

/// Why a message was not sent. Each variant says whether the runtime retries it.
#[derive(Debug, thiserror::Error, JobError)]
pub enum EmailError {
    /// The SMTP server did not answer in time; worth retrying with backoff.
    #[error("SMTP timed out")]
    #[job(transient)]
    Timeout,
    /// The server asked us to wait this long before trying again.
    #[error("rate limited")]
    #[job(retry_after)]
    RateLimited(Duration),
    /// The address does not exist; retrying cannot help.
    #[error("invalid address {0}")]
    #[job(permanent)]
    InvalidAddress(String),
}

/// What the fake mailer does for a recipient; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simulation {
    /// Deliver after the latency.
    Deliver,
    /// Time out this many times per message, then deliver.
    Flaky(u32),
    /// Answer "rate limited" this many times per message, then deliver.
    RateLimited(u32),
    /// Reject the address: a permanent failure.
    Bounce,
}

impl Simulation {
    /// The simulation a recipient address asks for, from its local part (before the `@`):
    /// `flaky+N`, `ratelimit+N`, `bounce`. A missing or unreadable `N` counts as 1.
    ///
    /// # Examples
    /// ```
    /// use job_examples::mailer::Simulation;
    ///
    /// assert_eq!(Simulation::for_recipient("flaky+3@example.com"), Simulation::Flaky(3));
    /// assert_eq!(Simulation::for_recipient("bounce@example.com"), Simulation::Bounce);
    /// assert_eq!(Simulation::for_recipient("ada@example.com"), Simulation::Deliver);
    /// ```
    pub fn for_recipient(to: &str) -> Self {
        let local = to.rsplit_once('@').map_or(to, |(local, _)| local);
        let (tag, arg) = local.split_once('+').unwrap_or((local, ""));
        let count = || arg.parse::<u32>().unwrap_or(1);
        match tag.to_ascii_lowercase().as_str() {
            "flaky" => Self::Flaky(count()),
            "ratelimit" => Self::RateLimited(count()),
            "bounce" => Self::Bounce,
            _ => Self::Deliver,
        }
    }
}

/// The most messages whose simulated failures are counted at once; past it the counts are
/// forgotten (so the fake never grows without bound).
const MAX_TRACKED: usize = 10_000;

/// A mailer that logs instead of sending, after a simulated network latency, and simulates
/// failures for some recipients (see the [module docs](self)).
///
/// Failures are counted per message (recipient, subject and body), so `flaky+2@...` fails
/// the first two attempts of each message and delivers the third; the count restarts once
/// the message is delivered.
#[derive(Debug)]
pub struct FakeMailer {
    latency: Duration,
    rate_limit_wait: Duration,
    failures: Mutex<HashMap<u64, u32>>,
}

impl FakeMailer {
    /// A fake mailer that takes `latency` per message and asks rate-limited senders to wait
    /// one second.
    pub fn new(latency: Duration) -> Self {
        Self {
            latency,
            rate_limit_wait: Duration::from_secs(1),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Sets how long a simulated rate limit asks the sender to wait (default 1 s).
    #[must_use]
    pub fn rate_limit_wait(mut self, wait: Duration) -> Self {
        self.rate_limit_wait = wait;
        self
    }

    /// Counts one more failure of a message; false once it has failed `times` times (and
    /// forgets it, so the next identical message fails again).
    fn should_fail(&self, to: &str, subject: &str, body: &str, times: u32) -> bool {
        let mut hasher = DefaultHasher::new();
        (to, subject, body).hash(&mut hasher);
        let key = hasher.finish();
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let failed = failures.get(&key).copied().unwrap_or(0);
        if failed >= times {
            failures.remove(&key);
            return false;
        }
        if failed == 0 && failures.len() >= MAX_TRACKED {
            failures.clear();
        }
        failures.insert(key, failed + 1);
        true
    }
}

impl Default for FakeMailer {
    /// 200 ms per message.
    fn default() -> Self {
        Self::new(Duration::from_millis(200))
    }
}

impl Mailer for FakeMailer {
    fn send<'a>(&'a self, to: &'a str, subject: &'a str, body: &'a str) -> SendFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(self.latency).await;
            match Simulation::for_recipient(to) {
                Simulation::Bounce => {
                    tracing::warn!(%to, "simulated bounce: address rejected");
                    return Err(EmailError::InvalidAddress(to.to_owned()));
                }
                Simulation::Flaky(times) if self.should_fail(to, subject, body, times) => {
                    tracing::warn!(%to, "simulated SMTP timeout");
                    return Err(EmailError::Timeout);
                }
                Simulation::RateLimited(times) if self.should_fail(to, subject, body, times) => {
                    tracing::warn!(%to, wait = ?self.rate_limit_wait, "simulated rate limit");
                    return Err(EmailError::RateLimited(self.rate_limit_wait));
                }
                _ => {}
            }
            // A UUIDv7 makes a unique id, as a real server's would be.
            let message_id = format!("{}@fake-mailer.invalid", job_core::JobId::new());
            tracing::info!(%to, %subject, bytes = body.len(), %message_id, "email sent");
            Ok(Sent { message_id })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use job_core::{Classify, ErrorClass};

    #[test]
    fn recipients_choose_the_simulation() {
        assert_eq!(
            Simulation::for_recipient("flaky+2@x.io"),
            Simulation::Flaky(2)
        );
        assert_eq!(
            Simulation::for_recipient("FLAKY@x.io"),
            Simulation::Flaky(1)
        );
        assert_eq!(
            Simulation::for_recipient("flaky+zz@x.io"),
            Simulation::Flaky(1)
        );
        assert_eq!(
            Simulation::for_recipient("ratelimit+4@x.io"),
            Simulation::RateLimited(4)
        );
        assert_eq!(
            Simulation::for_recipient("bounce+a@x.io"),
            Simulation::Bounce
        );
        assert_eq!(
            Simulation::for_recipient("flakyx@x.io"),
            Simulation::Deliver
        );
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(EmailError::Timeout.classify(), ErrorClass::Transient);
        assert_eq!(
            EmailError::RateLimited(Duration::from_secs(3)).classify(),
            ErrorClass::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(
            EmailError::InvalidAddress("x".into()).classify(),
            ErrorClass::Permanent
        );
    }

    #[tokio::test(start_paused = true)]
    async fn flaky_fails_n_times_per_message_then_delivers_and_restarts() {
        let mailer = FakeMailer::new(Duration::from_millis(10));
        let send = || mailer.send("flaky+2@x.io", "hi", "body");
        assert!(matches!(send().await, Err(EmailError::Timeout)));
        // Another message to the same address keeps its own count.
        assert!(mailer.send("flaky+2@x.io", "other", "body").await.is_err());
        assert!(matches!(send().await, Err(EmailError::Timeout)));
        assert!(send().await.is_ok());
        assert!(send().await.is_err(), "the count restarts after delivery");
    }

    #[tokio::test(start_paused = true)]
    async fn bounce_and_rate_limit() {
        let mailer = FakeMailer::new(Duration::ZERO).rate_limit_wait(Duration::from_millis(5));
        assert!(matches!(
            mailer.send("bounce@x.io", "s", "b").await,
            Err(EmailError::InvalidAddress(a)) if a == "bounce@x.io"
        ));
        assert!(matches!(
            mailer.send("ratelimit+1@x.io", "s", "b").await,
            Err(EmailError::RateLimited(d)) if d == Duration::from_millis(5)
        ));
        assert!(mailer.send("ratelimit+1@x.io", "s", "b").await.is_ok());
        let a = mailer.send("ada@x.io", "s", "b").await.unwrap();
        let b = mailer.send("ada@x.io", "s", "b").await.unwrap();
        assert!(a.message_id.ends_with("@fake-mailer.invalid"), "{a:?}");
        assert_ne!(a, b, "each message gets its own id");
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_applied() {
        let mailer = FakeMailer::new(Duration::from_millis(200));
        let start = tokio::time::Instant::now();
        assert!(mailer.send("ada@x.io", "s", "b").await.is_ok());
        assert!(start.elapsed() >= Duration::from_millis(200));
    }
}
