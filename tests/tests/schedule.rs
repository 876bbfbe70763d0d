//! Periodic enqueue without drift, and cron.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Behavior, Probe, Recorder, builder, eventually};
use job_core::schedule::{self, CronSchedule, Misfire, Schedule, Tz};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn every_ticks_from_the_start_without_drift() {
    let rec = Recorder::new();
    let made: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let start = Instant::now();
    // Capacity 1 and a job taking 15 s: from the second tick on, enqueue waits for room,
    // which must not push later ticks off the 10 s grid (a sleep-in-a-loop would drift).
    let rt = builder(&rec)
        .capacity(1)
        .every(Duration::from_secs(10), {
            let made = made.clone();
            let mut n = 0;
            move || {
                made.lock().unwrap().push(Instant::now());
                n += 1;
                Probe::new(n, Behavior::SleepMs(15_000))
            }
        })
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100_500)).await;
    let ticks: Vec<Duration> = made.lock().unwrap().iter().map(|t| *t - start).collect();
    assert!(ticks.len() >= 6, "{ticks:?}");
    assert!(ticks[0] >= Duration::from_secs(10) && ticks[0] < Duration::from_millis(10_005));
    for t in &ticks {
        let ms = t.as_millis() as u64;
        assert!(ms % 10_000 < 5, "tick off the grid at {t:?}: {ticks:?}");
    }
    let runs = rec.runs();
    let lag = runs[2].at - start - ticks[2];
    assert!(
        lag >= Duration::from_secs(5),
        "enqueue really waited ({lag:?})"
    );
    rt.shutdown().await;
    let after = made.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        made.lock().unwrap().len(),
        after,
        "the schedule stopped with the runtime"
    );
}

#[tokio::test(start_paused = true)]
async fn a_spawned_schedule_runs_until_stopped() {
    let rec = Recorder::new();
    let rt = builder(&rec).start().unwrap();
    let handle = schedule::every(&rt.client(), Duration::from_secs(1), || {
        Probe::new(0, Behavior::Succeed)
    });
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    handle.stop().await;
    eventually(Duration::from_secs(5), "five ran", || rec.successes() == 5).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(rec.successes(), 5);
    rt.shutdown().await;
}

#[tokio::test]
async fn cron_enqueues_on_matching_times() {
    let rec = Recorder::new();
    let rt = builder(&rec)
        .cron("* * * * * *", || Probe::new(0, Behavior::Succeed))
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let n = rec.successes();
    assert!((1..=3).contains(&n), "every second for 2.3 s ran {n} times");
    rt.shutdown().await;
}

#[test]
fn cron_expressions_are_checked() {
    use chrono_like::*;
    let s = CronSchedule::parse("*/15 9-17 * * Mon-Fri").unwrap();
    let t = utc(2026, 11, 24, 9, 7, 0); // a Tuesday
    assert_eq!(s.next_after(t), Some(utc(2026, 11, 24, 9, 15, 0)));
    let err = CronSchedule::parse("61 * * * *").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid cron expression `61 * * * *`"),
        "{err}"
    );
    assert!(CronSchedule::parse("* *").is_err());
    let e = job_core::JobRuntime::builder()
        .register::<Probe>()
        .cron("not a cron", || Probe::new(0, Behavior::Succeed))
        .start()
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("invalid cron expression `not a cron`"),
        "{e}"
    );
}

/// Capacity 1, a job taking 35 s and a tick every 10 s: from the second tick on, each
/// enqueue waits for room past the following ticks. Returns when `make` was called, from the
/// start, and the schedule's count of missed ticks.
async fn stalled(misfire: Misfire) -> (Vec<Duration>, u64) {
    let rec = Recorder::new();
    let made: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let start = Instant::now();
    let rt = builder(&rec)
        .capacity(1)
        .schedule(Schedule::every(Duration::from_secs(10)).misfire(misfire), {
            let made = made.clone();
            move || {
                made.lock().unwrap().push(Instant::now());
                Probe::new(1, Behavior::SleepMs(35_000))
            }
        })
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(95_500)).await;
    let missed = rt.client().schedules()[0].missed;
    rt.shutdown().await;
    let made = made.lock().unwrap().iter().map(|t| *t - start).collect();
    (made, missed)
}

