use job_core::prelude::*;

#[job]
async fn store<T: serde::Serialize>(value: T) -> Result<(), std::io::Error> {
    let _ = value;
    Ok(())
}

fn main() {}
