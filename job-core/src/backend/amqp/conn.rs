//! The connection: one AMQP connection at a time (a *link*, numbered by generation), with a
//! publishing channel in confirm mode and a consuming channel; opened lazily, with backoff,
//! and opened again when the broker closed it. Publishing waits for the broker's confirm.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};

use super::AmqpBackend;
use super::topology;
use crate::backend::BackendError;

/// One open connection and its channels.
pub(super) struct Link {
    /// Numbers this connection apart from earlier ones: the high half of every lease token
    /// handed out on it, so a token of a dead connection can never match a live delivery.
    pub(super) generation: u64,
    conn: Connection,
    /// Confirm mode: every publish waits for the broker's ack.
    publish: Channel,
    /// Carries the consumers (manual acks, prefetch per consumer).
    pub(super) consume: Channel,
    /// Work and wait queues declared on this connection.
    declared: Mutex<HashSet<String>>,
    /// Consumers by job queue.
    pub(super) consumers: Mutex<HashMap<String, Consumer>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Link {
    pub(super) fn alive(&self) -> bool {
        self.conn.status().connected()
            && self.publish.status().connected()
            && self.consume.status().connected()
    }

    fn is_declared(&self, name: &str) -> bool {
        lock(&self.declared).contains(name)
    }

    fn mark_declared(&self, name: String) {
        lock(&self.declared).insert(name);
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn unavailable(e: lapin::Error) -> BackendError {
    BackendError::Unavailable(Box::new(e))
}

pub(super) fn refused(what: String) -> BackendError {
    BackendError::Unavailable(what.into())
}

impl AmqpBackend {
    /// The live connection, opening one (with a few quick retries) when there is none.
    pub(super) async fn link(&self) -> Result<Arc<Link>, BackendError> {
        if let Some(link) = self.current() {
            return Ok(link);
        }
        let _gate = self.connecting.lock().await;
        if let Some(link) = self.current() {
            return Ok(link);
        }
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(400))
            .with_jitter()
            .with_max_times(2);
        let open = || self.open();
        let link = open
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .notify(|e: &BackendError, pause| {
                tracing::debug!(error = %e, retry_in = ?pause, "connecting to RabbitMQ failed");
            })
            .await?;
        let link = Arc::new(link);
        *lock(&self.link) = Some(link.clone());
        tracing::info!(generation = link.generation, "connected to RabbitMQ");
        Ok(link)
    }

    fn current(&self) -> Option<Arc<Link>> {
        let mut slot = lock(&self.link);
        match &*slot {
            Some(link) if link.alive() => Some(link.clone()),
            Some(_) => {
                // Closed by the broker or the network: its deliveries are gone with it (the
                // broker requeues them); the next call opens a new one.
                tracing::warn!("the RabbitMQ connection was lost; reconnecting");
                *slot = None;
                None
            }
            None => None,
        }
    }

    /// Forgets `link` if it is still the current one (after an error on it).
    pub(super) fn drop_link(&self, link: &Link) {
        let mut slot = lock(&self.link);
        if slot
            .as_ref()
            .is_some_and(|l| l.generation == link.generation)
        {
            *slot = None;
        }
    }

    async fn open(&self) -> Result<Link, BackendError> {
        let s = &self.settings;
        let opening = async {
            let props = ConnectionProperties::default()
                .with_connection_name(format!("job-core {}", s.prefix).into());
            let conn = Connection::connect(&s.url, props)
                .await
                .map_err(unavailable)?;
            let publish = conn.create_channel().await.map_err(unavailable)?;
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(unavailable)?;
            topology::declare_shared(&publish, &self.names, s)
                .await
                .map_err(unavailable)?;
            let consume = conn.create_channel().await.map_err(unavailable)?;
            consume
                .basic_qos(s.prefetch, BasicQosOptions::default())
                .await
                .map_err(unavailable)?;
            Ok(Link {
                generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
                conn,
                publish,
                consume,
                declared: Mutex::new(HashSet::new()),
                consumers: Mutex::new(HashMap::new()),
            })
        };
        match tokio::time::timeout(s.connection_timeout, opening).await {
            Ok(r) => r,
            Err(_) => Err(refused(format!(
                "no connection to RabbitMQ within {:?}",
                s.connection_timeout
            ))),
        }
    }

    /// Declares the work queue of `queue` on `link` unless it was already.
    pub(super) async fn work_queue(&self, link: &Link, queue: &str) -> Result<(), BackendError> {
        let name = self.names.work_queue(queue);
        if link.is_declared(&name) {
            return Ok(());
        }
        topology::declare_work_queue(&link.publish, &self.names, &self.settings, queue)
            .await
            .map_err(|e| self.failed(link, e))?;
        lock(&self.known).insert(queue.to_owned());
        link.mark_declared(name);
        Ok(())
    }

    /// Declares the wait queue of `bucket_ms` on `link` unless it was already.
    pub(super) async fn wait_queue(&self, link: &Link, bucket_ms: u64) -> Result<(), BackendError> {
        let name = self.names.wait_queue(bucket_ms);
        if link.is_declared(&name) {
            return Ok(());
        }
        topology::declare_wait_queue(&link.publish, &self.names, &self.settings, bucket_ms)
            .await
            .map_err(|e| self.failed(link, e))?;
        lock(&self.buckets).insert(bucket_ms);
        link.mark_declared(name);
        Ok(())
    }

    /// A consumer on the work queue of `queue` on `link`, started unless it runs.
    pub(super) async fn consumer(&self, link: &Link, queue: &str) -> Result<(), BackendError> {
        if lock(&link.consumers).contains_key(queue) {
            return Ok(());
        }
        self.work_queue(link, queue).await?;
        let consumer = link
            .consume
            .basic_consume(
                self.names.work_queue(queue).as_str().into(),
                format!("{}-{}-{}", self.settings.prefix, link.generation, queue)
                    .as_str()
                    .into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.failed(link, e))?;
        lock(&link.consumers).insert(queue.to_owned(), consumer);
        Ok(())
    }

    /// An error on `link`: forget it when it is closed, so the next call reconnects.
    pub(super) fn failed(&self, link: &Link, e: lapin::Error) -> BackendError {
        if !link.alive() {
            self.drop_link(link);
        }
        unavailable(e)
    }

    /// Publishes one message and waits for the broker's confirm. Unroutable (returned),
    /// refused (nack), unconfirmed in time or on a closed channel: `Unavailable`.
    pub(super) async fn publish(
        &self,
        link: &Link,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), BackendError> {
        let confirm = self
            .start_publish(link, exchange, routing_key, body, props)
            .await?;
        self.confirmed(link, confirm).await
    }

    pub(super) async fn start_publish(
        &self,
        link: &Link,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<lapin::PublisherConfirm, BackendError> {
        link.publish
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props,
            )
            .await
            .map_err(|e| self.failed(link, e))
    }

    pub(super) async fn confirmed(
        &self,
        link: &Link,
        confirm: lapin::PublisherConfirm,
    ) -> Result<(), BackendError> {
        let limit = self.settings.connection_timeout * 5;
        match tokio::time::timeout(limit, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(refused(format!(
                "the broker could not route the message ({} {}): its queue does not exist",
                returned.reply_code, returned.reply_text
            ))),
            Ok(Ok(Confirmation::Nack(_))) => Err(refused(
                "the broker refused the message (nack): a queue is at its length limit or failed to store it"
                    .to_owned(),
            )),
            Ok(Ok(Confirmation::NotRequested)) => Err(refused(
                "the channel is not in confirm mode".to_owned(),
            )),
            Ok(Err(e)) => Err(self.failed(link, e)),
            Err(_) => Err(refused(format!(
                "the broker did not confirm the message within {limit:?}; it may or may not be stored"
            ))),
        }
    }

    /// A short-lived channel for browsing a queue with `basic.get` (listing and requeueing
    /// dead letters, draining parked messages): closing it returns what it did not ack.
    pub(super) async fn side_channel(&self, link: &Link) -> Result<Channel, BackendError> {
        let ch = link
            .conn
            .create_channel()
            .await
            .map_err(|e| self.failed(link, e))?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        Ok(ch)
    }
}
