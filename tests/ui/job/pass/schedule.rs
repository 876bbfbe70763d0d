use job_core::prelude::*;

/// Every payload field has a default: each tick runs with `0` and `""`.
#[job(cron = "30 2 * * *", timezone = "Europe/Paris", misfire = "run_once")]
async fn nightly(limit: u32, label: String) -> Result<(), std::io::Error> {
    let _ = (limit, label);
    Ok(())
}

#[job(queue = "reports", cron = "0 0 9 * * Mon-Fri")]
async fn morning() -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {
    assert!(Nightly::recurring().is_some());
    assert!(Morning::recurring().is_some());
}
