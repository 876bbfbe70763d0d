//! What every workload shares: the job payloads, completion counting, clocks, memory probes.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The no-op job of issue 6: a u64 and a short string. Both frameworks run the same type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Noop {
    pub n: u64,
    pub s: String,
}

pub fn noop(n: u64) -> Noop {
    Noop {
        n,
        s: "hello".to_owned(),
    }
}

/// A job that records its enqueue-to-start latency into slot `seq`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timed {
    pub seq: u64,
    pub enqueued_ns: u64,
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process (monotonic).
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// ---- completion: one atomic add per job, a wake-up at the target -------------------------

static DONE: AtomicUsize = AtomicUsize::new(0);
static TARGET: AtomicUsize = AtomicUsize::new(usize::MAX);
static FINISHED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Resets the counter and sets how many runs complete the workload.
pub fn expect(target: usize) {
    DONE.store(0, Ordering::SeqCst);
    TARGET.store(target, Ordering::SeqCst);
}

static MARK: AtomicUsize = AtomicUsize::new(usize::MAX);
static MARK_NS: AtomicU64 = AtomicU64::new(0);

/// Notes (`marked_ns`) when the `n`th run of this workload happens.
pub fn mark_at(n: usize) {
    let _ = now_ns();
    MARK_NS.store(0, Ordering::SeqCst);
    MARK.store(n, Ordering::SeqCst);
}

/// `now_ns()` at the run `mark_at` named, once it happened.
pub fn marked_ns() -> Option<u64> {
    Some(MARK_NS.load(Ordering::SeqCst)).filter(|&ns| ns > 0)
}

/// Counts one run; the run that reaches the target wakes `finished()`.
pub fn tick() {
    let done = DONE.fetch_add(1, Ordering::Relaxed) + 1;
    if done == MARK.load(Ordering::Relaxed) {
        MARK_NS.store(now_ns(), Ordering::Relaxed);
    }
    if done == TARGET.load(Ordering::Relaxed) {
        FINISHED.notify_one();
    }
}

pub fn done() -> usize {
    DONE.load(Ordering::Relaxed)
}

/// Resolves once `tick` has reached the target (a stored permit if it already has).
pub async fn finished() {
    FINISHED.notified().await;
}

/// As `finished`, but gives up when no job has run for `stall`: reports how far it got.
pub async fn finished_or_stalled(stall: std::time::Duration) -> Result<(), String> {
    let mut last = done();
    loop {
        if tokio::time::timeout(stall, FINISHED.notified())
            .await
            .is_ok()
        {
            return Ok(());
        }
        let now = done();
        if now == last {
            return Err(format!(
                "stalled: no job ran for {stall:?} after {now} jobs"
            ));
        }
        last = now;
    }
}

// ---- the gate: holds our workers while jobs are queued -----------------------------------

pub static GATED: AtomicBool = AtomicBool::new(false);
pub static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

/// The body both frameworks' no-op handlers run: wait at the gate if it is closed, count.
pub async fn noop_body() {
    if GATED.load(Ordering::Relaxed)
        && let Ok(p) = GATE.acquire().await
    {
        p.forget();
    }
    tick();
}

// ---- latency slots -----------------------------------------------------------------------

static LATENCY: OnceLock<Vec<AtomicU64>> = OnceLock::new();

pub fn latency_slots(n: usize) {
    let _ = LATENCY.set((0..n).map(|_| AtomicU64::new(u64::MAX)).collect());
}

pub fn timed_body(job: &Timed) {
    let lat = now_ns().saturating_sub(job.enqueued_ns);
    if let Some(slot) = LATENCY.get().and_then(|v| v.get(job.seq as usize)) {
        slot.store(lat, Ordering::Relaxed);
    }
    tick();
}

/// p50 and p99 in µs over the slots filled; the count of filled slots.
pub fn latency_percentiles() -> (f64, f64, usize) {
    let mut v: Vec<u64> = LATENCY
        .get()
        .map(|s| {
            s.iter()
                .map(|a| a.load(Ordering::Relaxed))
                .filter(|&x| x != u64::MAX)
                .collect()
        })
        .unwrap_or_default();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, 0);
    }
    v.sort_unstable();
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p) as usize] as f64 / 1_000.0;
    (pct(0.50), pct(0.99), v.len())
}

// ---- memory --------------------------------------------------------------------------------

#[global_allocator]
static ALLOC: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// Live heap bytes (allocated minus freed) in this process.
pub fn live_heap() -> i64 {
    let s = ALLOC.stats();
    s.bytes_allocated as i64 + s.bytes_reallocated as i64 - s.bytes_deallocated as i64
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident set size now, bytes.
pub fn rss() -> u64 {
    status_kb("VmRSS:") * 1024
}

/// Peak resident set size of this process, bytes.
pub fn peak_rss() -> u64 {
    status_kb("VmHWM:") * 1024
}

// ---- the tokio runtime every workload runs on ---------------------------------------------

/// Two worker threads: one per core of the target machine.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Reports one figure to the driver.
pub fn report(key: &str, value: f64) {
    println!("RESULT {key} {value}");
}

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
