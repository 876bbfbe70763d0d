//! The ambient runtime behind `Job::enqueue` (one test: the ambient client is process-wide).

mod common;

use std::time::Duration;

use common::{Behavior, Probe, Recorder, builder, wait_state};
use job_core::prelude::*;

#[tokio::test]
async fn job_enqueue_uses_the_runtime_started_last_and_fails_clearly_without_one() {
    let err = Probe::new(1, Behavior::Succeed)
        .enqueue()
        .await
        .unwrap_err();
    assert!(matches!(err, EnqueueError::NoRuntime(_)));
    assert!(
        err.to_string().contains("JobRuntime::builder().start()"),
        "{err}"
    );
    assert!(Probe::new(1, Behavior::Succeed).try_enqueue().is_err());

    let (first, second) = (Recorder::new(), Recorder::new());
    let rt1 = builder(&first).start().unwrap();
    let rt2 = builder(&second).start().unwrap();
    let id = Probe::new(2, Behavior::Succeed).enqueue().await.unwrap();
    wait_state(&rt2, id, JobState::Succeeded, Duration::from_secs(10)).await;
    assert!(
        rt1.status(id).await.unwrap().is_none(),
        "the last started runtime is ambient"
    );
    let id = Job::enqueue(Probe::new(3, Behavior::Succeed))
        .await
        .unwrap();
    wait_state(&rt2, id, JobState::Succeeded, Duration::from_secs(10)).await;
    let id = Probe::new(4, Behavior::Succeed)
        .enqueue_in(Duration::from_millis(10))
        .await
        .unwrap();
    wait_state(&rt2, id, JobState::Succeeded, Duration::from_secs(10)).await;
    let id = Probe::new(5, Behavior::Succeed).try_enqueue().unwrap();
    wait_state(&rt2, id, JobState::Succeeded, Duration::from_secs(10)).await;

    // When the runtime started last shuts down, the one started before it, still running,
    // is ambient again.
    rt2.shutdown().await;
    let id = Probe::new(6, Behavior::Succeed).enqueue().await.unwrap();
    wait_state(&rt1, id, JobState::Succeeded, Duration::from_secs(10)).await;
    assert!(
        rt2.status(id).await.unwrap().is_none(),
        "a stopped runtime is no longer ambient"
    );

    // A runtime started and stopped in between does not disturb that order.
    let third = Recorder::new();
    let rt3 = builder(&third).start().unwrap();
    rt3.shutdown().await;
    let id = Probe::new(7, Behavior::Succeed).enqueue().await.unwrap();
    wait_state(&rt1, id, JobState::Succeeded, Duration::from_secs(10)).await;

    rt1.shutdown().await;
    let err = Probe::new(8, Behavior::Succeed)
        .enqueue()
        .await
        .unwrap_err();
    assert!(
        matches!(err, EnqueueError::NoRuntime(_)),
        "with every runtime stopped, none is ambient"
    );
}
