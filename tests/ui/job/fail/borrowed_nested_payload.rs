use job_core::prelude::*;

#[job]
async fn notify(recipients: Vec<&str>) -> Result<(), std::io::Error> {
    let _ = recipients;
    Ok(())
}

fn main() {}
