use job_core::prelude::*;

#[job(backoff(initial = "1s", jitter = 1.5))]
async fn send_email(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

fn main() {}
