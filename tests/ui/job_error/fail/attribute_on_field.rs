use std::time::Duration;

use job_core::prelude::*;

#[derive(Debug, thiserror::Error, JobError)]
pub enum FetchError {
    #[error("throttled")]
    RateLimited(#[job(retry_after)] Duration),
}

fn main() {}
