use job_core::prelude::*;

#[derive(Debug, Clone)]
pub struct Invoice {
    pub id: u64,
}

#[job]
async fn send_invoice(to: String, invoice: Invoice) -> Result<(), std::io::Error> {
    let _ = (to, invoice);
    Ok(())
}

fn main() {}
