// A derive that fails still emits `impl Classify`, so the job using the error type gets no
// second, misleading "not Classify" error: only the unmarked variant is reported.
use job_core::prelude::*;

#[derive(Debug, thiserror::Error, JobError)]
pub enum EmailError {
    #[error("SMTP timed out")]
    Timeout,
}

#[job]
async fn send_email(to: String) -> Result<(), EmailError> {
    let _ = to;
    Err(EmailError::Timeout)
}

fn main() {}
