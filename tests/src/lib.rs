//! Integration tests for the workspace live in `tests/tests/`; UI tests in `tests/ui/`.

/// The README's Rust blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
