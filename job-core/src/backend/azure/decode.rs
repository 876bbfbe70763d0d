//! What a message's text holds, both ways: a job (`<job id>:<base64 of the JSON record>`)
//! and a poison record (the same shape, in the poison queue), the Azure queue names made
//! from the runtime's, and the size limit that follows from the service's 64 KiB.
//!
//! The job id stands in plain text before the record so that a record that does not decode
//! is still dead-lettered under its id. The record is base64, as the Azure SDKs and Azure
//! Functions write messages: any text survives the XML of the REST API, and the size a
//! payload takes is known in advance (4/3 of the JSON), so the runtime can refuse a payload
//! that cannot fit before it reaches the store.

use base64::Engine as _;
use sha2::Digest as _;

use crate::backend::{Envelope, Payload};
use crate::dead_letter::DeadLetter;
use crate::job::JobId;

/// The service's limit on one message's text, in bytes.
pub(super) const MESSAGE_MAX: usize = 64 * 1024;
/// The largest JSON record that fits: what base64 leaves of the limit after `<id>:`.
pub(super) const RECORD_MAX: usize = (MESSAGE_MAX - 37) / 4 * 3;
/// The largest payload the backend declares (`Capabilities::max_payload`): the record's
/// other fields (names of at most 64 bytes, counts, times) take less than 1 KiB of the rest.
pub const MAX_PAYLOAD: usize = RECORD_MAX - 1024;

/// A job as one message holds it. `seen` is the message's dequeue count when this content
/// was written (0 for a fresh put): a delivery with dequeue count `seen + k` is the k-th
/// since then, and the `k - 1` before it ended with no write-back (crashed workers).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Stored {
    #[serde(rename = "j")]
    pub(super) job: String,
    #[serde(rename = "q")]
    pub(super) queue: String,
    #[serde(rename = "p")]
    pub(super) payload: Payload,
    /// Attempts started before this content was written.
    #[serde(rename = "a")]
    pub(super) attempt: u32,
    #[serde(rename = "m")]
    pub(super) max_attempts: u32,
    /// Crash recoveries before this content was written.
    #[serde(rename = "r", default)]
    pub(super) recoveries: u32,
    #[serde(rename = "e")]
    pub(super) enqueued_at: u64,
    /// Not to start before (ms): a delay longer than the service's 7 days hops.
    #[serde(rename = "nb", default, skip_serializing_if = "Option::is_none")]
    pub(super) not_before: Option<u64>,
    #[serde(rename = "d", default)]
    pub(super) seen: u32,
}

impl Stored {
    pub(super) fn from_envelope(e: &Envelope) -> Self {
        Self {
            job: e.job.clone(),
            queue: e.queue.clone(),
            payload: e.payload.clone(),
            attempt: e.attempt,
            max_attempts: e.max_attempts,
            recoveries: e.recoveries,
            enqueued_at: e.enqueued_at,
            not_before: e.not_before,
            seen: 0,
        }
    }

    /// The envelope of a delivery with dequeue count `dequeue_count`: this delivery's
    /// attempt counted, and the deliveries since the content was written that ended with no
    /// write-back counted as recoveries.
    pub(super) fn envelope(&self, id: JobId, dequeue_count: u32) -> Envelope {
        let since = dequeue_count.saturating_sub(self.seen).max(1);
        Envelope {
            id,
            job: self.job.clone(),
            queue: self.queue.clone(),
            payload: self.payload.clone(),
            attempt: self.attempt.saturating_add(since),
            max_attempts: self.max_attempts,
            recoveries: self.recoveries.saturating_add(since - 1),
            enqueued_at: self.enqueued_at,
            not_before: self.not_before,
            lease: None,
        }
    }
}

/// A dead job as its poison queue holds it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct StoredDead {
    #[serde(rename = "j")]
    pub(super) job: String,
    #[serde(rename = "q")]
    pub(super) queue: String,
    #[serde(rename = "p")]
    pub(super) payload: serde_json::Value,
    #[serde(rename = "a")]
    pub(super) attempts: u32,
    #[serde(rename = "m", default)]
    pub(super) max_attempts: u32,
    #[serde(rename = "err")]
    pub(super) error: Vec<String>,
    #[serde(rename = "e")]
    pub(super) enqueued_at: u64,
    #[serde(rename = "x")]
    pub(super) died_at: u64,
}

impl StoredDead {
    pub(super) fn dead_letter(&self, id: JobId) -> DeadLetter {
        DeadLetter::new(
            id,
            self.job.clone(),
            self.queue.clone(),
            self.payload.clone(),
            self.attempts,
            self.error.clone(),
            crate::backend::from_unix_ms(self.enqueued_at),
            crate::backend::from_unix_ms(self.died_at),
        )
    }
}

/// `<id>:<base64 of the JSON of record>`.
pub(super) fn encode<T: serde::Serialize>(
    id: JobId,
    record: &T,
) -> Result<String, serde_json::Error> {
    let json = serde_json::to_vec(record)?;
    Ok(encode_raw(id, &json))
}

/// `<id>:<base64 of bytes>`, for any bytes (tests plant malformed records with it).
pub(super) fn encode_raw(id: JobId, bytes: &[u8]) -> String {
    let mut text = id.to_string();
    text.push(':');
    base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut text);
    text
}

