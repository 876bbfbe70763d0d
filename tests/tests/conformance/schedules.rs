//! Schedules on each store: one job per tick across processes where the store keeps one job
//! per id, one per process and tick where it cannot (and says so).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use job_core::JobId;
use job_core::schedule::{self, Schedule};

use crate::common::{Behavior, Probe, Recorder, eventually};
use crate::{LONG, Setup, Store};

/// Three runtimes on one store run the same `every 1s` schedule for about 4.5 s. Where ticks
/// are shared, each tick the processes reached ran once, under the tick's id, although
/// several processes enqueued it; elsewhere (in memory, or a store that cannot tell a stored
/// id) every process's ticks ran, and the schedules say they are not shared.
pub(crate) async fn ticks_run_once_across_processes(store: Store) {
    let s = Setup::new(store).await;
    let rec = Recorder::new();
    let period = Duration::from_secs(1);
    let mut runtimes = Vec::new();
    let mut handles = Vec::new();
    // When each process called `make` (on the wall clock), which is at its tick.
    let made: Arc<Mutex<Vec<SystemTime>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let rt = s.builder(&rec).start().unwrap();
        let (made, calls) = (made.clone(), calls.clone());
        handles.push(schedule::start(
            &rt.client(),
            Schedule::every(period),
            move || {
                made.lock().unwrap().push(SystemTime::now());
                calls.fetch_add(1, Ordering::SeqCst);
                Probe::new(7, Behavior::Succeed)
            },
        ));
        runtimes.push(rt);
    }
    let shared = runtimes[0].client().schedules()[0].shared;
    assert_eq!(
        shared,
        s.backend
            .as_ref()
            .is_some_and(|b| b.capabilities().idempotent_enqueue),
        "ticks are shared exactly where the store keeps one job per id"
    );
    let listed = runtimes[0].client().schedules();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, "probe every 1s");
    let client = runtimes[0].client();
    eventually(LONG, "the schedule shows its next run", || {
        client.schedules()[0].next_run.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    for h in handles {
        h.stop().await;
    }
    let made: Vec<SystemTime> = made.lock().unwrap().clone();
    let calls = calls.load(Ordering::SeqCst);
    if shared {
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let ticks: BTreeSet<u64> = made.iter().map(|t| ms(*t) / 1000 * 1000).collect();
        let ids: HashMap<JobId, u64> = ticks
            .iter()
            .map(|t| (JobId::for_tick("probe every 1s", *t), *t))
            .collect();
        eventually(LONG, "every tick's job ran", || {
            let ran: BTreeSet<JobId> = rec.runs().iter().map(|r| r.id).collect();
            ids.keys().all(|id| ran.contains(id))
        })
        .await;
        // Nothing else comes later.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let runs = rec.runs();
        for r in &runs {
            assert!(
                ids.contains_key(&r.id),
                "a job that is no tick's ran: {r:?} (ticks {ticks:?})"
            );
        }
        assert_eq!(
            runs.len(),
            ids.len(),
            "one job per tick: {} ticks, {} runs, {calls} enqueues",
            ids.len(),
            runs.len()
        );
        assert!(ticks.len() >= 3, "ticks {ticks:?}");
        assert!(
            calls > ticks.len(),
            "several processes enqueued the same ticks ({calls} enqueues for {} ticks)",
            ticks.len()
        );
    } else {
        eventually(LONG, "every enqueued tick ran", || {
            rec.runs().len() == calls
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(rec.runs().len(), calls, "each process's ticks ran");
        assert!(
            calls >= 3 * 3,
            "three processes, about four ticks each: {calls}"
        );
    }
    for rt in runtimes {
        rt.shutdown().await;
    }
}
