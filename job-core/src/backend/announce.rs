//! What a store's announcements of job ends have reached this process: the signal behind
//! [`Backend::watch_finish`](super::Backend::watch_finish), shared by the backends whose
//! store can publish (Redis pub/sub, Postgres `NOTIFY`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// The signal waiters sleep on, and whether the listening connection is up.
#[derive(Debug)]
pub(crate) struct Announcements {
    signal: Arc<Notify>,
    listening: watch::Sender<bool>,
}

impl Announcements {
    pub(crate) fn new() -> Self {
        Self {
            signal: Arc::new(Notify::new()),
            listening: watch::channel(false).0,
        }
    }

    /// The signal every announcement (and every reconnection) fires.
    pub(crate) fn signal(&self) -> Arc<Notify> {
        self.signal.clone()
    }

    /// An end was announced: every waiter reads its job's status again.
    pub(crate) fn heard(&self) {
        self.signal.notify_waiters();
    }

    /// The listening connection is up (again): announcements sent while it was not were
    /// lost, so every waiter reads its job's status again.
    pub(crate) fn listening(&self) {
        self.listening.send_replace(true);
        self.signal.notify_waiters();
    }

    /// The listening connection is down.
    pub(crate) fn deaf(&self) {
        self.listening.send_replace(false);
    }

    /// Waits up to `within` for the listening connection: a watch set while nobody listens
    /// could have its announcement sent to no one. Whether it is up.
    pub(crate) async fn ready(&self, within: Duration) -> bool {
        let mut rx = self.listening.subscribe();
        tokio::time::timeout(within, rx.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
