//! Support for the workspace's integration tests (`tests/tests/email_server.rs`,
//! `tests/tests/report_scheduler.rs`): build and start the real example binaries, speak
//! HTTP/1.1 to them over loopback, read their logs, signal and stop them.
//!
//! Not part of the examples' API. It uses only `std` and `serde_json` so the test crate
//! needs no HTTP client. Its functions panic with a message on failure, as tests want.
//!
//! The binaries are built once per test process with `cargo build -p job-examples --bins`
//! (plus `-p <the test's package>`, so features unify as in the test build) into the target
//! directory the test itself was built in (found from the test
//! executable's path), so `cargo test` and `cargo nextest` both run the current code. Set
//! `JOB_EXAMPLES_BIN_DIR` to a directory holding prebuilt binaries to skip the build.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a service gets to print its `listening` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of an example binary (`email-server`, `report-scheduler`), building the
/// binaries first (once per process).
///
/// # Panics
/// When the build fails or does not produce the binary.
pub fn binary(name: &str) -> PathBuf {
    static BINARIES: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    let binaries = BINARIES.get_or_init(build_binaries);
    match binaries.get(name) {
        Some(path) => path.clone(),
        None => panic!(
            "no binary `{name}` among {:?}",
            binaries.keys().collect::<Vec<_>>()
        ),
    }
}

fn build_binaries() -> HashMap<String, PathBuf> {
    if let Some(dir) = std::env::var_os("JOB_EXAMPLES_BIN_DIR") {
        let dir = PathBuf::from(dir);
        return ["email-server", "report-scheduler"]
            .into_iter()
            .map(|name| (name.to_owned(), dir.join(name)))
            .collect();
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "-p",
            "job-examples",
            "--bins",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // Building the test's own package alongside unifies features as the test build did, so
    // tokio, hyper, axum and job-core are reused rather than built a second time.
    if let Ok(package) = std::env::var("CARGO_PKG_NAME")
        && package != env!("CARGO_PKG_NAME")
    {
        command.args(["-p", &package]);
    }
    if let Some((target_dir, profile)) = build_location() {
        command.env("CARGO_TARGET_DIR", target_dir);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                command.arg("--release");
            }
            other => {
                command.args(["--profile", other]);
            }
        }
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run `cargo build -p job-examples --bins`: {e}"));
    assert!(
        output.status.success(),
        "`cargo build -p job-examples --bins` failed ({}); its errors are above",
        output.status
    );
    let mut binaries = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let is_bin = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"));
        if message["reason"] == "compiler-artifact"
            && is_bin
            && let (Some(name), Some(exe)) = (
                message["target"]["name"].as_str(),
                message["executable"].as_str(),
            )
        {
            binaries.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    binaries
}

/// The target directory and profile directory name the running test was built in:
/// `<target>/<profile>/deps/<test>` or `<target>/<triple>/<profile>/deps/<test>`. The
/// target directory is the ancestor holding cargo's `CACHEDIR.TAG`.
fn build_location() -> Option<(PathBuf, String)> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let profile = profile_dir.file_name()?.to_str()?.to_owned();
    let target_dir = profile_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())?;
    Some((target_dir.to_path_buf(), profile))
}

