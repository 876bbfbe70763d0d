//! The `send_email` job and the validation of `POST /send-email` requests.

use job_core::job;
use serde::Deserialize;

use crate::mailer::{EmailError, Mailer, Sent};

/// Sends one email through the injected [`Mailer`]; its result is the message id the
/// mailer assigned ([`Sent`]), kept with the job's status (`GET /jobs/{id}` shows it, and
/// `client.result::<SendEmail>(id)` reads it typed).
///
/// The job's payload is its owned parameters (`to`, `subject`, `body`); `mailer` is injected
/// from the runtime's shared data. The function stays an ordinary `async fn`, so it can be
/// tested without a runtime:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use job_examples::{email::send_email, mailer::FakeMailer};
///
/// let mailer = FakeMailer::new(Duration::ZERO);
/// let sent = send_email("ada@example.com".into(), "hi".into(), "hello".into(), &mailer).await.unwrap();
/// assert!(!sent.message_id.is_empty());
/// assert!(send_email("bounce@example.com".into(), "hi".into(), "x".into(), &mailer).await.is_err());
/// # }
/// ```
///
/// `#[job]` generates beside it the payload struct [`SendEmail`] (`to`, `subject`, `body`),
/// its `impl Job` (named `send_email`, on queue `email`) and its registration.
///
/// # Errors
/// Whatever the mailer reports: [`EmailError`].
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
) -> Result<Sent, EmailError> {
    mailer.send(&to, &subject, &body).await
}

/// The JSON body of `POST /send-email`. Unknown fields are refused, so a typo is a 422,
/// not a silently empty field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendEmailRequest {
    /// Recipient address.
    pub to: String,
    /// Subject line: one line, not empty.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// The longest subject accepted, in characters (RFC 5322's line limit).
pub const MAX_SUBJECT_CHARS: usize = 998;

/// A request that parsed but cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    /// `to` is not a plausible email address.
    #[error("invalid address `{0}`: expected local@domain.tld")]
    Address(String),
    /// The subject is empty or blank.
    #[error("subject must not be empty")]
    EmptySubject,
    /// The subject holds a line break or another control character (header injection).
    #[error("subject must be one line without control characters")]
    SubjectControlChars,
    /// The subject is over [`MAX_SUBJECT_CHARS`].
    #[error("subject is longer than {MAX_SUBJECT_CHARS} characters")]
    SubjectTooLong,
}

impl SendEmailRequest {
    /// Checks the request and turns it into the job's payload.
    ///
    /// # Errors
    /// [`InvalidRequest`] naming the first problem found.
    pub fn validate(self) -> Result<SendEmail, InvalidRequest> {
        if !is_valid_address(&self.to) {
            return Err(InvalidRequest::Address(self.to));
        }
        if self.subject.trim().is_empty() {
            return Err(InvalidRequest::EmptySubject);
        }
        if self.subject.chars().any(char::is_control) {
            return Err(InvalidRequest::SubjectControlChars);
        }
        if self.subject.chars().count() > MAX_SUBJECT_CHARS {
            return Err(InvalidRequest::SubjectTooLong);
        }
        Ok(SendEmail {
            to: self.to,
            subject: self.subject,
            body: self.body,
        })
    }
}

/// A practical address check: `local@domain` with an ASCII local part of the characters
/// RFC 5322 allows unquoted (no leading, trailing or doubled dot), and a domain of at least
/// two dot-separated labels of letters, digits and inner hyphens. Quoted local parts and
/// address literals are refused.
///
/// # Examples
/// ```
/// use job_examples::email::is_valid_address;
///
/// assert!(is_valid_address("flaky+2@example.com"));
/// assert!(!is_valid_address("no-at-sign.example.com"));
/// assert!(!is_valid_address("a@localhost"));
/// ```
pub fn is_valid_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    let local_ok = (1..=64).contains(&local.len())
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b));
    let domain_ok = (3..=253).contains(&domain.len())
        && domain.contains('.')
        && domain.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    local_ok && domain_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use job_core::{Job, JobContext};
    use std::sync::Arc;
    use std::time::Duration;

    fn request(to: &str, subject: &str) -> SendEmailRequest {
        SendEmailRequest {
            to: to.into(),
            subject: subject.into(),
            body: "b".into(),
        }
    }

    #[test]
    fn addresses() {
        for ok in [
            "a@b.co",
            "first.last+tag@mail.example.org",
            "bounce@example.com",
        ] {
            assert!(is_valid_address(ok), "{ok}");
        }
        for bad in [
            "",
            "@example.com",
            "a@",
            "a@b",
            "a b@example.com",
            ".a@example.com",
            "a..b@example.com",
            "a@-example.com",
            "a@example..com",
            "a@exa_mple.com",
            "a@b@example.com",
            "\"quoted\"@example.com",
        ] {
            assert!(!is_valid_address(bad), "{bad}");
        }
    }

    #[test]
    fn validation() {
        assert!(request("a@b.co", "hello").validate().is_ok());
        assert_eq!(
            request("nope", "hello").validate().unwrap_err(),
            InvalidRequest::Address("nope".into())
        );
        assert_eq!(
            request("a@b.co", "  ").validate().unwrap_err(),
            InvalidRequest::EmptySubject
        );
        assert_eq!(
            request("a@b.co", "hi\r\nBcc: x@y.z")
                .validate()
                .unwrap_err(),
            InvalidRequest::SubjectControlChars
        );
        assert_eq!(
            request("a@b.co", &"s".repeat(999)).validate().unwrap_err(),
            InvalidRequest::SubjectTooLong
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<SendEmailRequest>(
            r#"{"to":"a@b.co","subject":"s","body":"b","cc":"x"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `cc`"), "{err}");
    }

    #[tokio::test]
    async fn the_job_sends_through_the_injected_mailer() {
        let mailer: Arc<dyn Mailer> = Arc::new(crate::mailer::FakeMailer::new(Duration::ZERO));
        let cx = JobContext::detached("send_email").with_data(mailer);
        let job = request("ada@example.com", "hi").validate().unwrap();
        assert!(job.run(&cx).await.is_ok());
        let job = request("bounce@example.com", "hi").validate().unwrap();
        assert!(matches!(
            job.run(&cx).await,
            Err(EmailError::InvalidAddress(_))
        ));
        let options = SendEmail::options();
        assert_eq!((options.queue, options.max_attempts), ("email", 5));
    }
}
