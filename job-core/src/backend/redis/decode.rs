//! Script replies and job records to reservations, dead letters and statuses.

use std::time::SystemTime;

use crate::backend::{
    BackendError, Envelope, LeaseToken, Payload, Reservation, from_unix_ms, unix_ms,
};
use crate::dead_letter::DeadLetter;
use crate::job::JobId;
use crate::observe::status::{JobState, JobStatus};

/// Items per reserved job in the reserve script's flat reply.
pub(super) const RESERVE_ROW: usize = 12;

/// Stored form of a dead letter written by
/// [`Backend::dead_letter`](crate::backend::Backend::dead_letter) (ms timestamps; the id is
/// the key's).
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

pub(super) fn parse_id(s: &str) -> Result<JobId, BackendError> {
    s.parse()
        .map_err(|_| BackendError::Corrupt(format!("stored job id {s:?} is not a UUID")))
}

fn field(row: &[Vec<u8>], i: usize) -> &[u8] {
    row.get(i).map_or(&[][..], Vec::as_slice)
}

fn text(row: &[Vec<u8>], i: usize) -> String {
    String::from_utf8_lossy(field(row, i)).into_owned()
}

fn number<T: std::str::FromStr + Default>(row: &[Vec<u8>], i: usize) -> T {
    text(row, i).parse().unwrap_or_default()
}

/// Field `i` as a number: `Ok(None)` when it is empty (the record has no such field), `Err`
/// with its text when it holds anything else.
fn optional_number<T: std::str::FromStr>(row: &[Vec<u8>], i: usize) -> Result<Option<T>, String> {
    let t = text(row, i);
    if t.is_empty() {
        return Ok(None);
    }
    t.parse().map(Some).map_err(|_| t)
}

/// Decodes one reserve row: `job, id, token, has_payload, payload, job_name, queue, attempt,
/// recoveries, not_before, max_attempts, enqueued`.
pub(super) fn reservation(row: &[Vec<u8>]) -> Result<Reservation, BackendError> {
    let id = parse_id(&text(row, 1))?;
    let token = u128::from_str_radix(&text(row, 2), 16)
        .map(LeaseToken::from_u128)
        .map_err(|_| BackendError::Corrupt("reserve returned a malformed lease token".into()))?;
    let payload = field(row, 4);
    let queue = text(row, 6);
    let malformed = |reason: &str| Reservation::Malformed {
        id,
        token: token.clone(),
        queue: queue.clone(),
        raw: String::from_utf8_lossy(payload).into_owned(),
        reason: format!("stored record is not a job envelope: {reason}"),
    };
    if field(row, 3) != b"1" {
        return Ok(malformed("it has no payload"));
    }
    let job = text(row, 5);
    if job.is_empty() {
        return Ok(malformed("it names no job"));
    }
    let max_attempts = match optional_number::<u32>(row, 10) {
        Ok(Some(n)) => n,
        Ok(None) => return Ok(malformed("it has no attempt limit")),
        Err(t) => {
            return Ok(malformed(&format!(
                "its attempt limit {t:?} is not a whole number"
            )));
        }
    };
    // Counts and times that do not parse make the record malformed (dead-lettered with the
    // reason, and requeueable once repaired) rather than silently 0 or now. The script passes
    // a stored attempt count that is not a number on as it is.
    let Ok(attempt) = text(row, 7).parse::<u32>() else {
        return Ok(malformed("its attempt count is not a whole number"));
    };
    let recoveries = match text(row, 8).parse::<u32>() {
        Ok(n) => n,
        Err(_) => {
            let t = text(row, 8);
            return Ok(malformed(&format!(
                "its recovery count {t:?} is not a whole number"
            )));
        }
    };
    let not_before = match optional_number::<u64>(row, 9) {
        Ok(ms) => ms,
        Err(t) => return Ok(malformed(&format!("its start time {t:?} is not a number"))),
    };
    let enqueued_at = match optional_number::<u64>(row, 11) {
        Ok(Some(ms)) => ms,
        // Only a record this crate did not enqueue has no enqueue time.
        Ok(None) => unix_ms(SystemTime::now()),
        Err(t) => {
            return Ok(malformed(&format!(
                "its enqueue time {t:?} is not a number"
            )));
        }
    };
    let text_payload = match std::str::from_utf8(payload) {
        Ok(t) => t.to_owned(),
        Err(e) => return Ok(malformed(&format!("the payload is not UTF-8: {e}"))),
    };
    let payload = match Payload::from_json(text_payload) {
        Ok(p) => p,
        Err(e) => return Ok(malformed(&format!("the payload is not JSON: {e}"))),
    };
    let envelope = Envelope {
        id,
        job,
        queue: queue.clone(),
        payload,
        attempt,
        max_attempts,
        recoveries,
        enqueued_at,
        not_before,
        lease: Some(token.clone()),
    };
    Ok(Reservation::Job { envelope, token })
}

