use job_core::prelude::*;

#[derive(Debug, thiserror::Error)]
#[error("upload failed")]
pub struct UploadError;

#[job]
async fn upload(path: String) -> Result<(), UploadError> {
    let _ = path;
    Ok(())
}

fn main() {}
