use job_core::prelude::*;

#[derive(Debug, thiserror::Error, JobError)]
pub enum EmailError {
    #[error("SMTP timed out")]
    #[job(retryable)]
    Timeout,
}

fn main() {}
