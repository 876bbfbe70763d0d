//! In-memory workloads: job-core's default runtime, apalis `MemoryStorage`, raw channels.
//!
//! Every function runs in a fresh child process (see `main.rs`) and reports its figures
//! with `report`. Both frameworks run the same `Noop` payload with the same handler body
//! (`noop_body`: one atomic load, one atomic add) at concurrency 4 on a two-thread tokio
//! runtime. Ours is configured as a user gets it (status tracking, metrics and spans on; no
//! subscriber or recorder installed); its capacity is set above the job count so neither
//! side's producer is throttled (apalis' `MemoryStorage` is unbounded).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use apalis::prelude::{
    MemorySink, MemoryStorage, MemoryStorageError, Task, TaskBuilder, TaskSink, WorkerBuilder,
    WorkerBuilderExt,
};
use futures::{Sink, SinkExt, StreamExt};
use job_core::{Job, JobContext, JobRuntime};

use crate::common::{
    GATE, GATED, Noop, Timed, expect, finished, finished_or_stalled, latency_percentiles,
    latency_slots, live_heap, noop, noop_body, now_ns, peak_rss, report, rss, runtime, timed_body,
};

/// Concurrency of both pools: 4 (issue 6), or `PEERS_CONCURRENCY` for experiments.
pub fn concurrency() -> usize {
    crate::common::env_usize("PEERS_CONCURRENCY", 4)
}

impl Job for Noop {
    const NAME: &'static str = "noop";
    type Error = std::convert::Infallible;
    type Output = ();
    async fn run(&self, _: &JobContext) -> Result<(), Self::Error> {
        noop_body().await;
        Ok(())
    }
}

impl Job for Timed {
    const NAME: &'static str = "timed";
    type Error = std::convert::Infallible;
    type Output = ();
    async fn run(&self, _: &JobContext) -> Result<(), Self::Error> {
        timed_body(self);
        Ok(())
    }
}

async fn apalis_noop(_job: Noop) {
    noop_body().await;
}

async fn apalis_timed(job: Timed) {
    timed_body(&job);
}

fn ours_runtime(capacity: usize) -> JobRuntime {
    JobRuntime::builder()
        .register::<Noop>()
        .register::<Timed>()
        .capacity(capacity)
        .concurrency(concurrency())
        .start()
        .expect("start job-core runtime")
}

type BoxSink<T> =
    Box<dyn Sink<Task<T>, Error = MemoryStorageError> + Send + Sync + Unpin + 'static>;

/// A `MemoryStorage` plus a cloneable handle to push into it while a worker consumes it.
fn apalis_storage_with_sink<T: Send + 'static>() -> (MemoryStorage<T>, MemorySink<T>) {
    let (tx, rx) = futures::channel::mpsc::unbounded::<Task<T>>();
    let sink: BoxSink<T> = Box::new(tx.sink_map_err(MemoryStorageError::from));
    let sink = MemorySink::new(Arc::new(futures::lock::Mutex::new(sink)));
    (MemoryStorage::new_with(sink.clone(), rx.boxed()), sink)
}

/// Enqueue phase (workers held), processing phase, and their end-to-end rate.
pub fn phases(which: &str, jobs: usize) {
    runtime().block_on(async move {
        let (enqueue, process) = match which {
            "ours" => {
                expect(jobs);
                GATED.store(true, Ordering::SeqCst);
                let rt = ours_runtime(jobs + concurrency());
                let client = rt.client();
                let t = Instant::now();
                for i in 0..jobs {
                    client.enqueue(noop(i as u64)).await.expect("enqueue");
                }
                let enqueue = t.elapsed();
                let t = Instant::now();
                GATED.store(false, Ordering::SeqCst);
                GATE.add_permits(concurrency());
                finished().await;
                let process = t.elapsed();
                rt.shutdown().await;
                (enqueue, process)
            }
            "apalis" => {
                expect(jobs);
                let mut storage = MemoryStorage::new();
                let t = Instant::now();
                for i in 0..jobs {
                    storage.push(noop(i as u64)).await.expect("push");
                }
                let enqueue = t.elapsed();
                let t = Instant::now();
                let worker = WorkerBuilder::new("peers")
                    .backend(storage)
                    .concurrency(concurrency())
                    .build(apalis_noop);
                let handle = tokio::spawn(worker.run());
                finished().await;
                let process = t.elapsed();
                handle.abort();
                (enqueue, process)
            }
            other => panic!("unknown implementation {other}"),
        };
        let n = jobs as f64;
        report("enqueue", n / enqueue.as_secs_f64());
        report("process", n / process.as_secs_f64());
        report("e2e_seq", n / (enqueue + process).as_secs_f64());
    });
}

