// A `by` entry must name a payload parameter of the fn.
use job_core::prelude::*;

pub trait Mailer: Send + Sync {}

#[job(unique(by = [too, subject], for = "10m"))]
async fn send_email(to: String, subject: String) -> Result<(), std::io::Error> {
    let _ = (to, subject);
    Ok(())
}

#[job(unique(by = [body], for = "10m"))]
async fn send_digest(to: String, subject: String) -> Result<(), std::io::Error> {
    let _ = (to, subject);
    Ok(())
}

// Injected parameters are not sent with the job, so they cannot be in its key.
#[job(unique(by = [to, mailer, cx], for = "10m"))]
async fn send_receipt(to: String, mailer: &dyn Mailer, cx: &JobContext) -> Result<(), std::io::Error> {
    let _ = (to, mailer, cx);
    Ok(())
}

#[job(unique(by = [account], for = "1h"))]
async fn nightly_sync() -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
