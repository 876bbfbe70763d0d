//! Redis workloads: job-core's `RedisBackend` (leases, at-least-once, fenced acks) against
//! `apalis-redis` (`RedisStorage` with its default config: task locking, results persisted,
//! events emitted), both as a user gets them, on a private redis-server that the driver
//! flushes before every child process.

use std::time::{Duration, Instant};

use apalis::prelude::{TaskSink, WorkerBuilder, WorkerBuilderExt};
use apalis_redis::RedisStorage;
use job_core::JobRuntime;
use job_core::backend::redis::RedisBackend;

use crate::common::{
    Noop, Timed, done, expect, finished, latency_percentiles, latency_slots, mark_at, marked_ns,
    noop, noop_body, now_ns, report, runtime, timed_body,
};
use crate::mem::concurrency;

fn url() -> String {
    std::env::var("PEERS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// Our runtime on Redis. `consume: false` points its workers at a queue nobody uses, so
/// it only produces (jobs stay queued).
fn ours(consume: bool) -> JobRuntime {
    let backend = RedisBackend::builder(url())
        .prefix("peers")
        .build()
        .expect("redis backend");
    let mut b = JobRuntime::builder()
        .backend(backend)
        .register::<Noop>()
        .register::<Timed>()
        .capacity(10_000_000)
        .concurrency(concurrency());
    if let Ok(n) = std::env::var("PEERS_PREFETCH") {
        b = b.prefetch(n.parse().expect("PEERS_PREFETCH: a number"));
    }
    if !consume {
        b = b.queues(["idle"]);
    }
    b.start().expect("start job-core runtime")
}

async fn apalis_storage<T>() -> RedisStorage<T> {
    let conn = apalis_redis::connect(url()).await.expect("apalis connect");
    RedisStorage::new(conn)
}

async fn apalis_noop(_job: Noop) {
    noop_body().await;
}

async fn apalis_timed(job: Timed) {
    timed_body(&job);
}

/// A plain redis-rs multiplexed connection to the benchmark's server.
async fn connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

/// Bytes Redis uses (`INFO memory` used_memory).
async fn used_memory() -> i64 {
    let mut conn = connection().await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `jobs` enqueued one after another, each awaited.
pub fn single(which: &str, jobs: usize) {
    runtime().block_on(async move {
        let elapsed = match which {
            "ours" => {
                let rt = ours(false);
                let client = rt.client();
                client.enqueue(noop(0)).await.expect("warm-up enqueue");
                let t = Instant::now();
                for i in 0..jobs {
                    client.enqueue(noop(i as u64)).await.expect("enqueue");
                }
                let e = t.elapsed();
                rt.shutdown().await;
                e
            }
            "apalis" => {
                let mut storage = apalis_storage::<Noop>().await;
                storage.push(noop(0)).await.expect("warm-up push");
                let t = Instant::now();
                for i in 0..jobs {
                    storage.push(noop(i as u64)).await.expect("push");
                }
                t.elapsed()
            }
            other => panic!("unknown implementation {other}"),
        };
        report("single_enqueue", jobs as f64 / elapsed.as_secs_f64());
    });
}

/// The floor under any enqueue that awaits its reply: `n` PINGs, one at a time, through a
/// redis-rs multiplexed connection (what both frameworks send their commands through).
pub fn ping(n: usize) {
    runtime().block_on(async move {
        let mut conn = connection().await;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .expect("PING");
        let t = Instant::now();
        for _ in 0..n {
            let _: String = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .expect("PING");
        }
        report("ping_rate", n as f64 / t.elapsed().as_secs_f64());
    });
}

/// `n` PINGs one at a time on a plain tokio `TcpStream`, no client library: the floor under
/// any awaited round trip from a tokio task, whatever the client.
pub fn ping_socket(n: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    runtime().block_on(async move {
        let port = std::env::var("PEERS_REDIS_PORT").unwrap_or_else(|_| "6379".to_owned());
        let mut s = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
            .await
            .expect("connect to redis");
        s.set_nodelay(true).expect("TCP_NODELAY");
        let mut buf = [0u8; 64];
        let t = Instant::now();
        for _ in 0..n {
            s.write_all(b"PING\r\n").await.expect("write PING");
            // "+PONG\r\n"
            let mut got = 0;
            while got < 7 {
                let read = s.read(&mut buf[got..]).await.expect("read PONG");
                assert!(read > 0, "redis closed the connection");
                got += read;
            }
        }
        report("ping_socket_rate", n as f64 / t.elapsed().as_secs_f64());
    });
}

/// `n` calls of a script that does nothing (`return {1, 'ok'}`), one at a time, through a
/// redis-rs `ConnectionManager`, with as many keys and arguments as our single enqueue
/// sends: the cost of running any script per enqueue, before it does any work.
pub fn eval_trivial(n: usize) {
    runtime().block_on(async move {
        let client = redis::Client::open(url()).expect("redis url");
        let mut conn = client
            .get_connection_manager()
            .await
            .expect("redis connection");
        let script = redis::Script::new("return {1, 'ok'}");
        let call = |i: usize| {
            let mut inv = script.prepare_invoke();
            for k in ["a", "b", "c", "d", "e", "f", "g"] {
                inv.key(format!("{{peers}}:{k}"));
            }
            inv.arg("{peers}:")
                .arg(10_000_000)
                .arg("each")
                .arg(format!("0190a0b0-0000-7000-8000-{i:012x}"))
                .arg(r#"{"n":1,"s":"hello"}"#)
                .arg("noop")
                .arg("default")
                .arg(25)
                .arg(0)
                .arg(0)
                .arg(1_763_000_000_000_u64)
                .arg("");
            inv
        };
        let _: (i64, String) = call(0)
            .invoke_async(&mut conn)
            .await
            .expect("trivial script");
        let t = Instant::now();
        for i in 1..=n {
            let _: (i64, String) = call(i)
                .invoke_async(&mut conn)
                .await
                .expect("trivial script");
        }
        report("eval_trivial_rate", n as f64 / t.elapsed().as_secs_f64());
    });
}

/// Enqueues `jobs` in batches of `batch`: apalis' `push_bulk` (one script call per batch);
/// ours `Client::enqueue_many` (one script call per 500 jobs). Then Redis memory per queued
/// job.
async fn fill(which: &str, jobs: usize, batch: usize) -> Duration {
    match which {
        "ours" => {
            let rt = ours(false);
            let client = rt.client();
            client.enqueue(noop(0)).await.expect("warm-up enqueue");
            let t = Instant::now();
            for b in 0..jobs / batch {
                let v = (0..batch).map(|i| noop((b * batch + i) as u64));
                client.enqueue_many(v).await.expect("enqueue_many");
            }
            let e = t.elapsed();
            rt.shutdown().await;
            e
        }
        "apalis" => {
            let mut storage = apalis_storage::<Noop>().await;
            storage.push(noop(0)).await.expect("warm-up push");
            let t = Instant::now();
            for b in 0..jobs / batch {
                let v: Vec<Noop> = (0..batch).map(|i| noop((b * batch + i) as u64)).collect();
                storage.push_bulk(v).await.expect("push_bulk");
            }
            t.elapsed()
        }
        other => panic!("unknown implementation {other}"),
    }
}

pub fn batched(which: &str, jobs: usize, batch: usize) {
    runtime().block_on(async move {
        let before = used_memory().await;
        let elapsed = fill(which, jobs, batch).await;
        let after = used_memory().await;
        report("batch_enqueue", jobs as f64 / elapsed.as_secs_f64());
        report("redis_bytes_per_job", (after - before) as f64 / jobs as f64);
    });
}

/// Workers (concurrency 4) start on a backlog of `backlog` jobs while one producer
/// enqueues `produce` more, one at a time. Runs until every job ran or `window` passed;
/// reports jobs run per second over that time (`run_rate`), and the rate at which the
/// backlog's worth of jobs ran while the producer was adding more (`backlog_rate`: what the
/// workers sustain with a backlog to take from; `run_rate` ends up bounded by the producer
/// once the backlog is gone).
pub fn backlog(which: &str, backlog: usize, produce: usize, window: Duration) {
    backlog_with(which, backlog, produce, window, 1);
}

/// As [`backlog`], with `producers` tasks sharing the `produce` jobs, each enqueueing one
/// job at a time (as request handlers of a service do).
pub fn backlog_with(
    which: &str,
    backlog: usize,
    produce: usize,
    window: Duration,
    producers: usize,
) {
    runtime().block_on(async move {
        if backlog > 0 {
            fill(which, backlog, 1000).await;
        }
        // The warm-up job of `fill` is queued too.
        let extra = usize::from(backlog > 0);
        let total = backlog + extra + produce;
        expect(total);
        if backlog > 0 && produce > 0 {
            mark_at(backlog + extra);
        }
        let t_ns = now_ns();
        let deadline = tokio::time::sleep(window);
        tokio::pin!(deadline);
        let t = Instant::now();
        let mut failure = None;
        let mut produced_in = None;
        match which {
            "ours" => {
                let rt = ours(true);
                let client = rt.client();
                let producer = tokio::spawn(async move {
                    let t = Instant::now();
                    let tasks: Vec<_> = (0..producers)
                        .map(|p| {
                            let client = client.clone();
                            tokio::spawn(async move {
                                for i in (p..produce).step_by(producers) {
                                    // Fails only once the window closed and shutdown began.
                                    if client.enqueue(noop(i as u64)).await.is_err() {
                                        break;
                                    }
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                    t.elapsed()
                });
                tokio::select! {
                    () = finished() => {}
                    () = &mut deadline => {}
                }
                if producer.is_finished() {
                    produced_in = producer.await.ok();
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), rt.shutdown()).await;
            }
            "apalis" => {
                let storage = apalis_storage::<Noop>().await;
                let push = storage.clone();
                let worker = WorkerBuilder::new("peers-redis")
                    .backend(storage)
                    .concurrency(concurrency())
                    .build(apalis_noop);
                let mut handle = tokio::spawn(worker.run());
                let producer = tokio::spawn(async move {
                    let t = Instant::now();
                    let tasks: Vec<_> = (0..producers)
                        .map(|p| {
                            let mut push = push.clone();
                            tokio::spawn(async move {
                                for i in (p..produce).step_by(producers) {
                                    if push.push(noop(i as u64)).await.is_err() {
                                        break;
                                    }
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                    t.elapsed()
                });
                tokio::select! {
                    () = finished() => {}
                    () = &mut deadline => {}
                    r = &mut handle => {
                        failure = Some(match r {
                            Ok(Ok(())) => "worker stopped".to_owned(),
                            Ok(Err(e)) => format!("worker error: {e}"),
                            Err(e) => format!("worker panicked: {e}"),
                        });
                    }
                }
                if producer.is_finished() {
                    produced_in = producer.await.ok();
                }
                handle.abort();
            }
            other => panic!("unknown implementation {other}"),
        }
        let elapsed = t.elapsed().min(window);
        let ran = done();
        if let Some(f) = failure {
            println!("ERROR {f} (after {ran} jobs in {elapsed:?})");
        }
        report("ran", ran as f64);
        report("run_rate", ran as f64 / elapsed.as_secs_f64());
        report("complete", if ran >= total { 1.0 } else { 0.0 });
        if let Some(p) = produced_in {
            report("produce_rate", produce as f64 / p.as_secs_f64());
        }
        if let Some(ns) = marked_ns() {
            let secs = ns.saturating_sub(t_ns) as f64 / 1e9;
            report("backlog_rate", (backlog + extra) as f64 / secs);
        }
    });
}

/// Enqueue-to-start latency at `rate` jobs/s for `seconds`: a pacer task starts one
/// enqueue task per job when it is due (so enqueues overlap and no round trip delays the
/// next arrival), ticking every 200 µs.
pub fn latency(which: &str, rate: f64, seconds: f64) {
    let total = (rate * seconds) as usize;
    latency_slots(total);
    expect(total);
    let _ = now_ns();
    runtime().block_on(async move {
        let mut failure = None;
        let mut ours_rt = None;
        let mut apalis_handle = None;
        let send: Box<dyn Fn(Timed) + Send> = match which {
            "ours" => {
                let rt = ours(true);
                let client = rt.client();
                ours_rt = Some(rt);
                Box::new(move |job| {
                    let client = client.clone();
                    tokio::spawn(async move { client.enqueue(job).await.map(|_| ()).ok() });
                })
            }
            "apalis" => {
                let storage = apalis_storage::<Timed>().await;
                let push = storage.clone();
                let worker = WorkerBuilder::new("peers-redis")
                    .backend(storage)
                    .concurrency(concurrency())
                    .build(apalis_timed);
                apalis_handle = Some(tokio::spawn(worker.run()));
                Box::new(move |job| {
                    let mut push = push.clone();
                    tokio::spawn(async move { push.push(job).await.ok() });
                })
            }
            other => panic!("unknown implementation {other}"),
        };
        // Let the workers reach their first wait.
        tokio::time::sleep(Duration::from_millis(300)).await;
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
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let took = start.elapsed();
        if tokio::time::timeout(Duration::from_secs(30), finished())
            .await
            .is_err()
        {
            failure = Some("not every job ran within 30 s");
        }
        if let Some(rt) = ours_rt {
            let _ = tokio::time::timeout(Duration::from_secs(5), rt.shutdown()).await;
        }
        if let Some(h) = apalis_handle {
            h.abort();
        }
        if let Some(f) = failure {
            println!("ERROR {f}");
        }
        let (p50, p99, n) = latency_percentiles();
        report("lat_p50_us", p50);
        report("lat_p99_us", p99);
        report("lat_offered_rate", n as f64 / took.as_secs_f64());
    });
}
