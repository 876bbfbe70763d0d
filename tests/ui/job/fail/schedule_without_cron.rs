use job_core::prelude::*;

#[job(timezone = "Europe/Paris")]
async fn zone_alone() -> Result<(), std::io::Error> {
    Ok(())
}

#[job(misfire = "run_once")]
async fn misfire_alone() -> Result<(), std::io::Error> {
    Ok(())
}

#[job(cron = "0 9 * * *", misfire = "catch_up")]
async fn unknown_misfire() -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
