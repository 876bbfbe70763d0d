//! T7 with a server restart (RELIABILITY.md §2): **these tests stop and start the shared
//! Postgres server** (`pg_ctlcluster --skip-systemctl-redirect <version> <cluster>
//! stop -m immediate`, then `start`), so every other client of that server loses its
//! connections at that moment. They live in this target of their own, run one at a time,
//! and must not run while other tests use the same server. `cargo test --workspace` (what
//! `.ci/run` does) runs test binaries one after another, so nothing else is connected when
//! this one runs; a runner that runs binaries in parallel (nextest) must run it alone, e.g.
//! as a step of its own after the others: `cargo test -p tests --test postgres_restart`.
//!
//! The cluster is `JOB_POSTGRES_CLUSTER` (`"<version> <name>"`, e.g. `"15 main"`), by
//! default the newest version under `/etc/postgresql` and `main` (the one `.ci/run`
//! starts). The test checks that it is the server `JOB_POSTGRES_URL` points at (same port)
//! before it touches it, and starts it again on every path, a failing one included.

mod common;
mod pg_chaos;

use std::process::Command;
use std::time::Duration;

use job_core::{EnqueueError, HealthStatus};
use pg_chaos::{
    Scope, Tick, admin_pool, all_succeed, all_workers_alive, enqueue_all, eventually,
    no_error_loop, run_test, t7_runtime,
};
use tokio::time::Instant;

/// The local cluster behind `JOB_POSTGRES_URL`, controlled with `pg_ctlcluster`. Started
/// again (if it is down) when dropped.
struct Cluster {
    version: String,
    name: String,
}

