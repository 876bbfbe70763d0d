use job_core::prelude::*;

#[job(backoff(initial = "1m", max = "30s"))]
async fn send_email(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

fn main() {}