fn secs(made: &[Duration]) -> Vec<f64> {
    made.iter()
        .map(|d| (d.as_millis() as f64 / 100.0).round() / 10.0)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn missed_ticks_are_skipped_by_default() {
    let (made, missed) = stalled(Misfire::Skip).await;
    // 10: runs until 45. 20: waits for room until 45, past 30 and 40 (missed, skipped).
    // 50: waits until 80, past 60 and 70 (missed, skipped); 80 is on time.
    assert_eq!(secs(&made), [10.0, 20.0, 50.0, 80.0], "{made:?}");
    assert_eq!(missed, 4);
}

#[tokio::test(start_paused = true)]
async fn missed_ticks_run_once_with_run_once() {
    let (made, missed) = stalled(Misfire::RunOnce).await;
    // 20 waits until 45: one run at once for 30 and 40 together, which waits until 80,
    // past 50, 60 and 70; 80 is on time and is the one run for them.
    assert_eq!(secs(&made), [10.0, 20.0, 45.0, 80.0], "{made:?}");
    assert_eq!(missed, 2 + 3);
}

#[tokio::test(start_paused = true)]
async fn first_at_start_runs_at_once() {
    let rec = Recorder::new();
    let made: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let start = Instant::now();
    let rt = builder(&rec)
        .schedule(Schedule::every(Duration::from_secs(10)).first_at_start(), {
            let made = made.clone();
            move || {
                made.lock().unwrap().push(Instant::now());
                Probe::new(1, Behavior::Succeed)
            }
        })
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(25_000)).await;
    rt.shutdown().await;
    let made: Vec<Duration> = made.lock().unwrap().iter().map(|t| *t - start).collect();
    assert_eq!(secs(&made), [0.0, 10.0, 20.0], "{made:?}");
}

#[tokio::test(start_paused = true)]
async fn the_runtime_lists_its_schedules() {
    let rec = Recorder::new();
    let before = chrono::Utc::now();
    let rt = builder(&rec)
        .every(Duration::from_secs(10), || Probe::new(1, Behavior::Succeed))
        .schedule(
            Schedule::cron("0 9 * * Mon-Fri")
                .unwrap()
                .timezone("Europe/Paris")
                .unwrap()
                .misfire(Misfire::RunOnce)
                .named("morning digest"),
            || Probe::new(2, Behavior::Succeed),
        )
        .start()
        .unwrap();
    let client = rt.client();
    eventually(
        Duration::from_secs(5),
        "both listed with a next run",
        || {
            let l = client.schedules();
            l.len() == 2 && l.iter().all(|s| s.next_run.is_some())
        },
    )
    .await;
    let listed = client.schedules();
    let every = listed.iter().find(|s| s.name == "probe every 10s").unwrap();
    assert_eq!(every.job, "probe");
    assert_eq!(every.schedule, "every 10s");
    assert_eq!(every.misfire, Misfire::Skip);
    assert!(!every.shared, "in memory a process runs its own schedules");
    let next = every.next_run.unwrap();
    assert!(
        next > before && next <= before + chrono::Duration::seconds(11),
        "{every:?}"
    );
    let digest = listed.iter().find(|s| s.name == "morning digest").unwrap();
    assert_eq!(digest.schedule, "cron `0 9 * * Mon-Fri` in Europe/Paris");
    assert_eq!(digest.misfire, Misfire::RunOnce);
    let at = digest
        .next_run
        .unwrap()
        .with_timezone(&"Europe/Paris".parse::<Tz>().unwrap());
    assert_eq!(at.format("%H:%M").to_string(), "09:00", "{digest:?}");
    tokio::time::sleep(Duration::from_millis(25_500)).await;
    let every = client
        .schedules()
        .into_iter()
        .find(|s| s.name == "probe every 10s")
        .unwrap();
    assert_eq!(every.runs, 2, "{every:?}");
    assert!(every.last_run.is_some());
    rt.shutdown().await;
    assert!(
        client.schedules().is_empty(),
        "schedules end with their runtime"
    );
}

#[test]
fn schedules_with_one_name_or_no_period_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let e = job_core::JobRuntime::builder()
        .register::<Probe>()
        .every(Duration::from_secs(1), || Probe::new(0, Behavior::Succeed))
        .every(Duration::from_secs(1), || Probe::new(1, Behavior::Succeed))
        .schedule(Schedule::every(Duration::ZERO), || {
            Probe::new(2, Behavior::Succeed)
        })
        .start()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("two schedules are named `probe every 1s`: give one of them a name of its own with `Schedule::named`"),
        "{e}"
    );
    assert!(
        e.contains("`every` needs a period greater than zero"),
        "{e}"
    );
    let e = Schedule::cron("0 9 * * *")
        .unwrap()
        .timezone("Europe/Pariss")
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("unknown time zone `Europe/Pariss`"),
        "{e}"
    );
}

