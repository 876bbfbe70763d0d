use job_core::prelude::*;

#[derive(Debug, thiserror::Error, JobError)]
#[job(transient)]
pub enum EmailError {
    #[error("SMTP timed out")]
    Timeout,
}

fn main() {}
