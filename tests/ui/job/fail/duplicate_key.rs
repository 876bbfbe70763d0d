use job_core::prelude::*;

#[job(queue = "email", max_attempts = 3, queue = "mail")]
async fn send_email(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

fn main() {}
