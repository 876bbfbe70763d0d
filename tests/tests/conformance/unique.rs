//! Unique enqueues on each store: racing producers with one key make one job; a key held
//! for its window keeps duplicates out after the job succeeded, one held until finished
//! lets the next in; a store that cannot keep keys answers `Unsupported` and keeps the job
//! out of it.

use std::collections::HashSet;
use std::time::Duration;

use job_core::backend::Backend;
use job_core::{EnqueueError, Enqueued, Unique};

use crate::common::{Behavior, Probe, Recorder, eventually};
use crate::{LONG, Setup, Store};

const HOUR: Duration = Duration::from_secs(3600);

/// 16 tasks enqueue one key at once, in three rounds of different keys: each round makes
/// one job, every task gets its id, and the job runs once.
pub(crate) async fn one_key_makes_one_job(store: Store) {
    let s = Setup::new(store).await;
    let rec = Recorder::new();
    let rt = s.builder(&rec).start().unwrap();
    let client = rt.client();
    if !keeps_keys(&s) {
        let err = client
            .enqueue_unique(Probe::new(1, Behavior::Succeed), Unique::new("k", HOUR))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, EnqueueError::Unsupported { message, .. } if message.contains("uniqueness")),
            "{err:?}"
        );
        assert_eq!(err.into_inner().key, 1, "the job is given back");
        // And a job that declares no key still enqueues as usual.
        client
            .enqueue(Probe::new(2, Behavior::Succeed))
            .await
            .unwrap();
        eventually(LONG, "the plain job runs", || rec.successes() == 1).await;
        rt.shutdown().await;
        return;
    }
    for round in 0..3u64 {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = (0..16u64)
            .map(|i| {
                let (client, barrier) = (client.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    client
                        .enqueue_unique(
                            Probe::new(round * 100 + i, Behavior::Succeed),
                            Unique::new(format!("round-{round}"), HOUR),
                        )
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        let new: Vec<_> = outcomes.iter().filter(|o| o.is_new()).collect();
        assert_eq!(
            new.len(),
            1,
            "round {round}: one enqueue made the job: {outcomes:?}"
        );
        let ids: HashSet<_> = outcomes.iter().map(|o| o.id()).collect();
        assert_eq!(
            ids.len(),
            1,
            "round {round}: every task has the one job's id"
        );
    }
    eventually(LONG, "the three jobs ran", || rec.successes() == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rec.runs().len(),
        3,
        "each round's job ran once: {:?}",
        rec.runs()
    );
    rt.shutdown().await;
}

/// Held for the window, a key keeps a duplicate out after its job succeeded; held until
/// finished, it keeps one out while the job runs and lets the next in once it is done.
pub(crate) async fn a_key_is_held_as_asked(store: Store) {
    let s = Setup::new(store).await;
    if !keeps_keys(&s) {
        return; // `one_key_makes_one_job` checks the answer there.
    }
    let rec = Recorder::new();
    let rt = s.builder(&rec).start().unwrap();
    let client = rt.client();

    let window = Unique::new("window", HOUR);
    let first = client
        .enqueue_unique(Probe::new(1, Behavior::Succeed), window.clone())
        .await
        .unwrap();
    assert!(first.is_new(), "{first:?}");
    eventually(LONG, "the first job ran", || rec.successes() == 1).await;
    let again = client
        .enqueue_unique(Probe::new(2, Behavior::Succeed), window)
        .await
        .unwrap();
    assert_eq!(
        again,
        Enqueued::Existing(first.id()),
        "held for the whole window"
    );

    let running = Unique::new("finished", HOUR).until_finished();
    let gated = client
        .enqueue_unique(Probe::new(3, Behavior::Gate), running.clone())
        .await
        .unwrap();
    assert!(gated.is_new());
    eventually(LONG, "the gated job runs", || rec.attempts_of(3).len() == 1).await;
    let while_running = client
        .enqueue_unique(Probe::new(4, Behavior::Succeed), running.clone())
        .await
        .unwrap();
    assert_eq!(while_running, Enqueued::Existing(gated.id()));
    rec.open(1);
    eventually(LONG, "the gated job succeeds", || rec.successes() == 2).await;
    // The store records the end a moment after the handler returns.
    let deadline = tokio::time::Instant::now() + LONG;
    let next = loop {
        let e = client
            .enqueue_unique(Probe::new(5, Behavior::Succeed), running.clone())
            .await
            .unwrap();
        if e.is_new() || tokio::time::Instant::now() > deadline {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(next.is_new(), "a finished holder frees the key: {next:?}");
    assert_ne!(next.id(), gated.id());
    eventually(LONG, "the next job ran", || rec.attempts_of(5).len() == 1).await;
    assert!(rec.attempts_of(2).is_empty() && rec.attempts_of(4).is_empty());
    rt.shutdown().await;
}

fn keeps_keys(s: &Setup) -> bool {
    s.backend
        .as_ref()
        .is_none_or(|b: &std::sync::Arc<dyn Backend>| b.capabilities().unique_keys)
}
