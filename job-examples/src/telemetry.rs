//! Logs (tracing-subscriber) and metrics (the Prometheus recorder).

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use job_core::BoxError;

/// Installs the global tracing subscriber on stdout: human-readable lines by default, one
/// JSON object per line with `json`. The level comes from `RUST_LOG` (default `info`).
///
/// Lines logged inside a job carry the runtime's `job{job_id, job, queue, attempt}` span:
/// as a `job{...}:` prefix in text, as the `span` object in JSON.
///
/// # Errors
/// When a global subscriber is already installed, or `RUST_LOG` does not parse.
pub fn init_tracing(json: bool) -> Result<(), BoxError> {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(directives) => EnvFilter::try_new(directives)?,
        Err(_) => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .try_init()
    }
}

/// Upper bounds of the `job_duration_seconds` histogram buckets.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the Prometheus recorder as the global `metrics` recorder and returns the handle
/// that renders it. Call it **before** `JobRuntimeBuilder::start()`: the runtime takes its
/// metric handles when it starts, and handles taken earlier go nowhere.
///
/// `job_duration_seconds` is rendered as a Prometheus histogram. Must be called inside a
/// tokio runtime: it spawns the recorder's upkeep task (which drains histogram samples).
///
/// # Errors
/// When a global recorder is already installed.
pub fn install_metrics() -> Result<PrometheusHandle, BoxError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("job_duration_seconds".to_owned()),
            DURATION_BUCKETS,
        )?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}
