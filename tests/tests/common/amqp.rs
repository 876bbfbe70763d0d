//! RabbitMQ for the tests: the broker's URL, a backend on a fresh name prefix, and a guard
//! that deletes that prefix's exchanges and queues when dropped.

use std::sync::Arc;

use job_core::backend::Backend;
use job_core::backend::amqp::{AmqpBackend, AmqpBackendBuilder};

/// `JOB_AMQP_URL`, or the local broker's default vhost.
pub fn amqp_url() -> String {
    std::env::var("JOB_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A fresh name prefix.
pub fn amqp_prefix() -> String {
    format!("t{:016x}", super::rand_u64())
}

/// Deletes the backend's topology when dropped (on a thread of its own: drop is sync).
pub struct AmqpCleanup {
    backend: Arc<AmqpBackend>,
    /// Job queues other processes used on this prefix.
    pub queues: Vec<&'static str>,
}

impl Drop for AmqpCleanup {
    fn drop(&mut self) {
        let backend = self.backend.clone();
        let queues = self.queues.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the cleanup");
            rt.block_on(async move {
                if let Err(e) = backend.delete_topology(&queues).await {
                    eprintln!(
                        "deleting the RabbitMQ topology of {} failed: {e}",
                        backend.prefix()
                    );
                }
            });
        });
        let _ = done.join();
    }
}

/// Settings on a fresh prefix, short leases' worth of patience.
pub fn amqp_builder() -> AmqpBackendBuilder {
    AmqpBackend::builder(amqp_url()).prefix(amqp_prefix())
}

/// A connected backend from `builder`, and its cleanup; a missing broker fails loudly.
pub async fn amqp_backend_with(builder: AmqpBackendBuilder) -> (Arc<AmqpBackend>, AmqpCleanup) {
    let backend = Arc::new(builder.build().expect("valid RabbitMQ settings"));
    if let Err(e) = backend.connect().await {
        panic!(
            "RabbitMQ is not reachable at {} ({e}). Start it with:\n    rabbitmq-server -detached\n(guest/guest on 127.0.0.1:5672), or set JOB_AMQP_URL",
            amqp_url()
        );
    }
    let cleanup = AmqpCleanup {
        backend: backend.clone(),
        queues: Vec::new(),
    };
    (backend, cleanup)
}

/// A connected backend on a fresh prefix with the default settings.
pub async fn amqp_backend() -> (Arc<AmqpBackend>, AmqpCleanup) {
    amqp_backend_with(amqp_builder()).await
}
