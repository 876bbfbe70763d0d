//! Side-by-side benchmarks of job-core against apalis (issue 6).
//!
//! `peers run` is the driver: for each round it runs every workload once for ours and once
//! for apalis (A B A B ...), each in a fresh child process (`peers child WORKLOAD IMPL`), so
//! allocator state, RSS and Redis contents never leak from one measurement into the next.
//! Ratios ours/apalis are computed round by round, then summarised as median, min, max.
//! `benches/peers/run.sh` builds in release mode, starts a private redis-server and runs
//! the driver.
//!
//! Environment: `PEERS_ROUNDS` (5), `PEERS_JOBS` (100000), `PEERS_REDIS_URL` (unset: skip
//! the Redis part), `PEERS_REDIS_PORT` (for redis-benchmark), `PEERS_WINDOW_SECS` (10, the
//! longest a Redis throughput run lasts), `PEERS_ONLY` (comma-separated workload names),
//! `PEERS_CONCURRENCY` (4; for experiments only: the tables say 4), `PEERS_POSTGRES_URL`
//! (unset: skip the Postgres part; a server URL with a maintenance database, e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`: the children make `peers_bench` beside it).

mod common;
mod mem;
mod pg_peers;
mod redis_peers;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::env_usize;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("child") => child(&args[1..]),
        Some("run") | None => Driver::new().run(),
        Some(other) => {
            eprintln!("usage: peers [run] | peers child WORKLOAD IMPL [RATE]  (got {other})");
            std::process::exit(2);
        }
    }
}

// ---- children --------------------------------------------------------------------------------

fn child(args: &[String]) {
    let workload = args.first().map(String::as_str).unwrap_or("");
    let which = args.get(1).map(String::as_str).unwrap_or("ours");
    let rate: f64 = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(0.0);
    let jobs = env_usize("PEERS_JOBS", 100_000);
    let window = Duration::from_secs(env_usize("PEERS_WINDOW_SECS", 10) as u64);
    // A stuck child must not stall the whole run.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(180));
        println!("ERROR child timed out after 180 s");
        std::process::exit(3);
    });
    match workload {
        "mem-phases" => mem::phases(which, jobs),
        "mem-concurrent" => mem::concurrent(which, jobs),
        "mem-memory" => mem::memory(which, jobs),
        "mem-latency" => mem::latency(which, rate, 1.0),
        "mpsc" => mem::mpsc(jobs * 10),
        "mpmc" => mem::mpmc(jobs * 10),
        "redis-single" => redis_peers::single(which, jobs / 10),
        "redis-ping" => redis_peers::ping(jobs / 10),
        "redis-ping-socket" => redis_peers::ping_socket(jobs / 10),
        "redis-eval-trivial" => redis_peers::eval_trivial(jobs / 10),
        "redis-batch" => redis_peers::batched(which, jobs, 1000),
        "redis-drain" => redis_peers::backlog(which, jobs, 0, window),
        // apalis-redis cannot take a 100,000-job backlog (its fetch script fails with "too
        // many results to unpack" past about 8,000 ready jobs): a backlog it can take.
        "redis-drain-7k" => redis_peers::backlog(which, 7_000, 0, window),
        "redis-backlog" => redis_peers::backlog(which, jobs, jobs, window),
        "redis-backlog-16" => redis_peers::backlog_with(which, jobs, jobs, window, 16),
        "redis-e2e" => redis_peers::backlog(which, 0, jobs / 5, window),
        "redis-latency" => redis_peers::latency(which, rate, 2.0),
        "pg-single" => pg_peers::single(which, jobs / 10),
        "pg-batch" => pg_peers::batched(which, jobs, 1000),
        "pg-e2e" => pg_peers::backlog(which, 0, jobs / 5, window),
        "pg-backlog" => pg_peers::backlog(which, jobs, jobs / 5, window),
        "pg-latency" => pg_peers::latency(which, rate, 2.0),
        "pg-churn" => pg_peers::churn(jobs * 10),
        "pg-pgbench" => pg_peers::pgbench_insert(),
        other => {
            println!("ERROR unknown workload {other}");
            std::process::exit(2);
        }
    }
    // Background tasks of aborted workers may still hold the runtime; leave at once.
    std::process::exit(0);
}

