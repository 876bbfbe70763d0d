//! Unique jobs declared on the job (`#[job(unique(..))]`), through every enqueue call, in
//! memory and on Redis. (The run-time form and every store: the conformance suite.)

mod common;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use job_core::Enqueued;
use job_core::backend::redis::RedisBackend;
use job_core::prelude::*;

/// What ran: (to, body).
static SENT: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// One email per recipient and subject in ten minutes; the body is not part of the key.
#[job(unique(by = [to, subject], for = "10m"))]
async fn notify(to: String, subject: String, body: String) -> Result<(), std::io::Error> {
    let _ = subject;
    SENT.lock().unwrap().push((to, body));
    Ok(())
}

/// One sync per account at a time.
#[job(unique(by = [account], for = "1h", until = "finished"))]
async fn sync_account(account: u64, millis: u64) -> Result<(), std::io::Error> {
    tokio::time::sleep(Duration::from_millis(millis)).await;
    let _ = account;
    Ok(())
}

fn note(to: &str, subject: &str, body: &str) -> Notify {
    Notify {
        to: to.into(),
        subject: subject.into(),
        body: body.into(),
    }
}

fn sent_to(to: &str) -> Vec<String> {
    SENT.lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t == to)
        .map(|(_, b)| b.clone())
        .collect()
}

async fn until_sent(to: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sent_to(to).len() < n {
        assert!(tokio::time::Instant::now() < deadline, "{to}: {n} sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every enqueue call honours the declared key: a duplicate gets the first job's id and
/// does not run; another recipient or subject is another key.
#[tokio::test]
async fn every_enqueue_call_honours_the_declared_key() {
    let runtime = JobRuntime::builder().start().unwrap();
    let client = runtime.client();
    let to = "calls@example.com";
    let first = client.enqueue(note(to, "hi", "first")).await.unwrap();
    assert_eq!(
        client.enqueue(note(to, "hi", "second")).await.unwrap(),
        first
    );
    assert_eq!(
        client
            .enqueue_checked(note(to, "hi", "third"))
            .await
            .unwrap(),
        Enqueued::Existing(first)
    );
    assert_eq!(client.try_enqueue(note(to, "hi", "fourth")).unwrap(), first);
    assert_eq!(
        client
            .enqueue_if_room(note(to, "hi", "fifth"))
            .await
            .unwrap(),
        first
    );
    assert_eq!(
        client
            .enqueue_in(note(to, "hi", "sixth"), Duration::from_millis(1))
            .await
            .unwrap(),
        first
    );
    let many = client
        .enqueue_many([note(to, "hi", "seventh"), note(to, "other", "eighth")])
        .await
        .unwrap();
    assert_eq!(many[0], first);
    assert_ne!(many[1], first, "another subject is another key");
    let other = client
        .enqueue_checked(note("else@example.com", "hi", "x"))
        .await
        .unwrap();
    assert!(other.is_new());
    until_sent(to, 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut bodies = sent_to(to);
    bodies.sort();
    assert_eq!(bodies, ["eighth", "first"]);
    runtime.shutdown().await;
}

/// The window counts from the first enqueue: at its end the key is free again.
#[tokio::test(start_paused = true)]
async fn the_key_is_free_when_its_window_ends() {
    let runtime = JobRuntime::builder().start().unwrap();
    let client = runtime.client();
    let to = "window@example.com";
    let first = client.enqueue_checked(note(to, "hi", "a")).await.unwrap();
    assert!(first.is_new());
    tokio::time::sleep(Duration::from_secs(9 * 60)).await;
    assert_eq!(
        client.enqueue_checked(note(to, "hi", "b")).await.unwrap(),
        Enqueued::Existing(first.id()),
        "nine minutes later: still held (the job succeeded long ago)"
    );
    tokio::time::sleep(Duration::from_secs(61)).await;
    let next = client.enqueue_checked(note(to, "hi", "c")).await.unwrap();
    assert!(next.is_new(), "ten minutes after the first: {next:?}");
    until_sent(to, 2).await;
    runtime.shutdown().await;
}

/// `until = "finished"`: one job per account at a time; the next gets in once it ended.
#[tokio::test]
async fn until_finished_keeps_one_at_a_time() {
    let runtime = JobRuntime::builder().start().unwrap();
    let client = runtime.client();
    let first = client
        .enqueue_checked(SyncAccount {
            account: 7,
            millis: 300,
        })
        .await
        .unwrap();
    let during = client
        .enqueue_checked(SyncAccount {
            account: 7,
            millis: 0,
        })
        .await
        .unwrap();
    assert_eq!(during, Enqueued::Existing(first.id()));
    let other = client
        .enqueue_checked(SyncAccount {
            account: 8,
            millis: 0,
        })
        .await
        .unwrap();
    assert!(other.is_new());
    client
        .wait(first.id(), Duration::from_secs(10))
        .await
        .unwrap();
    let after = client
        .enqueue_checked(SyncAccount {
            account: 7,
            millis: 0,
        })
        .await
        .unwrap();
    assert!(after.is_new(), "{after:?}");
    runtime.shutdown().await;
}

/// Sixteen tasks enqueue one declared key at once: one job, one id, one run.
async fn sixteen_producers_make_one_job(runtime: JobRuntime, to: &str) {
    let client = runtime.client();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (client, barrier, to) = (client.clone(), barrier.clone(), to.to_owned());
            tokio::spawn(async move {
                barrier.wait().await;
                client
                    .enqueue_checked(note(&to, "race", &format!("task {i}")))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(
        outcomes.iter().filter(|o| o.is_new()).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .map(|o| o.id())
            .collect::<HashSet<_>>()
            .len(),
        1
    );
    until_sent(to, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sent_to(to).len(), 1, "{:?}", sent_to(to));
    runtime.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_producers_make_one_job_in_memory() {
    let runtime = JobRuntime::builder().start().unwrap();
    sixteen_producers_make_one_job(runtime, "race-memory@example.com").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_producers_make_one_job_on_redis() {
    let (backend, _cleanup): (RedisBackend, _) = common::redis_backend().await;
    let runtime = JobRuntime::builder().backend(backend).start().unwrap();
    sixteen_producers_make_one_job(runtime, "race-redis@example.com").await;
}
