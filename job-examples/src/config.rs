//! Configuration shared by the example binaries, from flags or environment variables.

use std::sync::Arc;
use std::time::Duration;

use job_core::backend::amqp::{AmqpBackend, AmqpConfigError};
use job_core::backend::azure::{AzureConfigError, AzureQueueBackend};
use job_core::backend::postgres::{PostgresBackend, PostgresConfigError};
use job_core::backend::redis::{RedisBackend, RedisConfigError};
use job_core::{DeadLetter, JobRuntime, JobRuntimeBuilder};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

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
    #[arg(long = "redis", env = "JOB_REDIS_URL", conflicts_with_all = ["postgres_url", "amqp_url"])]
    pub redis_url: Option<String>,

    /// Key prefix in Redis (`--redis` only); servers with the same prefix share their jobs.
    #[arg(long, env = "JOB_REDIS_PREFIX", default_value = "jobs")]
    pub redis_prefix: String,

    /// Keep jobs in PostgreSQL at this URL (e.g. `postgres://postgres@127.0.0.1/test`)
    /// instead of in memory. The server's own tables (`users`, for `POST /signup`) live on
    /// the same database, in the connection's `search_path` (`public` unless the URL says
    /// otherwise, e.g. `?options=-c%20search_path%3Dapp`), and jobs are enqueued in the
    /// same transaction as the rows they are about.
    #[arg(
        long = "postgres",
        env = "JOB_POSTGRES_URL",
        conflicts_with = "amqp_url"
    )]
    pub postgres_url: Option<String>,

    /// Schema of the job tables (`--postgres` only); servers with the same schema share
    /// their jobs.
    #[arg(long, env = "JOB_POSTGRES_SCHEMA", default_value = "jobs")]
    pub postgres_schema: String,

    /// Keep jobs in RabbitMQ at this URL (e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`)
    /// instead of in memory: quorum queues, publisher confirms. A broker cannot look a job up
    /// by id, so `GET /jobs/{id}` answers 501 on this store.
    #[arg(long = "amqp", env = "JOB_AMQP_URL")]
    pub amqp_url: Option<String>,

    /// Name prefix of the exchanges and queues (`--amqp` only); servers with the same prefix
    /// share their jobs.
    #[arg(long, env = "JOB_AMQP_PREFIX", default_value = "jobs")]
    pub amqp_prefix: String,

    /// Keep jobs in Azure Queue Storage, on the account of this connection string
    /// (`UseDevelopmentStorage=true` for the Azurite emulator on 127.0.0.1:10001, or
    /// `DefaultEndpointsProtocol=https;AccountName=..;AccountKey=..`) instead of in memory.
    /// The store cannot look jobs up by id: `GET /jobs/{id}` answers 501 on it. Prefer the
    /// environment variable: the string carries the account key.
    #[arg(
        long = "azure-queue",
        env = "JOB_AZURE_QUEUE",
        hide_env_values = true,
        conflicts_with_all = ["redis_url", "postgres_url", "amqp_url"]
    )]
    pub azure_queue: Option<String>,

    /// Prefix of the Azure queues (`--azure-queue` only): the queue `email` is the Azure
    /// queue `<prefix>-email`; servers with the same prefix share their jobs.
    #[arg(long, env = "JOB_AZURE_PREFIX", default_value = "jobs")]
    pub azure_prefix: String,
}

/// What [`ServiceArgs::setup`] built: a runtime builder on the chosen store, and the
/// application's connection pool when that store is Postgres (the job backend shares it).
#[derive(Debug)]
pub struct Setup {
    /// The runtime builder, with the backend set.
    pub builder: JobRuntimeBuilder,
    /// The pool the application's own queries use (`--postgres` only).
    pub postgres: Option<PgPool>,
}

