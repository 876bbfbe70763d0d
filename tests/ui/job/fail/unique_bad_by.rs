// `by` is a non-empty list of parameter names, each once.
use job_core::prelude::*;

#[job(unique(by = [to, subject, to], for = "10m"))]
async fn repeated(to: String, subject: String) -> Result<(), std::io::Error> {
    let _ = (to, subject);
    Ok(())
}

#[job(unique(by = [], for = "10m"))]
async fn empty(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

#[job(unique(by = "to", for = "10m"))]
async fn quoted(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

#[job(unique(by = to, for = "10m"))]
async fn bare_name(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

#[job(unique(by = ["to", self.subject], for = "10m"))]
async fn entries(to: String, subject: String) -> Result<(), std::io::Error> {
    let _ = (to, subject);
    Ok(())
}

#[job(unique(by(to), for = "10m"))]
async fn list(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

fn main() {}
