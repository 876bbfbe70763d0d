use std::time::Duration;

use job_core::prelude::*;

#[derive(Debug, thiserror::Error, JobError)]
pub enum EmailError {
    #[error("rate limited by {1}")]
    #[job(retry_after)]
    RateLimited(Duration, String),
}

fn main() {}
