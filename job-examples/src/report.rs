//! The `generate_report` job: builds a (fake) report and mails it through the injected
//! [`Mailer`]. The report scheduler enqueues it on a timer or a cron expression.

use std::fmt::Write as _;

use job_core::job;

use crate::mailer::{EmailError, Mailer};

/// Builds the report for one scheduled run and mails it to `recipient`.
///
/// `schedule` names the schedule that asked for it (`every 1h`, `cron 0 * * * *`) and
/// `scheduled_at` is the RFC 3339 time of the tick.
///
/// # Errors
/// [`EmailError`] when the report cannot be mailed (retried like any email).
#[job(queue = "reports", max_attempts = 3, timeout = "60s")]
pub async fn generate_report(
    schedule: String,
    scheduled_at: String,
    recipient: String,
    mailer: &dyn Mailer,
) -> Result<(), EmailError> {
    let report = render_report(&schedule, &scheduled_at);
    tracing::info!(%schedule, %scheduled_at, bytes = report.len(), "report generated");
    let subject = format!("Report for {scheduled_at}");
    mailer.send(&recipient, &subject, &report).await?;
    Ok(())
}

/// The report's text: a stand-in for querying and formatting real data.
fn render_report(schedule: &str, scheduled_at: &str) -> String {
    let mut text = format!("Scheduled report ({schedule}) at {scheduled_at}\n\n");
    for (metric, value) in [("orders", 42), ("signups", 7), ("refunds", 1)] {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{metric:>10}: {value}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailer::FakeMailer;
    use std::time::Duration;

    #[test]
    fn report_names_its_schedule() {
        let text = render_report("every 2s", "2026-01-01T00:00:00Z");
        assert!(text.starts_with("Scheduled report (every 2s) at 2026-01-01T00:00:00Z"));
        assert!(text.contains("orders: 42"));
    }

    #[tokio::test]
    async fn report_is_mailed() {
        let mailer = FakeMailer::new(Duration::ZERO);
        let run =
            |to: &str| generate_report("every 1h".into(), "now".into(), to.to_owned(), &mailer);
        assert!(run("ops@example.com").await.is_ok());
        assert!(run("bounce@example.com").await.is_err());
    }
}
