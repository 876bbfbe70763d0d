//! The exchanges and queues, their names and arguments, declared idempotently: the shared
//! ones when a connection opens, a work queue when a job queue is first used, a wait queue
//! when its delay bucket is first used.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use super::config::{AmqpBackendBuilder, QueueType};

/// The shortest wait bucket: 2^6 ms = 64 ms. A delay shorter than this waits 64 ms.
const MIN_BUCKET_EXP: u32 = 6;
/// The longest wait bucket: 2^31 ms, about 24.9 days; a longer delay takes several hops.
const MAX_BUCKET_EXP: u32 = 31;

/// Header naming the wait bucket a delayed message is routed to (the wait exchange is a
/// headers exchange). Not `x-`: a headers exchange ignores `x-` headers when matching, so a
/// binding on one would match every message.
pub(super) const BUCKET_HEADER: &str = "jobs-wait";

/// The names of one backend's exchanges and queues.
#[derive(Debug, Clone)]
pub(super) struct Names {
    prefix: String,
}

impl Names {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Direct exchange routing jobs to their work queue by queue name.
    pub(super) fn work_exchange(&self) -> String {
        format!("{}.work", self.prefix)
    }

    /// Headers exchange routing delayed jobs to their wait bucket.
    pub(super) fn wait_exchange(&self) -> String {
        format!("{}.wait", self.prefix)
    }

    /// The work queue of job queue `queue`.
    pub(super) fn work_queue(&self, queue: &str) -> String {
        format!("{}.q.{queue}", self.prefix)
    }

    /// The wait queue of a bucket (its TTL in ms).
    pub(super) fn wait_queue(&self, bucket_ms: u64) -> String {
        format!("{}.wait.{bucket_ms}", self.prefix)
    }

    /// Where the broker parks messages past their delivery limit (poison pills), for the
    /// reaper to turn into dead letters.
    pub(super) fn parked_queue(&self) -> String {
        format!("{}.parked", self.prefix)
    }

    /// Dead-letter records, oldest first.
    pub(super) fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }
}

/// The bucket (ms) for a delay of `remaining`: the longest bucket not longer than it (the
/// message hops on for the rest when it comes out), or the shortest.
pub(super) fn bucket_for(remaining: Duration) -> u64 {
    let ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
    let exp = if ms == 0 {
        MIN_BUCKET_EXP
    } else {
        (63 - ms.leading_zeros()).clamp(MIN_BUCKET_EXP, MAX_BUCKET_EXP)
    };
    1u64 << exp
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn int(n: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX))
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn kind(settings: &AmqpBackendBuilder) -> (&'static str, AMQPValue) {
    let name = match settings.queue_type {
        QueueType::Quorum => "quorum",
        QueueType::Classic => "classic",
    };
    ("x-queue-type", text(name))
}

/// Dead-lettering that keeps a message until its target confirms it (quorum queues only;
/// needs `reject-publish` overflow).
fn at_least_once(settings: &AmqpBackendBuilder) -> Vec<(&'static str, AMQPValue)> {
    match settings.queue_type {
        QueueType::Quorum => vec![
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
        ],
        QueueType::Classic => Vec::new(),
    }
}

/// The exchanges and the parking and dead-letter queues every backend uses.
pub(super) async fn declare_shared(
    ch: &Channel,
    names: &Names,
    settings: &AmqpBackendBuilder,
) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(
        names.work_exchange().as_str().into(),
        ExchangeKind::Direct,
        durable_exchange,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        names.wait_exchange().as_str().into(),
        ExchangeKind::Headers,
        durable_exchange,
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        names.parked_queue().as_str().into(),
        durable(),
        table(&[kind(settings)]),
    )
    .await?;
    let retention = u64::try_from(settings.dead_letter_retention.as_millis()).unwrap_or(u64::MAX);
    ch.queue_declare(
        names.dead_queue().as_str().into(),
        durable(),
        table(&[
            kind(settings),
            ("x-message-ttl", int(retention)),
            (
                "x-max-length",
                int(u64::from(settings.dead_letter_capacity)),
            ),
        ]),
    )
    .await?;
    Ok(())
}

/// The work queue of `queue`, bound to the work exchange under the queue's name.
pub(super) async fn declare_work_queue(
    ch: &Channel,
    names: &Names,
    settings: &AmqpBackendBuilder,
    queue: &str,
) -> lapin::Result<()> {
    let name = names.work_queue(queue);
    let mut args = vec![
        kind(settings),
        // Messages past the delivery limit, and any the broker dead-letters, are parked.
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text(&names.parked_queue())),
    ];
    if settings.queue_type == QueueType::Quorum {
        args.push((
            "x-delivery-limit",
            int(u64::from(settings.max_recoveries.saturating_sub(1))),
        ));
    }
    args.extend(at_least_once(settings));
    ch.queue_declare(name.as_str().into(), durable(), table(&args))
        .await?;
    ch.queue_bind(
        name.as_str().into(),
        names.work_exchange().as_str().into(),
        queue.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// The wait queue of a bucket: messages expire after `bucket_ms` and are dead-lettered to
/// the work exchange under the routing key they were published with (their job queue).
pub(super) async fn declare_wait_queue(
    ch: &Channel,
    names: &Names,
    settings: &AmqpBackendBuilder,
    bucket_ms: u64,
) -> lapin::Result<()> {
    let name = names.wait_queue(bucket_ms);
    let mut args = vec![
        kind(settings),
        ("x-message-ttl", int(bucket_ms)),
        ("x-dead-letter-exchange", text(&names.work_exchange())),
    ];
    args.extend(at_least_once(settings));
    ch.queue_declare(name.as_str().into(), durable(), table(&args))
        .await?;
    ch.queue_bind(
        name.as_str().into(),
        names.wait_exchange().as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        table(&[
            ("x-match", text("all")),
            (BUCKET_HEADER, text(&bucket_ms.to_string())),
        ]),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_the_longest_power_of_two_not_longer() {
        assert_eq!(bucket_for(Duration::ZERO), 64);
        assert_eq!(bucket_for(Duration::from_millis(10)), 64);
        assert_eq!(bucket_for(Duration::from_millis(64)), 64);
        assert_eq!(bucket_for(Duration::from_millis(1000)), 512);
        assert_eq!(bucket_for(Duration::from_millis(1024)), 1024);
        assert_eq!(bucket_for(Duration::from_secs(3600 * 24 * 365)), 1 << 31);
    }
}
