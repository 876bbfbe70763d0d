//! Jobs defined in a library crate that is not the one starting the runtime. `#[job]`
//! registers them through `inventory`; the runtime finds them without `.register::<J>()`
//! as soon as this crate is linked into the binary.
//!
//! The crate also checks the expansion of public jobs in a library against strict lints:
//! missing docs, unreachable `pub`, and clippy's pedantic group.
#![deny(
    warnings,
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    clippy::pedantic
)]

use std::sync::atomic::{AtomicU64, Ordering};

use job_core::prelude::*;

/// The sum of every `n` that [`add_to_total`] has been run with.
pub static TOTAL: AtomicU64 = AtomicU64::new(0);

/// Adds `n` to [`TOTAL`].
///
/// # Errors
/// Never fails.
#[job(queue = "fixture", max_attempts = 1)]
pub async fn add_to_total(n: u64) -> Result<(), std::io::Error> {
    std::future::ready(()).await;
    TOTAL.fetch_add(n, Ordering::SeqCst);
    Ok(())
}

/// Jobs in a nested module register the same way.
pub mod nested {
    use job_core::prelude::*;

    /// Fails permanently when `fail` is set, so callers can see it ran.
    ///
    /// # Errors
    /// [`std::io::ErrorKind::InvalidInput`] (permanent) when `fail` is set.
    #[job(name = "fixture.check")]
    pub async fn check(fail: bool, cx: &JobContext) -> Result<(), std::io::Error> {
        std::future::ready(()).await;
        if fail {
            let message = format!("{} asked to fail", cx.job_name());
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                message,
            ));
        }
        Ok(())
    }
}
