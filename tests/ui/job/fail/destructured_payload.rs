use job_core::prelude::*;

#[job]
async fn resize((width, height): (u32, u32)) -> Result<(), std::io::Error> {
    let _ = (width, height);
    Ok(())
}

fn main() {}
