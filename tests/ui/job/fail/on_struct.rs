use job_core::prelude::*;

#[job]
pub struct SendEmail {
    pub to: String,
}

fn main() {}
