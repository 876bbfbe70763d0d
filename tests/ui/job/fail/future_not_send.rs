use std::rc::Rc;

use job_core::prelude::*;

async fn flush() {}

#[job]
async fn tally(n: u64) -> Result<(), std::io::Error> {
    let counter = Rc::new(n);
    flush().await;
    let _ = counter;
    Ok(())
}

fn main() {}
