//! Observability: job status by id, metrics and the in-process stats snapshot, health.

pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod status;
