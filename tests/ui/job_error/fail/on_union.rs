use job_core::prelude::*;

#[derive(JobError)]
pub union Bits {
    pub int: u32,
    pub float: f32,
}

fn main() {}
