use job_core::prelude::*;

#[derive(Debug, thiserror::Error, JobError)]
pub enum EmailError {
    #[error("rate limited, retry in {0} seconds")]
    #[job(retry_after)]
    RateLimited(u64),
}

fn main() {}
