use job_core::prelude::*;

#[job(cron = "61 * * * *")]
async fn minute_out_of_range() -> Result<(), std::io::Error> {
    Ok(())
}

#[job(cron = "0 * *")]
async fn too_few_fields() -> Result<(), std::io::Error> {
    Ok(())
}

#[job(cron = 5)]
async fn not_a_string() -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
