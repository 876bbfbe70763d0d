// `for`, the window, is required: a duration of at least 1 ms.
use job_core::prelude::*;

#[job(unique(by = [to]))]
async fn missing(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

#[job(unique())]
async fn empty(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

#[job(unique(for = "0s"))]
async fn zero(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

#[job(unique(for = "10 minutes"))]
async fn spelled_out(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

#[job(unique(for = "1d"))]
async fn days(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

#[job(unique(for = 600))]
async fn number(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

fn main() {}
