//! Periodic enqueue without drift, and cron.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Behavior, Probe, Recorder, builder, eventually};
use job_core::schedule::{self, CronSchedule};
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
