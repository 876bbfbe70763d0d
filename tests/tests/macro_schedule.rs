//! `#[job(cron = .., timezone = .., misfire = ..)]`: a job's own schedule starts with every
//! runtime it is registered on. (Its own test binary: every runtime in a binary runs the
//! schedules of the jobs linked into it.)

use std::sync::Mutex;
use std::time::Duration;

use job_core::prelude::*;
use job_core::schedule::{Misfire, Tz};

/// What the ticks ran with.
static RAN: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());

/// Every second; each tick's payload is the fields' defaults.
#[job(cron = "* * * * * *")]
async fn every_second(count: u32, label: String) -> Result<(), std::io::Error> {
    RAN.lock().unwrap().push((count, label));
    Ok(())
}

/// At 02:30 in Paris, caught up once after a stall.
#[job(cron = "30 2 * * *", timezone = "Europe/Paris", misfire = "run_once")]
async fn nightly() -> Result<(), std::io::Error> {
    Ok(())
}

#[tokio::test]
async fn declared_schedules_start_with_the_runtime() {
    let runtime = JobRuntime::builder().start().unwrap();
    let listed = runtime.client().schedules();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let second = listed.iter().find(|s| s.job == "every_second").unwrap();
    assert_eq!(second.name, "every_second cron `* * * * * *`");
    assert_eq!(second.misfire, Misfire::Skip);
    let nightly = listed.iter().find(|s| s.job == "nightly").unwrap();
    assert_eq!(nightly.schedule, "cron `30 2 * * *` in Europe/Paris");
    assert_eq!(nightly.misfire, Misfire::RunOnce);
    let paris: Tz = "Europe/Paris".parse().unwrap();
    let next = nightly.next_run.unwrap().with_timezone(&paris);
    // 02:30, or 03:00 on the night 02:30 does not exist.
    let at = next.format("%H:%M").to_string();
    assert!(at == "02:30" || at == "03:00", "{nightly:?}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while RAN.lock().unwrap().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the every-second job ran twice"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        RAN.lock().unwrap().iter().all(|r| *r == (0, String::new())),
        "{:?}",
        RAN.lock().unwrap()
    );
    runtime.shutdown().await;
}
