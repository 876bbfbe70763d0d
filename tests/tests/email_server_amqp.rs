//! The email server on RabbitMQ (`--amqp`): jobs queued or running when the server is
//! SIGKILLed are kept by the broker (a killed consumer's unacknowledged deliveries come
//! back), and the next server on the same URL and prefix runs them; `GET /jobs/{id}` answers
//! 501 (a broker cannot look a job up by id). Needs the broker (`JOB_AMQP_URL`, default the
//! local RabbitMQ, guest/guest); without it the test fails.

mod common;

use std::process::Command;
use std::time::Duration;

use job_examples::testing::{Service, eventually, metric_value};
use serde_json::json;

const BIN: &str = "email-server";
const WAIT: Duration = Duration::from_secs(20);
const LABELS: &[(&str, &str)] = &[("job", "send_email"), ("queue", "email")];

fn metric(server: &Service, name: &str) -> f64 {
    metric_value(&server.get("/metrics").body, name, LABELS).unwrap_or(0.0)
}

#[test]
fn on_rabbitmq_jobs_survive_a_sigkill_and_restart() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Connects (failing loudly without a broker); its drop deletes the prefix's queues.
    let (_backend, mut cleanup) = rt.block_on(common::amqp::amqp_backend());
    cleanup.queues.push("email");
    let prefix = _backend.prefix().to_owned();
    let url = common::amqp::amqp_url();
    let durable = |latency: &str| {
        vec![
            "--amqp".to_owned(),
            url.clone(),
            "--amqp-prefix".to_owned(),
            prefix.clone(),
            "--mailer-latency".to_owned(),
            latency.to_owned(),
            "--concurrency".to_owned(),
            "1".to_owned(),
        ]
    };
    let args = durable("5s");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = Service::start(BIN, &args);
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let r = first.post_json(
                "/send-email",
                &json!({"to": format!("user{i}@example.com"), "subject": "kept", "body": "b"}),
            );
            assert_eq!(r.status, 202, "{}", r.body);
            r.json()["job_id"].as_str().expect("a job_id").to_owned()
        })
        .collect();
    // No status by id on a broker: 501, naming the backend.
    let r = first.get(&format!("/jobs/{}", ids[0]));
    assert_eq!(r.status, 501, "{}", r.body);
    assert!(r.body.contains("amqp"), "{}", r.body);
    eventually(WAIT, || {
        (metric(&first, "jobs_started_total") >= 1.0).then_some(())
    })
    .expect("the first job started");
    let killed = Command::new("kill")
        .args(["-KILL", &first.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    drop(first);

    let args = durable("20ms");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let second = Service::start(BIN, &args);
    eventually(WAIT, || {
        (metric(&second, "jobs_succeeded_total") >= 3.0).then_some(())
    })
    .expect("the three jobs ran on the second server");
    for id in &ids {
        assert!(
            second
                .logs()
                .iter()
                .any(|l| l.contains(&format!("job_id={id}"))),
            "job {id} did not run on the second server"
        );
    }
}
