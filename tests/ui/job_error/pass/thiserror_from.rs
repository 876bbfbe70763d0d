// With thiserror on the same enum: `#[from]` sources are classified by their variant's
// marking, named and tuple variants work, and the enum-level default covers the rest.
use std::time::Duration;

use job_core::prelude::*;

#[derive(Debug, thiserror::Error, JobError)]
#[job(default = permanent)]
pub enum FetchError {
    #[error("network")]
    #[job(transient)]
    Network(#[from] std::io::Error),
    #[error("throttled")]
    #[job(retry_after)]
    Throttled { wait: Duration },
    #[error("bad json")]
    Json(#[from] serde_json::Error),
    #[error("gone")]
    Gone,
}

#[derive(Debug, thiserror::Error, JobError)]
#[job(default = transient)]
pub enum Flaky {
    #[error("a")]
    A,
    #[error("b {0}")]
    #[job(permanent)]
    B(u8),
}

// Generic enums and empty enums.
#[derive(Debug, thiserror::Error, JobError)]
pub enum Wrapped<E: std::error::Error + 'static> {
    #[error("inner")]
    #[job(transient)]
    Inner(#[source] E),
}

#[derive(Debug, thiserror::Error, JobError)]
pub enum Never {}

fn from_io() -> Result<(), FetchError> {
    Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))?;
    Ok(())
}

fn main() {
    assert_eq!(from_io().unwrap_err().classify(), ErrorClass::Transient);
    let json = serde_json::from_str::<u8>("x").unwrap_err();
    assert_eq!(FetchError::from(json).classify(), ErrorClass::Permanent);
    let wait = Duration::from_millis(250);
    assert_eq!(
        FetchError::Throttled { wait }.classify(),
        ErrorClass::RetryAfter(wait)
    );
    assert_eq!(FetchError::Gone.classify(), ErrorClass::Permanent);
    assert_eq!(Flaky::A.classify(), ErrorClass::Transient);
    assert_eq!(Flaky::B(1).classify(), ErrorClass::Permanent);
    let inner = Wrapped::Inner(std::io::Error::other("x"));
    assert_eq!(inner.classify(), ErrorClass::Transient);
    let _: fn(&Never) -> ErrorClass = Classify::classify;
}
