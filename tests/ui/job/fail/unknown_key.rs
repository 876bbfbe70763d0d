use job_core::prelude::*;

#[job(queue = "email", retries = 3)]
async fn send_email(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

fn main() {}
