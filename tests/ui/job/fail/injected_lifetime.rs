use job_core::prelude::*;

pub struct Pool;

#[job]
async fn vacuum(table: String, pool: &'static Pool) -> Result<(), std::io::Error> {
    let _ = (table, pool);
    Ok(())
}

fn main() {}
