//! The report scheduler end to end: the real `report-scheduler` binary on a free loopback
//! port, observed over HTTP and through its logs. Every test's `Service` kills its process
//! when dropped.

use std::time::{Duration, Instant};

use job_examples::testing::{Service, eventually, run_to_exit};
use serde_json::Value;

const BIN: &str = "report-scheduler";
const WAIT: Duration = Duration::from_secs(10);

/// Reports enqueued so far, and when that was read.
fn enqueued(server: &Service) -> (u64, Instant) {
    let count = server.get("/jobs/status").json()["counters"]["enqueued"]
        .as_u64()
        .expect("a counter");
    (count, Instant::now())
}

/// The job id in a text log line's span (`job{job_id=... `).
fn span_job_id(line: &str) -> Option<&str> {
    let rest = line.split_once("job{job_id=")?.1;
    rest.split_whitespace().next()
}

#[test]
fn every_enqueues_one_report_per_period_and_each_runs() {
    let period = Duration::from_millis(200);
    let mut server = Service::start(BIN, &["--every", "200ms", "--mailer-latency", "5ms"]);
    server.wait_for_log(WAIT, |l| l.contains("report generated"));

    // Over a measured window, one enqueue per period (give or take the tick at each edge).
    let (before, from) = enqueued(&server);
    std::thread::sleep(Duration::from_millis(1200));
    let (after, to) = enqueued(&server);
    let expected = to.duration_since(from).as_secs_f64() / period.as_secs_f64();
    let got = (after - before) as f64;
    assert!(
        (got - expected).abs() <= 1.5,
        "{got} reports enqueued in {:?}, expected about {expected:.1}",
        to.duration_since(from)
    );

    // Each run is a `generate_report` job that builds the report and mails it.
    let line = server.wait_for_log(WAIT, |l| l.contains("report generated"));
    assert!(line.contains("schedule=every 200ms"), "{line}");
    let id = span_job_id(&line).unwrap_or_else(|| panic!("no job id in {line}"));
    let status = eventually(WAIT, || {
        let status = server.get(&format!("/jobs/{id}")).json();
        (status["state"] == "succeeded").then_some(status)
    })
    .expect("the report job succeeds");
    assert_eq!(status["job"], "generate_report");
    assert_eq!(status["queue"], "reports");
    server.wait_for_log(WAIT, |l| {
        l.contains("email sent") && l.contains(id) && l.contains("to=reports@example.com")
    });
    let counters = &server.get("/jobs/status").json()["counters"];
    assert!(counters["succeeded"].as_u64() >= Some(5), "{counters}");

    server.terminate();
    let status = server.wait_exit(WAIT);
    assert!(status.success(), "exit status {status}");
    assert!(server.logs().iter().any(|l| l.contains("shutdown report")));
}

#[test]
fn cron_enqueues_at_each_matching_second() {
    let server = Service::start(BIN, &["--cron", "* * * * * *", "--mailer-latency", "5ms"]);
    let first = server.wait_for_log(WAIT, |l| l.contains("report generated"));
    assert!(first.contains("schedule=cron * * * * * *"), "{first}");

    let (before, _) = enqueued(&server);
    std::thread::sleep(Duration::from_millis(3000));
    let (after, _) = enqueued(&server);
    assert!(
        (2..=4).contains(&(after - before)),
        "{} reports in 3 s from an every-second cron",
        after - before
    );
    let runtime: Value = server.get("/jobs/status").json();
    assert!(
        runtime["counters"]["succeeded"].as_u64() >= Some(2),
        "{runtime}"
    );
}

#[test]
fn an_invalid_schedule_stops_the_scheduler_at_start_with_a_reason() {
    let (status, output) = run_to_exit(BIN, &["--cron", "every tuesday"], WAIT);
    assert!(!status.success(), "exit status {status}");
    assert!(
        output
            .iter()
            .any(|l| l.contains("invalid cron expression `every tuesday`")),
        "{output:#?}"
    );

    let (status, output) = run_to_exit(BIN, &["--every", "0s"], WAIT);
    assert!(!status.success(), "exit status {status}");
    assert!(
        output.iter().any(|l| l.contains("greater than zero")),
        "{output:#?}"
    );
}
