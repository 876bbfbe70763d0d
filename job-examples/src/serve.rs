//! Serving HTTP beside a job runtime, and the graceful shutdown on SIGTERM or Ctrl-C.

use std::time::Duration;

use axum::Router;
use job_core::{JobRuntime, ShutdownReport};
use tokio::net::TcpListener;

/// How long open HTTP connections get to finish once the runtime has drained.
const HTTP_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Completes on the first SIGTERM or SIGINT (Ctrl-C) and names it.
pub async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                () = ctrl_c => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                ctrl_c.await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        ctrl_c.await;
        "Ctrl-C"
    }
}

/// Serves `app` on `listener` until SIGTERM or Ctrl-C, then shuts down in order:
///
/// 1. the runtime stops accepting jobs at once, so enqueueing routes answer 503 while the
///    server keeps answering status, health and metrics requests during the drain;
/// 2. in-flight jobs get the runtime's shutdown timeout to finish;
/// 3. the shutdown report is logged;
/// 4. the HTTP server stops and open connections get a few seconds to close.
///
/// A second signal during the drain exits the process at once with status 130.
///
/// # Errors
/// When the HTTP server fails; the runtime is shut down first.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    runtime: JobRuntime,
) -> std::io::Result<ShutdownReport> {
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await
    });

    let signal = tokio::select! {
        signal = shutdown_signal() => signal,
        ended = &mut server => {
            tracing::error!("HTTP server stopped unexpectedly");
            runtime.shutdown().await;
            return match ended {
                Ok(Ok(())) => Err(std::io::Error::other("HTTP server stopped unexpectedly")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(std::io::Error::other(e)),
            };
        }
    };
    tracing::info!(
        signal,
        "shutdown requested: refusing new jobs, draining running ones"
    );

    let report = tokio::select! {
        report = runtime.shutdown() => report,
        signal = shutdown_signal() => {
            tracing::warn!(signal, "second signal: exiting without waiting for running jobs");
            std::process::exit(130);
        }
    };
    tracing::info!(
        completed = report.completed,
        cancelled = report.cancelled,
        left_behind = report.left_behind,
        timed_out = report.timed_out,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "shutdown report"
    );

    let _ = stop_http.send(());
    match tokio::time::timeout(HTTP_CLOSE_TIMEOUT, &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
        Err(_) => {
            tracing::warn!("HTTP connections still open after {HTTP_CLOSE_TIMEOUT:?}: closing");
            server.abort();
        }
    }
    tracing::info!("bye");
    Ok(report)
}
