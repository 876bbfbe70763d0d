//! `#[job(unique(by = [..], for = "..", until = ".."))]`: what `Job::unique` gives, without
//! a runtime. The expansion is also held to strict lints here (clippy's groups when clippy
//! runs).
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
use job_core::unique::{Unique, UniqueUntil};

trait Mailer: Send + Sync {}

#[job(unique(by = [to, subject], for = "10m"))]
async fn send_email(
    to: String,
    subject: String,
    body: String,
    mailer: &dyn Mailer,
) -> Result<(), std::io::Error> {
    tokio::task::yield_now().await;
    let _ = (to, subject, body, mailer);
    Ok(())
}

/// The same fields as `send_email`'s key, in the other order.
#[job(unique(by = [subject, to], for = "10m"))]
async fn send_email_reordered(
    to: String,
    subject: String,
    body: String,
) -> Result<(), std::io::Error> {
    tokio::task::yield_now().await;
    let _ = (to, subject, body);
    Ok(())
}

#[job(unique(for = "10m"))]
async fn whole_payload(account: u64, full: bool) -> Result<(), std::io::Error> {
    tokio::task::yield_now().await;
    let _ = (account, full);
    Ok(())
}

#[job(unique(by = [account], for = "24h", until = "finished"))]
async fn sync_account(account: u64, cx: &JobContext) -> Result<(), std::io::Error> {
    tokio::task::yield_now().await;
    let _ = (account, cx);
    Ok(())
}

#[job(unique(for = "1500ms", until = "window"))]
async fn no_payload() -> Result<(), std::io::Error> {
    tokio::task::yield_now().await;
    Ok(())
}

#[job]
async fn plain(to: String) -> Result<(), std::io::Error> {
    tokio::task::yield_now().await;
    let _ = to;
    Ok(())
}

fn email(to: &str, subject: &str, body: &str) -> SendEmail {
    SendEmail {
        to: to.into(),
        subject: subject.into(),
        body: body.into(),
    }
}

fn key(job: &impl Job) -> Unique {
    job.unique().expect("the job declares `unique`")
}

#[test]
fn equal_by_fields_make_equal_keys() {
    assert_eq!(
        key(&email("ada@example.com", "Welcome", "first draft")),
        key(&email("ada@example.com", "Welcome", "second draft")),
    );
}

#[test]
fn each_by_field_is_in_the_key() {
    let first = key(&email("ada@example.com", "Welcome", "body"));
    assert_ne!(first, key(&email("bob@example.com", "Welcome", "body")));
    assert_ne!(first, key(&email("ada@example.com", "Receipt", "body")));
}

#[test]
fn fields_are_keyed_in_the_order_written() {
    // `(to, subject)` against `(subject, to)`: the values are keyed in the order `by` lists
    // them. (Keys of two job types never collide in a store: each is scoped by job name.)
    let reordered = |to: &str, subject: &str| SendEmailReordered {
        to: to.into(),
        subject: subject.into(),
        body: String::new(),
    };
    assert_ne!(key(&email("a", "b", "")), key(&reordered("a", "b")));
    assert_eq!(key(&email("a", "b", "")), key(&reordered("b", "a")));
}

#[test]
fn without_by_the_whole_payload_is_the_key() {
    let job = |account, full| WholePayload { account, full };
    assert_eq!(key(&job(7, true)), key(&job(7, true)));
    assert_ne!(key(&job(7, true)), key(&job(7, false)));
    assert_ne!(key(&job(7, true)), key(&job(8, true)));
    assert_eq!(key(&NoPayload), key(&NoPayload));
}

#[test]
fn window_and_until_are_as_written() {
    let email = key(&email("ada@example.com", "Welcome", ""));
    assert_eq!(email.window(), Duration::from_mins(10));
    assert_eq!(email.until(), UniqueUntil::Window);

    let sync = key(&SyncAccount { account: 7 });
    assert_eq!(sync.window(), Duration::from_hours(24));
    assert_eq!(sync.until(), UniqueUntil::Finished);

    let none = key(&NoPayload);
    assert_eq!(none.window(), Duration::from_millis(1500));
    assert_eq!(none.until(), UniqueUntil::Window);
}

#[test]
fn the_key_is_the_declared_fields() {
    // What the expansion passes to `Unique::__declared`: a tuple of references to the
    // `by` fields (a 1-tuple for one), or the payload itself.
    let job = email("ada@example.com", "Welcome", "body");
    assert_eq!(
        key(&job),
        Unique::__declared(&(&job.to, &job.subject), 600_000, false)
    );
    let sync = SyncAccount { account: 7 };
    assert_eq!(
        key(&sync),
        Unique::__declared(&(&sync.account,), 86_400_000, true)
    );
    let whole = WholePayload {
        account: 7,
        full: true,
    };
    assert_eq!(key(&whole), Unique::__declared(&whole, 600_000, false));
}

#[test]
fn a_job_without_unique_has_no_key() {
    assert_eq!(Plain { to: "x".into() }.unique(), None);
}
