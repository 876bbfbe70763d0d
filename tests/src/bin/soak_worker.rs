//! `soak_worker`: a job worker process on `RedisBackend`, `PostgresBackend` or
//! `AzureQueueBackend`, for the crash and chaos tests in `tests/tests/redis_chaos.rs`,
//! `tests/tests/postgres_chaos.rs` and `tests/tests/azure_chaos.rs`, which start several,
//! SIGKILL them and start them again.
//!
//! ```text
//! soak_worker --prefix P [--redis URL]          (Redis)
//! soak_worker --schema S [--postgres URL]       (Postgres)
//! soak_worker --prefix P --amqp URL [--redis URL] (RabbitMQ; records in Redis)
//! soak_worker --azure-queue CONNECTION_STRING --prefix P   (Azure Queue; records in Redis)
//!             [--concurrency N] [--lease-ms MS] [--reap-ms MS] [--max-recoveries N]
//!             [--max-connections N]
//! ```
//! On Redis the URL defaults to `JOB_REDIS_URL`, then `redis://127.0.0.1:6379`; on Postgres
//! to `JOB_POSTGRES_URL`, then `postgres://postgres@127.0.0.1:5432/test`. `--schema` selects
//! Postgres (the backend's schema; the jobs record their runs in its `chaos_records` table,
//! which must exist), `--prefix` Redis, `--prefix` with `--amqp` RabbitMQ (the backend's name
//! prefix; the jobs record their runs in Redis under the same prefix). With `--azure-queue`
//! the prefix is the Azure queue prefix, and the jobs record their runs in the Redis at
//! `JOB_REDIS_URL` under that prefix (the store under test is not where the test reads what
//! ran). `--max-connections` sizes the Postgres backend's pool
//! (default 4) and the sink's (the same). The worker runs the jobs of `soak_worker/jobs.rs`
//! until it is killed, or until SIGTERM or SIGINT, when it shuts down gracefully (running
//! jobs finish, reserved ones go back to their queue) and exits with status 0.

#[path = "soak_worker/jobs.rs"]
mod jobs;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use job_core::backend::Backend;
use job_core::backend::amqp::AmqpBackend;
use job_core::backend::azure::AzureQueueBackend;
use job_core::backend::postgres::PostgresBackend;
use job_core::backend::redis::RedisBackend;
use job_core::prelude::*;
use tokio::signal::unix::{SignalKind, signal};

/// Which store the worker runs on.
enum Store {
    Redis {
        url: String,
        prefix: String,
    },
    Postgres {
        url: String,
        schema: String,
    },
    Amqp {
        url: String,
        prefix: String,
        redis: String,
    },
    Azure {
        conn: String,
        prefix: String,
    },
}

struct Config {
    store: Store,
    concurrency: usize,
    lease: Duration,
    reap_interval: Duration,
    max_recoveries: u32,
    max_connections: u32,
}

