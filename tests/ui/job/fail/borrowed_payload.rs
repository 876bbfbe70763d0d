use job_core::prelude::*;

#[job]
async fn send_email(to: &str, subject: String) -> Result<(), std::io::Error> {
    let _ = (to, subject);
    Ok(())
}

fn main() {}
