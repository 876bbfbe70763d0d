//! Throughput, latency and memory of the in-memory runtime with no-op jobs.
//!
//! `cargo bench -p job-core --bench runtime` (release). Each figure is the median of
//! `ROUNDS` runs, with min and max. Status tracking, metrics and spans are on, as a user gets
//! them; no tracing subscriber or metrics recorder is installed (so their calls are the
//! cheap disabled paths an application without exporters pays).
//!
//! Set `BENCH_JOBS` to change the job count (default 200,000) and `BENCH_ROUNDS` the rounds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use job_core::{Job, JobContext, JobRuntime};
use serde::{Deserialize, Serialize};

/// Counts live heap bytes, for bytes-per-queued-job.
#[global_allocator]
static ALLOC: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

fn live_bytes() -> usize {
    let s = ALLOC.stats();
    // `bytes_reallocated` is a signed running total: shrinking reallocations count too.
    let live =
        s.bytes_allocated as i128 + s.bytes_reallocated as i128 - s.bytes_deallocated as i128;
    usize::try_from(live).unwrap_or(0)
}

static DONE: AtomicUsize = AtomicUsize::new(0);
static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
static GATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A no-op job: a u64 and a short string.
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
        DONE.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Records enqueue-to-start latency.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Timed {
    enqueued_ns: u64,
}

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
/// Latencies in ns, one slot per job, written without a lock (a shared `Mutex<Vec>` would
/// add contention between workers that the runtime does not have).
static LAT: std::sync::RwLock<Vec<AtomicU64>> = std::sync::RwLock::new(Vec::new());
static LAT_DONE: AtomicU64 = AtomicU64::new(0);

fn lat_reset(total: u64) {
    if let Ok(mut v) = LAT.write() {
        *v = (0..total).map(|_| AtomicU64::new(0)).collect();
    }
    LAT_DONE.store(0, Ordering::Relaxed);
}

fn lat_percentiles() -> (f64, f64) {
    let mut v: Vec<u64> = LAT
        .read()
        .map(|v| v.iter().map(|x| x.load(Ordering::Relaxed)).collect())
        .unwrap_or_default();
    v.sort_unstable();
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p) as usize] as f64 / 1_000.0;
    (pct(0.50), pct(0.99))
}

fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl Job for Timed {
    const NAME: &'static str = "timed";
    type Error = std::convert::Infallible;
    type Output = ();
    async fn run(&self, _: &JobContext) -> Result<(), Self::Error> {
        let lat = now_ns().saturating_sub(self.enqueued_ns);
        let slot = LAT_DONE.fetch_add(1, Ordering::Relaxed) as usize;
        if let Ok(v) = LAT.read()
            && let Some(cell) = v.get(slot)
        {
            cell.store(lat, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn job(n: u64) -> Noop {
    Noop {
        n,
        s: "hello".to_owned(),
    }
}

async fn wait_done(target: usize) {
    while DONE.load(Ordering::Relaxed) < target {
        tokio::task::yield_now().await;
    }
}

/// End-to-end jobs/s: producers enqueue `jobs` while workers run them.
fn end_to_end(jobs: usize, producers: usize, concurrency: usize, capacity: usize) -> f64 {
    rt().block_on(async move {
        DONE.store(0, Ordering::Relaxed);
        let runtime = JobRuntime::builder()
            .register::<Noop>()
            .capacity(capacity)
            .concurrency(concurrency)
            .start()
            .expect("start");
        let per = jobs / producers;
        let start = Instant::now();
        let tasks: Vec<_> = (0..producers)
            .map(|p| {
                let client = runtime.client();
                tokio::spawn(async move {
                    for i in 0..per {
                        let _ = client.enqueue(job((p * per + i) as u64)).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        wait_done(per * producers).await;
        let secs = start.elapsed().as_secs_f64();
        runtime.shutdown().await;
        (per * producers) as f64 / secs
    })
}

/// Enqueue phase and processing phase apart: enqueue `jobs` with one producer while the
/// workers are held, then release them.
fn phases(jobs: usize, concurrency: usize) -> (f64, f64) {
    rt().block_on(async move {
        DONE.store(0, Ordering::Relaxed);
        GATED.store(true, Ordering::Relaxed);
        let runtime = JobRuntime::builder()
            .register::<Noop>()
            .capacity(jobs + concurrency)
            .concurrency(concurrency)
            .start()
            .expect("start");
        let client = runtime.client();
        let start = Instant::now();
        for i in 0..jobs {
            let _ = client.enqueue(job(i as u64)).await;
        }
        let enqueue = jobs as f64 / start.elapsed().as_secs_f64();
        GATED.store(false, Ordering::Relaxed);
        let start = Instant::now();
        GATE.add_permits(concurrency);
        wait_done(jobs).await;
        let process = jobs as f64 / start.elapsed().as_secs_f64();
        runtime.shutdown().await;
        (enqueue, process)
    })
}

/// The ceiling: a bounded tokio mpsc channel, one producer, one consumer.
fn raw_mpsc(jobs: usize) -> f64 {
    rt().block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Noop>(1024);
        let start = Instant::now();
        let consumer = tokio::spawn(async move {
            let mut n = 0usize;
            while let Some(j) = rx.recv().await {
                std::hint::black_box(j);
                n += 1;
            }
            n
        });
        for i in 0..jobs {
            let _ = tx.send(job(i as u64)).await;
        }
        drop(tx);
        let n = consumer.await.unwrap_or(0);
        n as f64 / start.elapsed().as_secs_f64()
    })
}

/// The same channel, but the consumer spawns a task per message (the cost a
/// task-per-attempt design pays): jobs/s until every spawned task has run.
fn mpsc_spawn_each(jobs: usize) -> f64 {
    rt().block_on(async move {
        DONE.store(0, Ordering::Relaxed);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Noop>(1024);
        let start = Instant::now();
        tokio::spawn(async move {
            while let Some(j) = rx.recv().await {
                tokio::spawn(async move {
                    std::hint::black_box(j);
                    DONE.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
        for i in 0..jobs {
            let _ = tx.send(job(i as u64)).await;
        }
        drop(tx);
        wait_done(jobs).await;
        jobs as f64 / start.elapsed().as_secs_f64()
    })
}

/// Enqueue-to-start latency (p50, p99 in µs) at `rate` jobs/s. The producer is an OS thread
/// (like a request handler on another runtime) that enqueues with `try_enqueue` in small
/// batches every 100 µs, so arrivals are close to even.
fn latency(rate: f64, seconds: f64, concurrency: usize) -> (f64, f64) {
    let rt = rt();
    let runtime = rt.block_on(async {
        JobRuntime::builder()
            .register::<Timed>()
            .capacity(100_000)
            .concurrency(concurrency)
            .start()
            .expect("start")
    });
    let client = runtime.client();
    let total = (rate * seconds) as u64;
    lat_reset(total);
    let producer = std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
            while sent < due {
                let _ = client.try_enqueue(Timed {
                    enqueued_ns: now_ns(),
                });
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    });
    let _ = producer.join();
    rt.block_on(async {
        while LAT_DONE.load(Ordering::Relaxed) < total {
            tokio::task::yield_now().await;
        }
        runtime.shutdown().await;
    });
    lat_percentiles()
}

/// Same measure with the producer as a task on the job runtime's own two threads (as an HTTP
/// handler would be), paced by tokio's 1 ms timer: each tick enqueues the jobs due by then.
fn latency_on_runtime(rate: f64, seconds: f64, concurrency: usize) -> (f64, f64) {
    rt().block_on(async move {
        let runtime = JobRuntime::builder()
            .register::<Timed>()
            .capacity(100_000)
            .concurrency(concurrency)
            .start()
            .expect("start");
        let client = runtime.client();
        let total = (rate * seconds) as u64;
        lat_reset(total);
        let producer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < total {
                tick.tick().await;
                let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
                while sent < due {
                    let _ = client.try_enqueue(Timed {
                        enqueued_ns: now_ns(),
                    });
                    sent += 1;
                }
            }
        });
        let _ = producer.await;
        while LAT_DONE.load(Ordering::Relaxed) < total {
            tokio::task::yield_now().await;
        }
        runtime.shutdown().await;
        lat_percentiles()
    })
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<usize>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// Bytes per queued job (heap live bytes, RSS growth) with `jobs` queued behind gated
/// workers.
fn memory(jobs: usize) -> (f64, f64) {
    rt().block_on(async move {
        DONE.store(0, Ordering::Relaxed);
        GATED.store(true, Ordering::Relaxed);
        let concurrency = 2;
        // From before the runtime is built: its ready queue is a ring allocated at start for
        // the whole capacity, which is memory per queued job. (The warm-up below adds two
        // jobs' worth, noise at this count.)
        let heap0 = live_bytes();
        let rss0 = rss_bytes();
        let runtime = JobRuntime::builder()
            .register::<Noop>()
            .capacity(jobs + concurrency)
            .concurrency(concurrency)
            .start()
            .expect("start");
        let client = runtime.client();
        // Warm up, so one-time allocations are not counted.
        for i in 0..concurrency {
            let _ = client.enqueue(job(i as u64)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for i in 0..jobs {
            let _ = client.enqueue(job(i as u64)).await;
        }
        let heap = (live_bytes() - heap0) as f64 / jobs as f64;
        let rss = rss_bytes().saturating_sub(rss0) as f64 / jobs as f64;
        GATED.store(false, Ordering::Relaxed);
        GATE.add_permits(jobs + concurrency);
        wait_done(jobs + concurrency).await;
        runtime.shutdown().await;
        (heap, rss)
    })
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let jobs = env("BENCH_JOBS", 200_000);
    let rounds = env("BENCH_ROUNDS", 5);
    println!(
        "in-memory runtime, {jobs} no-op jobs, {rounds} rounds, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<52} {:>12} {:>12} {:>12}",
        "measure", "median", "min", "max"
    );
    let row = |name: &str, unit: &str, v: Vec<f64>| {
        let (med, min, max) = stats(v);
        println!("{name:<52} {med:>12.0} {min:>12.0} {max:>12.0}  {unit}");
        med
    };

    if let Ok(rate) = std::env::var("BENCH_LATENCY_AT") {
        // Only the latency measure, at a given rate (jobs/s).
        let rate: f64 = rate.parse().unwrap_or(500_000.0);
        let (mut p50, mut p99) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (a, b) = latency(rate, 1.0, 4);
            p50.push(a);
            p99.push(b);
        }
        println!("latency at {rate:.0} jobs/s, concurrency 4:");
        row("  enqueue-to-start p50", "µs", p50);
        row("  enqueue-to-start p99", "µs", p99);
        return;
    }
    let mut mpsc = Vec::new();
    let mut spawn_each = Vec::new();
    let mut e2e = std::collections::BTreeMap::<(usize, usize, usize), Vec<f64>>::new();
    let mut enq = Vec::new();
    let mut proc = Vec::new();
    for _ in 0..rounds {
        mpsc.push(raw_mpsc(jobs));
        spawn_each.push(mpsc_spawn_each(jobs));
        for &(p, c) in &[(1, 2), (1, 4), (4, 2), (4, 4)] {
            for &cap in &[100, 10_000] {
                e2e.entry((p, c, cap))
                    .or_default()
                    .push(end_to_end(jobs, p, c, cap));
            }
        }
        let (e, pr) = phases(jobs, 4);
        enq.push(e);
        proc.push(pr);
    }
    let ceiling = row("tokio mpsc(1024), 1 producer, 1 consumer", "msgs/s", mpsc);
    row(
        "tokio mpsc(1024), consumer spawns a task per message",
        "msgs/s",
        spawn_each,
    );
    let mut peak: f64 = 0.0;
    for ((p, c, cap), v) in e2e {
        let med = row(
            &format!("end-to-end: {p} producer(s), concurrency {c}, capacity {cap}"),
            "jobs/s",
            v,
        );
        if c == 4 {
            peak = peak.max(med);
        }
    }
    row("enqueue phase (1 producer, workers held)", "jobs/s", enq);
    row(
        "processing phase (concurrency 4, queue full)",
        "jobs/s",
        proc,
    );
    println!(
        "best end-to-end at concurrency 4 / mpsc ceiling: {:.1}%",
        100.0 * peak / ceiling
    );

    let half = peak / 2.0;
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for _ in 0..rounds {
        let (a, b) = latency(half, 1.0, 4);
        p50.push(a);
        p99.push(b);
    }
    println!("latency at {half:.0} jobs/s (half of peak), even arrivals from a producer thread:");
    row("  enqueue-to-start p50", "µs", p50);
    row("  enqueue-to-start p99", "µs", p99);
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (a, b) = latency_on_runtime(half, 1.0, 4);
        p50.push(a);
        p99.push(b);
    }
    println!("latency at {half:.0} jobs/s, producer task on the runtime, 1 ms batches:");
    row("  enqueue-to-start p50", "µs", p50);
    row("  enqueue-to-start p99", "µs", p99);

    let mut heap = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..rounds {
        let (h, r) = memory(100_000);
        heap.push(h);
        rss.push(r);
    }
    row("bytes per queued job, heap (100,000 queued)", "B", heap);
    row(
        "bytes per queued job, RSS growth (100,000 queued)",
        "B",
        rss,
    );
}
