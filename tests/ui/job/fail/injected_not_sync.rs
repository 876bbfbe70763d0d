use std::cell::Cell;

use job_core::prelude::*;

pub struct Counter(pub Cell<u64>);

#[job]
async fn count(n: u64, counter: &Counter) -> Result<(), std::io::Error> {
    counter.0.set(n);
    Ok(())
}

fn main() {}
