//! Example services built on job-core, and the code they share.
//!
//! - `email-server`: an axum server that enqueues `send_email` jobs on `POST /send-email`
//!   and exposes job status, runtime status, health, Prometheus metrics and admin
//!   dead-letter routes; on Postgres (`--postgres`), `POST /signup` inserts a user and
//!   enqueues the welcome email in one transaction.
//! - `report-scheduler`: enqueues `generate_report` every interval (without drift) or on a
//!   cron expression, and serves the same operational routes.
//!
//! See "A tour of the example server" in the repository's README for a walk through both with
//! curl.

pub mod auth;
pub mod config;
pub mod email;
pub mod http;
pub mod mailer;
pub mod report;
pub mod serve;
pub mod signup;
pub mod telemetry;
pub mod testing;
