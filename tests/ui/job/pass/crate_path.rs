// Re-exporters point the macros at their path to job_core with `crate = ..`. Local modules
// named like the crates the expansion uses shadow nothing: every generated path is
// absolute, from the given root.
#![allow(dead_code)]

mod job_core {}
mod serde {}
mod inventory {}
mod core {}
mod std {}

mod jobs_sdk {
    // A facade crate that re-exports job_core under its own name.
    pub use ::job_core::*;
}

use jobs_sdk::prelude::*;

// Names a user may define that the expansion must not pick up.
struct Result;
struct Option;
trait Send {}
trait Future {}
trait Clone {}
trait Debug {}
struct Box;
struct Duration;

#[derive(::core::fmt::Debug, thiserror::Error, JobError)]
#[job(crate = crate::jobs_sdk, default = transient)]
pub enum SyncError {
    #[error("conflict")]
    #[job(permanent)]
    Conflict,
    #[error("busy")]
    Busy,
}

#[job(crate = crate::jobs_sdk, queue = "sync")]
pub async fn sync_account(account: u64, cx: &JobContext) -> ::core::result::Result<(), SyncError> {
    let _ = (account, cx);
    ::core::result::Result::Ok(())
}

// The string form, as serde writes it.
#[job(crate = "crate::jobs_sdk")]
pub async fn ping(n: u8) -> ::std::io::Result<()> {
    let _ = n;
    ::core::result::Result::Ok(())
}

fn main() {
    assert_eq!(<SyncAccount as jobs_sdk::Job>::NAME, "sync_account");
    assert_eq!(SyncAccount::options().queue, "sync");
    assert_eq!(SyncError::Busy.classify(), ErrorClass::Transient);
    assert_eq!(SyncError::Conflict.classify(), ErrorClass::Permanent);
    let _ = Ping { n: 1 };
}
