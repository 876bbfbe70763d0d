// `unique(..)`'s form, its `until` and its unknown keys.
use job_core::prelude::*;

#[job(unique)]
async fn bare_word(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

#[job(unique = "10m")]
async fn with_value(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

#[job(unique(for = "10m", until = "done"))]
async fn bad_until(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

#[job(unique(key = [to], ttl = "10m", scope = "finished", untill = "window"))]
async fn misnamed(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

#[job(unique(for = "10m", for = "1h"), unique(for = "5m"))]
async fn twice(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

fn main() {}
