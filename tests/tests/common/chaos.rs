//! What the chaos tests of every store share: `soak_worker` processes to start, kill and
//! stop, the executions the chaos jobs record, and enqueueing from concurrent tasks.

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use job_core::prelude::*;
use tokio::time::Instant;

/// One recorded execution: `n id attempt pid [start_us end_us]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Exec {
    pub n: u32,
    pub id: JobId,
    pub attempt: u32,
    pub pid: u32,
    pub span: Option<(u128, u128)>,
}

impl Exec {
    pub fn parse(line: &str) -> Self {
        let f: Vec<&str> = line.split(' ').collect();
        assert!(f.len() == 4 || f.len() == 6, "malformed record {line:?}");
        fn field<T: std::str::FromStr>(line: &str, f: &[&str], i: usize) -> T {
            f[i].parse()
                .unwrap_or_else(|_| panic!("malformed field {i} in record {line:?}"))
        }
        Self {
            n: field(line, &f, 0),
            id: field(line, &f, 1),
            attempt: field(line, &f, 2),
            pid: field(line, &f, 3),
            span: (f.len() == 6).then(|| (field(line, &f, 4), field(line, &f, 5))),
        }
    }
}

/// `soak_worker` processes in numbered slots; every one still running is SIGKILLed on drop.
/// Their output goes to log files, kept (and named) when the test fails.
pub struct Workers {
    args: Vec<String>,
    slots: Vec<Option<Child>>,
    pub logs: PathBuf,
    spawned: usize,
}

impl Workers {
    /// Starts `count` workers with `store_args` (which store, where) and `settings`
    /// (`--flag value` pairs); logs go to a temporary directory named after `name`.
    pub fn start(name: &str, store_args: &[&str], count: usize, settings: &[(&str, u64)]) -> Self {
        let logs = std::env::temp_dir().join(format!("chaos-{name}"));
        std::fs::create_dir_all(&logs).expect("log dir");
        let mut args: Vec<String> = store_args.iter().map(|a| (*a).to_owned()).collect();
        for (flag, value) in settings {
            args.push(format!("--{flag}"));
            args.push(value.to_string());
        }
        let mut workers = Self {
            args,
            slots: (0..count).map(|_| None).collect(),
            logs,
            spawned: 0,
        };
        for slot in 0..count {
            workers.spawn(slot);
        }
        workers
    }

    pub fn spawn(&mut self, slot: usize) {
        assert!(self.slots[slot].is_none(), "slot {slot} is busy");
        let log = self
            .logs
            .join(format!("worker-{slot}-{:03}.log", self.spawned));
        self.spawned += 1;
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_soak_worker"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("soak_worker starts");
        self.slots[slot] = Some(child);
    }

    pub fn pid(&self, slot: usize) -> u32 {
        self.slots[slot].as_ref().expect("slot has a worker").id()
    }

    /// The exit status of the worker in `slot` if it has exited (the slot is then empty).
    pub fn exited(&mut self, slot: usize) -> Option<ExitStatus> {
        let child = self.slots[slot].as_mut()?;
        let status = child.try_wait().expect("try_wait")?;
        self.slots[slot] = None;
        Some(status)
    }

    /// Fails if any worker exited by itself.
    pub fn assert_all_alive(&mut self) {
        for slot in 0..self.slots.len() {
            if let Some(status) = self.exited(slot) {
                panic!(
                    "worker in slot {slot} died by itself ({status}); logs in {}",
                    self.logs.display()
                );
            }
        }
    }

    /// SIGKILL, then reap the process.
    pub fn kill(&mut self, slot: usize) {
        let mut child = self.slots[slot].take().expect("slot has a worker");
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
    }

    /// SIGTERM to every worker; each must exit with status 0 within `limit`.
    pub async fn terminate_all(&mut self, limit: Duration) {
        for slot in 0..self.slots.len() {
            let pid = self.pid(slot);
            let sent = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .expect("kill(1) runs");
            assert!(sent.success(), "kill -TERM {pid}");
        }
        let deadline = Instant::now() + limit;
        for slot in 0..self.slots.len() {
            loop {
                if let Some(status) = self.exited(slot) {
                    assert!(
                        status.success(),
                        "worker {slot} exited with {status} after SIGTERM; logs in {}",
                        self.logs.display()
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "worker {slot} still running {limit:?} after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for mut child in self.slots.iter_mut().filter_map(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("worker logs kept in {}", self.logs.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

/// Enqueues `jobs` through `rt` from 8 concurrent tasks; returns their ids, in order.
pub async fn enqueue_all<J: Job + std::fmt::Debug>(rt: &JobRuntime, jobs: Vec<J>) -> Vec<JobId> {
    let tasks = 8;
    let per = jobs.len().div_ceil(tasks).max(1);
    let mut handles = Vec::new();
    let mut jobs = jobs.into_iter();
    loop {
        let chunk: Vec<J> = jobs.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        let client = rt.client();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(chunk.len());
            for job in chunk {
                ids.push(client.enqueue(job).await.expect("enqueue acknowledged"));
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.extend(h.await.expect("enqueue task"));
    }
    ids
}
