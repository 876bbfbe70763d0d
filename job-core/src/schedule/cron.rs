//! Cron expressions, evaluated on a zone's wall clock.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Duration as TimeDelta, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

/// A parsed cron expression.
///
/// Five fields (`minute hour day-of-month month day-of-week`) as in crontab, or six with a
/// leading seconds field. [`next_after`](Self::next_after) reads it in UTC,
/// [`next_after_in`](Self::next_after_in) on a zone's wall clock.
///
/// # Examples
/// ```
/// use chrono::{TimeZone, Utc};
/// use job_core::schedule::CronSchedule;
///
/// let hourly = CronSchedule::parse("0 * * * *").unwrap();
/// let t = Utc.with_ymd_and_hms(2026, 1, 1, 10, 15, 0).unwrap();
/// assert_eq!(hourly.next_after(t), Some(Utc.with_ymd_and_hms(2026, 1, 1, 11, 0, 0).unwrap()));
/// assert!(CronSchedule::parse("every tuesday").is_err());
/// ```
#[derive(Clone)]
pub struct CronSchedule {
    expression: String,
    schedule: cron::Schedule,
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CronSchedule")
            .field(&self.expression)
            .finish()
    }
}

/// An invalid cron expression.
#[derive(Debug, thiserror::Error)]
#[error("invalid cron expression `{expression}`: {message}")]
pub struct CronError {
    /// The expression as given.
    pub expression: String,
    /// What is wrong with it.
    pub message: String,
}

/// The most candidate times [`CronSchedule::next_after_in`] looks at before it gives up
/// (a wall-clock hour that occurs twice holds 3,600 candidates of a schedule that fires
/// every second, all of which ran in the hour's first occurrence).
const CANDIDATES: usize = 100_000;

impl CronSchedule {
    /// Parses a five- or six-field expression.
    ///
    /// # Errors
    /// [`CronError`] naming the expression.
    pub fn parse(expression: &str) -> Result<Self, CronError> {
        let fields = expression.split_whitespace().count();
        let full = match fields {
            5 => format!("0 {expression}"),
            6 => expression.to_owned(),
            n => {
                return Err(CronError {
                    expression: expression.to_owned(),
                    message: format!(
                        "expected 5 fields (minute hour day month weekday) or 6 (with seconds first), found {n}"
                    ),
                });
            }
        };
        cron::Schedule::from_str(&full)
            .map(|schedule| Self {
                expression: expression.to_owned(),
                schedule,
            })
            .map_err(|e| {
                // The parser's message repeats the expression with a caret under the fault;
                // its last line says what is wrong.
                let text = e.to_string();
                let message = text.lines().map(str::trim).rfind(|l| !l.is_empty());
                CronError {
                    expression: expression.to_owned(),
                    message: message.unwrap_or("not a cron expression").to_owned(),
                }
            })
    }

    /// The expression as given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The first matching time strictly after `t`, in UTC.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.after(&t).next()
    }

    /// The first matching time strictly after `t`, reading the expression on `zone`'s wall
    /// clock. Across daylight-saving changes every wall-clock time runs once:
    ///
    /// - a time that does not exist (the hour skipped when clocks go forward) runs once, at
    ///   the first instant after the gap: `30 2 * * *` in `Europe/Paris` runs at 03:00 on the
    ///   last Sunday of March, and every time of a schedule that falls in the gap runs as
    ///   that one run;
    /// - a time that occurs twice (the hour repeated when clocks go back) runs at its first
    ///   occurrence only.
    ///
    /// ```
    /// use chrono::{TimeZone, Utc};
    /// use job_core::schedule::{CronSchedule, Tz};
    ///
    /// let daily = CronSchedule::parse("30 2 * * *").unwrap();
    /// let paris: Tz = "Europe/Paris".parse().unwrap();
    /// // 29 March 2026: 02:00 CET becomes 03:00 CEST, so 02:30 never happens that night.
    /// let before = Utc.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap();
    /// let run = daily.next_after_in(before, paris).unwrap();
    /// assert_eq!(run, Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap()); // 03:00 CEST
    /// ```
    pub fn next_after_in(&self, t: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        if zone == Tz::UTC {
            return self.next_after(t);
        }
        // The expression is matched against wall-clock (naive) times, standing in as UTC
        // for the cron crate, and each match is then placed on the zone's timeline.
        let mut cursor = t.with_timezone(&zone).naive_local();
        for _ in 0..CANDIDATES {
            let wall = self
                .schedule
                .after(&Utc.from_utc_datetime(&cursor))
                .next()?
                .naive_utc();
            if let Some(instant) = place(zone, wall)
                && instant > t
            {
                return Some(instant);
            }
            cursor = wall;
        }
        None
    }
}

impl CronSchedule {
    /// The latest matching time at or before `t`, on `zone`'s wall clock (as
    /// [`next_after_in`](Self::next_after_in) places them).
    pub(crate) fn latest_at_or_before_in(
        &self,
        t: DateTime<Utc>,
        zone: Tz,
    ) -> Option<DateTime<Utc>> {
        // Strictly before a second past `t`: `t` itself when it matches.
        let mut cursor = t.with_timezone(&zone).naive_local() + TimeDelta::seconds(1);
        for _ in 0..CANDIDATES {
            let wall = self
                .schedule
                .after(&Utc.from_utc_datetime(&cursor))
                .next_back()?
                .naive_utc();
            if let Some(instant) = place(zone, wall)
                && instant <= t
            {
                return Some(instant);
            }
            cursor = wall;
        }
        None
    }
}

/// The instant a wall-clock time of `zone` names: its first occurrence when it occurs twice,
/// the end of the gap when it does not exist.
fn place(zone: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&wall) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
        LocalResult::None => {
            // In a gap: the first wall-clock minute after it. Gaps last an hour, rarely
            // half an hour or a whole day (Samoa skipped 30 December 2011).
            let start = wall.with_second(0)?.with_nanosecond(0)?;
            (1..=26 * 60).find_map(|m| {
                zone.from_local_datetime(&(start + TimeDelta::minutes(m)))
                    .earliest()
                    .map(|t| t.with_timezone(&Utc))
            })
        }
    }
}
