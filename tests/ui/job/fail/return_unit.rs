use job_core::prelude::*;

#[job]
async fn ping(host: String) -> () {
    let _ = host;
}

fn main() {}