/// A message's text taken apart: the job id (from the text, else the message id when it is
/// a UUID, else a fresh one: a foreign message still gets dead-lettered under some id), and
/// the record, or why it does not decode (with the raw text, lossily).
pub(super) fn decode<T: serde::de::DeserializeOwned>(
    text: &str,
    message_id: &str,
) -> (JobId, Result<T, (String, String)>) {
    let fallback = || {
        message_id
            .parse::<uuid::Uuid>()
            .map(JobId::from)
            .unwrap_or_else(|_| JobId::new())
    };
    let Some((id, body)) = text.split_once(':') else {
        return (
            fallback(),
            Err((text.to_owned(), "not `<job id>:<record>`".to_owned())),
        );
    };
    let Ok(id) = id.parse::<JobId>() else {
        return (
            fallback(),
            Err((text.to_owned(), format!("{id:?} is not a job id"))),
        );
    };
    let bytes = match base64::engine::general_purpose::STANDARD.decode(body) {
        Ok(b) => b,
        Err(e) => {
            return (
                id,
                Err((body.to_owned(), format!("the record is not base64: {e}"))),
            );
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(record) => (id, Ok(record)),
        Err(e) => (
            id,
            Err((
                String::from_utf8_lossy(&bytes).into_owned(),
                format!("the record is not a job: {e}"),
            )),
        ),
    }
}

/// The Azure queue that holds the runtime's queue `queue` (see the module docs): Azure
/// names are 3 to 63 characters of `[a-z0-9-]` with no `--`, ours are
/// `[A-Za-z0-9_.-]{1,64}`. A name that is already Azure-shaped keeps its spelling
/// (`email` → `<prefix>-email`); any other is folded to lowercase with `-` for the rest and
/// tagged with 8 hex digits of its SHA-256, so that `A_b` and `a-b` stay apart. Names end
/// at 56 characters, so `<name>-poison` fits too.
pub(super) fn azure_queue(prefix: &str, queue: &str) -> String {
    let plain = !queue.is_empty()
        && queue
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !queue.starts_with('-')
        && !queue.ends_with('-')
        && !queue.contains("--")
        && !queue.ends_with("-poison")
        && prefix.len() + 1 + queue.len() <= 56;
    if plain {
        return format!("{prefix}-{queue}");
    }
    let mut folded = String::new();
    for c in queue.chars() {
        let c = if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '-'
        };
        if !(c == '-' && (folded.is_empty() || folded.ends_with('-'))) {
            folded.push(c);
        }
    }
    let digest = sha2::Sha256::digest(queue.as_bytes());
    let tag: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let room = 56 - prefix.len() - 2 - tag.len();
    folded.truncate(room);
    let folded = folded.trim_end_matches('-');
    if folded.is_empty() {
        format!("{prefix}-{tag}")
    } else {
        format!("{prefix}-{folded}-{tag}")
    }
}

/// The poison queue of an Azure queue.
pub(super) fn poison_queue(azure_queue: &str) -> String {
    format!("{azure_queue}-poison")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_become_azure_names() {
        assert_eq!(azure_queue("jobs", "email"), "jobs-email");
        let odd = azure_queue("jobs", "Email_Out.v2");
        assert!(odd.starts_with("jobs-email-out-v2-"), "{odd}");
        assert_ne!(azure_queue("jobs", "a_b"), azure_queue("jobs", "a-b"));
        assert_ne!(
            azure_queue("jobs", "x-poison"),
            poison_queue(&azure_queue("jobs", "x"))
        );
        let long = azure_queue("abcdefghij0123456789", &"Q".repeat(64));
        assert!(long.len() <= 56, "{long}");
        for name in [
            odd,
            long,
            azure_queue("jobs", "_"),
            azure_queue("jobs", "--"),
        ] {
            assert!(!name.contains("--") && !name.ends_with('-'), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            );
        }
    }

    #[test]
    fn records_round_trip_and_bad_ones_keep_their_id() {
        let id = JobId::new();
        let stored = Stored {
            job: "j".into(),
            queue: "q".into(),
            payload: Payload::from(serde_json::json!({"n": 1})),
            attempt: 2,
            max_attempts: 5,
            recoveries: 1,
            enqueued_at: 7,
            not_before: None,
            seen: 3,
        };
        let text = encode(id, &stored).unwrap();
        let (got, record) = decode::<Stored>(&text, "not-a-uuid");
        assert_eq!(got, id);
        // Two deliveries since the content was written: one crashed, this one runs.
        let env = record.unwrap().envelope(id, 5);
        assert_eq!((env.attempt, env.recoveries), (4, 2));

        let (got, record) = decode::<Stored>(&encode_raw(id, b"{not json"), "m");
        assert_eq!(got, id);
        let (raw, reason) = record.unwrap_err();
        assert!(raw.contains("{not json") && !reason.is_empty());
        let mid = uuid::Uuid::now_v7();
        let (got, record) = decode::<Stored>("hello", &mid.to_string());
        assert_eq!(got, JobId::from(mid));
        assert!(record.is_err());
    }

    #[test]
    fn the_largest_declared_payload_fits_a_message() {
        let id = JobId::new();
        let big = "x".repeat(MAX_PAYLOAD - 2);
        let stored = Stored {
            job: "j".repeat(64),
            queue: "q".repeat(64),
            payload: Payload::encode(&big).unwrap(),
            attempt: u32::MAX,
            max_attempts: u32::MAX,
            recoveries: u32::MAX,
            enqueued_at: u64::MAX,
            not_before: Some(u64::MAX),
            seen: u32::MAX,
        };
        assert!(encode(id, &stored).unwrap().len() <= MESSAGE_MAX);
    }
}
