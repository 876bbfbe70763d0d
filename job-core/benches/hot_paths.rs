//! Criterion benches of job-core's hot paths, so regressions show in `cargo bench`:
//! enqueue (`try_enqueue` into a runtime with room), dispatch (enqueue and run a no-op to
//! completion), retry delay computation (`Backoff::delay`), and the durable `Envelope`
//! encoded to and decoded from JSON.
//!
//! `cargo bench -p job-core --bench hot_paths` (about a minute; short measurement times).
//! The runtime benches use the in-memory runtime as a user gets it: status tracking,
//! metrics and spans on, no subscriber or recorder installed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use job_core::backend::{Envelope, Payload};
use job_core::{Backoff, Client, Job, JobContext, JobId, JobRuntime};
use serde::{Deserialize, Serialize};

/// Released once per finished run, so a bench can wait for its jobs.
static RAN: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

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
        RAN.add_permits(1);
        Ok(())
    }
}

fn noop(n: u64) -> Noop {
    Noop {
        n,
        s: "hello".to_owned(),
    }
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
}

fn start(rt: &tokio::runtime::Runtime, capacity: usize, concurrency: usize) -> JobRuntime {
    rt.block_on(async {
        JobRuntime::builder()
            .register::<Noop>()
            .capacity(capacity)
            .concurrency(concurrency)
            .start()
            .unwrap_or_else(|e| panic!("start: {e}"))
    })
}

/// Waits until `n` runs have finished.
async fn ran(n: usize) {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    if let Ok(p) = RAN.acquire_many(n).await {
        p.forget();
    }
}

/// Waits until every admitted job has released its slot (a run signals before its worker
/// frees the slot).
async fn drained(client: &Client) {
    while client.stats().depth > 0 {
        tokio::time::sleep(Duration::from_micros(50)).await;
    }
}

const CHUNK: usize = 10_000;

/// `try_enqueue` of a ready-made job into a runtime with room, while its workers consume.
/// Jobs are built outside the timed section; the queue is drained between chunks, outside
/// it too, so every call succeeds.
fn enqueue(c: &mut Criterion) {
    let rt = tokio_rt();
    let runtime = start(&rt, CHUNK, 4);
    let client: Client = runtime.client();
    let mut g = c.benchmark_group("enqueue");
    g.throughput(Throughput::Elements(1));
    g.bench_function("try_enqueue", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = usize::try_from(iters).unwrap_or(usize::MAX);
            while left > 0 {
                let n = left.min(CHUNK);
                let jobs: Vec<Noop> = (0..n as u64).map(noop).collect();
                let t = Instant::now();
                for job in jobs {
                    if client.try_enqueue(job).is_err() {
                        panic!("try_enqueue refused a job with room");
                    }
                }
                total += t.elapsed();
                rt.block_on(async {
                    ran(n).await;
                    drained(&client).await;
                });
                left -= n;
            }
            total
        });
    });
    g.finish();
    rt.block_on(runtime.shutdown());
}

/// Enqueue and run to completion: one job at a time (the round trip through the queue and
/// a worker), and 1,000 at a time (the per-job cost when the pool is busy).
fn dispatch(c: &mut Criterion) {
    let rt = tokio_rt();
    let runtime = start(&rt, 2 * CHUNK, 4);
    let client = runtime.client();
    let mut g = c.benchmark_group("dispatch");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_at_a_time", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for i in 0..iters {
                    if client.enqueue(noop(i)).await.is_err() {
                        panic!("enqueue failed");
                    }
                    ran(1).await;
                }
                t.elapsed()
            })
        });
    });
    let batch = 1_000u64;
    g.throughput(Throughput::Elements(batch));
    g.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, &batch| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    for i in 0..batch {
                        if client.enqueue(noop(i)).await.is_err() {
                            panic!("enqueue failed");
                        }
                    }
                    ran(batch as usize).await;
                }
                t.elapsed()
            })
        });
    });
    g.finish();
    rt.block_on(runtime.shutdown());
}

/// The retry delay after each of 10 failed attempts, with the default backoff.
fn retry_delay(c: &mut Criterion) {
    let backoff = Backoff::DEFAULT;
    let mut g = c.benchmark_group("retry");
    g.throughput(Throughput::Elements(10));
    g.bench_function("backoff_delay_x10", |b| {
        b.iter(|| {
            let mut sum = Duration::ZERO;
            for attempt in 1..=10u32 {
                sum += black_box(backoff).delay(black_box(attempt), black_box(0.37));
            }
            sum
        });
    });
    g.finish();
}

fn envelope() -> Envelope {
    Envelope {
        id: JobId::new(),
        job: "noop".to_owned(),
        queue: "default".to_owned(),
        payload: Payload::encode(&noop(42)).unwrap_or_else(|_| serde_json::Value::Null.into()),
        attempt: 0,
        max_attempts: 3,
        recoveries: 0,
        enqueued_at: 1_764_000_000_000,
        not_before: None,
        lease: None,
    }
}

/// The durable envelope to and from JSON, the job to its payload (what an enqueue encodes
/// once), and the payload to the typed job (what a worker decodes).
fn envelope_json(c: &mut Criterion) {
    let env = envelope();
    let json = serde_json::to_string(&env).unwrap_or_default();
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| {
        b.iter(|| serde_json::to_string(black_box(&env)).map(|s| s.len()));
    });
    g.bench_function("decode", |b| {
        b.iter(|| serde_json::from_str::<Envelope>(black_box(&json)).map(|e| e.attempt));
    });
    g.bench_function("job_to_payload", |b| {
        let job = noop(42);
        b.iter(|| Payload::encode(black_box(&job)).map(|p| p.len()));
    });
    g.bench_function("payload_to_job", |b| {
        b.iter(|| serde_json::from_str::<Noop>(black_box(env.payload.as_str())).map(|j| j.n));
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    enqueue(&mut c);
    dispatch(&mut c);
    retry_delay(&mut c);
    envelope_json(&mut c);
    c.final_summary();
}
