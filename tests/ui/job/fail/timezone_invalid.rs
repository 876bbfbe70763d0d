use job_core::prelude::*;

#[job(cron = "0 9 * * *", timezone = "europe/paris")]
async fn wrong_case() -> Result<(), std::io::Error> {
    Ok(())
}

#[job(cron = "0 9 * * *", timezone = "Mars/Olympus")]
async fn unknown_zone() -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