/// A store setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreConfigError {
    /// `--redis` or `--redis-prefix` is invalid.
    #[error(transparent)]
    Redis(#[from] RedisConfigError),
    /// `--postgres` or `--postgres-schema` is invalid.
    #[error(transparent)]
    Postgres(#[from] PostgresConfigError),
    /// `--amqp` or `--amqp-prefix` is invalid.
    #[error(transparent)]
    Amqp(#[from] AmqpConfigError),
    /// The `--postgres` URL does not parse.
    #[error("invalid --postgres URL: {0}")]
    PostgresUrl(#[source] sqlx::Error),
    /// `--azure-queue` or `--azure-prefix` is invalid.
    #[error(transparent)]
    Azure(#[from] AzureConfigError),
}

impl ServiceArgs {
    /// The admin token (none when unset or empty).
    pub fn admin_token(&self) -> AdminToken {
        AdminToken::new(self.admin_token.clone())
    }

    /// A runtime builder with these settings, the fake mailer registered as `dyn Mailer`,
    /// a dead-letter hook that logs each dead job, and the backend `--redis`, `--postgres` or
    /// `--amqp` or `--azure-queue` names (the only lines that differ between the in-memory and
    /// the durable setups).
    ///
    /// # Errors
    /// An invalid URL, prefix or schema.
    pub fn runtime_builder(&self) -> Result<JobRuntimeBuilder, StoreConfigError> {
        self.setup().map(|setup| setup.builder)
    }

    /// [`runtime_builder`](Self::runtime_builder), plus the application's Postgres pool
    /// when the store is Postgres. The pool connects lazily: a server starts while the
    /// database is down, and its first request or job says so.
    ///
    /// # Errors
    /// An invalid URL, prefix or schema.
    pub fn setup(&self) -> Result<Setup, StoreConfigError> {
        let mailer: Arc<dyn Mailer> = Arc::new(FakeMailer::new(self.mailer_latency));
        let builder = JobRuntime::builder()
            .capacity(self.capacity)
            .concurrency(self.concurrency)
            .shutdown_timeout(self.shutdown_timeout)
            .data::<dyn Mailer>(mailer)
            .on_dead_letter(log_dead_letter);
        if let Some(url) = &self.redis_url {
            let backend = RedisBackend::builder(url.as_str())
                .prefix(self.redis_prefix.as_str())
                .build()?;
            return Ok(Setup {
                builder: builder.backend(backend),
                postgres: None,
            });
        }
        if let Some(url) = &self.amqp_url {
            let backend = AmqpBackend::builder(url.as_str())
                .prefix(self.amqp_prefix.as_str())
                .prefetch(
                    u16::try_from(self.concurrency.saturating_mul(2).max(1)).unwrap_or(u16::MAX),
                )
                .build()?;
            return Ok(Setup {
                builder: builder.backend(backend),
                postgres: None,
            });
        }
        if let Some(conn) = &self.azure_queue {
            let backend = AzureQueueBackend::builder(conn.as_str())
                .prefix(self.azure_prefix.as_str())
                .build()?;
            return Ok(Setup {
                builder: builder.backend(backend),
                postgres: None,
            });
        }
        if let Some(url) = &self.postgres_url {
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy(url)
                .map_err(StoreConfigError::PostgresUrl)?;
            let backend = PostgresBackend::builder_from_pool(pool.clone())
                .schema(self.postgres_schema.as_str())
                .build()?;
            return Ok(Setup {
                builder: builder.backend(backend),
                postgres: Some(pool),
            });
        }
        Ok(Setup {
            builder,
            postgres: None,
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
            store = match (&self.redis_url, &self.postgres_url, &self.amqp_url, &self.azure_queue) {
                (Some(_), _, _, _) => format!("redis (prefix `{}`)", self.redis_prefix),
                (None, Some(_), _, _) => format!("postgres (schema `{}`)", self.postgres_schema),
                (None, None, Some(_), _) => format!("rabbitmq (prefix `{}`)", self.amqp_prefix),
                (None, None, None, Some(_)) => format!("azure-queue (prefix `{}`)", self.azure_prefix),
                (None, None, None, None) => "in-memory".to_owned(),
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
