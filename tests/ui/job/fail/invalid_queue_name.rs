use job_core::prelude::*;

#[job(queue = "email:high")]
async fn send_email(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

fn main() {}
