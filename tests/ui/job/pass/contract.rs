// The contract from DESIGN.md, as a user types it, run by hand without a runtime.
use std::sync::Arc;
use std::time::Duration;

use job_core::prelude::*;

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Mailer: Send + Sync {
    fn send<'a>(
        &'a self,
        to: &'a str,
        subject: &'a str,
        body: &'a str,
    ) -> BoxFuture<'a, Result<(), EmailError>>;
}

#[derive(Debug, thiserror::Error, JobError)]
pub enum EmailError {
    #[error("SMTP timed out")]
    #[job(transient)]
    Timeout,
    #[error("rate limited")]
    #[job(retry_after)]
    RateLimited(std::time::Duration), // wait this long
    #[error("invalid address {0}")]
    #[job(permanent)]
    InvalidAddress(String),
}

#[job(
    queue = "email",
    max_attempts = 5,
    backoff(initial = "2s", max = "60s", jitter = 0.2),
    timeout = "30s"
)]
pub async fn send_email(
    to: String,
    subject: String,
    body: String,
    mailer: &dyn Mailer,
) -> Result<(), EmailError> {
    mailer.send(&to, &subject, &body).await
}

struct RejectingMailer;

impl Mailer for RejectingMailer {
    fn send<'a>(
        &'a self,
        to: &'a str,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<(), EmailError>> {
        Box::pin(async move { Err(EmailError::InvalidAddress(to.to_owned())) })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // The fn stays callable as written.
    let err = send_email("nobody".into(), "hi".into(), "..".into(), &RejectingMailer)
        .await
        .unwrap_err();
    assert_eq!(err.classify(), ErrorClass::Permanent);

    // The generated struct, options and impl.
    let job = SendEmail {
        to: "a@example.com".into(),
        subject: "hi".into(),
        body: "..".into(),
    };
    assert_eq!(<SendEmail as Job>::NAME, "send_email");
    let options = SendEmail::options();
    assert_eq!(options.queue, "email");
    assert_eq!(options.max_attempts, 5);
    assert_eq!(
        options.backoff,
        Backoff::new(Duration::from_secs(2), Duration::from_secs(60), 0.2)
    );
    assert_eq!(options.timeout, Some(Duration::from_secs(30)));

    // `run` resolves the injected `&dyn Mailer` from the context.
    let cx = JobContext::detached("send_email").with_data::<dyn Mailer>(Arc::new(RejectingMailer));
    let err = job.run(&cx).await.unwrap_err();
    assert!(matches!(err, EmailError::InvalidAddress(to) if to == "a@example.com"));

    assert_eq!(
        EmailError::RateLimited(Duration::from_secs(3)).classify(),
        ErrorClass::RetryAfter(Duration::from_secs(3))
    );
    assert_eq!(EmailError::Timeout.classify(), ErrorClass::Transient);
}
