//! The expansion of `#[job]` and `#[derive(JobError)]` is clean under strict lints. rustc
//! checks the `deny`s below on every build; clippy's groups are checked when clippy runs
//! (`cargo clippy -p tests --all-targets -- -D warnings`, as CI does). The same expansion in
//! a library with public jobs is linted in `tests/fixture-jobs`.
#![deny(
    warnings,
    unused_qualifications,
    unreachable_pub,
    rust_2018_idioms,
    clippy::all,
    clippy::pedantic
)]
#![forbid(unsafe_code)]

use std::time::Duration;

use job_core::prelude::*;

#[derive(Debug, thiserror::Error, JobError)]
enum SyncError {
    #[error("conflict on {0}")]
    #[job(permanent)]
    Conflict(u64),
    #[error("rate limited")]
    #[job(retry_after)]
    Limited { retry_in: Duration },
    #[error("io")]
    #[job(transient)]
    Io(#[from] std::io::Error),
}

trait Store: Send + Sync {
    fn version(&self) -> u64;
}

struct Fixed;

impl Store for Fixed {
    fn version(&self) -> u64 {
        3
    }
}

// Copy and non-Copy payload fields, every kind of injected parameter, every option.
#[job(
    queue = "sync",
    max_attempts = 3,
    backoff(initial = "100ms", max = "300000ms", jitter = 0.5),
    timeout = "1h"
)]
async fn sync_account(
    account: u64,
    label: String,
    cx: &JobContext,
    store: &dyn Store,
    buf: &mut Vec<u8>,
) -> Result<(), SyncError> {
    tokio::task::yield_now().await;
    buf.extend_from_slice(label.as_bytes());
    if store.version() + u64::from(cx.attempt()) == account {
        return Err(SyncError::Conflict(account));
    }
    Ok(())
}

#[job]
async fn tick() -> Result<(), SyncError> {
    tokio::task::yield_now().await;
    Err(SyncError::Limited {
        retry_in: Duration::from_millis(5),
    })
}

#[tokio::test]
async fn strictly_linted_jobs_run() {
    let cx = JobContext::detached("sync_account")
        .with_data::<dyn Store>(std::sync::Arc::new(Fixed))
        .with_scoped(Vec::<u8>::new());
    let job = SyncAccount {
        account: 4,
        label: "x".to_owned(),
    };
    let err = job.run(&cx).await.unwrap_err();
    assert_eq!(err.classify(), ErrorClass::Permanent);
    assert_eq!(SyncAccount::options().queue, "sync");
    let err = Tick.run(&JobContext::detached("tick")).await.unwrap_err();
    assert_eq!(
        err.classify(),
        ErrorClass::RetryAfter(Duration::from_millis(5))
    );
    assert_eq!(
        SyncError::from(std::io::Error::other("x")).classify(),
        ErrorClass::Transient
    );
}
