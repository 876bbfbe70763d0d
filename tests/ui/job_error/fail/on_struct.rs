use job_core::prelude::*;

#[derive(Debug, thiserror::Error, JobError)]
#[error("upload failed")]
pub struct UploadError {
    pub status: u16,
}

fn main() {}
