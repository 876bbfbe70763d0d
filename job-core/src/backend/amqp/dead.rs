//! Dead letters, parked poison pills and counts: the queues browsed with `basic.get` on a
//! side channel, which returns to the queue whatever it did not ack when it closes.

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use super::AmqpBackend;
use super::conn::{Link, lock};
use super::decode::{self, Meta, StoredDead};
use super::held::{self, Held};
use crate::backend::{BackendError, BackendStats, Reaped};
use crate::dead_letter::DeadLetter;
use crate::job::JobId;

/// Parked messages turned into dead letters per reaper pass.
const PARKED_BATCH: usize = 1000;

impl AmqpBackend {
    /// Closes a side channel; what it got and did not ack goes back to its queue.
    async fn done_with(ch: Channel) {
        let _ = ch.close(200, "done".into()).await;
    }

    async fn get(
        &self,
        link: &Link,
        ch: &Channel,
        queue: &str,
    ) -> Result<Option<lapin::message::Delivery>, BackendError> {
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .map(|m| m.map(|m| m.delivery))
            .map_err(|e| self.failed(link, e))
    }

    pub(super) async fn do_reap(&self, max_recoveries: u32) -> Result<Reaped, BackendError> {
        if max_recoveries != self.settings.max_recoveries
            && !self
                .warned_recoveries
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                runtime = max_recoveries,
                backend = self.settings.max_recoveries,
                "the runtime's max_recoveries differs from the RabbitMQ backend's: the backend's applies (it is the work queues' x-delivery-limit); set AmqpBackendBuilder::max_recoveries"
            );
        }
        let (mut recovered, mut dead) = self.expire_leases().await;
        recovered.append(&mut std::mem::take(&mut *lock(&self.pending_recovered)));
        dead.append(&mut std::mem::take(&mut *lock(&self.pending_dead)));
        let link = self.link().await?;
        dead.extend(self.unpark(&link).await?);
        Ok(Reaped { recovered, dead })
    }

    /// Messages the broker parked (past their delivery limit: their holders kept dying)
    /// become dead-letter records.
    async fn unpark(&self, link: &Link) -> Result<Vec<DeadLetter>, BackendError> {
        let ch = self.side_channel(link).await?;
        let mut dead = Vec::new();
        let parked = self.names.parked_queue();
        let result = async {
            while dead.len() < PARKED_BATCH {
                let Some(d) = self.get(link, &ch, &parked).await? else {
                    break;
                };
                let queue = decode::meta(&d.properties, "")
                    .map(|m| m.queue)
                    .unwrap_or_default();
                // The broker parks a message on the return past its delivery limit, so it
                // was recovered `max_recoveries` times at least (a dead-lettered message
                // does not keep its delivery count).
                let meta = decode::meta(&d.properties, &queue).ok();
                let before = meta.as_ref().map_or(0, |m| m.recoveries);
                let earlier = decode::earlier_deliveries(&d.properties, false)
                    .max(self.settings.max_recoveries.saturating_sub(before));
                let h = Held {
                    id: decode::message_id(&d.properties).unwrap_or_else(held::stand_in_id),
                    acker: d.acker.clone(),
                    meta,
                    earlier,
                    body: d.data.clone(),
                    queue,
                    expires: tokio::time::Instant::now(),
                };
                let record = self.bury_poison(link, &h).await?;
                self.lower_depth_by_one();
                dead.push(record);
            }
            Ok::<_, BackendError>(())
        }
        .await;
        Self::done_with(ch).await;
        match result {
            Err(e) if dead.is_empty() => Err(e),
            _ => Ok(dead),
        }
    }

    fn lower_depth_by_one(&self) {
        let _ = self.depth.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |d| Some(d.saturating_sub(1)),
        );
    }

    /// Up to `limit` dead letters, oldest first: read off the head of the dead-letter queue
    /// and given back when the side channel closes.
    pub(super) async fn do_dead_letters(
        &self,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BackendError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let link = self.link().await?;
        let ch = self.side_channel(&link).await?;
        let dead_queue = self.names.dead_queue();
        let mut out = Vec::new();
        let result = async {
            // Read to the end even past `limit`: what a closing channel gives back goes to
            // the tail of the queue, so only a full pass keeps the order.
            while let Some(d) = self.get(&link, &ch, &dead_queue).await? {
                if out.len() >= limit {
                    continue;
                }
                let id = decode::message_id(&d.properties).unwrap_or_else(held::stand_in_id);
                match StoredDead::decode(&d.data) {
                    Ok(stored) => out.push(stored.dead_letter(id)),
                    Err(e) => tracing::warn!(job_id = %id, error = %e, "a message in the dead-letter queue is not a dead-letter record; skipped"),
                }
            }
            Ok::<_, BackendError>(())
        }
        .await;
        Self::done_with(ch).await;
        result.map(|()| out)
    }

    /// Finds the dead letter of `id` in the dead-letter queue (reading it from the head),
    /// publishes its job to its queue with a fresh attempt budget, and acks the record.
    pub(super) async fn do_requeue(&self, id: JobId) -> Result<(), BackendError> {
        let link = self.link().await?;
        let ch = self.side_channel(&link).await?;
        let dead_queue = self.names.dead_queue();
        let result = async {
            let mut found = false;
            // Read to the end: what a closing channel gives back goes to the tail of the
            // queue, so only a full pass keeps the order.
            while let Some(d) = self.get(&link, &ch, &dead_queue).await? {
                if found || decode::message_id(&d.properties) != Some(id) {
                    continue;
                }
                let stored = StoredDead::decode(&d.data)?;
                let meta = Meta {
                    id,
                    job: stored.job.clone(),
                    queue: stored.queue.clone(),
                    attempt: 0,
                    max_attempts: stored.max_attempts,
                    recoveries: 0,
                    enqueued_at: stored.enqueued_at,
                    not_before: None,
                    error: None,
                };
                super::ops::check_name("queue", &meta.queue)?;
                let body = match &stored.payload {
                    // A malformed message's raw text is requeued as it was.
                    serde_json::Value::String(raw) if stored.job.is_empty() => {
                        raw.clone().into_bytes()
                    }
                    payload => serde_json::to_vec(payload).map_err(|e| {
                        BackendError::Corrupt(format!("payload does not encode: {e}"))
                    })?,
                };
                self.send(&link, &meta, &body).await?;
                d.acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| self.failed(&link, e))?;
                self.depth
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                found = true;
            }
            Ok::<_, BackendError>(found)
        }
        .await;
        Self::done_with(ch).await;
        match result? {
            true => Ok(()),
            false => Err(BackendError::NotFound(id)),
        }
    }

    async fn message_count(&self, link: &Link, queue: &str) -> Result<u64, BackendError> {
        let q = link
            .consume
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.failed(link, e))?;
        Ok(u64::from(q.message_count()))
    }

    /// Counts as the broker gives them: ready messages of the work queues this backend has
    /// used (and what this process buffered), waiting ones in the wait queues, this
    /// process's own held deliveries as running (other processes' are not seen), dead
    /// letters.
    pub(super) async fn do_stats(&self) -> Result<BackendStats, BackendError> {
        let link = self.link().await?;
        let queues: Vec<String> = lock(&self.known).iter().cloned().collect();
        let buckets: Vec<u64> = lock(&self.buckets).iter().copied().collect();
        let mut ready = 0;
        for q in &queues {
            ready += self.message_count(&link, &self.names.work_queue(q)).await?;
        }
        ready += lock(&self.buffered)
            .values()
            .map(|b| b.iter().filter(|(_, d)| d.acker.usable()).count() as u64)
            .sum::<u64>();
        let mut scheduled = 0;
        for b in &buckets {
            scheduled += self
                .message_count(&link, &self.names.wait_queue(*b))
                .await?;
        }
        let running = lock(&self.held).len() as u64;
        let dead = self.message_count(&link, &self.names.dead_queue()).await?
            + self
                .message_count(&link, &self.names.parked_queue())
                .await?;
        let stats = BackendStats {
            ready,
            scheduled,
            running,
            dead,
        };
        self.depth
            .store(stats.depth(), std::sync::atomic::Ordering::Relaxed);
        Ok(stats)
    }
}
