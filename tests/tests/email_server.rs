//! The email server end to end: the real `email-server` binary on a free loopback port,
//! spoken to over HTTP. Every test's `Service` kills its process when dropped.

mod common;

use std::time::Duration;

use job_examples::testing::{Service, eventually, metric_value};
use serde_json::{Value, json};

const BIN: &str = "email-server";
/// A fast mailer, so jobs finish in a few milliseconds.
const FAST: &[&str] = &["--mailer-latency", "20ms"];
const WAIT: Duration = Duration::from_secs(10);
const LABELS: &[(&str, &str)] = &[("job", "send_email"), ("queue", "email")];

fn email(to: &str, subject: &str) -> Value {
    json!({ "to": to, "subject": subject, "body": "hello" })
}

/// Posts an email and returns its job id, checking the 202 answer.
fn enqueue(server: &Service, to: &str, subject: &str) -> String {
    let response = server.post_json("/send-email", &email(to, subject));
    assert_eq!(response.status, 202, "{}", response.body);
    let id = response.json()["job_id"]
        .as_str()
        .expect("job_id is a string")
        .to_owned();
    assert_eq!(response.header("location"), Some(&*format!("/jobs/{id}")));
    id
}

/// Waits until the job's state is `state` and returns its status.
fn wait_for_state(server: &Service, id: &str, state: &str) -> Value {
    let path = format!("/jobs/{id}");
    eventually(WAIT, || {
        let status = server.get(&path).json();
        (status["state"] == state).then_some(status)
    })
    .unwrap_or_else(|| {
        panic!(
            "job {id} never reached `{state}`; last status: {}",
            server.get(&path).body
        )
    })
}

fn counters(server: &Service) -> Value {
    server.get("/jobs/status").json()["counters"].clone()
}

fn metric(server: &Service, name: &str) -> Option<f64> {
    metric_value(&server.get("/metrics").body, name, LABELS)
}

/// The log lines printed inside one job's span (text format).
fn job_lines(server: &Service, id: &str) -> Vec<String> {
    server
        .logs()
        .into_iter()
        .filter(|line| line.contains(&format!("job{{job_id={id} ")))
        .collect()
}

#[test]
fn an_email_is_accepted_sent_and_observable() {
    let server = Service::start(BIN, FAST);
    server.wait_for_log(WAIT, |l| {
        l.contains("configuration") && l.contains("capacity=100") && l.contains("concurrency=4")
    });

    let id = enqueue(&server, "ada@example.com", "hello");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(&id[14..15], "7", "a UUIDv7: {id}");

    let status = wait_for_state(&server, &id, "succeeded");
    assert_eq!(status["job_id"], id);
    assert_eq!(status["job"], "send_email");
    assert_eq!(status["queue"], "email");
    assert_eq!(status["attempts"], 1);
    assert_eq!(status["last_error"], Value::Null);
    // The job's result: the id the mailer gave the message.
    let message_id = status["result"]["message_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a result with a message id: {status}"))
        .to_owned();
    assert!(message_id.ends_with("@fake-mailer.invalid"), "{message_id}");
    for field in ["enqueued_at", "updated_at"] {
        let at = status[field].as_str().expect("a timestamp");
        assert!(at.ends_with('Z') && at.contains('T'), "{field}: {at}");
    }

    // The mailer's line carries the job's span: id, name, queue and attempt.
    let sent = server.wait_for_log(WAIT, |l| l.contains("email sent") && l.contains(&id));
    assert!(
        sent.contains("job=\"send_email\"") && sent.contains("attempt=1"),
        "{sent}"
    );
    assert!(sent.contains("to=ada@example.com"), "{sent}");
    assert!(
        sent.contains(&message_id),
        "the result is what the mailer sent: {sent}"
    );

    let runtime = server.get("/jobs/status").json();
    assert_eq!(runtime["capacity"], 100);
    assert_eq!(runtime["queue_depth"], 0);
    assert_eq!(runtime["in_flight"], 0);
    assert_eq!(runtime["is_running"], true);
    assert_eq!(runtime["is_stopping"], false);
    assert_eq!(runtime["counters"]["enqueued"], 1);
    assert_eq!(runtime["counters"]["succeeded"], 1);
    assert_eq!(runtime["counters"]["failed"], 0);

    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        metrics.headers
    );
    for name in [
        "jobs_enqueued_total",
        "jobs_started_total",
        "jobs_succeeded_total",
        "jobs_failed_total",
        "jobs_retried_total",
        "jobs_dead_lettered_total",
        "jobs_queue_depth",
        "job_duration_seconds_count",
    ] {
        assert!(
            metric_value(&metrics.body, name, LABELS).is_some(),
            "{name} labelled by job and queue is missing from:\n{}",
            metrics.body
        );
    }
    assert_eq!(metric(&server, "jobs_succeeded_total"), Some(1.0));
    assert_eq!(metric(&server, "job_duration_seconds_count"), Some(1.0));
    assert_eq!(metric(&server, "jobs_queue_depth"), Some(0.0));

    assert_eq!(server.get("/health/live").status, 200);
    let ready = server.get("/health/ready");
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (200, json!("healthy"))
    );
    let missing = server.get("/no/such/route");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string());
}

