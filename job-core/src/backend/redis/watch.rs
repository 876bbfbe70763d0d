//! Announcing job ends: [`Backend::watch_finish`](crate::backend::Backend::watch_finish) on
//! Redis. A waiter adds its job's id to `{p}:watched` (`watch.lua`, which refuses a job that
//! has already ended); every script that ends a job takes a watched id out of the set and
//! `PUBLISH`es it on `{p}:ended`. Each backend keeps one pub/sub connection subscribed to
//! that channel (opened at the first watch, reopened with backoff when it drops) and fires
//! its signal on every message and every resubscription.
//!
//! Pub/sub delivers at most once, to the subscribers connected at that moment: an
//! announcement sent while this process's connection was down is lost, which the signal on
//! resubscription covers (every waiter reads its status again), and the runtime reads the
//! status again every 2 s whatever it heard.

use std::sync::{Arc, Weak};
use std::time::Duration;

use ::redis::{Client, RedisError};
use backon::{ExponentialBuilder, Retryable};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::RedisBackend;
use super::conn::unavailable;
use crate::backend::BackendError;
use crate::backend::announce::Announcements;
use crate::job::JobId;

/// The subscriber's state, one per backend.
pub(super) struct Ended {
    announcements: Arc<Announcements>,
    /// Stops the subscriber task when the backend is dropped.
    pub(super) stop: CancellationToken,
    started: std::sync::Once,
}

impl Ended {
    pub(super) fn new() -> Self {
        Self {
            announcements: Arc::new(Announcements::new()),
            stop: CancellationToken::new(),
            started: std::sync::Once::new(),
        }
    }
}

impl RedisBackend {
    /// The channel ends are published on.
    fn ended_channel(&self) -> String {
        format!("{}ended", self.base)
    }

    pub(super) async fn watch(&self, id: JobId) -> Result<Arc<Notify>, BackendError> {
        let ended = &self.ended;
        ended.started.call_once(|| {
            let client = self.client.clone();
            let channel = self.ended_channel();
            let heard = Arc::downgrade(&ended.announcements);
            let stop = ended.stop.clone();
            let timeout = self.settings.connection_timeout;
            tokio::spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = subscribe(client, channel, heard, timeout) => {}
                }
            });
        });
        // Subscribed before the watch is recorded, or its announcement could reach no one.
        if !ended.announcements.ready(self.call_deadline()).await {
            return Err(BackendError::Unavailable(
                "the Redis pub/sub connection for job ends is not subscribed".into(),
            ));
        }
        let mut inv = self.invocation(&self.scripts.watch);
        inv.arg(id.to_string());
        match self.run_script::<String>(inv).await?.as_str() {
            "watching" | "finished" => Ok(ended.announcements.signal()),
            "missing" => Err(BackendError::NotFound(id)),
            other => Err(BackendError::Unavailable(
                format!("watch of job {id} answered {other:?}").into(),
            )),
        }
    }
}

/// The subscriber loop: (re)subscribes with backoff, then turns messages into signals.
async fn subscribe(client: Client, channel: String, heard: Weak<Announcements>, timeout: Duration) {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times();
    loop {
        let open = || async {
            let opening = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, RedisError>(pubsub)
            };
            match tokio::time::timeout(timeout * 2, opening).await {
                Ok(r) => r.map_err(unavailable),
                Err(_) => Err(BackendError::Unavailable(
                    "subscribing to job ends timed out".into(),
                )),
            }
        };
        let opened = open
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .notify(|e: &BackendError, pause| {
                tracing::debug!(error = %e, retry_in = ?pause, "subscribing to job ends on Redis failed");
            })
            .await;
        let Ok(pubsub) = opened else {
            continue;
        };
        match heard.upgrade() {
            Some(a) => a.listening(),
            None => return,
        }
        let mut messages = pubsub.into_on_message();
        while messages.next().await.is_some() {
            match heard.upgrade() {
                Some(a) => a.heard(),
                None => return,
            }
        }
        // The connection dropped.
        match heard.upgrade() {
            Some(a) => a.deaf(),
            None => return,
        }
        tracing::debug!("the Redis pub/sub connection for job ends dropped; resubscribing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