impl Config {
    fn from_args() -> Result<Self, String> {
        let (mut redis, mut prefix, mut postgres, mut schema) = (None, None, None, None);
        let mut amqp = None;
        let mut azure = None;
        let mut config = Self {
            store: Store::Redis {
                url: String::new(),
                prefix: String::new(),
            },
            concurrency: 8,
            lease: Duration::from_millis(2_000),
            reap_interval: Duration::from_millis(500),
            max_recoveries: 3,
            max_connections: 4,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|e| format!("{flag} {value}: {e}"))
            };
            match flag.as_str() {
                "--redis" => redis = Some(value.clone()),
                "--prefix" => prefix = Some(value.clone()),
                "--postgres" => postgres = Some(value.clone()),
                "--amqp" => amqp = Some(value.clone()),
                "--schema" => schema = Some(value.clone()),
                "--azure-queue" => azure = Some(value.clone()),
                "--concurrency" => config.concurrency = number()? as usize,
                "--lease-ms" => config.lease = Duration::from_millis(number()?),
                "--reap-ms" => config.reap_interval = Duration::from_millis(number()?),
                "--max-recoveries" => {
                    config.max_recoveries =
                        u32::try_from(number()?).map_err(|e| format!("{flag}: {e}"))?;
                }
                "--max-connections" => {
                    config.max_connections =
                        u32::try_from(number()?).map_err(|e| format!("{flag}: {e}"))?;
                }
                other => return Err(format!("unknown flag {other}")),
            }
        }
        let redis_url = |redis: Option<String>| {
            redis.unwrap_or_else(|| {
                std::env::var("JOB_REDIS_URL")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
            })
        };
        config.store = match (prefix, schema) {
            (Some(prefix), None) if postgres.is_none() && amqp.is_some() => Store::Amqp {
                url: amqp.unwrap_or_default(),
                prefix,
                redis: redis_url(redis),
            },
            (Some(prefix), None) if postgres.is_none() && azure.is_some() => Store::Azure {
                conn: azure.unwrap_or_default(),
                prefix,
            },
            (Some(prefix), None) if postgres.is_none() => Store::Redis {
                url: redis_url(redis),
                prefix,
            },
            (None, Some(schema)) if redis.is_none() && amqp.is_none() && azure.is_none() => {
                Store::Postgres {
                    url: postgres.unwrap_or_else(|| {
                        std::env::var("JOB_POSTGRES_URL").unwrap_or_else(|_| {
                            "postgres://postgres@127.0.0.1:5432/test".to_owned()
                        })
                    }),
                    schema,
                }
            }
            _ => {
                return Err(
                    "give either --prefix (and optionally --redis or --azure-queue) or --schema (and optionally --postgres)"
                        .to_owned(),
                );
            }
        };
        Ok(config)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let config = match Config::from_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("soak_worker: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak_worker: tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak_worker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    // Installed before the runtime starts, so a TERM never finds the default handler.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Not the URL: it may carry a password.
    let (sink, backend, place): (_, Arc<dyn Backend>, _) = match &config.store {
        Store::Redis { url, prefix } => (
            jobs::Sink::connect(url, prefix).await?,
            Arc::new(RedisBackend::builder(url).prefix(prefix).build()?),
            format!("Redis prefix {prefix}"),
        ),
        Store::Postgres { url, schema } => (
            jobs::Sink::connect_postgres(url, schema, config.max_connections)?,
            Arc::new(
                PostgresBackend::builder(url)
                    .schema(schema.as_str())
                    .max_connections(config.max_connections)
                    .build()?,
            ),
            format!("Postgres schema {schema}"),
        ),
        Store::Amqp { url, prefix, redis } => (
            jobs::Sink::connect(redis, prefix).await?,
            Arc::new(
                AmqpBackend::builder(url)
                    .prefix(prefix)
                    .max_recoveries(config.max_recoveries)
                    .prefetch(u16::try_from(config.concurrency * 2).unwrap_or(u16::MAX))
                    .build()?,
            ),
            format!("RabbitMQ prefix {prefix}"),
        ),
        Store::Azure { conn, prefix } => (
            jobs::Sink::connect(
                &std::env::var("JOB_REDIS_URL")
                    .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
                prefix,
            )
            .await?,
            Arc::new(
                AzureQueueBackend::builder(conn)
                    .prefix(prefix)
                    // The emulator on a loaded machine answers slowly; a renewal that times
                    // out may have spent its pop receipt.
                    .request_timeout(Duration::from_secs(15))
                    .max_recoveries(config.max_recoveries)
                    .build()?,
            ),
            format!("Azure queue prefix {prefix}"),
        ),
    };
    let rt = JobRuntime::builder()
        .backend(backend)
        .lease(config.lease)
        .reap_interval(config.reap_interval)
        .max_recoveries(config.max_recoveries)
        .concurrency(config.concurrency)
        .capacity(1_000_000)
        .shutdown_timeout(Duration::from_secs(5))
        .data(sink)
        .register::<jobs::Soak>()
        .register::<jobs::Span>()
        .register::<jobs::Pill>()
        .start()?;
    eprintln!(
        "soak_worker {}: started ({place}, concurrency {}, lease {:?}, reap every {:?}, max recoveries {})",
        std::process::id(),
        config.concurrency,
        config.lease,
        config.reap_interval,
        config.max_recoveries
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let report = rt.shutdown().await;
    eprintln!("soak_worker {}: stopped: {report:?}", std::process::id());
    Ok(())
}
