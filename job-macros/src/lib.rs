//! Procedural macros for `job-core`. Use them through `job_core::job` and
//! `job_core::JobError`, which document them; this crate is not meant to be depended on
//! directly.
//!
//! Set `JOB_MACROS_DEBUG=1` while compiling to print every expansion to stderr.
#![warn(clippy::unwrap_used, clippy::expect_used)]
#![deny(missing_docs)]

mod attr;
mod ctxt;
mod duration;
mod job;
mod job_error;

use proc_macro::TokenStream;

/// (Implemented in the `job-macros` crate; use it as `job_core::job`.)
#[proc_macro_attribute]
pub fn job(args: TokenStream, item: TokenStream) -> TokenStream {
    debug("#[job]", job::expand(args.into(), item.into())).into()
}

/// (Implemented in the `job-macros` crate; use it as `job_core::JobError`.)
#[proc_macro_derive(JobError, attributes(job))]
pub fn derive_job_error(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    debug("#[derive(JobError)]", job_error::expand(&input)).into()
}

/// Prints the expansion when `JOB_MACROS_DEBUG` is set (to anything but `0`).
fn debug(what: &str, tokens: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    if std::env::var_os("JOB_MACROS_DEBUG").is_some_and(|v| v != "0") {
        eprintln!("{what} expanded to:\n{tokens}\n");
    }
    tokens
}
