use job_core::prelude::*;

#[derive(Debug, thiserror::Error, JobError)]
pub enum EmailError {
    #[error("rate limited")]
    #[job(retry_after)]
    RateLimited,
}

fn main() {}
