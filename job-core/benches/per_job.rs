//! A fixed workload for instruction counting (`valgrind --tool=callgrind`), where wall-clock
//! timings are too noisy to compare small changes.
//!
//! `PER_JOB_MODE=phases` (default): enqueue `PER_JOB_JOBS` no-op jobs with the workers held,
//! then release them. `PER_JOB_MODE=e2e`: one producer task enqueues while the workers run.
//! `PER_JOB_THREADS` picks the tokio runtime: 1 (current-thread, default, deterministic) or
//! more (multi-thread). Run it twice with different job counts and divide the difference in
//! instructions by the difference in jobs to get instructions per job without setup.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use job_core::{Job, JobContext, JobRuntime};
use serde::{Deserialize, Serialize};

static DONE: AtomicUsize = AtomicUsize::new(0);
static GATED: AtomicBool = AtomicBool::new(false);
static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
static TARGET: AtomicUsize = AtomicUsize::new(usize::MAX);
static FINISHED: tokio::sync::Notify = tokio::sync::Notify::const_new();

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {
    n: u64,
    s: String,
}

impl Job for Noop {
    const NAME: &'static str = "noop";
    type Error = std::convert::Infallible;
    type Output = ();
    async fn run(&self, _: &JobContext) -> Result<(), Self::Error> {
        if GATED.load(Ordering::Relaxed)
            && let Ok(p) = GATE.acquire().await
        {
            p.forget();
        }
        if DONE.fetch_add(1, Ordering::Relaxed) + 1 == TARGET.load(Ordering::Relaxed) {
            FINISHED.notify_one();
        }
        Ok(())
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits without polling: the job that reaches the target wakes the waiter.
async fn wait_done() {
    FINISHED.notified().await;
}

/// User + system CPU time of each thread of this process that has used any, in ms.
fn thread_times() -> String {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // After the parenthesised name come the fields from `state` (3rd) on: utime (14th)
            // and stime (15th) are at 11 and 12, in clock ticks (10 ms).
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let ms = (ticks(11) + ticks(12)) * 10;
            if ms > 0 {
                out.push(ms.to_string());
            }
        }
    }
    out.join(",")
}

fn main() {
    let jobs = env("PER_JOB_JOBS", 20_000);
    let threads = env("PER_JOB_THREADS", 1);
    let concurrency = env("PER_JOB_CONCURRENCY", 4);
    let e2e = std::env::var("PER_JOB_MODE").is_ok_and(|m| m == "e2e");
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    TARGET.store(jobs, Ordering::Relaxed);
    rt.block_on(async move {
        let runtime = JobRuntime::builder()
            .register::<Noop>()
            .capacity(jobs + concurrency)
            .concurrency(concurrency)
            .start()
            .expect("start");
        let client = runtime.client();
        let job = |n: usize| Noop {
            n: n as u64,
            s: "hello".to_owned(),
        };
        let t = std::time::Instant::now();
        if e2e {
            let producer = tokio::spawn(async move {
                for i in 0..jobs {
                    let _ = client.enqueue(job(i)).await;
                }
                t.elapsed().as_secs_f64()
            });
            wait_done().await;
            if let Ok(secs) = producer.await {
                eprint!("producer {:.0} ", jobs as f64 / secs);
            }
        } else {
            GATED.store(true, Ordering::Relaxed);
            for i in 0..jobs {
                let _ = client.enqueue(job(i)).await;
            }
            let enqueued = t.elapsed().as_secs_f64();
            GATED.store(false, Ordering::Relaxed);
            let p = std::time::Instant::now();
            GATE.add_permits(concurrency);
            wait_done().await;
            eprint!(
                "enqueue {:.0} process {:.0} ",
                jobs as f64 / enqueued,
                jobs as f64 / p.elapsed().as_secs_f64()
            );
        }
        let secs = t.elapsed().as_secs_f64();
        if std::env::var("PER_JOB_THREAD_TIMES").is_ok() {
            eprint!("cpu ms per thread: {} ", thread_times());
        }
        eprintln!("{:.0} jobs/s", jobs as f64 / secs);
        runtime.shutdown().await;
    });
}
