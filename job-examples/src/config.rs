//! Configuration shared by the example binaries, from flags or environment variables.

use std::sync::Arc;
use std::time::Duration;

use job_core::backend::redis::{RedisBackend, RedisConfigError};
use job_core::{DeadLetter, JobRuntime, JobRuntimeBuilder};

use crate::auth::AdminToken;
use crate::mailer::{FakeMailer, Mailer};

/// Parses a human duration: `200ms`, `2s`, `1h`, `1h 30m`.
///
/// # Errors
/// A message naming the accepted forms.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// assert_eq!(job_examples::config::parse_duration("1h").unwrap(), Duration::from_secs(3600));
/// assert!(job_examples::config::parse_duration("soon").is_err());
/// ```
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value)
        .map_err(|e| format!("{e} (expected a duration such as 200ms, 2s, 5m or 1h)"))
}

/// Settings of the job runtime, the fake mailer, the admin routes and the logs.
///
/// Every flag can also be set through the environment variable named beside it.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Most jobs held at once: queued, scheduled, waiting to retry or running. Past it,
    /// enqueueing answers 503; health turns degraded at 75% and unhealthy at 95% of it.
    #[arg(long, env = "JOB_CAPACITY", default_value_t = 100)]
    pub capacity: usize,

    /// Jobs running at once.
    #[arg(long, env = "JOB_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,

    /// How long running jobs get to finish after SIGTERM or Ctrl-C.
    #[arg(long, env = "JOB_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// How long the fake mailer takes per message.
    #[arg(long, env = "JOB_MAILER_LATENCY", default_value = "200ms", value_parser = parse_duration)]
    pub mailer_latency: Duration,

    /// Bearer token for the admin routes (`/dead-letters`). Unset: they answer 403. Prefer
    /// the environment variable: flags show up in `ps`.
    #[arg(long, env = "JOB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Log one JSON object per line instead of human-readable text.
    #[arg(long, env = "JOB_LOG_JSON", value_parser = clap::builder::FalseyValueParser::new())]
    pub log_json: bool,

    /// Keep jobs in Redis at this URL (e.g. `redis://127.0.0.1:6379`) instead of in memory:
    /// they then survive a restart and are shared by every server on the same URL and prefix.
    #[arg(long = "redis", env = "JOB_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Key prefix in Redis (`--redis` only); servers with the same prefix share their jobs.
    #[arg(long, env = "JOB_REDIS_PREFIX", default_value = "jobs")]
    pub redis_prefix: String,
}

impl ServiceArgs {
    /// The admin token (none when unset or empty).
    pub fn admin_token(&self) -> AdminToken {
        AdminToken::new(self.admin_token.clone())
    }

    /// A runtime builder with these settings, the fake mailer registered as `dyn Mailer`,
    /// a dead-letter hook that logs each dead job, and the Redis backend when `--redis` is
    /// given (the only line that differs between the in-memory and the durable setup).
    ///
    /// # Errors
    /// An invalid Redis URL or prefix.
    pub fn runtime_builder(&self) -> Result<JobRuntimeBuilder, RedisConfigError> {
        let mailer: Arc<dyn Mailer> = Arc::new(FakeMailer::new(self.mailer_latency));
        let builder = JobRuntime::builder()
            .capacity(self.capacity)
            .concurrency(self.concurrency)
            .shutdown_timeout(self.shutdown_timeout)
            .data::<dyn Mailer>(mailer)
            .on_dead_letter(log_dead_letter);
        Ok(match &self.redis_url {
            None => builder,
            Some(url) => builder.backend(
                RedisBackend::builder(url.as_str())
                    .prefix(self.redis_prefix.as_str())
                    .build()?,
            ),
        })
    }

    /// Logs the configuration once, at start. The admin token itself is never logged.
    pub fn log(&self, addr: &str) {
        tracing::info!(
            addr,
            capacity = self.capacity,
            concurrency = self.concurrency,
            shutdown_timeout = ?self.shutdown_timeout,
            mailer_latency = ?self.mailer_latency,
            admin_routes = if self.admin_token().is_configured() { "enabled" } else { "disabled (JOB_ADMIN_TOKEN unset)" },
            log_json = self.log_json,
            store = match &self.redis_url {
                Some(_) => format!("redis (prefix `{}`)", self.redis_prefix),
                None => "in-memory".to_owned(),
            },
            "configuration"
        );
    }
}

/// The dead-letter hook: where a real service would page someone or write to a table.
async fn log_dead_letter(dead: DeadLetter) {
    tracing::error!(
        job_id = %dead.job_id,
        job = %dead.job,
        attempts = dead.attempts,
        error = %dead.error_message(),
        "dead letter: requeue with POST /dead-letters/{}/requeue",
        dead.job_id
    );
}
