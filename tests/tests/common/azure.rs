//! Azure Queue Storage for the tests: the shared emulator (`JOB_AZURE_QUEUE`, a connection
//! string; by default `UseDevelopmentStorage=true`, Azurite on 127.0.0.1:10001), a backend
//! on a fresh queue prefix whose queues are deleted when the test ends, and private Azurite
//! processes for the tests that stop and restart the emulator.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use job_core::backend::Backend;
use job_core::backend::azure::{AzureQueueBackend, AzureQueueBackendBuilder, DEV_ACCOUNT, DEV_KEY};
use tokio::time::Instant;

/// How to start the shared emulator, for the messages of tests that cannot reach it.
pub const START_AZURITE: &str = "bash -c '. .ci/azurite.sh' (installs Azurite 3 with npm and starts it), or:\n    npm install --prefix ~/.cache/job-core-azurite azurite@3\n    ~/.cache/job-core-azurite/node_modules/.bin/azurite-queue --queueHost 127.0.0.1 --queuePort 10001 --location /tmp/azurite --disableTelemetry &\nand point JOB_AZURE_QUEUE at it when it is not on 127.0.0.1:10001";

/// The connection string of the shared emulator.
pub fn azure_conn() -> String {
    std::env::var("JOB_AZURE_QUEUE").unwrap_or_else(|_| "UseDevelopmentStorage=true".to_owned())
}

/// The connection string of the emulator's account on `port` of 127.0.0.1.
pub fn conn_on(port: u16) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};QueueEndpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT}"
    )
}

/// A fresh queue prefix (Azure queue names: lowercase, digits, `-`).
pub fn fresh_prefix() -> String {
    format!("t{:012x}", super::rand_u64() & 0xffff_ffff_ffff)
}

/// Deletes every queue of a test's prefix when dropped (also after a panic). Errors are
/// ignored: cleanup never fails a test.
pub struct AzureCleanup {
    pub conn: String,
    pub prefix: String,
}

impl Drop for AzureCleanup {
    fn drop(&mut self) {
        let (conn, prefix) = (self.conn.clone(), self.prefix.clone());
        // Its own thread and runtime: `Drop` may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(b) = AzureQueueBackend::builder(conn).prefix(prefix).build() {
                    let _ = b.delete_all_queues().await;
                }
            });
        })
        .join();
    }
}

/// Settings for a backend on the shared emulator under `prefix`.
pub fn builder(prefix: &str) -> AzureQueueBackendBuilder {
    AzureQueueBackend::builder(azure_conn()).prefix(prefix)
}

/// A backend on the shared emulator, on a fresh prefix; fails loudly when the emulator is
/// not reachable.
pub async fn azure_backend() -> (AzureQueueBackend, AzureCleanup) {
    let prefix = fresh_prefix();
    let backend = builder(&prefix)
        .request_timeout(Duration::from_secs(10))
        .build()
        .expect("valid Azure settings");
    if let Err(e) = backend.connect().await {
        panic!(
            "Azure Queue Storage (Azurite) is not reachable through {:?} ({e:?}). Start it with:\n    {START_AZURITE}",
            azure_conn()
        );
    }
    (
        backend,
        AzureCleanup {
            conn: azure_conn(),
            prefix,
        },
    )
}

/// The Azurite queue service binary: `JOB_AZURITE_BIN`, else the CI's cache, else `PATH`.
pub fn azurite_bin() -> PathBuf {
    if let Ok(p) = std::env::var("JOB_AZURITE_BIN") {
        return PathBuf::from(p);
    }
    let cached = std::env::var("HOME")
        .map(|h| PathBuf::from(h).join(".cache/job-core-azurite/node_modules/.bin/azurite-queue"));
    match cached {
        Ok(p) if p.exists() => p,
        _ => PathBuf::from("azurite-queue"),
    }
}

/// A private Azurite queue service on a port of its own, for the tests that stop, kill or
/// restart the emulator; its data directory survives restarts and is deleted on drop.
pub struct Azurite {
    pub port: u16,
    pub location: PathBuf,
    child: Option<Child>,
    in_memory: bool,
}

impl Azurite {
    /// One that keeps its data in memory only (`--inMemoryPersistence`): no saves to disk
    /// (each of which stalls Azurite's single thread for as long as its database takes to
    /// write), for the tests that never restart it.
    pub async fn start_in_memory() -> Self {
        Self::start_with(true).await
    }

    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    async fn start_with(in_memory: bool) -> Self {
        let port = free_port();
        let location = std::env::temp_dir().join(format!("azurite-{}", fresh_prefix()));
        std::fs::create_dir_all(&location).expect("azurite data dir");
        let mut a = Self {
            port,
            location,
            child: None,
            in_memory,
        };
        a.restart().await;
        a
    }

    pub fn conn(&self) -> String {
        conn_on(self.port)
    }

    /// Starts the process (again) on the same port and data directory, and waits until it
    /// accepts connections.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "azurite is running");
        let log = std::fs::File::create(self.location.join(format!(
            "azurite-{}.log",
            Instant::now().elapsed().as_nanos()
        )))
        .expect("azurite log");
        let child = Command::new(azurite_bin())
            .args(["--queueHost", "127.0.0.1", "--queuePort"])
            .arg(self.port.to_string())
            .args(match self.in_memory {
                // (Azurite refuses a location with in-memory persistence.)
                true => vec!["--inMemoryPersistence".into()],
                false => vec![std::ffi::OsString::from("--location"), self.location.clone().into()],
            })
            .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run the Azurite binary {} ({e}). Install it with:\n    {START_AZURITE}\nor set JOB_AZURITE_BIN",
                    azurite_bin().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "azurite did not listen on {} within 30 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process with SIGTERM, as a restart does: Azurite writes its state to the
    /// data directory and exits (waits up to 15 s, then SIGKILLs). A SIGKILL would lose the
    /// writes of the last few seconds, which Azurite keeps in memory between saves (the
    /// emulator's limit, not the service's: Azure acknowledges a write once stored).
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// SIGKILLs the process (its data directory stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.location);
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind a free port");
    l.local_addr().expect("local addr").port()
}
