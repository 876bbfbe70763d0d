use job_core::prelude::*;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Region {
    pub code: String,
}

#[job(cron = "0 3 * * *")]
async fn nightly_export(region: Region, dry_run: bool) -> Result<(), std::io::Error> {
    let _ = (region, dry_run);
    Ok(())
}

fn main() {}
