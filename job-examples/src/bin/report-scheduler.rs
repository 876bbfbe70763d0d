//! `report-scheduler`: enqueues `generate_report` on a timer or a cron expression.
//!
//! ```text
//! cargo run -p job-examples --bin report-scheduler -- --every 2s
//! cargo run -p job-examples --bin report-scheduler -- --cron "0 9 * * *" --timezone Europe/Paris
//! ```
//!
//! On a shared store (`--redis`, `--postgres`) any number of schedulers make one report per
//! tick between them.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use job_core::BoxError;
use job_core::schedule::Schedule;
use job_examples::config::{ServiceArgs, parse_duration};
use job_examples::http::{AppState, ops_router};
use job_examples::report::GenerateReport;
use job_examples::{serve, telemetry};
use tokio::net::TcpListener;

/// Enqueues a report job on a schedule, with the same operational endpoints as the email
/// server.
#[derive(Debug, clap::Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free one; the log says which).
    #[arg(long, env = "JOB_ADDR", default_value = "127.0.0.1:8081")]
    addr: String,

    /// Enqueue a report every this long, without drift: counted from the start in memory, at
    /// multiples of it since the Unix epoch on a shared store (one report per tick however
    /// many schedulers run). Default 1h when no --cron is given.
    #[arg(long, env = "JOB_REPORT_EVERY", value_parser = parse_duration)]
    every: Option<Duration>,

    /// Enqueue a report at each time matching this cron expression, on the --timezone
    /// wall clock: 5 fields (min hour day month weekday) or 6 with seconds first.
    /// Repeatable.
    #[arg(long, env = "JOB_REPORT_CRON")]
    cron: Vec<String>,

    /// The IANA time zone --cron expressions are read in (`Europe/Paris`).
    #[arg(long, env = "JOB_REPORT_TIMEZONE", default_value = "UTC")]
    timezone: String,

    /// Who receives the reports (the fake mailer's recipients apply: flaky+N@, bounce@).
    #[arg(long, env = "JOB_REPORT_TO", default_value = "reports@example.com")]
    report_to: String,

    #[command(flatten)]
    service: ServiceArgs,
}

/// The default period when neither `--every` nor `--cron` is given.
const DEFAULT_EVERY: Duration = Duration::from_secs(3600);

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = telemetry::init_tracing(args.service.log_json) {
        eprintln!("report-scheduler: cannot set up logging: {e}");
        return ExitCode::FAILURE;
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "report-scheduler failed");
            ExitCode::FAILURE
        }
    }
}

/// A schedule's `make` closure: a fresh payload stamped with the tick's time.
fn report_maker(schedule: String, recipient: String) -> impl FnMut() -> GenerateReport {
    move || GenerateReport {
        schedule: schedule.clone(),
        scheduled_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        recipient: recipient.clone(),
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    args.service.log(&args.addr);
    let every = match (args.every, args.cron.is_empty()) {
        (Some(period), _) => Some(period),
        (None, true) => Some(DEFAULT_EVERY),
        (None, false) => None,
    };
    let metrics = telemetry::install_metrics()?;
    let listener = TcpListener::bind(&args.addr).await?;
    let mut builder = args.service.runtime_builder()?;
    if let Some(period) = every {
        tracing::info!(every = ?period, to = %args.report_to, "scheduling reports");
        let label = format!("every {}", humantime::format_duration(period));
        builder = builder.every(period, report_maker(label, args.report_to.clone()));
    }
    for expression in &args.cron {
        tracing::info!(cron = %expression, timezone = %args.timezone, to = %args.report_to, "scheduling reports");
        let label = format!("cron {expression}");
        let schedule = Schedule::cron(expression)?.timezone(&args.timezone)?;
        builder = builder.schedule(schedule, report_maker(label, args.report_to.clone()));
    }
    let runtime = builder.start()?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let state = AppState::new(runtime.client(), Some(metrics), args.service.admin_token());
    serve::serve(listener, ops_router(state), runtime).await?;
    Ok(())
}