// ---- the driver ----------------------------------------------------------------------------

type Metrics = BTreeMap<String, f64>;

/// The head of every side-by-side table.
const TABLE_HEAD: &str = "| measure | unit | ours: median (min–max) | apalis: median (min–max) | ours/apalis, per round: median (min–max) |\n|---|---|---|---|---|\n";

#[derive(Default)]
struct Series {
    ours: Vec<f64>,
    apalis: Vec<f64>,
    ratio: Vec<f64>,
}

struct Driver {
    rounds: usize,
    redis: Option<String>,
    redis_port: Option<String>,
    postgres: Option<String>,
    only: Option<Vec<String>>,
    exe: std::path::PathBuf,
    /// (workload, metric) -> series
    data: BTreeMap<(String, String), Series>,
    /// ceiling name -> values
    ceilings: BTreeMap<String, Vec<f64>>,
    errors: Vec<String>,
}

fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let med = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some((med, v[0], v[v.len() - 1]))
}

fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn cell(v: &[f64]) -> String {
    match stats(v) {
        Some((med, min, max)) => format!("{} ({}–{})", fmt_num(med), fmt_num(min), fmt_num(max)),
        None => "—".to_owned(),
    }
}

fn fmt_ratio(x: f64) -> String {
    if x >= 0.095 {
        format!("{x:.2}")
    } else if x >= 0.001 {
        format!("{x:.4}")
    } else {
        format!("{x:.1e}")
    }
}

fn ratio_cell(v: &[f64]) -> String {
    match stats(v) {
        Some((med, min, max)) => format!(
            "**{}×** ({}–{})",
            fmt_ratio(med),
            fmt_ratio(min),
            fmt_ratio(max)
        ),
        None => "—".to_owned(),
    }
}

impl Driver {
    fn new() -> Self {
        Self {
            rounds: env_usize("PEERS_ROUNDS", 5),
            redis: std::env::var("PEERS_REDIS_URL").ok(),
            redis_port: std::env::var("PEERS_REDIS_PORT").ok(),
            postgres: std::env::var("PEERS_POSTGRES_URL").ok(),
            only: std::env::var("PEERS_ONLY")
                .ok()
                .map(|s| s.split(',').map(str::to_owned).collect()),
            exe: std::env::current_exe().expect("own path"),
            data: BTreeMap::new(),
            ceilings: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    fn wanted(&self, workload: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|w| w == workload))
    }

    fn flush_redis(&self) {
        if let Some(port) = &self.redis_port {
            let _ = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", port, "FLUSHALL"])
                .output();
        }
    }

    /// Runs a child; one that crashes (apalis' `MemorySink` can panic under contention,
    /// see `mem.rs`) is recorded under Errors and run again, at most twice.
    fn spawn(&mut self, workload: &str, which: &str, rate: Option<f64>) -> Metrics {
        for _ in 0..2 {
            let (m, ok) = self.spawn_once(workload, which, rate);
            if ok {
                return m;
            }
            self.errors
                .push(format!("{workload} {which}: the run above is repeated"));
        }
        self.spawn_once(workload, which, rate).0
    }

