//! RabbitMQ-specific checks of `AmqpBackend` on a real broker (`JOB_AMQP_URL`, default the
//! local one): what the contract suite does not reach.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use job_core::backend::{Backend, Envelope, Payload, Reservation, Retry, unix_ms};
use job_core::prelude::*;
use tokio::time::Instant;

fn envelope(queue: &str, n: u64, delay_ms: u64) -> Envelope {
    let now = unix_ms(SystemTime::now());
    Envelope {
        id: JobId::new(),
        job: "probe".to_owned(),
        queue: queue.to_owned(),
        payload: Payload::from(serde_json::json!({ "n": n })),
        attempt: 0,
        max_attempts: 3,
        recoveries: 0,
        enqueued_at: now,
        not_before: (delay_ms > 0).then_some(now + delay_ms),
        lease: None,
    }
}

/// Reserves and acks from `queue` for `for_`, counting deliveries per id.
async fn drain(b: &dyn Backend, queue: &str, for_: Duration) -> HashMap<JobId, usize> {
    let mut seen = HashMap::new();
    let until = Instant::now() + for_;
    let queues = vec![queue.to_owned()];
    while Instant::now() < until {
        for r in b
            .reserve(&queues, 50, Duration::from_secs(30))
            .await
            .unwrap()
        {
            *seen.entry(r.id()).or_insert(0) += 1;
            b.ack(r.id(), r.token().clone()).await.unwrap();
        }
        b.wait_for_work(&queues, Duration::from_millis(50)).await;
    }
    seen
}

/// Delayed jobs and retries each come back exactly once, whatever bucket and hops they take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_and_retries_come_back_once() {
    let (b, _guard) = common::amqp::amqp_backend().await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let e = envelope("once", n, 50 + n * 37);
        ids.push(e.id);
        b.enqueue(e, 10_000).await.unwrap();
    }
    let seen = drain(&*b, "once", Duration::from_secs(3)).await;
    for id in &ids {
        assert_eq!(seen.get(id), Some(&1), "delayed job {id}: {seen:?}");
    }
    assert_eq!(seen.len(), ids.len());

    // Retries: each attempt's retry comes back once.
    let e = envelope("retry", 1, 0);
    b.enqueue(e.clone(), 10_000).await.unwrap();
    let queues = vec!["retry".to_owned()];
    let mut attempts = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        for r in b
            .reserve(&queues, 10, Duration::from_secs(30))
            .await
            .unwrap()
        {
            let Reservation::Job { envelope, token } = r else {
                panic!("malformed");
            };
            attempts.push(envelope.attempt);
            if envelope.attempt < 3 {
                let at =
                    SystemTime::now() + Duration::from_millis(100 * u64::from(envelope.attempt));
                b.retry(
                    envelope.id,
                    token,
                    Retry {
                        at,
                        error: "x".to_owned(),
                    },
                )
                .await
                .unwrap();
            } else {
                b.ack(envelope.id, token).await.unwrap();
            }
        }
        b.wait_for_work(&queues, Duration::from_millis(50)).await;
    }
    assert_eq!(attempts, [1, 2, 3]);
}
