//! Procedural macros for `job-core`. Use them through `job_core::job` and
//! `job_core::JobError`; this crate is not meant to be depended on directly.
#![warn(clippy::unwrap_used, clippy::expect_used)]

use proc_macro::TokenStream;

/// Turns an `async fn` into a typed, registered job. See `job_core::job`.
#[proc_macro_attribute]
pub fn job(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}

/// Derives `job_core::Classify` for an error enum. See `job_core::JobError`.
#[proc_macro_derive(JobError, attributes(job))]
pub fn derive_job_error(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
