use job_core::prelude::*;

// Serializable, but not `Clone`: each attempt runs on a copy of the payload, so a payload
// type must be `Clone` (and `Debug`) too.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub id: u64,
}

#[job]
async fn publish(report: Report) -> Result<(), std::io::Error> {
    let _ = report;
    Ok(())
}

fn main() {}
