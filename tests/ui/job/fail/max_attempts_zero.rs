use job_core::prelude::*;

#[job(max_attempts = 0)]
async fn send_email(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

fn main() {}