#[test]
fn a_flaky_recipient_is_retried_then_succeeds() {
    let server = Service::start(BIN, FAST);
    let id = enqueue(&server, "flaky+1@example.com", "retry me");

    // The first attempt times out; the job waits out its backoff (about 2 s) as `retrying`.
    let retrying = wait_for_state(&server, &id, "retrying");
    assert_eq!(retrying["attempts"], 1);
    assert_eq!(retrying["last_error"], "SMTP timed out");

    let done = wait_for_state(&server, &id, "succeeded");
    assert_eq!(done["attempts"], 2);
    // Not the current error of a job that succeeded; kept as its latest failure.
    assert_eq!(done["last_error"], Value::Null);
    assert_eq!(done["last_failure"], "SMTP timed out");

    let counters = counters(&server);
    assert_eq!(counters["failed"], 1);
    assert_eq!(counters["retried"], 1);
    assert_eq!(counters["succeeded"], 1);
    assert_eq!(metric(&server, "jobs_retried_total"), Some(1.0));
    assert_eq!(metric(&server, "jobs_failed_total"), Some(1.0));
    assert_eq!(metric(&server, "jobs_started_total"), Some(2.0));
    assert_eq!(metric(&server, "jobs_succeeded_total"), Some(1.0));

    let lines = job_lines(&server, &id);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("attempt=1") && l.contains("simulated SMTP timeout")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("attempt=1") && l.contains("will retry")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("attempt=2") && l.contains("email sent")),
        "{lines:#?}"
    );
}

#[test]
fn a_bounce_is_dead_lettered_and_requeued_only_with_the_admin_token() {
    const TOKEN: &str = "test-admin-token-3f9a";
    let server = Service::start_with_env(BIN, FAST, &[("JOB_ADMIN_TOKEN", TOKEN)]);
    let bearer = format!("Bearer {TOKEN}");
    let id = enqueue(&server, "bounce@example.com", "nobody home");

    // A permanent error: dead after one attempt, no retry.
    let dead = wait_for_state(&server, &id, "dead");
    assert_eq!(dead["attempts"], 1);
    assert_eq!(dead["last_error"], "invalid address bounce@example.com");
    assert_eq!(counters(&server)["retried"], 0);
    server.wait_for_log(WAIT, |l| l.contains("dead letter") && l.contains(&id));

    // Listing: 401 without the right token, the dead letter with it.
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong-token")],
        vec![("Authorization", "Basic dGVzdDp0ZXN0")],
    ] {
        let response = server.request("GET", "/dead-letters", &headers, None);
        assert_eq!(response.status, 401, "{headers:?}: {}", response.body);
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
        assert!(response.json()["error"].is_string());
    }
    let list = server.request("GET", "/dead-letters", &[("Authorization", &bearer)], None);
    assert_eq!(list.status, 200, "{}", list.body);
    let list = list.json();
    assert_eq!(list["count"], 1);
    let letter = &list["dead_letters"][0];
    assert_eq!(letter["job_id"], id);
    assert_eq!(letter["job"], "send_email");
    assert_eq!(letter["payload"]["to"], "bounce@example.com");
    assert_eq!(letter["error"][0], "invalid address bounce@example.com");

    // Requeue: refused with a wrong token (the job stays dead), bad ids rejected.
    let requeue = format!("/dead-letters/{id}/requeue");
    let wrong = server.request("POST", &requeue, &[("Authorization", "Bearer nope")], None);
    assert_eq!(wrong.status, 401);
    assert_eq!(server.get(&format!("/jobs/{id}")).json()["state"], "dead");
    assert_eq!(counters(&server)["enqueued"], 1);
    let auth = [("Authorization", bearer.as_str())];
    let malformed = server.request("POST", "/dead-letters/xyz/requeue", &auth, None);
    assert_eq!(malformed.status, 400);
    let unknown = server.request(
        "POST",
        "/dead-letters/01890a5d-ac96-774b-bcce-b302099a8057/requeue",
        &auth,
        None,
    );
    assert_eq!(unknown.status, 404);

    // With the token: accepted under the same id, run again, and (still bouncing) dead again.
    let accepted = server.request("POST", &requeue, &auth, None);
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert_eq!(accepted.json()["job_id"], id);
    assert_eq!(accepted.header("location"), Some(&*format!("/jobs/{id}")));
    let twice_dead = eventually(WAIT, || {
        let c = counters(&server);
        (c["dead_lettered"] == 2).then_some(c)
    })
    .expect("the requeued job runs and dies again");
    assert_eq!(twice_dead["enqueued"], 2);
    assert_eq!(twice_dead["started"], 2);
    assert_eq!(metric(&server, "jobs_dead_lettered_total"), Some(2.0));
    let relisted = server.request("GET", "/dead-letters", &auth, None).json();
    assert_eq!(relisted["dead_letters"][0]["job_id"], id);
}

