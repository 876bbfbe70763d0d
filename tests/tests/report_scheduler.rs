//! The report scheduler end to end: the real `report-scheduler` binary on a free loopback
//! port, observed over HTTP and through its logs. Every test's `Service` kills its process
//! when dropped.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, UNIX_EPOCH};

use job_core::JobId;
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

    let (status, output) = run_to_exit(
        BIN,
        &["--cron", "0 9 * * *", "--timezone", "Europe/Pariss"],
        WAIT,
    );
    assert!(!status.success(), "exit status {status}");
    assert!(
        output
            .iter()
            .any(|l| l.contains("unknown time zone `Europe/Pariss`")),
        "{output:#?}"
    );

    let (status, output) = run_to_exit(BIN, &["--every", "0s"], WAIT);
    assert!(!status.success(), "exit status {status}");
    assert!(
        output.iter().any(|l| l.contains("greater than zero")),
        "{output:#?}"
    );
}

/// How many times each report job ran in `servers`' logs, by job id, with the tick each id
/// is for (ms since the epoch).
fn reports_by_tick(servers: &[Service]) -> BTreeMap<u64, (JobId, usize)> {
    let mut ticks: BTreeMap<u64, (JobId, usize)> = BTreeMap::new();
    for server in servers {
        for line in server.logs() {
            if !line.contains("report generated") {
                continue;
            }
            let id: JobId = span_job_id(&line)
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("no job id in {line}"));
            let ms = id
                .time()
                .expect("a UUIDv7")
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            let tick = ms / 1000 * 1000;
            let entry = ticks.entry(tick).or_insert((id, 0));
            assert_eq!(entry.0, id, "two jobs for one tick: {} and {id}", entry.0);
            entry.1 += 1;
            assert_eq!(
                id,
                JobId::for_tick("generate_report every 1s", tick),
                "the job of tick {tick} is not under the tick's id"
            );
        }
    }
    ticks
}

/// Whether `ticks` follow one another a second apart, from the first to the last.
fn gaps(ticks: &BTreeMap<u64, (JobId, usize)>) -> Vec<(u64, u64)> {
    let keys: Vec<u64> = ticks.keys().copied().collect();
    keys.windows(2)
        .filter(|w| w[1] - w[0] != 1000)
        .map(|w| (w[0], w[1]))
        .collect()
}

/// Three schedulers on one Redis with `--every 1s`: one report job per tick between them,
/// each under the tick's id, for 20 ticks; one of them is killed with SIGKILL after 8 ticks
/// and no tick goes missing.
#[test]
fn three_schedulers_on_redis_make_one_report_per_tick_and_a_killed_one_loses_none() {
    let url = common::redis_url();
    let hostport = url.trim_start_matches("redis://").trim_end_matches('/');
    assert!(
        std::net::TcpStream::connect(hostport).is_ok(),
        "Redis is not reachable at {url}; start it with: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no"
    );
    let prefix = format!("reports-{}", std::process::id());
    let _cleanup = common::RedisCleanup {
        prefix: prefix.clone(),
    };
    let args = [
        "--redis",
        url.as_str(),
        "--redis-prefix",
        prefix.as_str(),
        "--every",
        "1s",
        "--mailer-latency",
        "5ms",
        "--shutdown-timeout",
        "100ms",
    ];
    let mut servers: Vec<Service> = (0..3).map(|_| Service::start(BIN, &args)).collect();
    eventually(Duration::from_secs(30), || {
        (reports_by_tick(&servers).len() >= 8).then_some(())
    })
    .expect("8 ticks ran");
    let killed = servers[1].pid();
    let status = std::process::Command::new("kill")
        .args(["-9", &killed.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -9 {killed}");
    let ticks = eventually(Duration::from_secs(90), || {
        let ticks = reports_by_tick(&servers);
        (ticks.len() >= 20 && gaps(&ticks).is_empty()).then_some(ticks)
    })
    .unwrap_or_else(|| {
        let ticks = reports_by_tick(&servers);
        panic!(
            "20 ticks without a gap; {} ticks, gaps {:?}",
            ticks.len(),
            gaps(&ticks)
        )
    });
    for (i, server) in servers.iter_mut().enumerate() {
        if i != 1 {
            server.terminate();
            assert!(server.wait_exit(WAIT).success());
        }
    }
    // A job the kill interrupted after its log line ran again elsewhere; nothing else twice.
    let twice: Vec<_> = ticks.values().filter(|(_, n)| *n > 1).collect();
    assert!(twice.len() <= 1, "reports run more than once: {twice:?}");
}