/// One producer task enqueues while the workers consume: jobs/s from the first enqueue to
/// the last run.
pub fn concurrent(which: &str, jobs: usize) {
    runtime().block_on(async move {
        expect(jobs);
        let elapsed = match which {
            "ours" => {
                let rt = ours_runtime(jobs + concurrency());
                let client = rt.client();
                let t = Instant::now();
                let producer = tokio::spawn(async move {
                    for i in 0..jobs {
                        client.enqueue(noop(i as u64)).await.expect("enqueue");
                    }
                });
                finished().await;
                let e = t.elapsed();
                let _ = producer.await;
                rt.shutdown().await;
                e
            }
            "apalis" => {
                let (storage, mut sink) = apalis_storage_with_sink::<Noop>();
                let worker = WorkerBuilder::new("peers")
                    .backend(storage)
                    .concurrency(concurrency())
                    .build(apalis_noop);
                let handle = tokio::spawn(worker.run());
                let t = Instant::now();
                let producer = tokio::spawn(async move {
                    for i in 0..jobs {
                        sink.send(TaskBuilder::new(noop(i as u64)).build())
                            .await
                            .expect("push");
                    }
                });
                // apalis' `MemorySink::start_send` does `try_lock().unwrap()` on the lock
                // its `poll_ready` released, so it panics when the worker's `poll_ready`
                // holds that lock in between (a race, a few runs in ten here): the
                // producer task dies and no job comes. Report the stall rather than hang.
                if let Err(e) = finished_or_stalled(Duration::from_secs(5)).await {
                    println!("ERROR {e}");
                    std::process::exit(4);
                }
                let e = t.elapsed();
                let _ = producer.await;
                handle.abort();
                e
            }
            other => panic!("unknown implementation {other}"),
        };
        report("e2e_concurrent", jobs as f64 / elapsed.as_secs_f64());
    });
}

/// Memory with `jobs` queued before any worker runs: live heap growth and RSS growth per
/// queued job, and the process's peak RSS.
pub fn memory(which: &str, jobs: usize) {
    runtime().block_on(async move {
        let (heap, rss_growth) = match which {
            "ours" => {
                GATED.store(true, Ordering::SeqCst);
                // Measured from before the runtime exists: its ready queue is a ring
                // allocated at start for the whole capacity, which is memory per queued job.
                let (h0, r0) = (live_heap(), rss());
                let rt = ours_runtime(jobs + concurrency());
                let client = rt.client();
                // Warm-up: the workers take one job each and wait at the gate.
                for i in 0..concurrency() {
                    client.enqueue(noop(i as u64)).await.expect("enqueue");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                for i in 0..jobs {
                    client.enqueue(noop(i as u64)).await.expect("enqueue");
                }
                let out = (live_heap() - h0, rss() as i64 - r0 as i64);
                report("peak_rss_mb", peak_rss() as f64 / 1e6);
                GATED.store(false, Ordering::SeqCst);
                expect(jobs + concurrency());
                GATE.add_permits(jobs + concurrency());
                finished().await;
                rt.shutdown().await;
                out
            }
            "apalis" => {
                let mut storage = MemoryStorage::new();
                for i in 0..concurrency() {
                    storage.push(noop(i as u64)).await.expect("push");
                }
                let (h0, r0) = (live_heap(), rss());
                for i in 0..jobs {
                    storage.push(noop(i as u64)).await.expect("push");
                }
                let out = (live_heap() - h0, rss() as i64 - r0 as i64);
                report("peak_rss_mb", peak_rss() as f64 / 1e6);
                drop(storage);
                out
            }
            "mpsc" => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Noop>();
                for i in 0..concurrency() {
                    tx.send(noop(i as u64)).expect("send");
                }
                let (h0, r0) = (live_heap(), rss());
                for i in 0..jobs {
                    tx.send(noop(i as u64)).expect("send");
                }
                let out = (live_heap() - h0, rss() as i64 - r0 as i64);
                report("peak_rss_mb", peak_rss() as f64 / 1e6);
                drop(rx);
                out
            }
            other => panic!("unknown implementation {other}"),
        };
        report("heap_per_job", heap as f64 / jobs as f64);
        report("rss_per_job", rss_growth as f64 / jobs as f64);
    });
}

