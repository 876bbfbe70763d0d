use job_core::prelude::*;

#[derive(Debug)]
pub struct Receipt {
    pub id: u64,
}

#[job]
async fn send_invoice(to: String) -> Result<Receipt, std::io::Error> {
    let _ = to;
    Ok(Receipt { id: 1 })
}

fn main() {}