/// Spring forward in Paris (29 March 2026, 02:00 CET becomes 03:00 CEST): the wall-clock
/// times that do not exist run once, at the first instant after the gap.
#[test]
fn a_time_that_does_not_exist_runs_once_after_the_gap() {
    use chrono_like::utc;
    let paris: Tz = "Europe/Paris".parse().unwrap();
    let daily = CronSchedule::parse("30 2 * * *").unwrap();
    let first = daily
        .next_after_in(utc(2026, 3, 28, 12, 0, 0), paris)
        .unwrap();
    assert_eq!(first, utc(2026, 3, 29, 1, 0, 0), "03:00 CEST");
    assert_eq!(
        daily.next_after_in(first, paris),
        Some(utc(2026, 3, 30, 0, 30, 0)),
        "02:30 CEST the next day"
    );
    // Every 15 minutes: 02:00, 02:15, 02:30, 02:45 and 03:00 are one run at 03:00.
    let quarter = CronSchedule::parse("*/15 * * * *").unwrap();
    let at_0145 = utc(2026, 3, 29, 0, 45, 0);
    let gap_end = quarter.next_after_in(at_0145, paris).unwrap();
    assert_eq!(gap_end, utc(2026, 3, 29, 1, 0, 0));
    assert_eq!(
        quarter.next_after_in(gap_end, paris),
        Some(utc(2026, 3, 29, 1, 15, 0)),
        "03:15 CEST"
    );
    // New York, 8 March 2026: 02:00 EST becomes 03:00 EDT.
    let ny: Tz = "America/New_York".parse().unwrap();
    assert_eq!(
        daily.next_after_in(utc(2026, 3, 7, 12, 0, 0), ny),
        Some(utc(2026, 3, 8, 7, 0, 0)),
        "03:00 EDT"
    );
}

/// Fall back in Paris (25 October 2026, 03:00 CEST becomes 02:00 CET) and New York
/// (1 November 2026, 02:00 EDT becomes 01:00 EST): a wall-clock time that occurs twice runs
/// at its first occurrence only.
#[test]
fn a_time_that_occurs_twice_runs_once() {
    use chrono_like::utc;
    let paris: Tz = "Europe/Paris".parse().unwrap();
    let daily = CronSchedule::parse("30 2 * * *").unwrap();
    let first = daily
        .next_after_in(utc(2026, 10, 24, 12, 0, 0), paris)
        .unwrap();
    assert_eq!(first, utc(2026, 10, 25, 0, 30, 0), "02:30 CEST");
    assert_eq!(
        daily.next_after_in(first, paris),
        Some(utc(2026, 10, 26, 1, 30, 0)),
        "not 02:30 CET the same night: the next day"
    );
    let ny: Tz = "America/New_York".parse().unwrap();
    let hourly = CronSchedule::parse("0 * * * *").unwrap();
    let one_edt = hourly
        .next_after_in(utc(2026, 11, 1, 4, 30, 0), ny)
        .unwrap();
    assert_eq!(one_edt, utc(2026, 11, 1, 5, 0, 0), "01:00 EDT");
    assert_eq!(
        hourly.next_after_in(one_edt, ny),
        Some(utc(2026, 11, 1, 7, 0, 0)),
        "02:00 EST, not 01:00 EST again"
    );
    // A process that starts inside the repeated hour waits for the next new time.
    assert_eq!(
        hourly.next_after_in(utc(2026, 11, 1, 6, 10, 0), ny),
        Some(utc(2026, 11, 1, 7, 0, 0))
    );
}

#[test]
fn every_counts_from_the_epoch_when_shared() {
    use chrono_like::utc;
    let hourly = Schedule::every(Duration::from_secs(3600));
    assert_eq!(
        hourly.next_after(utc(2026, 1, 1, 10, 15, 0)),
        Some(utc(2026, 1, 1, 11, 0, 0))
    );
    assert_eq!(
        hourly.next_after(utc(2026, 1, 1, 11, 0, 0)),
        Some(utc(2026, 1, 1, 12, 0, 0))
    );
    assert_eq!(hourly.to_string(), "every 1h");
    assert_eq!(
        Schedule::every(Duration::from_millis(1500)).to_string(),
        "every 1500ms"
    );
}

mod chrono_like {
    pub(crate) fn utc(
        y: i32,
        mo: u32,
        d: u32,
        h: u32,
        mi: u32,
        s: u32,
    ) -> chrono::DateTime<chrono::Utc> {
        use chrono::TimeZone;
        chrono::Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }
}
