use job_core::prelude::*;

#[job]
async fn count_rows(table: String) -> u64 {
    let _ = table;
    0
}

fn main() {}
