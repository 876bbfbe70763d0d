// Owned parameters are the payload; `&T` is injected shared data (or the context itself);
// `&mut T` is a value built for each attempt. Checked by running the job by hand.
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use job_core::prelude::*;

pub struct Counter(AtomicU32);

#[derive(Debug, Default)]
pub struct Transaction {
    pub statements: Vec<String>,
}

#[job]
async fn record(
    amount: u32,
    cx: &JobContext,
    counter: &Counter,
    tx: &mut Transaction,
    note: Option<String>,
) -> Result<(), std::io::Error> {
    counter.0.fetch_add(amount + cx.attempt(), Ordering::SeqCst);
    tx.statements.push(format!("insert {amount} {note:?}"));
    Ok(())
}

// No payload at all: a unit struct.
#[job]
async fn heartbeat(cx: &JobContext) -> Result<(), std::io::Error> {
    let _ = cx.id();
    Ok(())
}

// Patterns on injected parameters are fine; only payload parameters need a name.
#[job]
async fn ignore_context(n: u8, _: &JobContext) -> Result<(), std::io::Error> {
    let _ = n;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let counter = Arc::new(Counter(AtomicU32::new(0)));
    let cx = JobContext::detached("record")
        .with_data(counter.clone())
        .with_scoped(Transaction::default());
    let job = Record {
        amount: 41,
        note: None,
    };
    job.clone().run(&cx).await.unwrap();
    assert_eq!(counter.0.load(Ordering::SeqCst), 42);

    // The scoped value was taken by the attempt and dropped with it.
    assert!(cx.take_scoped::<Transaction>().is_none());

    // Called directly, the fn borrows whatever the caller passes.
    let mut tx = Transaction::default();
    record(1, &cx, &counter, &mut tx, Some("direct".into()))
        .await
        .unwrap();
    assert_eq!(tx.statements, ["insert 1 Some(\"direct\")"]);

    let beat = Heartbeat;
    beat.run(&JobContext::detached("heartbeat")).await.unwrap();
    assert_eq!(serde_json::to_string(&Heartbeat {}).unwrap(), "null");
    IgnoreContext { n: 1 }.run(&cx).await.unwrap();

    // The payload's wire format is serde's: a struct of the named fields.
    let json = serde_json::to_value(&job).unwrap();
    assert_eq!(json, serde_json::json!({ "amount": 41, "note": null }));
    let back: Record = serde_json::from_value(serde_json::json!({ "amount": 7 })).unwrap();
    assert_eq!(
        (back.amount, back.note),
        (7, None),
        "a missing `Option` field is `None`"
    );
}
