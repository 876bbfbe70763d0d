// Unrelated lints still fire in the user's fn: the macro does not blanket-allow them.
#![deny(unused_variables)]
use job_core::prelude::*;

#[job]
async fn send_email(to: String) -> Result<(), std::io::Error> {
    let unused = 1;
    let _ = to;
    Ok(())
}

fn main() {}
