use job_core::prelude::*;

#[derive(Debug, thiserror::Error, JobError)]
#[job(default = retry_after)]
pub enum EmailError {
    #[error("SMTP timed out")]
    Timeout,
}

fn main() {}