#[test]
fn a_running_job_cancelled_by_an_admin_never_sends_its_email() {
    const TOKEN: &str = "test-admin-token-77c1";
    // The mailer takes 5 s and does not look at the job's token: the cancel's grace (1 s)
    // ends the attempt long before the email would go out.
    let server = Service::start_with_env(
        BIN,
        &["--mailer-latency", "5s"],
        &[("JOB_ADMIN_TOKEN", TOKEN)],
    );
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    let sent_at = std::time::Instant::now();
    let id = enqueue(&server, "ada@example.com", "a slow one");
    wait_for_state(&server, &id, "running");
    let path = format!("/jobs/{id}");

    // Only with the admin token.
    let refused = server.request("DELETE", &path, &[("Authorization", "Bearer nope")], None);
    assert_eq!(refused.status, 401, "{}", refused.body);
    let cancelled = server.request("DELETE", &path, &auth, None);
    assert_eq!(cancelled.status, 202, "{}", cancelled.body);
    assert_eq!(cancelled.json()["cancel"], "requested");
    assert_eq!(cancelled.json()["job_id"], id);
    let done = wait_for_state(&server, &id, "cancelled");
    assert_eq!(done["attempts"], 1);

    // Finished: 409 with its state; unknown: 404; not an id: 400.
    let again = server.request("DELETE", &path, &auth, None);
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(again.json()["state"], "cancelled");
    let unknown = server.request(
        "DELETE",
        "/jobs/01890a5d-ac96-774b-bcce-b302099a8057",
        &auth,
        None,
    );
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let malformed = server.request("DELETE", "/jobs/xyz", &auth, None);
    assert_eq!(malformed.status, 400, "{}", malformed.body);

    // Past the mailer's 5 s: the email was never sent, and the job was not retried.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(sent_at.elapsed()));
    assert!(
        !server.logs().iter().any(|l| l.contains("email sent")),
        "{:#?}",
        server.logs()
    );
    let c = counters(&server);
    assert_eq!(
        (c["started"].clone(), c["retried"].clone()),
        (json!(1), json!(0))
    );
    assert_eq!(
        server.get(&path).json()["state"],
        "cancelled",
        "still cancelled"
    );
    assert_eq!(metric(&server, "jobs_cancelled_total"), Some(1.0));
}

#[test]
fn admin_routes_are_forbidden_when_no_token_is_configured() {
    let server = Service::start(BIN, FAST);
    let id = enqueue(&server, "bounce@example.com", "nobody home");
    wait_for_state(&server, &id, "dead");
    for headers in [vec![], vec![("Authorization", "Bearer anything")]] {
        let list = server.request("GET", "/dead-letters", &headers, None);
        assert_eq!(list.status, 403, "{}", list.body);
        assert!(
            list.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("JOB_ADMIN_TOKEN"))
        );
        let requeue = server.request(
            "POST",
            &format!("/dead-letters/{id}/requeue"),
            &headers,
            None,
        );
        assert_eq!(requeue.status, 403, "{}", requeue.body);
    }
    assert_eq!(server.get(&format!("/jobs/{id}")).json()["state"], "dead");
    assert_eq!(counters(&server)["enqueued"], 1);
}