impl Cluster {
    /// The cluster to restart; fails unless it is the one the tests' URL points at.
    async fn find(scope: &Scope) -> Self {
        let configured = std::env::var("JOB_POSTGRES_CLUSTER").ok();
        let (version, name) = match configured.as_deref().map(str::split_whitespace) {
            Some(mut parts) => match (parts.next(), parts.next()) {
                (Some(v), Some(n)) => (v.to_owned(), n.to_owned()),
                _ => panic!("JOB_POSTGRES_CLUSTER must be \"<version> <name>\", e.g. \"15 main\""),
            },
            None => {
                // The newest version installed, as .ci/run starts it.
                let newest = std::fs::read_dir("/etc/postgresql")
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter_map(|v| Some((v.parse::<u32>().ok()?, v)))
                    .max();
                match newest {
                    Some((_, v)) => (v, "main".to_owned()),
                    None => panic!(
                        "cannot tell which Postgres cluster to restart (no version under /etc/postgresql); \
                         set JOB_POSTGRES_CLUSTER=\"<version> <name>\""
                    ),
                }
            }
        };
        let listed = Command::new("pg_lsclusters")
            .args(["-h", &version, &name])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run pg_lsclusters ({e}): these tests need the postgresql-common tools"
                )
            });
        let line = String::from_utf8_lossy(&listed.stdout).into_owned();
        // `<version> <name> <port> <status> <owner> <data dir> <log>`
        let port = line
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_owned();
        let serving: String = sqlx::query_scalar("SELECT current_setting('port')")
            .fetch_one(&scope.admin)
            .await
            .expect("the server's port");
        assert_eq!(
            port, serving,
            "cluster {version} {name} (pg_lsclusters: {line:?}) is not the server at JOB_POSTGRES_URL (port {serving}); \
             set JOB_POSTGRES_CLUSTER"
        );
        Self { version, name }
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("pg_ctlcluster")
            .arg("--skip-systemctl-redirect")
            .args([&self.version, &self.name])
            .args(args)
            .output()
            .expect("pg_ctlcluster runs")
    }

    /// A crash of the server: every process aborted, no checkpoint; what was committed is
    /// replayed from the WAL at the next start.
    fn crash(&self) {
        let out = self.ctl(&["stop", "-m", "immediate"]);
        assert!(
            out.status.success(),
            "pg_ctlcluster stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server and waits until it takes connections.
    async fn start(&self, url: &str) {
        let out = self.ctl(&["start"]);
        assert!(
            out.status.success(),
            "pg_ctlcluster start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(admin_pool(url).await);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Whatever happened, leave the server running (an error when it already runs).
        let _ = self.ctl(&["start"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t7_server_restart_enqueue_fails_loudly_workers_resume_nothing_acknowledged_is_lost() {
    run_test("T7 restart", Duration::from_secs(120), t7_restart()).await;
}

async fn t7_restart() {
    const OUTAGE: Duration = Duration::from_secs(3);
    let scope = Scope::new().await;
    // Dropped before the scope: the server is up again when the schema is dropped.
    let cluster = Cluster::find(&scope).await;
    let (rt, ledger) = t7_runtime(&scope, Duration::from_secs(2));
    // Three seconds of work for the four workers: `pg_ctlcluster stop` itself takes about a
    // second, and the crash must land while jobs are pending.
    let ids = enqueue_all(&rt, (0..400).map(|_| Tick { sleep_ms: 30 }).collect()).await;
    assert_eq!(rt.health().status, HealthStatus::Healthy);
    eventually(Duration::from_secs(10), "jobs running", || async {
        ledger.runs().len() >= 20
    })
    .await;

    cluster.crash();
    let outage = Instant::now();
    let ran_before = ledger.runs().len();
    // Enqueue during the outage: an error, quickly; never a hang.
    let mut refused = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        match rt.client().enqueue(Tick { sleep_ms: 1 }).await {
            Err(EnqueueError::Backend { message, .. }) => refused.push((t.elapsed(), message)),
            other => panic!(
                "enqueue while Postgres is down: expected EnqueueError::Backend, got {other:?}"
            ),
        }
    }
    let slowest = refused.iter().map(|(d, _)| *d).max().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(3),
        "enqueue took {slowest:?} to fail: {refused:?}"
    );
    eventually(Duration::from_secs(10), "health degraded", || async {
        rt.health().status == HealthStatus::Degraded
    })
    .await;
    // Keep the server down a while: workers fail to reserve, ack and renew, and go on.
    tokio::time::sleep(OUTAGE.saturating_sub(outage.elapsed())).await;

    cluster.start(&scope.url).await;
    // (The runtime may be back at work before `start` returns: its pool connects as soon as
    // the server accepts connections.)
    let down_for = outage.elapsed();
    let ran_by_start = ledger.runs().len();
    // Jobs acknowledged before the outage all complete, without restarting anything here.
    all_succeed(&rt, &ledger, &ids, Duration::from_secs(60)).await;
    let back_in = outage.elapsed() - down_for;
    let after = rt
        .client()
        .enqueue(Tick { sleep_ms: 1 })
        .await
        .expect("enqueue works again");
    all_succeed(&rt, &ledger, &[after], Duration::from_secs(10)).await;
    all_workers_alive(&rt).await;
    eventually(Duration::from_secs(5), "healthy again", || async {
        rt.health().status == HealthStatus::Healthy
    })
    .await;
    no_error_loop(&rt, &ledger, Duration::from_secs(3)).await;
    let runs = ledger.runs();
    let duplicates: u32 = ids.iter().map(|id| runs[id] - 1).sum();
    eprintln!(
        "T7 restart (Postgres): jobs={} ran_before_crash={ran_before} down_for={down_for:.1?} \
         ran_when_start_returned={ran_by_start} all_done_after_start_returned_in={back_in:.1?} enqueue_refused_in<={slowest:?} ({}) lost=0 \
         duplicates={duplicates} lease_lost={}",
        ids.len(),
        refused[0].1,
        rt.stats().lease_lost
    );
    assert!(
        ran_before < ids.len(),
        "the crash landed after the run: nothing was pending"
    );
    rt.shutdown().await;
}
