// Other names for a unique job, and `unique`'s keys written outside it.
use job_core::prelude::*;

#[job(dedup = "10m")]
async fn deduplicated(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

#[job(idempotency_key = "to")]
async fn idempotent(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

#[job(for = "10m", until = "finished")]
async fn outside(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

#[job(uniqe(for = "10m"))]
async fn typo(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

fn main() {}
