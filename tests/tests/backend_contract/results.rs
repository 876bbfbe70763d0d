//! Job results ([`Backend::ack_results`](job_core::backend::Backend::ack_results)), as the
//! trait's docs promise them, on the backends that declare `results`.

use job_core::backend::Payload;

use crate::support::*;

/// An ack with a result finishes the job and keeps the result in its status; a batch mixes
/// held and lost leases (the lost ones are reported and change nothing); a repeat with the
/// same token changes nothing; a plain ack keeps no result.
pub(crate) async fn ack_results_keep_each_result_fenced(s: Store) {
    let s = &s;
    if !caps(s).results {
        let env = enqueued(s, "r", 1).await;
        let (_, token) = reserve_one(s, "r", LONG_LEASE).await;
        let result = Payload::encode(&serde_json::json!({ "n": 1 })).unwrap();
        let r = s.b().ack_results(&[(env.id, token, result)]).await;
        assert!(
            matches!(r, Err(BackendError::Unsupported(_))),
            "a backend without results must answer Unsupported, got {r:?}"
        );
        return;
    }
    let a = enqueued(s, "r", 1).await;
    let b = enqueued(s, "r", 2).await;
    let (_, ta) = reserve_one(s, "r", LONG_LEASE).await;
    let (_, tb) = reserve_one(s, "r", LONG_LEASE).await;
    let ra = Payload::encode(&serde_json::json!({ "message_id": "m-1" })).unwrap();
    let rb = Payload::encode(&serde_json::json!([1, 2, 3])).unwrap();
    let stale = LeaseToken::random();
    let batch = [(a.id, ta.clone(), ra.clone()), (b.id, stale, rb.clone())];
    let lost = s.b().ack_results(&batch).await.unwrap();
    assert_eq!(lost, vec![b.id], "the stale token's ack is reported lost");
    let st = status_if(s, a.id).await.expect("status kept");
    assert_eq!(st.state, JobState::Succeeded);
    assert_eq!(st.result, Some(serde_json::json!({ "message_id": "m-1" })));
    let st = status_if(s, b.id).await.expect("status kept");
    assert_eq!(st.state, JobState::Running, "a lost lease changes nothing");
    assert_eq!(st.result, None);
    // A repeat after a lost reply changes nothing and is not reported.
    let again = [(a.id, ta.clone(), rb.clone())];
    assert!(s.b().ack_results(&again).await.unwrap().is_empty());
    let st = status_if(s, a.id).await.expect("status kept");
    assert_eq!(st.result, Some(serde_json::json!({ "message_id": "m-1" })));
    // The holder's ack with no result keeps none.
    s.b().ack(b.id, tb).await.unwrap();
    let st = status_if(s, b.id).await.expect("status kept");
    assert_eq!(st.state, JobState::Succeeded);
    assert_eq!(st.result, None);
    assert_counts(s, counts(0, 0, 0, 0)).await;
}
