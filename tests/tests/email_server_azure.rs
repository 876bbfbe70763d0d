//! The email server on Azure Queue Storage (`--azure-queue`, Azurite at `JOB_AZURE_QUEUE`,
//! default 127.0.0.1:10001): jobs survive a SIGKILL of the server, and what the store cannot
//! answer is a 501 naming the backend. A missing emulator fails the test with how to start
//! it.

mod common;

use std::process::Command;
use std::time::Duration;

use job_examples::testing::{Service, eventually};
use serde_json::json;

const BIN: &str = "email-server";
const WAIT: Duration = Duration::from_secs(30);

fn enqueue(server: &Service, to: &str) -> String {
    let response = server.post_json(
        "/send-email",
        &json!({ "to": to, "subject": "kept", "body": "hello" }),
    );
    assert_eq!(response.status, 202, "{}", response.body);
    response.json()["job_id"]
        .as_str()
        .expect("job_id is a string")
        .to_owned()
}

/// Whether the server's logs show the email of job `id` sent.
fn sent(server: &Service, id: &str) -> bool {
    server
        .logs()
        .iter()
        .any(|l| l.contains(id) && l.contains("email sent"))
}

#[test]
fn on_azure_queue_jobs_survive_a_sigkill_and_restart() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Fails loudly, with how to start it, when the emulator is not there.
    let (_, cleanup) = rt.block_on(common::azure::azure_backend());
    let args = |latency: &str| {
        vec![
            "--azure-queue".to_owned(),
            common::azure::azure_conn(),
            "--azure-prefix".to_owned(),
            cleanup.prefix.clone(),
            "--mailer-latency".to_owned(),
            latency.to_owned(),
            "--concurrency".to_owned(),
            "1".to_owned(),
        ]
    };
    let first_args = args("5s");
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let mut first = Service::start(BIN, &first_args);
    let ids: Vec<String> = (0..3)
        .map(|i| enqueue(&first, &format!("user{i}@example.com")))
        .collect();
    // No lookup by id in this store: 501, naming the backend.
    let status = first.get(&format!("/jobs/{}", ids[0]));
    assert_eq!(status.status, 501, "{}", status.body);
    assert!(status.body.contains("azure-queue"), "{}", status.body);
    // One is being sent (5 s each) when the server is killed.
    // (Not a wait for a condition: a kill a moment into the first 5 s send, whatever state
    // the jobs are in then, must lose none of them.)
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Command::new("kill")
        .args(["-KILL", &first.pid().to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(killed.success());
    let exit = first.wait_exit(WAIT);
    assert!(!exit.success(), "killed: {exit:?}");
    assert!(
        ids.iter().all(|id| !sent(&first, id)),
        "nothing was sent before the kill"
    );

    let second_args = args("20ms");
    let second_args: Vec<&str> = second_args.iter().map(String::as_str).collect();
    let second = Service::start(BIN, &second_args);
    let all = eventually(WAIT, || {
        ids.iter().all(|id| sent(&second, id)).then_some(())
    });
    assert!(
        all.is_some(),
        "not every job ran after the restart; logs:\n{}",
        second.logs().join("\n")
    );
}