/// Enqueue-to-start latency at `rate` jobs/s for `seconds`: an OS thread (a request handler
/// on another runtime, say) enqueues in small bursts every 100 µs, so arrivals are close to
/// even. Ours uses `try_enqueue` (never waits); apalis sends on its storage's sink.
pub fn latency(which: &str, rate: f64, seconds: f64) {
    let total = (rate * seconds) as usize;
    latency_slots(total);
    expect(total);
    let rt = runtime();
    let pace = move |mut send: Box<dyn FnMut(Timed) + Send>| {
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut sent = 0usize;
            while sent < total {
                let due = ((start.elapsed().as_secs_f64() * rate) as usize).min(total);
                while sent < due {
                    send(Timed {
                        seq: sent as u64,
                        enqueued_ns: now_ns(),
                    });
                    sent += 1;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            start.elapsed()
        })
    };
    let _ = now_ns();
    let took = match which {
        "ours" => {
            let ours = rt.block_on(async { ours_runtime(total + concurrency()) });
            let client = ours.client();
            let producer = pace(Box::new(move |job| {
                client.try_enqueue(job).expect("try_enqueue");
            }));
            let took = producer.join().expect("producer");
            rt.block_on(async {
                finished().await;
                ours.shutdown().await;
            });
            took
        }
        "apalis" => {
            // Sending through `MemorySink` from another thread hangs or panics here: its
            // `poll_ready` locks, then releases, a `futures` mutex the worker's
            // `poll_ready` also takes, and `start_send` then `try_lock().unwrap()`s it (a
            // race), and a pending lock future is dropped with its waker. So the producer
            // sends on the channel under the storage directly: cheaper than the sink.
            let (tx, rx) = futures::channel::mpsc::unbounded::<Task<Timed>>();
            let sink: BoxSink<Timed> = Box::new(tx.clone().sink_map_err(MemoryStorageError::from));
            let sink = MemorySink::new(Arc::new(futures::lock::Mutex::new(sink)));
            let storage = MemoryStorage::new_with(sink, rx.boxed());
            let handle = rt.spawn(
                WorkerBuilder::new("peers")
                    .backend(storage)
                    .concurrency(concurrency())
                    .build(apalis_timed)
                    .run(),
            );
            let producer = pace(Box::new(move |job| {
                tx.unbounded_send(TaskBuilder::new(job).build())
                    .expect("send");
            }));
            let took = producer.join().expect("producer");
            rt.block_on(finished());
            handle.abort();
            took
        }
        other => panic!("unknown implementation {other}"),
    };
    let (p50, p99, n) = latency_percentiles();
    report("lat_p50_us", p50);
    report("lat_p99_us", p99);
    report("lat_offered_rate", n as f64 / took.as_secs_f64());
}

/// Ceiling: a bounded tokio mpsc channel (1024), one producer, one consumer.
pub fn mpsc(jobs: usize) {
    runtime().block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Noop>(1024);
        let t = Instant::now();
        let consumer = tokio::spawn(async move {
            let mut n = 0usize;
            while let Some(j) = rx.recv().await {
                std::hint::black_box(j);
                n += 1;
            }
            n
        });
        for i in 0..jobs {
            tx.send(noop(i as u64)).await.expect("send");
        }
        drop(tx);
        let n = consumer.await.expect("consumer");
        report("rate", n as f64 / t.elapsed().as_secs_f64());
    });
}

/// Ceiling: a bounded multi-consumer channel (async-channel, 1024), one producer, four
/// consumers (the shape of a worker pool).
pub fn mpmc(jobs: usize) {
    runtime().block_on(async move {
        let (tx, rx) = async_channel::bounded::<Noop>(1024);
        let t = Instant::now();
        let consumers: Vec<_> = (0..concurrency())
            .map(|_| {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while let Ok(j) = rx.recv().await {
                        std::hint::black_box(j);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        drop(rx);
        for i in 0..jobs {
            tx.send(noop(i as u64)).await.expect("send");
        }
        drop(tx);
        let mut n = 0;
        for c in consumers {
            n += c.await.expect("consumer");
        }
        report("rate", n as f64 / t.elapsed().as_secs_f64());
    });
}
