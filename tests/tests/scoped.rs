//! Per-attempt scoped dependencies: built fresh for each attempt, dropped after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use job_core::prelude::*;

#[derive(Debug, Default)]
struct Counts {
    built: AtomicUsize,
    dropped: AtomicUsize,
    seen_alive: AtomicUsize,
}

/// Stands in for a database transaction.
#[derive(Debug)]
struct Tx {
    counts: Arc<Counts>,
    serial: usize,
}

impl Drop for Tx {
    fn drop(&mut self) {
        self.counts.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct UsesTx {
    fail_first: bool,
}

impl Job for UsesTx {
    const NAME: &'static str = "uses_tx";
    type Error = std::io::Error;
    type Output = ();
    fn options() -> JobOptions {
        JobOptions::new().backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(1),
            0.0,
        ))
    }
    fn dependencies(deps: &mut job_core::Dependencies) {
        deps.scoped::<Tx>();
    }
    async fn run(&self, cx: &JobContext) -> Result<(), Self::Error> {
        let tx = cx.take_scoped::<Tx>().expect("built for this attempt");
        // Each attempt gets its own, and the previous one is already gone.
        assert_eq!(tx.serial, cx.attempt() as usize);
        let c = &tx.counts;
        c.seen_alive.fetch_max(
            c.built.load(Ordering::SeqCst) - c.dropped.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
        if self.fail_first && cx.attempt() == 1 {
            return Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        }
        Ok(())
    }
}

#[tokio::test]
async fn each_attempt_gets_a_fresh_value_dropped_after_it() {
    let counts = Arc::new(Counts::default());
    let rt = JobRuntime::builder()
        .register::<UsesTx>()
        .concurrency(1)
        .scoped({
            let counts = counts.clone();
            move || {
                let counts = counts.clone();
                async move {
                    let serial = counts.built.fetch_add(1, Ordering::SeqCst) + 1;
                    Ok(Tx { counts, serial })
                }
            }
        })
        .start()
        .unwrap();
    let id = rt
        .client()
        .enqueue(UsesTx { fail_first: true })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rt.status(id).await.unwrap().unwrap().state != JobState::Succeeded {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(counts.built.load(Ordering::SeqCst), 2, "one per attempt");
    assert_eq!(
        counts.dropped.load(Ordering::SeqCst),
        2,
        "dropped after each attempt"
    );
    assert_eq!(
        counts.seen_alive.load(Ordering::SeqCst),
        1,
        "never two alive at once"
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_failing_factory_fails_the_attempt_as_transient() {
    let rt = JobRuntime::builder()
        .register::<UsesTx>()
        .scoped(|| async { Err::<Tx, _>("connection pool exhausted".into()) })
        .start()
        .unwrap();
    let id = rt
        .client()
        .enqueue(UsesTx { fail_first: false })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s = rt.status(id).await.unwrap().unwrap();
        if s.state == JobState::Dead {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert_eq!(status.attempts, 3, "retried as transient");
    assert!(
        status
            .last_error
            .unwrap()
            .contains("connection pool exhausted"),
    );
    rt.shutdown().await;
}

#[tokio::test]
async fn a_missing_factory_is_refused_at_start() {
    let err = JobRuntime::builder()
        .register::<UsesTx>()
        .start()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("job `uses_tx` needs `&mut scoped::Tx`"),
        "{msg}"
    );
}