/// Decodes one dead-letter row: `id, has_dead, dead, payload, job, queue, attempt, enqueued,
/// died, last_error`. A record written by `dead_letter` is returned as written; a poison
/// pill dead-lettered by the reaper is rebuilt from the job record.
pub(super) fn dead_letter_from_row(row: &[Vec<u8>]) -> Result<DeadLetter, BackendError> {
    let job_id = parse_id(&text(row, 0))?;
    if field(row, 1) == b"1"
        && let Ok(d) = serde_json::from_slice::<StoredDead>(field(row, 2))
    {
        return Ok(DeadLetter {
            job_id,
            job: d.job,
            queue: d.queue,
            payload: d.payload,
            attempts: d.attempts,
            error: d.error,
            enqueued_at: from_unix_ms(d.enqueued_at),
            died_at: from_unix_ms(d.died_at),
        });
    }
    let died_at = from_unix_ms(number(row, 8));
    let payload = serde_json::from_slice(field(row, 3))
        .unwrap_or_else(|_| serde_json::Value::String(text(row, 3)));
    Ok(DeadLetter {
        job_id,
        job: text(row, 4),
        queue: text(row, 5),
        payload,
        attempts: number(row, 6),
        error: vec![text(row, 9)],
        enqueued_at: text(row, 7)
            .parse()
            .map_or(died_at, |ms: u64| from_unix_ms(ms)),
        died_at,
    })
}

/// A number field of job `id`'s record: `None` when it is absent; one that is present but
/// not a number is corrupt, never read as 0 or as absent.
fn record_number<T: std::str::FromStr>(
    id: JobId,
    what: &str,
    field: Option<String>,
) -> Result<Option<T>, BackendError> {
    field
        .map(|t| {
            t.parse().map_err(|_| {
                BackendError::Corrupt(format!("job {id} has a malformed {what} {t:?}"))
            })
        })
        .transpose()
}

/// The fields of a job record that [`status`] decodes, in its order.
pub(super) const STATUS_FIELDS: [&str; 9] = ["s", "j", "q", "a", "err", "e", "u", "pg", "res"];

