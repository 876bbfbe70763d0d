use job_core::prelude::*;

#[job]
fn cleanup(days: u32) -> Result<(), std::io::Error> {
    let _ = days;
    Ok(())
}

fn main() {}
