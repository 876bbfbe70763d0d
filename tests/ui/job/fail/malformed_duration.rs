use job_core::prelude::*;

#[job(timeout = "30 sec")]
async fn send_email(to: String) -> Result<(), std::io::Error> {
    let _ = to;
    Ok(())
}

fn main() {}
