//! Dead-letter records, hooks, the store, and requeue.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Behavior, Probe, Recorder, builder, eventually, wait_state};
use job_core::RequeueError;
use job_core::prelude::*;

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn every_hook_gets_the_record_even_when_one_fails_or_panics() {
    let rec = Recorder::new();
    let seen: Arc<Mutex<Vec<DeadLetter>>> = Arc::default();
    let failing_calls = Arc::new(AtomicUsize::new(0));
    let rt = builder(&rec)
        .concurrency(1)
        .on_dead_letter(|dead: DeadLetter| async move {
            if dead.attempts > 0 {
                panic!("hook bug");
            }
        })
        .on_dead_letter({
            let calls = failing_calls.clone();
            move |_dead: DeadLetter| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>("alerting service down")
                }
            }
        })
        .on_dead_letter({
            let seen = seen.clone();
            move |dead: DeadLetter| {
                let seen = seen.clone();
                async move { seen.lock().unwrap().push(dead) }
            }
        })
        .start()
        .unwrap();
    let a = rt
        .client()
        .enqueue(Probe::new(1, Behavior::Chain))
        .await
        .unwrap();
    let b = rt
        .client()
        .enqueue(Probe::new(2, Behavior::Permanent))
        .await
        .unwrap();
    let c = rt
        .client()
        .enqueue(Probe::new(3, Behavior::Succeed))
        .await
        .unwrap();
    wait_state(&rt, c, JobState::Succeeded, LONG).await;
    eventually(LONG, "hooks called", || seen.lock().unwrap().len() == 2).await;
    assert_eq!(failing_calls.load(Ordering::SeqCst), 2);

    let seen = seen.lock().unwrap().clone();
    let dead_a = seen.iter().find(|d| d.job_id == a).unwrap();
    assert_eq!(dead_a.job, "probe");
    assert_eq!(dead_a.queue, "default");
    assert_eq!(dead_a.attempts, 1);
    assert_eq!(
        dead_a.error,
        ["sending failed", "smtp server refused"],
        "the whole chain"
    );
    assert_eq!(
        dead_a.payload,
        serde_json::json!({"key": 1, "behavior": "Chain"})
    );
    assert!(dead_a.died_at >= dead_a.enqueued_at);
    assert!(seen.iter().any(|d| d.job_id == b));

    // The store keeps them too, in order.
    let stored = rt.dead_letters().await.unwrap();
    assert_eq!(stored.iter().map(|d| d.job_id).collect::<Vec<_>>(), [a, b]);
    rt.shutdown().await;
}

/// Fails permanently until the switch is flipped.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Flaky {
    n: u32,
}

#[derive(Debug, Default)]
struct Switch {
    healthy: AtomicBool,
    runs: AtomicUsize,
}

impl Job for Flaky {
    const NAME: &'static str = "flaky";
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Output = ();
    fn dependencies(deps: &mut job_core::Dependencies) {
        deps.data::<Switch>();
    }
    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        let switch = cx.data::<Switch>().expect("registered");
        switch.runs.fetch_add(1, Ordering::SeqCst);
        if switch.healthy.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Box::new(job_core::Permanent::new(format!(
                "downstream broken for {}",
                self.n
            ))))
        }
    }
}

#[tokio::test]
async fn a_dead_job_can_be_requeued_by_id() {
    let switch = Arc::new(Switch::default());
    let rt = JobRuntime::builder()
        .register::<Flaky>()
        .data(switch.clone())
        .start()
        .unwrap();
    let id = rt.client().enqueue(Flaky { n: 7 }).await.unwrap();
    let status = wait_state(&rt, id, JobState::Dead, LONG).await;
    assert_eq!(
        status.last_error.as_deref(),
        Some("downstream broken for 7")
    );
    assert_eq!(
        rt.client().dead_letter(id).await.unwrap().unwrap().payload,
        serde_json::json!({"n": 7})
    );

    switch.healthy.store(true, Ordering::SeqCst);
    assert_eq!(rt.requeue(id).await.unwrap(), id, "same id");
    let status = wait_state(&rt, id, JobState::Succeeded, LONG).await;
    assert_eq!(status.attempts, 1, "a fresh attempt budget");
    assert_eq!(switch.runs.load(Ordering::SeqCst), 2);
    assert!(
        rt.dead_letters().await.unwrap().is_empty(),
        "requeue takes it out of the store"
    );

    // Unknown ids and double requeues are errors, not panics.
    assert!(matches!(rt.requeue(id).await, Err(RequeueError::NotFound(x)) if x == id));
    assert!(matches!(
        rt.requeue(JobId::new()).await,
        Err(RequeueError::NotFound(_))
    ));
    rt.shutdown().await;
    assert!(matches!(
        rt.requeue(id).await,
        Err(RequeueError::ShuttingDown)
    ));
}

#[tokio::test]
async fn the_store_is_bounded() {
    let rec = Recorder::new();
    let rt = builder(&rec)
        .dead_letter_capacity(3)
        .concurrency(1)
        .start()
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            rt.client()
                .enqueue(Probe::new(i, Behavior::Permanent))
                .await
                .unwrap(),
        );
    }
    eventually(LONG, "all dead", || rt.stats().dead_lettered == 5).await;
    let kept: Vec<_> = rt
        .dead_letters()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.job_id)
        .collect();
    assert_eq!(kept.len(), 3);
    for id in &kept {
        assert!(ids[2..].contains(id), "the oldest were evicted");
    }
    rt.shutdown().await;
}
