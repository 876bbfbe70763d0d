//! Jobs as AMQP messages and back: the body is the payload exactly as the client encoded
//! it; the job's id is the `message-id` property; its name, counts and times travel in
//! headers. Dead-letter records are messages too, their body a JSON record.

use std::time::SystemTime;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::backend::{BackendError, Envelope, Payload, from_unix_ms, unix_ms};
use crate::dead_letter::DeadLetter;
use crate::job::JobId;

pub(super) const H_JOB: &str = "jobs-job";
pub(super) const H_QUEUE: &str = "jobs-queue";
pub(super) const H_ATTEMPT: &str = "jobs-attempt";
pub(super) const H_MAX_ATTEMPTS: &str = "jobs-max-attempts";
pub(super) const H_RECOVERIES: &str = "jobs-recoveries";
pub(super) const H_ENQUEUED: &str = "jobs-enqueued-at";
pub(super) const H_NOT_BEFORE: &str = "jobs-not-before";
pub(super) const H_ERROR: &str = "jobs-error";
/// The broker's count of earlier deliveries of a message on a quorum queue.
const H_DELIVERY_COUNT: &str = "x-delivery-count";

/// A job's fields as its message carries them, counts as of when it was published (the
/// broker's delivery count comes on top).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Meta {
    pub(super) id: JobId,
    pub(super) job: String,
    pub(super) queue: String,
    /// Attempts started before this message was published.
    pub(super) attempt: u32,
    pub(super) max_attempts: u32,
    /// Recoveries before this message was published.
    pub(super) recoveries: u32,
    pub(super) enqueued_at: u64,
    pub(super) not_before: Option<u64>,
    pub(super) error: Option<String>,
}

impl Meta {
    pub(super) fn of(envelope: &Envelope) -> Self {
        Self {
            id: envelope.id,
            job: envelope.job.clone(),
            queue: envelope.queue.clone(),
            attempt: envelope.attempt,
            max_attempts: envelope.max_attempts,
            recoveries: envelope.recoveries,
            enqueued_at: envelope.enqueued_at,
            not_before: envelope.not_before,
            error: None,
        }
    }

    /// The message properties: persistent, JSON, id and headers (`extra` adds routing
    /// headers).
    pub(super) fn properties(&self, extra: &[(&str, String)]) -> BasicProperties {
        let mut h = FieldTable::default();
        let mut put = |k: &str, v: AMQPValue| {
            h.insert(ShortString::from(k), v);
        };
        put(H_JOB, text(&self.job));
        put(H_QUEUE, text(&self.queue));
        put(H_ATTEMPT, number(u64::from(self.attempt)));
        put(H_MAX_ATTEMPTS, number(u64::from(self.max_attempts)));
        put(H_RECOVERIES, number(u64::from(self.recoveries)));
        put(H_ENQUEUED, number(self.enqueued_at));
        if let Some(nb) = self.not_before {
            put(H_NOT_BEFORE, number(nb));
        }
        if let Some(e) = &self.error {
            put(H_ERROR, text(e));
        }
        for (k, v) in extra {
            put(k, text(v));
        }
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(self.id.to_string()))
            .with_headers(h)
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn number(n: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(n).unwrap_or(i64::MAX))
}

fn header<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(key)
}