    fn spawn_once(&mut self, workload: &str, which: &str, rate: Option<f64>) -> (Metrics, bool) {
        if workload.starts_with("redis") {
            self.flush_redis();
        }
        let mut cmd = Command::new(&self.exe);
        cmd.args(["child", workload, which]);
        if let Some(r) = rate {
            cmd.arg(format!("{r:.0}"));
        }
        let out = match cmd.output() {
            Ok(o) => o,
            Err(e) => {
                self.errors.push(format!("{workload} {which}: {e}"));
                return (Metrics::new(), true);
            }
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut m = Metrics::new();
        for line in stdout.lines() {
            let mut parts = line.split_whitespace();
            match parts.next() {
                Some("RESULT") => {
                    if let (Some(k), Some(v)) = (parts.next(), parts.next())
                        && let Ok(v) = v.parse()
                    {
                        m.insert(k.to_owned(), v);
                    }
                }
                Some("ERROR") => self.errors.push(format!("{workload} {which}: {line}")),
                _ => {}
            }
        }
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // The panic message, not the backtrace.
            let why: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.starts_with(' ') && !l.trim().is_empty())
                .take(2)
                .collect();
            self.errors.push(format!(
                "{workload} {which}: exit {:?}: {}",
                out.status.code(),
                why.join(" / ")
            ));
        }
        eprintln!("  {workload:<15} {which:<7} {m:?}");
        (m, out.status.success())
    }

    /// Runs ours then apalis and records every metric, with the ratio of this round.
    fn pair(&mut self, workload: &str, rate: Option<f64>) {
        if !self.wanted(workload) {
            return;
        }
        let ours = self.spawn(workload, "ours", rate);
        let apalis = self.spawn(workload, "apalis", rate);
        let keys: std::collections::BTreeSet<&String> = ours.keys().chain(apalis.keys()).collect();
        for k in keys {
            let s = self
                .data
                .entry((workload.to_owned(), k.clone()))
                .or_default();
            let (o, a) = (ours.get(k), apalis.get(k));
            if let Some(o) = o {
                s.ours.push(*o);
            }
            if let Some(a) = a {
                s.apalis.push(*a);
            }
            if let (Some(o), Some(a)) = (o, a)
                && *a != 0.0
            {
                s.ratio.push(o / a);
            }
        }
    }

    fn ceiling(&mut self, name: &str, value: Option<f64>) {
        if let Some(v) = value {
            self.ceilings.entry(name.to_owned()).or_default().push(v);
        }
    }

    /// Records ours (this round's last `workload`/`metric` value) divided by `ceiling`.
    fn ceiling_ratio(&mut self, name: &str, workload: &str, metric: &str, ceiling: Option<f64>) {
        let ours = self
            .series(workload, metric)
            .and_then(|s| s.ours.last().copied());
        if let (Some(o), Some(c)) = (ours, ceiling) {
            self.ceiling(name, Some(o / c));
        }
    }

    fn series(&self, workload: &str, metric: &str) -> Option<&Series> {
        self.data.get(&(workload.to_owned(), metric.to_owned()))
    }

    fn median_ours(&self, workload: &str, metric: &str) -> Option<f64> {
        self.series(workload, metric)
            .and_then(|s| stats(&s.ours))
            .map(|s| s.0)
    }

    fn redis_benchmark(&mut self, port: &str, command: &str, args: &[&str], pipeline: usize) {
        self.redis_benchmark_with(port, command, args, pipeline, 50);
    }

    fn redis_benchmark_with(
        &mut self,
        port: &str,
        command: &str,
        args: &[&str],
        pipeline: usize,
        clients: usize,
    ) {
        let n = if pipeline > 1 {
            "500000"
        } else if clients == 1 {
            "50000"
        } else {
            "200000"
        };
        let p = pipeline.to_string();
        let c = clients.to_string();
        let mut cmd = Command::new("redis-benchmark");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-n",
            n,
            "-c",
            &c,
            "-P",
            &p,
            "--csv",
        ]);
        cmd.arg(command).args(args);
        let rps = cmd.output().ok().and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .and_then(|l| l.split(',').nth(1))
                .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
        });
        let who = if clients == 1 {
            "1 client".to_owned()
        } else {
            format!("{clients} clients")
        };
        let name = if pipeline > 1 {
            format!("redis-benchmark {command}, {who}, pipeline {pipeline}")
        } else {
            format!("redis-benchmark {command}, {who}, no pipelining")
        };
        self.ceiling(&name, rps);
    }

    fn run(mut self) {
        let rounds = self.rounds;
        eprintln!("peers: {rounds} rounds; redis: {:?}", self.redis);
        for r in 0..rounds {
            eprintln!("round {}/{rounds}: in memory", r + 1);
            self.pair("mem-phases", None);
            self.pair("mem-concurrent", None);
            self.pair("mem-memory", None);
            if self.wanted("ceilings") {
                let m = self.spawn("mpsc", "raw", None);
                self.ceiling(
                    "tokio mpsc(1024), 1 producer, 1 consumer",
                    m.get("rate").copied(),
                );
                self.ceiling_ratio(
                    "ours end-to-end (producer running) / tokio mpsc",
                    "mem-concurrent",
                    "e2e_concurrent",
                    m.get("rate").copied(),
                );
                let m = self.spawn("mpmc", "raw", None);
                self.ceiling(
                    "async-channel(1024), 1 producer, 4 consumers",
                    m.get("rate").copied(),
                );
                let m = self.spawn("mem-memory", "mpsc", None);
                self.ceiling(
                    "tokio mpsc unbounded, heap bytes per queued job",
                    m.get("heap_per_job").copied(),
                );
                self.ceiling(
                    "tokio mpsc unbounded, RSS bytes per queued job",
                    m.get("rss_per_job").copied(),
                );
            }
        }
        // Half of our peak in-memory rate (producer running while workers consume).
        let ours_peak = self.median_ours("mem-concurrent", "e2e_concurrent");
        let apalis_peak = self
            .series("mem-concurrent", "e2e_concurrent")
            .and_then(|s| stats(&s.apalis))
            .map(|s| s.0);
        if let Some(peak) = ours_peak {
            for r in 0..rounds {
                eprintln!("round {}/{rounds}: in-memory latency", r + 1);
                self.pair("mem-latency", Some(peak / 2.0));
                if let Some(ap) = apalis_peak
                    && self.wanted("mem-latency-own")
                {
                    let m = self.spawn("mem-latency", "apalis", Some(ap / 2.0));
                    for (k, v) in m {
                        self.data
                            .entry(("mem-latency-own".to_owned(), k))
                            .or_default()
                            .apalis
                            .push(v);
                    }
                }
            }
        }
        if self.redis.is_some() {
            for r in 0..rounds {
                eprintln!("round {}/{rounds}: redis", r + 1);
                self.pair("redis-single", None);
                self.pair("redis-batch", None);
                self.pair("redis-e2e", None);
                self.pair("redis-drain-7k", None);
                self.pair("redis-drain", None);
                self.pair("redis-backlog", None);
                self.pair("redis-backlog-16", None);
                if let (Some(port), true) = (self.redis_port.clone(), self.wanted("ceilings")) {
                    for pipeline in [1, 16] {
                        self.flush_redis();
                        self.redis_benchmark(&port, "LPUSH", &["peers:rb:src", "x"], pipeline);
                        self.redis_benchmark(
                            &port,
                            "LMOVE",
                            &["peers:rb:src", "peers:rb:dst", "RIGHT", "LEFT"],
                            pipeline,
                        );
                    }
                    // One client, one round trip at a time: the bound on any single enqueue
                    // that waits for its reply.
                    self.redis_benchmark_with(&port, "PING", &[], 1, 1);
                    // The same from Rust, through the connection both frameworks use.
                    let m = self.spawn("redis-ping", "raw", None);
                    self.ceiling(
                        "redis-rs PING awaited one by one (multiplexed connection, tokio)",
                        m.get("ping_rate").copied(),
                    );
                    self.ceiling_ratio(
                        "ours single enqueue / redis-rs PING",
                        "redis-single",
                        "single_enqueue",
                        m.get("ping_rate").copied(),
                    );
                    self.flush_redis();
                }
            }
            if let Some(peak) = self.median_ours("redis-e2e", "run_rate") {
                for r in 0..rounds {
                    eprintln!("round {}/{rounds}: redis latency", r + 1);
                    self.pair("redis-latency", Some(peak / 2.0));
                }
            }
        }
        if self.postgres.is_some() {
            self.run_postgres();
        }
        self.print(ours_peak);
    }

    fn row(&self, out: &mut String, label: &str, workload: &str, metric: &str, unit: &str) {
        let Some(s) = self.series(workload, metric) else {
            return;
        };
        out.push_str(&format!(
            "| {label} | {unit} | {} | {} | {} |\n",
            cell(&s.ours),
            cell(&s.apalis),
            ratio_cell(&s.ratio)
        ));
    }

    fn median(&self, workload: &str, metric: &str, pick: fn(&Series) -> &Vec<f64>) -> Option<f64> {
        self.series(workload, metric)
            .and_then(|s| stats(pick(s)))
            .map(|s| s.0)
    }

    /// Issue 6's targets against the medians of this run.
    fn targets(&self, out: &mut String) {
        fn ours(s: &Series) -> &Vec<f64> {
            &s.ours
        }
        fn ratio(s: &Series) -> &Vec<f64> {
            &s.ratio
        }
        let ceiling = |name: &str| self.ceilings.get(name).and_then(|v| stats(v)).map(|s| s.0);
        // (target, median measured, shown as, met)
        let mut rows: Vec<(&str, Option<f64>, &str, bool)> = Vec::new();
        let at_least = |v: Option<f64>, t: f64| v.is_some_and(|v| v >= t);
        let at_most = |v: Option<f64>, t: f64| v.is_some_and(|v| v <= t);
        let v = self.median("mem-concurrent", "e2e_concurrent", ratio);
        rows.push((
            "memory: end-to-end (producer running) ≥ 2× apalis",
            v,
            "×",
            at_least(v, 2.0),
        ));
        let v = self.median("mem-phases", "e2e_seq", ratio);
        rows.push((
            "memory: end-to-end (enqueue, then process) ≥ 2× apalis",
            v,
            "×",
            at_least(v, 2.0),
        ));
        let v = ceiling("ours end-to-end (producer running) / tokio mpsc");
        rows.push((
            "memory: end-to-end ≥ 20% of tokio mpsc",
            v.map(|x| x * 100.0),
            "%",
            at_least(v, 0.2),
        ));
        let v = self.median("mem-memory", "heap_per_job", ours);
        rows.push((
            "memory: ≤ 200 B per queued job (heap)",
            v,
            "B",
            at_most(v, 200.0),
        ));
        let v = self.median("mem-latency", "lat_p99_us", ours);
        rows.push((
            "memory: p99 enqueue-to-start ≤ 1 ms at half load",
            v,
            "µs",
            at_most(v, 1000.0),
        ));
        let v = self.median("redis-backlog", "backlog_rate", ours);
        rows.push((
            "redis: ≥ 50,000 jobs/s, 100,000 backlog + producer",
            v,
            "jobs/s",
            at_least(v, 50_000.0),
        ));
        let v = self.median("redis-backlog-16", "backlog_rate", ours);
        rows.push((
            "redis: ≥ 50,000 jobs/s, 100,000 backlog + 16 producer tasks",
            v,
            "jobs/s",
            at_least(v, 50_000.0),
        ));
        let v = self.median("redis-batch", "batch_enqueue", ratio);
        rows.push((
            "redis: batched enqueue ≥ 2× apalis-redis",
            v,
            "×",
            at_least(v, 2.0),
        ));
        let v = self.median("redis-single", "single_enqueue", ratio);
        rows.push((
            "redis: single enqueue ≥ 2× apalis-redis",
            v,
            "×",
            at_least(v, 2.0),
        ));
        let v = self.median("redis-batch", "redis_bytes_per_job", ours);
        rows.push((
            "redis: ≤ 300 B of Redis memory per queued job",
            v,
            "B",
            at_most(v, 300.0),
        ));
        let v = self.median("redis-latency", "lat_p99_us", ours);
        rows.push((
            "redis: p99 enqueue-to-start ≤ 5 ms at half load",
            v,
            "µs",
            at_most(v, 5000.0),
        ));
        out.push_str("\n### Targets of issue 6 (medians of this run)\n\n| target | measured | met |\n|---|---|---|\n");
        for (what, v, unit, ok) in rows {
            let shown = match v {
                Some(x) if unit == "×" => format!("{}×", fmt_ratio(x)),
                Some(x) => format!("{} {unit}", fmt_num(x)),
                None => "—".to_owned(),
            };
            let met = match (v, ok) {
                (None, _) => "not measured",
                (_, true) => "yes",
                (_, false) => "**no**",
            };
            out.push_str(&format!("| {what} | {shown} | {met} |\n"));
        }
    }

    fn print(&self, ours_peak: Option<f64>) {
        let mut out = String::new();
        let head = TABLE_HEAD;
        out.push_str(&format!(
            "\n### In memory: 100,000 no-op jobs, concurrency 4, {} rounds\n\n",
            self.rounds
        ));
        out.push_str(head);
        self.row(
            &mut out,
            "enqueue phase (workers held)",
            "mem-phases",
            "enqueue",
            "jobs/s",
        );
        self.row(
            &mut out,
            "processing phase (100,000 queued)",
            "mem-phases",
            "process",
            "jobs/s",
        );
        self.row(
            &mut out,
            "end-to-end, enqueue then process",
            "mem-phases",
            "e2e_seq",
            "jobs/s",
        );
        self.row(
            &mut out,
            "end-to-end, producer running while workers consume",
            "mem-concurrent",
            "e2e_concurrent",
            "jobs/s",
        );
        self.row(
            &mut out,
            "heap per queued job (100,000 queued)",
            "mem-memory",
            "heap_per_job",
            "B",
        );
        self.row(
            &mut out,
            "RSS growth per queued job (100,000 queued)",
            "mem-memory",
            "rss_per_job",
            "B",
        );
        self.row(
            &mut out,
            "peak RSS of the process (100,000 queued)",
            "mem-memory",
            "peak_rss_mb",
            "MB",
        );
        if let Some(p) = ours_peak {
            let half = p / 2.0;
            self.row(
                &mut out,
                &format!(
                    "enqueue-to-start p50 at {} jobs/s (half our peak)",
                    fmt_num(half)
                ),
                "mem-latency",
                "lat_p50_us",
                "µs",
            );
            self.row(
                &mut out,
                &format!(
                    "enqueue-to-start p99 at {} jobs/s (half our peak)",
                    fmt_num(half)
                ),
                "mem-latency",
                "lat_p99_us",
                "µs",
            );
            self.row(
                &mut out,
                "rate offered in the latency run",
                "mem-latency",
                "lat_offered_rate",
                "jobs/s",
            );
            self.row(
                &mut out,
                "apalis p50 at half *its own* peak",
                "mem-latency-own",
                "lat_p50_us",
                "µs",
            );
            self.row(
                &mut out,
                "apalis p99 at half *its own* peak",
                "mem-latency-own",
                "lat_p99_us",
                "µs",
            );
        }
        if self.redis.is_some() {
            out.push_str(&format!(
                "\n### Redis (private redis-server, flushed before each run), concurrency 4, {} rounds\n\n",
                self.rounds
            ));
            out.push_str(head);
            self.row(
                &mut out,
                "single enqueue, 10,000 awaited one by one",
                "redis-single",
                "single_enqueue",
                "jobs/s",
            );
            self.row(
                &mut out,
                "batched enqueue, 100,000 in batches of 1,000",
                "redis-batch",
                "batch_enqueue",
                "jobs/s",
            );
            self.row(
                &mut out,
                "Redis used_memory per queued job (100,000 queued)",
                "redis-batch",
                "redis_bytes_per_job",
                "B",
            );
            self.row(
                &mut out,
                "end-to-end from empty: 20,000 jobs, producer + workers",
                "redis-e2e",
                "run_rate",
                "jobs/s",
            );
            self.row(
                &mut out,
                "  … its producer alone",
                "redis-e2e",
                "produce_rate",
                "jobs/s",
            );
            self.row(
                &mut out,
                "drain a 7,000-job backlog (apalis-redis fails above ~8,000)",
                "redis-drain-7k",
                "run_rate",
                "jobs/s",
            );
            self.row(
                &mut out,
                "drain a 100,000-job backlog",
                "redis-drain",
                "run_rate",
                "jobs/s",
            );
            self.row(
                &mut out,
                "  … drained completely (1 = yes)",
                "redis-drain",
                "complete",
                "",
            );
            self.row(
                &mut out,
                "100,000 backlog + producer adding 100,000: the backlog runs at",
                "redis-backlog",
                "backlog_rate",
                "jobs/s",
            );
            self.row(
                &mut out,
                "  … all 200,000 (bound by the producer once the backlog is gone)",
                "redis-backlog",
                "run_rate",
                "jobs/s",
            );
            self.row(
                &mut out,
                "  … its producer alone",
                "redis-backlog",
                "produce_rate",
                "jobs/s",
            );
            self.row(
                &mut out,
                "  … all ran (1 = yes)",
                "redis-backlog",
                "complete",
                "",
            );
            self.row(
                &mut out,
                "100,000 backlog + 16 producer tasks adding 100,000: the backlog runs at",
                "redis-backlog-16",
                "backlog_rate",
                "jobs/s",
            );
            self.row(
                &mut out,
                "  … all 200,000",
                "redis-backlog-16",
                "run_rate",
                "jobs/s",
            );
            self.row(
                &mut out,
                "  … its producers alone",
                "redis-backlog-16",
                "produce_rate",
                "jobs/s",
            );
            self.row(
                &mut out,
                "  … all ran (1 = yes)",
                "redis-backlog-16",
                "complete",
                "",
            );
            if let Some(p) = self.median_ours("redis-e2e", "run_rate") {
                let half = p / 2.0;
                self.row(
                    &mut out,
                    &format!(
                        "enqueue-to-start p50 at {} jobs/s (half our peak)",
                        fmt_num(half)
                    ),
                    "redis-latency",
                    "lat_p50_us",
                    "µs",
                );
                self.row(
                    &mut out,
                    &format!(
                        "enqueue-to-start p99 at {} jobs/s (half our peak)",
                        fmt_num(half)
                    ),
                    "redis-latency",
                    "lat_p99_us",
                    "µs",
                );
            }
        }
        if self.postgres.is_some() {
            self.print_postgres(&mut out);
        }
        if !self.ceilings.is_empty() {
            out.push_str(
                "\n### Ceilings (same run)\n\n| ceiling | median (min–max) |\n|---|---|\n",
            );
            for (name, v) in &self.ceilings {
                out.push_str(&format!("| {name} | {} |\n", cell(v)));
            }
        }
        self.targets(&mut out);
        if self.postgres.is_some() {
            self.postgres_targets(&mut out);
        }
        if !self.errors.is_empty() {
            out.push_str("\n### Errors (identical ones counted once)\n\n");
            let mut seen: Vec<(String, usize)> = Vec::new();
            for e in &self.errors {
                let key = e.split(" (after ").next().unwrap_or(e).to_owned();
                match seen.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, n)) => *n += 1,
                    None => seen.push((key, 1)),
                }
            }
            for (e, n) in seen {
                out.push_str(&format!("- {n}× {e}\n"));
            }
        }
        let jobs = env_usize("PEERS_JOBS", 100_000);
        if jobs != 100_000 {
            let n = |x: usize| {
                let s = x.to_string();
                let mut o = String::new();
                for (i, ch) in s.chars().enumerate() {
                    if i > 0 && (s.len() - i).is_multiple_of(3) {
                        o.push(',');
                    }
                    o.push(ch);
                }
                o
            };
            out = out
                .replace("100,000", &n(jobs))
                .replace("20,000 jobs", &format!("{} jobs", n(jobs / 5)))
                .replace("10,000 awaited", &format!("{} awaited", n(jobs / 10)));
        }
        println!("{out}");
    }
}
