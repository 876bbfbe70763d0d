use job_core::prelude::*;

#[job(queue, backoff = "2s")]
async fn send_email(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

fn main() {}
