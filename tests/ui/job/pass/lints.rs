// The expansion is clean under strict lints: warnings denied, unused qualifications,
// clippy's pedantic group (checked by clippy in tests/tests/macro_lints.rs; rustc accepts
// the tool lint names here), `unsafe_code` forbidden, and unused private jobs.
#![deny(
    warnings,
    unused_qualifications,
    clippy::pedantic,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]

use std::time::Duration;

use job_core::prelude::*;

#[derive(Debug, thiserror::Error, JobError)]
enum SyncError {
    #[error("conflict")]
    #[job(permanent)]
    Conflict,
    #[error("rate limited")]
    #[job(retry_after)]
    Limited { retry_in: Duration },
    #[error("io")]
    #[job(transient)]
    Io(#[from] std::io::Error),
}

trait Store: Send + Sync {}

// Private, never enqueued, never called: registered all the same, so no dead code.
#[job(
    queue = "sync",
    max_attempts = 3,
    backoff(initial = "100ms", max = "300000ms", jitter = 0.5),
    timeout = "1h"
)]
async fn sync_account(
    account: u64,
    copies: u8,
    cx: &JobContext,
    store: &dyn Store,
    buf: &mut Vec<u8>,
) -> Result<(), SyncError> {
    let _ = (account, copies, cx, store, buf);
    Ok(())
}

#[job]
async fn tick() -> Result<(), SyncError> {
    Err(SyncError::Conflict)
}

pub(crate) mod nested {
    use job_core::prelude::*;

    #[job]
    pub(crate) async fn crate_visible(n: u32) -> Result<(), std::io::Error> {
        let _ = n;
        Ok(())
    }
}

fn main() {
    let _ = (
        SyncError::Limited {
            retry_in: Duration::ZERO,
        },
        SyncError::Io(std::io::ErrorKind::Other.into()),
    );
}