/// A status from the job record's [`STATUS_FIELDS`] (`None`: there is no record).
pub(super) fn status(id: JobId, f: &[Option<Vec<u8>>]) -> Result<Option<JobStatus>, BackendError> {
    if f.iter().all(Option::is_none) {
        return Ok(None);
    }
    let text = |i: usize| {
        f.get(i)
            .and_then(Option::as_ref)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let state = match text(0).as_deref() {
        None | Some("queued") => JobState::Queued,
        Some("scheduled") => JobState::Scheduled,
        Some("running") => JobState::Running,
        Some("retrying") => JobState::Retrying,
        Some("succeeded") => JobState::Succeeded,
        Some("dead") => JobState::Dead,
        Some("cancelled") => JobState::Cancelled,
        Some(other) => {
            return Err(BackendError::Corrupt(format!(
                "job {id} has an unknown state {other:?}"
            )));
        }
    };
    let attempts = record_number::<u32>(id, "attempt count", text(3))?.unwrap_or(0);
    // `u` is absent until the first change after the enqueue, so the job was last updated
    // when it was enqueued; `e` is absent only from records this crate did not enqueue
    // (planted by `insert_raw`, or rebuilt by reserve from a foreign value), which carry `u`.
    // Neither falls back to the clock: the status of a job that stands still must not change.
    let enqueued = record_number::<u64>(id, "enqueue time", text(5))?;
    let updated = record_number::<u64>(id, "update time", text(6))?.or(enqueued);
    let (Some(enqueued), Some(updated)) = (enqueued.or(updated), updated) else {
        return Err(BackendError::Corrupt(format!(
            "job {id} has neither an enqueue nor an update time"
        )));
    };
    // `err` is the latest failure, which an ack leaves in place (no extra write on the
    // hottest path): the current error follows from the state.
    Ok(Some(
        JobStatus::from_failure(
            id,
            text(1).unwrap_or_default(),
            text(2).unwrap_or_default(),
            state,
            attempts,
            text(4),
            from_unix_ms(enqueued),
            from_unix_ms(updated),
        )
        .with_progress(text(7).and_then(|p| serde_json::from_str(&p).ok()))
        .with_result(text(8).and_then(|r| serde_json::from_str(&r).ok())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job record's [`STATUS_FIELDS`] as `HMGET` answers them.
    fn record(fields: &[(&str, &str)]) -> Vec<Option<Vec<u8>>> {
        STATUS_FIELDS
            .iter()
            .map(|name| {
                fields
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_bytes().to_vec())
            })
            .collect()
    }

    #[test]
    fn no_fields_is_no_record() {
        assert_eq!(status(JobId::new(), &record(&[])).unwrap(), None);
    }

    #[test]
    fn a_job_not_changed_since_its_enqueue_was_updated_at_its_enqueue() {
        let id = JobId::new();
        for state in [None, Some("scheduled")] {
            let mut fields = vec![("j", "probe"), ("q", "q"), ("e", "1700000000123")];
            fields.extend(state.map(|s| ("s", s)));
            let first = status(id, &record(&fields)).unwrap().unwrap();
            assert_eq!(first.enqueued_at, from_unix_ms(1_700_000_000_123));
            assert_eq!(first.updated_at, first.enqueued_at, "{state:?}");
            std::thread::sleep(std::time::Duration::from_millis(5));
            let again = status(id, &record(&fields)).unwrap().unwrap();
            assert_eq!(again, first, "{state:?}");
        }
    }

    #[test]
    fn times_come_from_the_record() {
        let f = record(&[("s", "running"), ("a", "2"), ("e", "1000"), ("u", "5000")]);
        let s = status(JobId::new(), &f).unwrap().unwrap();
        assert_eq!((s.state, s.attempts), (JobState::Running, 2));
        assert_eq!(s.enqueued_at, from_unix_ms(1000));
        assert_eq!(s.updated_at, from_unix_ms(5000));
        // A planted record (`insert_raw`) has only an update time: it is also its enqueue time.
        let s = status(JobId::new(), &record(&[("q", "q"), ("u", "5000")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (s.enqueued_at, s.updated_at),
            (from_unix_ms(5000), from_unix_ms(5000))
        );
    }

    #[test]
    fn malformed_numbers_in_a_record_are_corrupt_not_zero() {
        for (field, value) in [("a", "two"), ("a", ""), ("e", "yesterday"), ("u", "-1")] {
            let mut fields = vec![("j", "probe"), ("q", "q"), ("e", "1000"), ("u", "2000")];
            fields.retain(|(n, _)| *n != field);
            fields.push((field, value));
            let r = status(JobId::new(), &record(&fields));
            assert!(
                matches!(r, Err(BackendError::Corrupt(ref m)) if m.contains("malformed")),
                "{field}={value:?}: {r:?}"
            );
        }
    }

    /// A reserve row as the script sends it, for the job `probe` in queue `q`.
    fn row(
        attempt: &str,
        recoveries: &str,
        not_before: &str,
        max: &str,
        enqueued: &str,
    ) -> Vec<Vec<u8>> {
        let id = JobId::new().to_string();
        let token = format!("{:x}", LeaseToken::random().as_u128().unwrap_or_default());
        [
            "job",
            &id,
            &token,
            "1",
            r#"{"n":1}"#,
            "probe",
            "q",
            attempt,
            recoveries,
            not_before,
            max,
            enqueued,
        ]
        .map(|s| s.as_bytes().to_vec())
        .to_vec()
    }

    #[test]
    fn a_reserve_row_decodes_to_its_envelope() {
        let r = reservation(&row("2", "1", "1500", "5", "1000")).unwrap();
        let Reservation::Job { envelope, token } = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (envelope.job.as_str(), envelope.queue.as_str()),
            ("probe", "q")
        );
        assert_eq!(
            (envelope.attempt, envelope.recoveries, envelope.max_attempts),
            (2, 1, 5)
        );
        assert_eq!(
            (envelope.enqueued_at, envelope.not_before),
            (1000, Some(1500))
        );
        assert_eq!(envelope.lease, Some(token));
        // No start time is none; no enqueue time (a record this crate did not enqueue) is now.
        let Reservation::Job { envelope, .. } = reservation(&row("1", "0", "", "5", "")).unwrap()
        else {
            panic!()
        };
        assert_eq!(envelope.not_before, None);
        assert!(envelope.enqueued_at > 0);
    }

    #[test]
    fn malformed_numbers_in_a_reserve_row_make_it_malformed_not_zero() {
        for (r, what) in [
            (row("x", "0", "", "5", "1000"), "attempt count"),
            (row("2.5", "0", "", "5", "1000"), "attempt count"),
            (row("1", "", "", "5", "1000"), "recovery count"),
            (row("1", "-1", "", "5", "1000"), "recovery count"),
            (row("1", "0", "soon", "5", "1000"), "start time"),
            (row("1", "0", "", "five", "1000"), "attempt limit"),
            (row("1", "0", "", "5", "1e3"), "enqueue time"),
        ] {
            match reservation(&r).unwrap() {
                Reservation::Malformed { raw, reason, .. } => {
                    assert!(reason.contains(what), "{reason}");
                    assert_eq!(raw, r#"{"n":1}"#, "the payload is kept");
                }
                other @ Reservation::Job { .. } => panic!("{what}: {other:?}"),
            }
        }
        let Reservation::Malformed { reason, .. } =
            reservation(&row("1", "0", "", "", "1")).unwrap()
        else {
            panic!()
        };
        assert!(reason.contains("it has no attempt limit"), "{reason}");
    }

    #[test]
    fn a_record_without_times_is_corrupt() {
        let r = status(JobId::new(), &record(&[("j", "probe"), ("q", "q")]));
        assert!(
            matches!(r, Err(BackendError::Corrupt(ref m)) if m.contains("neither")),
            "{r:?}"
        );
    }
}
