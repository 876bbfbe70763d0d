//! Rows to envelopes, reservations, dead letters and statuses.

use std::time::SystemTime;

use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::backend::{BackendError, Envelope, LeaseToken, Payload, Reservation, from_unix_ms};
use crate::dead_letter::DeadLetter;
use crate::job::JobId;
use crate::observe::status::{JobState, JobStatus};

/// Stored form of a dead letter written by `dead_letter` (ms timestamps; the id is the
/// row's).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct StoredDead {
    pub(super) job: String,
    pub(super) queue: String,
    pub(super) payload: serde_json::Value,
    pub(super) attempts: u32,
    pub(super) error: Vec<String>,
    pub(super) enqueued_at: u64,
    pub(super) died_at: u64,
}

fn corrupt(e: sqlx::Error) -> BackendError {
    BackendError::Corrupt(format!("unexpected row from Postgres: {e}"))
}

pub(super) fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, BackendError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column).map_err(corrupt)
}

pub(super) fn get_at<'r, T>(row: &'r PgRow, index: usize) -> Result<T, BackendError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(index).map_err(corrupt)
}

fn count(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

fn ms(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// One reserved row, with its sort key: (position of its queue in the request, run_at, seq).
pub(super) fn reservation(
    row: &PgRow,
    queues: &[String],
) -> Result<((usize, f64, i64), Reservation), BackendError> {
    let id = JobId::from(get::<Uuid>(row, "id")?);
    let token = LeaseToken::from_u128(get::<Uuid>(row, "lease")?.as_u128());
    let queue: String = get(row, "queue")?;
    let payload: Option<String> = get(row, "payload")?;
    let job: Option<String> = get(row, "job")?;
    let max_attempts: Option<i32> = get(row, "max_attempts")?;
    let key = (
        queues
            .iter()
            .position(|q| *q == queue)
            .unwrap_or(usize::MAX),
        get::<f64>(row, "run_at_ms")?,
        get::<i64>(row, "seq")?,
    );
    let malformed = |raw: String, reason: &str| Reservation::Malformed {
        id,
        token: token.clone(),
        queue: queue.clone(),
        raw,
        reason: format!("stored record is not a job envelope: {reason}"),
    };
    let Some(text) = payload else {
        return Ok((key, malformed(String::new(), "it has no payload")));
    };
    let Some(job) = job.filter(|j| !j.is_empty()) else {
        return Ok((key, malformed(text, "it names no job")));
    };
    let Some(max_attempts) = max_attempts else {
        return Ok((key, malformed(text, "it has no attempt limit")));
    };
    let payload = match Payload::from_json(text.clone()) {
        Ok(p) => p,
        Err(e) => {
            return Ok((
                key,
                malformed(text, &format!("the payload is not JSON: {e}")),
            ));
        }
    };
    let envelope = Envelope {
        id,
        job,
        queue: queue.clone(),
        payload,
        attempt: count(get(row, "attempt")?),
        max_attempts: count(max_attempts),
        recoveries: count(get(row, "recoveries")?),
        enqueued_at: ms(get(row, "enqueued_at")?),
        not_before: get::<Option<i64>>(row, "not_before")?.map(ms),
        lease: Some(token.clone()),
    };
    Ok((key, Reservation::Job { envelope, token }))
}

/// A dead letter from a row: the record `dead_letter` wrote, or, for a poison pill the
/// reaper killed (or a record that no longer parses), one rebuilt from the row.
#[allow(clippy::too_many_arguments)]
pub(super) fn dead_letter(
    id: Uuid,
    record: Option<&str>,
    job: Option<String>,
    queue: String,
    payload: Option<String>,
    attempt: i32,
    enqueued_ms: i64,
    died_ms: i64,
    last_error: Option<String>,
) -> DeadLetter {
    let job_id = JobId::from(id);
    if let Some(d) = record.and_then(|r| serde_json::from_str::<StoredDead>(r).ok()) {
        return DeadLetter::new(
            job_id,
            d.job,
            d.queue,
            d.payload,
            d.attempts,
            d.error,
            from_unix_ms(d.enqueued_at),
            from_unix_ms(d.died_at),
        );
    }
    let payload = payload.map_or(serde_json::Value::Null, |p| {
        serde_json::from_str(&p).unwrap_or(serde_json::Value::String(p))
    });
    DeadLetter::new(
        job_id,
        job.unwrap_or_default(),
        queue,
        payload,
        count(attempt),
        last_error.into_iter().collect(),
        from_unix_ms(ms(enqueued_ms)),
        from_unix_ms(ms(died_ms)),
    )
}

/// A dead letter from a `dead_letters.sql` row.
pub(super) fn dead_row(row: &PgRow) -> Result<DeadLetter, BackendError> {
    let record: Option<String> = get_at(row, 1)?;
    Ok(dead_letter(
        get_at(row, 0)?,
        record.as_deref(),
        get_at(row, 2)?,
        get_at(row, 3)?,
        get_at(row, 4)?,
        get_at(row, 5)?,
        get_at(row, 6)?,
        get_at(row, 7)?,
        get_at(row, 8)?,
    ))
}

/// The state a `state` column holds.
pub(super) fn state(id: JobId, n: i16) -> Result<JobState, BackendError> {
    Ok(match n {
        0 => JobState::Queued,
        1 => JobState::Scheduled,
        2 => JobState::Running,
        3 => JobState::Retrying,
        4 => JobState::Succeeded,
        5 => JobState::Dead,
        6 => JobState::Cancelled,
        other => {
            return Err(BackendError::Corrupt(format!(
                "job {id} has an unknown state {other}"
            )));
        }
    })
}

/// A status from a `status.sql` row.
pub(super) fn status(id: JobId, row: &PgRow) -> Result<JobStatus, BackendError> {
    let job: Option<String> = get_at(row, 0)?;
    let updated = ms(get_at(row, 6)?);
    let enqueued = ms(get_at(row, 5)?);
    let now = crate::backend::unix_ms(SystemTime::now());
    // `last_error` is the latest failure, which an ack leaves in place: the current error
    // follows from the state.
    Ok(JobStatus::from_failure(
        id,
        job.unwrap_or_default(),
        get_at::<String>(row, 1)?,
        state(id, get_at(row, 2)?)?,
        count(get_at(row, 3)?),
        get_at(row, 4)?,
        from_unix_ms(if enqueued == 0 { now } else { enqueued }),
        from_unix_ms(if updated == 0 { now } else { updated }),
    )
    .with_progress(get_at::<Option<String>>(row, 7)?.and_then(|p| serde_json::from_str(&p).ok()))
    .with_result(get_at::<Option<String>>(row, 8)?.and_then(|r| serde_json::from_str(&r).ok())))
}
