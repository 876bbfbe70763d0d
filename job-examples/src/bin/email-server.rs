//! `email-server`: enqueue emails over HTTP, watch them retry, die and drain.
//!
//! ```text
//! cargo run -p job-examples --bin email-server
//! curl -i localhost:8080/send-email -H 'content-type: application/json' \
//!      -d '{"to":"ada@example.com","subject":"hi","body":"hello"}'
//! # on Postgres, a user and the welcome email in one transaction:
//! cargo run -p job-examples --bin email-server -- --postgres postgres://postgres@127.0.0.1/test
//! curl -i localhost:8080/signup -H 'content-type: application/json' -d '{"email":"ada@example.com"}'
//! ```

use std::process::ExitCode;

use clap::Parser;
use job_core::BoxError;
use job_examples::config::ServiceArgs;
use job_examples::http::{AppState, email_router};
use job_examples::{serve, telemetry};
use tokio::net::TcpListener;

/// Sends (fake) email as background jobs, with the endpoints an operator needs.
#[derive(Debug, clap::Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free one; the log says which).
    #[arg(long, env = "JOB_ADDR", default_value = "127.0.0.1:8080")]
    addr: String,

    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = telemetry::init_tracing(args.service.log_json) {
        eprintln!("email-server: cannot set up logging: {e}");
        return ExitCode::FAILURE;
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "email-server failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    args.service.log(&args.addr);
    // Before `start()`: the runtime takes its metric handles when it starts.
    let metrics = telemetry::install_metrics()?;
    let listener = TcpListener::bind(&args.addr).await?;
    // `send_email` registers itself (`#[job]`); `start()` checks its mailer is there.
    let setup = args.service.setup()?;
    let runtime = setup.builder.start()?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let mut state = AppState::new(runtime.client(), Some(metrics), args.service.admin_token());
    if let Some(pool) = setup.postgres {
        // `POST /signup`: the user's row and its welcome email in one transaction.
        state = state.with_postgres(pool);
    }
    serve::serve(listener, email_router(state), runtime).await?;
    Ok(())
}
