use job_core::prelude::*;

#[derive(Debug, thiserror::Error, JobError)]
pub enum EmailError {
    #[error("SMTP timed out")]
    #[job(transient)]
    Timeout,
    #[error("mailbox full")]
    MailboxFull,
}

fn main() {}