#[test]
fn bad_requests_get_json_errors_and_enqueue_nothing() {
    let server = Service::start(BIN, FAST);
    let json_type = [("Content-Type", "application/json")];
    let post =
        |body: &str| server.request("POST", "/send-email", &json_type, Some(body.as_bytes()));
    let error_of = |status: u16, body: &str| {
        let response = post(body);
        assert_eq!(response.status, status, "{body}: {}", response.body);
        response.json()["error"]
            .as_str()
            .expect("an error message")
            .to_owned()
    };

    assert!(error_of(400, r#"{"to": "a@example.com", "subject": "#).contains("malformed JSON"));
    error_of(400, "to=a@example.com");
    assert!(error_of(422, r#"{"to": "a@example.com", "subject": "s"}"#).contains("body"));
    assert!(error_of(422, r#"{"to": 5, "subject": "s", "body": "b"}"#).contains("invalid type"));
    assert!(
        error_of(
            422,
            r#"{"to": "a@example.com", "subject": "s", "body": "b", "cc": "x"}"#
        )
        .contains("unknown field")
    );
    assert!(
        error_of(
            422,
            r#"{"to": "not-an-address", "subject": "s", "body": "b"}"#
        )
        .contains("invalid address")
    );
    assert!(
        error_of(
            422,
            r#"{"to": "a@example.com", "subject": "hi\r\nBcc: x@y.com", "body": "b"}"#
        )
        .contains("one line")
    );
    let huge = json!({ "to": "a@example.com", "subject": "s", "body": "x".repeat(64 * 1024) });
    assert!(error_of(413, &huge.to_string()).contains("limit"));
    let text = server.request(
        "POST",
        "/send-email",
        &[("Content-Type", "text/plain")],
        Some(email("a@example.com", "s").to_string().as_bytes()),
    );
    assert_eq!(text.status, 415);

    let malformed_id = server.get("/jobs/not-a-uuid");
    assert_eq!(malformed_id.status, 400);
    assert!(malformed_id.json()["error"].is_string());
    let unknown_id = server.get("/jobs/01890a5d-ac96-774b-bcce-b302099a8057");
    assert_eq!(unknown_id.status, 404);
    assert!(unknown_id.json()["error"].is_string());

    let runtime = server.get("/jobs/status").json();
    assert_eq!(runtime["counters"]["enqueued"], 0, "{runtime}");
    assert_eq!(metric(&server, "jobs_enqueued_total"), Some(0.0));

    // The limit is not tighter than it says: a large body under 64 KiB is accepted.
    let large = json!({ "to": "a@example.com", "subject": "s", "body": "x".repeat(60 * 1024) });
    assert_eq!(post(&large.to_string()).status, 202);
    assert_eq!(counters(&server)["enqueued"], 1);
}

#[test]
fn sigterm_drains_the_running_job_refuses_new_ones_and_exits_zero() {
    let mut server = Service::start(
        BIN,
        &["--mailer-latency", "1500ms", "--shutdown-timeout", "10s"],
    );
    let id = enqueue(&server, "ada@example.com", "slow one");
    wait_for_state(&server, &id, "running");

    server.terminate();
    // The server keeps answering during the drain, and refuses new work at once.
    eventually(WAIT, || {
        (server.get("/jobs/status").json()["is_stopping"] == true).then_some(())
    })
    .expect("the runtime reports it is stopping");
    let refused = server.post_json("/send-email", &email("ada@example.com", "too late"));
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("shutting down"))
    );
    let ready = server.get("/health/ready");
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "unhealthy");

    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    let logs = server.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("email sent") && l.contains(&id)),
        "the running job finished: {logs:#?}"
    );
    let report = logs
        .iter()
        .find(|l| l.contains("shutdown report"))
        .unwrap_or_else(|| panic!("no shutdown report: {logs:#?}"));
    assert!(
        report.contains("completed=1")
            && report.contains("cancelled=0")
            && report.contains("left_behind=0"),
        "{report}"
    );
}

#[test]
fn readiness_turns_degraded_then_unhealthy_as_the_queue_fills_and_recovers_as_it_drains() {
    // One worker and a slow mailer: jobs pile up faster than they finish.
    let server = Service::start(
        BIN,
        &[
            "--capacity",
            "10",
            "--concurrency",
            "1",
            "--mailer-latency",
            "400ms",
        ],
    );
    let readiness = || {
        let response = server.get("/health/ready");
        let status = response.json()["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (response.status, status)
    };
    assert_eq!(readiness(), (200, "healthy".to_owned()));

    for n in 0..8 {
        enqueue(&server, "ada@example.com", &format!("load {n}"));
    }
    // 8 of 10 held: at least 75%.
    assert_eq!(readiness(), (200, "degraded".to_owned()));
    for n in 8..10 {
        enqueue(&server, "ada@example.com", &format!("load {n}"));
    }
    // 10 of 10: at least 95%, and full.
    assert_eq!(readiness(), (503, "unhealthy".to_owned()));
    let full = server.post_json("/send-email", &email("ada@example.com", "one too many"));
    assert_eq!(full.status, 503, "{}", full.body);
    assert_eq!(full.header("retry-after"), Some("1"));
    assert!(
        full.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("full"))
    );
    assert_eq!(server.get("/health/live").status, 200);

    // As the worker drains the queue: unhealthy -> degraded -> healthy, in that order.
    let mut seen = vec!["unhealthy".to_owned()];
    eventually(Duration::from_secs(15), || {
        let (code, status) = readiness();
        assert_eq!(code, if status == "unhealthy" { 503 } else { 200 });
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        (status == "healthy").then_some(())
    })
    .unwrap_or_else(|| panic!("never healthy again; seen {seen:?}"));
    assert_eq!(seen, ["unhealthy", "degraded", "healthy"]);
}

#[test]
fn json_logs_carry_the_job_span_fields() {
    let server = Service::start(BIN, &["--mailer-latency", "20ms", "--log-json"]);
    let id = enqueue(&server, "ada@example.com", "structured");
    wait_for_state(&server, &id, "succeeded");
    let line = server.wait_for_log(WAIT, |l| l.contains("email sent"));
    let entry: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(entry["fields"]["message"], "email sent");
    assert_eq!(entry["span"]["name"], "job");
    assert_eq!(entry["span"]["job_id"], id);
    assert_eq!(entry["span"]["job"], "send_email");
    assert_eq!(entry["span"]["queue"], "email");
    assert_eq!(entry["span"]["attempt"], 1);
    for line in server.logs() {
        assert!(
            serde_json::from_str::<Value>(&line).is_ok(),
            "not JSON: {line}"
        );
    }
}

/// The same server on Redis (`--redis`): jobs still queued or running when it stops are
/// kept, and the next server on the same URL and prefix runs them.
#[test]
fn on_redis_jobs_survive_a_restart() {
    let url =
        std::env::var("JOB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let hostport = url.trim_start_matches("redis://").trim_end_matches('/');
    assert!(
        std::net::TcpStream::connect(hostport).is_ok(),
        "Redis is not reachable at {url}; start it with: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no"
    );
    let prefix = format!("email-restart-{}", std::process::id());
    let _cleanup = common::RedisCleanup {
        prefix: prefix.clone(),
    };
    let durable = |latency: &'static str| {
        vec![
            "--redis".to_owned(),
            url.clone(),
            "--redis-prefix".to_owned(),
            prefix.clone(),
            "--mailer-latency".to_owned(),
            latency.to_owned(),
            "--concurrency".to_owned(),
            "1".to_owned(),
            "--shutdown-timeout".to_owned(),
            "100ms".to_owned(),
        ]
    };
    let args = durable("5s");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = Service::start(BIN, &args);
    let ids: Vec<String> = (0..3)
        .map(|i| enqueue(&first, &format!("user{i}@example.com"), "kept"))
        .collect();
    wait_for_state(&first, &ids[0], "running");
    assert_eq!(
        first.get(&format!("/jobs/{}", ids[2])).json()["state"],
        "queued"
    );
    first.terminate();
    assert!(first.wait_exit(WAIT).success());

    let args = durable("20ms");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let second = Service::start(BIN, &args);
    for id in &ids {
        let status = wait_for_state(&second, id, "succeeded");
        assert_eq!(status["job"], "send_email");
    }
}

/// On Redis, a full store answers `POST /send-email` with 503 at once (the route enqueues
/// without waiting for room), and a 202 means the store has the job.
#[test]
fn on_redis_a_full_store_answers_503_at_once() {
    let url =
        std::env::var("JOB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let hostport = url.trim_start_matches("redis://").trim_end_matches('/');
    assert!(
        std::net::TcpStream::connect(hostport).is_ok(),
        "Redis is not reachable at {url}; start it with: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no"
    );
    let prefix = format!("email-full-{}", std::process::id());
    let _cleanup = common::RedisCleanup {
        prefix: prefix.clone(),
    };
    let server = Service::start(
        BIN,
        &[
            "--redis",
            &url,
            "--redis-prefix",
            &prefix,
            "--capacity",
            "2",
            "--concurrency",
            "1",
            "--mailer-latency",
            "5s",
            "--shutdown-timeout",
            "100ms",
        ],
    );
    let ids: Vec<String> = (0..2)
        .map(|i| enqueue(&server, &format!("user{i}@example.com"), "fills"))
        .collect();
    for id in &ids {
        assert!(
            server.get(&format!("/jobs/{id}")).status == 200,
            "job {id} is stored"
        );
    }
    let started = std::time::Instant::now();
    let full = server.post_json("/send-email", &email("ada@example.com", "one too many"));
    let took = started.elapsed();
    assert_eq!(full.status, 503, "{}", full.body);
    assert_eq!(full.header("retry-after"), Some("1"));
    assert!(
        took < Duration::from_secs(1),
        "a full store must be answered at once, not waited for: took {took:?}"
    );
}

/// `Idempotency-Key` on `POST /send-email`: the same key again answers 202 with the first
/// request's job id and `Idempotent-Replayed: true`, and one email is sent; another key is
/// another email; a malformed key is a 400 that enqueues nothing.
fn an_idempotency_key_sends_one_email(server: &Service) {
    let post = |key: &str, to: &str| {
        server.request(
            "POST",
            "/send-email",
            &[
                ("Content-Type", "application/json"),
                ("Idempotency-Key", key),
            ],
            Some(email(to, "once").to_string().as_bytes()),
        )
    };
    let first = post("order-42", "idem@example.com");
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    let id = first.json()["job_id"].as_str().unwrap().to_owned();
    wait_for_state(server, &id, "succeeded");
    // After it ran, too: the key holds for 24 h.
    for _ in 0..3 {
        let again = post("order-42", "idem@example.com");
        assert_eq!(again.status, 202, "{}", again.body);
        assert_eq!(again.json()["job_id"], id.as_str());
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.header("location"), Some(&*format!("/jobs/{id}")));
    }
    let other = post("order-43", "idem@example.com");
    assert_eq!(other.status, 202);
    let other_id = other.json()["job_id"].as_str().unwrap().to_owned();
    assert_ne!(other_id, id);
    wait_for_state(server, &other_id, "succeeded");
    for bad in ["", "with space", &"k".repeat(256)] {
        let r = post(bad, "bad-key@example.com");
        assert_eq!(r.status, 400, "{bad:?}: {}", r.body);
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key")
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let sent: Vec<String> = server
        .logs()
        .into_iter()
        .filter(|l| l.contains("email sent"))
        .collect();
    assert_eq!(sent.len(), 2, "one email per key: {sent:#?}");
    assert!(
        sent.iter().all(|l| l.contains("to=idem@example.com")),
        "{sent:#?}"
    );
}

#[test]
fn an_idempotency_key_sends_one_email_in_memory() {
    an_idempotency_key_sends_one_email(&Service::start(BIN, FAST));
}

#[test]
fn an_idempotency_key_sends_one_email_on_redis() {
    let url =
        std::env::var("JOB_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("email-idem-{}", std::process::id());
    let _cleanup = common::RedisCleanup {
        prefix: prefix.clone(),
    };
    let mut args = vec!["--redis", &url, "--redis-prefix", &prefix];
    args.extend_from_slice(FAST);
    an_idempotency_key_sends_one_email(&Service::start(BIN, &args));
}