/// A running example binary. Dropping it kills the process, whatever state the test is in.
#[derive(Debug)]
pub struct Service {
    child: Child,
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Service {
    /// Starts `bin` (a name for [`binary`]) with `args`, listening on a free loopback port
    /// unless `args` has `--addr`, and waits until it says it is listening.
    ///
    /// The child gets a clean environment for its own settings: every `JOB_*` variable of
    /// the test's environment is removed, and `RUST_LOG` is `info`.
    ///
    /// # Panics
    /// When the binary cannot start or exits before listening.
    pub fn start(bin: &str, args: &[&str]) -> Self {
        Self::start_with_env(bin, args, &[])
    }

    /// As [`start`](Self::start), with extra environment variables.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_with_env(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let (child, logs) = spawn(bin, args, env);
        let mut service = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(addr) = service.logs().iter().find_map(|l| listening_addr(l)) {
                service.addr = addr;
                return service;
            }
            if let Ok(Some(status)) = service.child.try_wait() {
                panic!(
                    "{bin} exited with {status} before listening; output:\n{}",
                    service.logs().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "{bin} did not listen within {START_TIMEOUT:?}; output:\n{}",
                service.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET path`.
    ///
    /// # Panics
    /// When the request cannot be made or the answer is not HTTP.
    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, &[], None)
    }

    /// `POST path` with a JSON body.
    ///
    /// # Panics
    /// As [`get`](Self::get).
    pub fn post_json(&self, path: &str, body: &Value) -> Response {
        let body = body.to_string();
        request(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
    }

    /// Any request.
    ///
    /// # Panics
    /// As [`get`](Self::get).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        request(self.addr, method, path, headers, body)
    }

    /// Every line it has printed so far (stdout and stderr).
    pub fn logs(&self) -> Vec<String> {
        self.logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits for a log line matching `pred` and returns it.
    ///
    /// # Panics
    /// When none appears within `timeout`.
    pub fn wait_for_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        eventually(timeout, || self.logs().into_iter().find(|l| pred(l))).unwrap_or_else(|| {
            panic!(
                "no matching log line within {timeout:?}; output:\n{}",
                self.logs().join("\n")
            )
        })
    }

    /// Sends SIGTERM, as a process manager does.
    ///
    /// # Panics
    /// When `kill` cannot be run.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run `kill`: {e}"));
        assert!(status.success(), "`kill -TERM` failed: {status}");
    }

    /// Waits for the process to exit and returns its status.
    ///
    /// # Panics
    /// When it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => panic!(
                    "still running after {timeout:?}; output:\n{}",
                    self.logs().join("\n")
                ),
                Err(e) => panic!("cannot wait for the child: {e}"),
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Harmless when it has already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a binary to completion (for runs that should fail at start) and returns its status
/// and output.
///
/// # Panics
/// When it does not exit within `timeout`.
pub fn run_to_exit(bin: &str, args: &[&str], timeout: Duration) -> (ExitStatus, Vec<String>) {
    let (child, logs) = spawn(bin, args, &[]);
    let mut service = Service {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        logs,
    };
    let status = service.wait_exit(timeout);
    // Let the reader threads catch the last lines.
    std::thread::sleep(Duration::from_millis(50));
    (status, service.logs())
}

fn spawn(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (Child, Arc<Mutex<Vec<String>>>) {
    let path = binary(bin);
    let mut command = Command::new(&path);
    if !args.contains(&"--addr") {
        command.args(["--addr", "127.0.0.1:0"]);
    }
    command.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("JOB_") {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", "info").envs(env.iter().copied());
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
    let logs = Arc::new(Mutex::new(Vec::new()));
    if let Some(stdout) = child.stdout.take() {
        collect_lines(stdout, logs.clone());
    }
    if let Some(stderr) = child.stderr.take() {
        collect_lines(stderr, logs.clone());
    }
    (child, logs)
}

fn collect_lines(stream: impl Read + Send + 'static, logs: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            logs.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(line);
        }
    });
}

/// The address in a `listening` log line, text (`...: listening addr=127.0.0.1:4000`) or
/// JSON (`{"fields":{"message":"listening","addr":"..."}}`).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    if let Ok(json) = serde_json::from_str::<Value>(line) {
        let fields = &json["fields"];
        return if fields["message"] == "listening" {
            fields["addr"].as_str()?.parse().ok()
        } else {
            None
        };
    }
    let rest = line.split_once(": listening addr=")?.1;
    rest.split_whitespace().next()?.parse().ok()
}

/// Calls `f` every 20 ms until it returns `Some`, for at most `timeout`.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, decoded as UTF-8 (lossily).
    pub body: String,
}

impl Response {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// When it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status, self.body
            )
        })
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let body = body.unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    // A server may answer (413) and close before reading all of a large body: a failed
    // write is not the end, the answer may already be there to read.
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body));
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            // A reset after the answer was sent (unread request body): keep what we have.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => {
                break;
            }
            Err(e) => panic!("{method} {path}: read failed: {e}"),
        }
    }
    parse_response(&raw).unwrap_or_else(|| {
        panic!(
            "{method} {path}: not an HTTP response: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// The value of a Prometheus sample whose name is `name` and whose labels include every
/// `labels` pair, e.g. `metric_value(text, "jobs_retried_total", &[("job", "send_email")])`.
pub fn metric_value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, label_text) = match series.split_once('{') {
            Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let matches = metric == name
            && labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
        if matches { value.parse().ok() } else { None }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let raw = b"HTTP/1.1 202 Accepted\r\nLocation: /jobs/1\r\ncontent-length: 2\r\n\r\n{}";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 202);
        assert_eq!(r.header("LOCATION"), Some("/jobs/1"));
        assert_eq!(r.body, "{}");
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap().body, "abcde");
        assert!(parse_response(b"garbage").is_none());
    }

    #[test]
    fn finds_the_listening_line() {
        assert_eq!(
            listening_addr(
                "2026-01-01T00:00:00Z  INFO email_server: listening addr=127.0.0.1:4000"
            ),
            Some(SocketAddr::from(([127, 0, 0, 1], 4000)))
        );
        assert_eq!(
            listening_addr(r#"{"fields":{"message":"listening","addr":"127.0.0.1:5"}}"#),
            Some(SocketAddr::from(([127, 0, 0, 1], 5)))
        );
        assert_eq!(
            listening_addr("INFO email_server: configuration addr=\"127.0.0.1:0\""),
            None
        );
    }

    #[test]
    fn reads_metrics() {
        let text = "# TYPE jobs_retried_total counter\n\
                    jobs_retried_total{job=\"send_email\",queue=\"email\"} 2\n\
                    jobs_retried_total{job=\"other\",queue=\"q\"} 5\n";
        assert_eq!(
            metric_value(text, "jobs_retried_total", &[("job", "send_email")]),
            Some(2.0)
        );
        assert_eq!(metric_value(text, "jobs_failed_total", &[]), None);
    }
}