fn header_text(props: &BasicProperties, key: &str) -> Option<String> {
    match header(props, key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A header as a whole number: `Ok(None)` when absent, `Err` when present but not one.
fn header_number(props: &BasicProperties, key: &str) -> Result<Option<u64>, String> {
    let Some(v) = header(props, key) else {
        return Ok(None);
    };
    let n = match v {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::Timestamp(n) => i64::try_from(*n).unwrap_or(-1),
        other => return Err(format!("header {key} is not a number: {other:?}")),
    };
    u64::try_from(n)
        .map(Some)
        .map_err(|_| format!("header {key} is negative: {n}"))
}

fn count(props: &BasicProperties, key: &str) -> Result<Option<u32>, String> {
    header_number(props, key)?
        .map(|n| u32::try_from(n).map_err(|_| format!("header {key} is too large: {n}")))
        .transpose()
}

/// The message's id (its `message-id` property), if it has one that is a job id.
pub(super) fn message_id(props: &BasicProperties) -> Option<JobId> {
    props.message_id().as_ref()?.as_str().parse().ok()
}

/// How many times the broker delivered this message before (quorum queues count; a classic
/// queue only flags a redelivery, read as one).
pub(super) fn earlier_deliveries(props: &BasicProperties, redelivered: bool) -> u32 {
    match count(props, H_DELIVERY_COUNT) {
        Ok(Some(n)) => n,
        _ => u32::from(redelivered),
    }
}

/// The job a message carries, or why it is not one.
pub(super) fn meta(props: &BasicProperties, queue: &str) -> Result<Meta, String> {
    let id = message_id(props).ok_or("it has no message-id that is a job id")?;
    let job = header_text(props, H_JOB).ok_or("it names no job")?;
    if job.is_empty() {
        return Err("it names no job".to_owned());
    }
    let max_attempts = count(props, H_MAX_ATTEMPTS)?.ok_or("it has no attempt limit")?;
    Ok(Meta {
        id,
        job,
        queue: header_text(props, H_QUEUE).unwrap_or_else(|| queue.to_owned()),
        attempt: count(props, H_ATTEMPT)?.unwrap_or(0),
        max_attempts,
        recoveries: count(props, H_RECOVERIES)?.unwrap_or(0),
        enqueued_at: header_number(props, H_ENQUEUED)?
            .unwrap_or_else(|| unix_ms(SystemTime::now())),
        not_before: header_number(props, H_NOT_BEFORE)?,
        error: header_text(props, H_ERROR),
    })
}

/// The envelope of a delivery whose message carried `meta`, delivered `earlier` times before:
/// every earlier delivery was an attempt started and a recovery (the broker took it back
/// from a holder that went away).
pub(super) fn envelope(meta: &Meta, body: &[u8], earlier: u32) -> Result<Envelope, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("the payload is not UTF-8: {e}"))?;
    let payload =
        Payload::from_json(text.to_owned()).map_err(|e| format!("the payload is not JSON: {e}"))?;
    Ok(Envelope {
        id: meta.id,
        job: meta.job.clone(),
        queue: meta.queue.clone(),
        payload,
        attempt: meta.attempt.saturating_add(earlier).saturating_add(1),
        max_attempts: meta.max_attempts,
        recoveries: meta.recoveries.saturating_add(earlier),
        enqueued_at: meta.enqueued_at,
        not_before: meta.not_before,
        lease: None,
    })
}

/// The body of a dead-letter record (ms timestamps; the id is the message-id).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct StoredDead {
    pub(super) job: String,
    pub(super) queue: String,
    pub(super) payload: serde_json::Value,
    pub(super) attempts: u32,
    #[serde(default = "one")]
    pub(super) max_attempts: u32,
    pub(super) error: Vec<String>,
    pub(super) enqueued_at: u64,
    pub(super) died_at: u64,
}

fn one() -> u32 {
    1
}

impl StoredDead {
    pub(super) fn of(record: &DeadLetter, max_attempts: u32) -> Self {
        Self {
            job: record.job.clone(),
            queue: record.queue.clone(),
            payload: record.payload.clone(),
            attempts: record.attempts,
            max_attempts,
            error: record.error.clone(),
            enqueued_at: unix_ms(record.enqueued_at),
            died_at: unix_ms(record.died_at),
        }
    }

    pub(super) fn encode(&self) -> Result<Vec<u8>, BackendError> {
        serde_json::to_vec(self)
            .map_err(|e| BackendError::Corrupt(format!("dead letter does not serialize: {e}")))
    }

    pub(super) fn decode(body: &[u8]) -> Result<Self, BackendError> {
        serde_json::from_slice(body)
            .map_err(|e| BackendError::Corrupt(format!("dead-letter record does not decode: {e}")))
    }

    pub(super) fn dead_letter(&self, id: JobId) -> DeadLetter {
        DeadLetter {
            job_id: id,
            job: self.job.clone(),
            queue: self.queue.clone(),
            payload: self.payload.clone(),
            attempts: self.attempts,
            error: self.error.clone(),
            enqueued_at: from_unix_ms(self.enqueued_at),
            died_at: from_unix_ms(self.died_at),
        }
    }

    /// The properties of a dead-letter record message.
    pub(super) fn properties(id: JobId) -> BasicProperties {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope {
        Envelope {
            id: JobId::new(),
            job: "j".to_owned(),
            queue: "q".to_owned(),
            payload: Payload::from(serde_json::json!({"a": [1, 2], "b": {}})),
            attempt: 2,
            max_attempts: 5,
            recoveries: 1,
            enqueued_at: 1_700_000_000_000,
            not_before: Some(1_700_000_000_500),
            lease: None,
        }
    }

    #[test]
    fn a_job_travels_in_its_message_and_comes_back() {
        let e = env();
        let props = Meta::of(&e).properties(&[]);
        let m = meta(&props, "other").unwrap();
        assert_eq!(m, Meta::of(&e));
        let back = envelope(&m, e.payload.as_str().as_bytes(), 0).unwrap();
        assert_eq!((back.attempt, back.recoveries), (3, 1));
        assert_eq!(back.payload, e.payload);
        let again = envelope(&m, e.payload.as_str().as_bytes(), 2).unwrap();
        assert_eq!((again.attempt, again.recoveries), (5, 3));
    }

    #[test]
    fn a_message_without_our_headers_is_not_a_job() {
        let props = BasicProperties::default();
        assert!(meta(&props, "q").is_err());
        let e = env();
        let m = Meta::of(&e);
        assert!(envelope(&m, b"{nope", 0).is_err());
    }
}
