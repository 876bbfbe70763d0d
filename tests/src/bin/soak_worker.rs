//! `soak_worker`: a job worker process on `RedisBackend`, for the crash and chaos tests in
//! `tests/tests/redis_chaos.rs`, which start several, SIGKILL them and start them again.
//!
//! ```text
//! soak_worker --prefix P [--redis URL] [--concurrency N] [--lease-ms MS] [--reap-ms MS]
//!             [--max-recoveries N]
//! ```
//! The URL defaults to `JOB_REDIS_URL`, then `redis://127.0.0.1:6379`. The worker runs the
//! jobs of `soak_worker/jobs.rs` until it is killed, or until SIGTERM or SIGINT, when it
//! shuts down gracefully (running jobs finish, reserved ones go back to their queue) and
//! exits with status 0.

#[path = "soak_worker/jobs.rs"]
mod jobs;

use std::process::ExitCode;
use std::time::Duration;

use job_core::backend::redis::RedisBackend;
use job_core::prelude::*;
use tokio::signal::unix::{SignalKind, signal};

struct Config {
    redis: String,
    prefix: String,
    concurrency: usize,
    lease: Duration,
    reap_interval: Duration,
    max_recoveries: u32,
}

impl Config {
    fn from_args() -> Result<Self, String> {
        let mut config = Self {
            redis: std::env::var("JOB_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
            prefix: String::new(),
            concurrency: 8,
            lease: Duration::from_millis(2_000),
            reap_interval: Duration::from_millis(500),
            max_recoveries: 3,
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
                "--redis" => config.redis = value.clone(),
                "--prefix" => config.prefix = value.clone(),
                "--concurrency" => config.concurrency = number()? as usize,
                "--lease-ms" => config.lease = Duration::from_millis(number()?),
                "--reap-ms" => config.reap_interval = Duration::from_millis(number()?),
                "--max-recoveries" => {
                    config.max_recoveries =
                        u32::try_from(number()?).map_err(|e| format!("{flag}: {e}"))?;
                }
                other => return Err(format!("unknown flag {other}")),
            }
        }
        if config.prefix.is_empty() {
            return Err("--prefix is required".to_owned());
        }
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
    let sink = jobs::Sink::connect(&config.redis, &config.prefix).await?;
    let backend = RedisBackend::builder(&config.redis)
        .prefix(&config.prefix)
        .build()?;
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
    // Not the URL: it may carry a password.
    eprintln!(
        "soak_worker {}: started (prefix {}, concurrency {}, lease {:?}, reap every {:?}, max recoveries {})",
        std::process::id(),
        config.prefix,
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
