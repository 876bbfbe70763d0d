use job_core::prelude::*;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    pub id: u64,
}

#[job]
async fn send_invoice(to: String) -> Result<Receipt, std::io::Error> {
    let _ = to;
    Ok(Receipt { id: 1 })
}

async fn read(client: Client, id: JobId) -> Result<(), job_core::ResultError> {
    // The result's type is the job's: a `Receipt`, not a `String`.
    let id_text: String = client.result::<SendInvoice>(id).await?;
    let _ = id_text;
    Ok(())
}

fn main() {
    let _ = read;
}
