//! A schedule's loop: waits for each tick, decides whether it is on time or missed, and
//! enqueues it; and the board that lists the running schedules.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{Misfire, Schedule, ScheduleInfo, When};
use crate::job::{Job, JobId};
use crate::runtime::Client;

/// The longest a tick may be late and still count as on time.
const MISFIRE_GRACE: Duration = Duration::from_secs(60);

/// The longest one sleep on the wall clock lasts: a schedule waiting for a far tick reads
/// the clock again at least this often, so a clock set forward or back is noticed.
const WALL_NAP: Duration = Duration::from_secs(60);

/// The most ticks counted when a schedule finds itself behind (a cron expression matching
/// every second, after a day's stall, has 86,400).
const COUNT_LIMIT: u64 = 100_000;

/// What the runtime's schedules list shows of one schedule; the loop updates it.
#[derive(Debug)]
pub(crate) struct Slot {
    name: String,
    job: &'static str,
    schedule: String,
    misfire: Misfire,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    shared: bool,
    next_run: Option<DateTime<Utc>>,
    last_run: Option<DateTime<Utc>>,
    runs: u64,
    missed: u64,
}

impl Slot {
    pub(super) fn new(name: String, job: &'static str, schedule: &Schedule) -> Self {
        Self {
            name,
            job,
            schedule: schedule.to_string(),
            misfire: schedule.misfire,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn info(&self) -> ScheduleInfo {
        let st = self.state();
        ScheduleInfo {
            name: self.name.clone(),
            job: self.job,
            schedule: self.schedule.clone(),
            misfire: self.misfire,
            shared: st.shared,
            next_run: st.next_run,
            last_run: st.last_run,
            runs: st.runs,
            missed: st.missed,
        }
    }
}

/// The schedules running on one runtime.
#[derive(Debug, Default)]
pub(crate) struct Board(Mutex<Vec<Arc<Slot>>>);

impl Board {
    fn slots(&self) -> MutexGuard<'_, Vec<Arc<Slot>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lists `slot`, a schedule of `client`'s runtime (before its task first runs, so
    /// that it is listed, and said to be shared or not, from the start).
    pub(crate) fn list_on(client: &Client, slot: &Arc<Slot>, schedule: &Schedule) {
        let shared = client.ticks_are_shared();
        let now = Utc::now();
        let next_run = if schedule.first_at_start {
            Some(now)
        } else {
            // As the loop will count it once it runs.
            schedule.next_from(now, if shared { DateTime::UNIX_EPOCH } else { now })
        };
        {
            let mut st = slot.state();
            st.shared = shared;
            st.next_run = st.next_run.or(next_run);
        }
        client.inner.schedules.add(slot);
    }

    fn add(&self, slot: &Arc<Slot>) {
        let mut slots = self.slots();
        if !slots.iter().any(|s| Arc::ptr_eq(s, slot)) {
            slots.push(slot.clone());
        }
    }

    fn remove(&self, slot: &Arc<Slot>) {
        self.slots().retain(|s| !Arc::ptr_eq(s, slot));
    }

    /// Whether a schedule other than `slot` has its name.
    fn has_other_named(&self, slot: &Arc<Slot>) -> bool {
        self.slots()
            .iter()
            .any(|s| !Arc::ptr_eq(s, slot) && s.name == slot.name)
    }

    pub(crate) fn list(&self) -> Vec<ScheduleInfo> {
        self.slots().iter().map(|s| s.info()).collect()
    }
}

/// Takes the slot off the board when the loop ends, however it ends.
struct Listed<'a>(&'a Client, &'a Arc<Slot>);

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.0.inner.schedules.remove(self.1);
    }
}

/// The tick of an `every` grid counted from `origin` strictly after `t`.
pub(super) fn grid_next(
    t: DateTime<Utc>,
    origin: DateTime<Utc>,
    period: Duration,
) -> Option<DateTime<Utc>> {
    let p = i128::try_from(period.as_nanos()).ok().filter(|p| *p > 0)?;
    let since = nanos(t)? - nanos(origin)?;
    at_nanos(nanos(origin)? + (since.div_euclid(p) + 1) * p)
}

/// The tick of an `every` grid counted from `origin` at or before `t`.
fn grid_at_or_before(
    t: DateTime<Utc>,
    origin: DateTime<Utc>,
    period: Duration,
) -> Option<DateTime<Utc>> {
    let p = i128::try_from(period.as_nanos()).ok().filter(|p| *p > 0)?;
    let since = nanos(t)? - nanos(origin)?;
    at_nanos(nanos(origin)? + since.div_euclid(p) * p)
}

fn nanos(t: DateTime<Utc>) -> Option<i128> {
    t.timestamp_nanos_opt().map(i128::from)
}

fn at_nanos(n: i128) -> Option<DateTime<Utc>> {
    i64::try_from(n).ok().map(DateTime::from_timestamp_nanos)
}

fn millis(t: DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

/// `1h`, `5m`, `30s`, `250ms`: the largest unit that divides the period.
pub(super) fn short_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    let units: [(u128, &str); 7] = [
        (86_400_000_000_000, "d"),
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    for (size, unit) in units {
        if ns >= size && ns.is_multiple_of(size) {
            return format!("{}{unit}", ns / size);
        }
    }
    "0s".to_owned()
}

/// The clock a schedule reads: the wall clock, or (for a schedule of one process counted
/// from its start) tokio's, which paused-time tests control.
enum Clock {
    Wall,
    Tokio {
        wall: DateTime<Utc>,
        at: tokio::time::Instant,
    },
}

impl Clock {
    fn now(&self) -> DateTime<Utc> {
        match self {
            Self::Wall => Utc::now(),
            Self::Tokio { wall, at } => {
                let elapsed =
                    chrono::Duration::from_std(at.elapsed()).unwrap_or(chrono::Duration::MAX);
                wall.checked_add_signed(elapsed)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
            }
        }
    }

    async fn sleep_until(&self, t: DateTime<Utc>) {
        match self {
            Self::Wall => loop {
                match (t - Utc::now()).to_std() {
                    Ok(left) if !left.is_zero() => tokio::time::sleep(left.min(WALL_NAP)).await,
                    _ => return,
                }
            },
            Self::Tokio { wall, at } => {
                let offset = (t - *wall).to_std().unwrap_or(Duration::ZERO);
                tokio::time::sleep_until(*at + offset).await;
            }
        }
    }
}

impl Schedule {
    /// The latest tick at or before `now`, starting from `due` (a tick at or before it),
    /// and how many ticks there are from `due` to it (1 when `due` is the latest).
    fn latest(
        &self,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
        origin: DateTime<Utc>,
    ) -> (DateTime<Utc>, u64) {
        match &self.when {
            When::Every(period) => {
                let latest = grid_at_or_before(now, origin, *period)
                    .filter(|l| *l >= due)
                    .unwrap_or(due);
                let p = period.as_nanos().max(1);
                let between = nanos(latest)
                    .zip(nanos(due))
                    .map_or(0, |(l, d)| (l - d).max(0) as u128 / p);
                (
                    latest,
                    u64::try_from(between).unwrap_or(u64::MAX).saturating_add(1),
                )
            }
            When::Cron(_) => {
                let (mut latest, mut count) = (due, 1);
                while count < COUNT_LIMIT {
                    match self.next_from(latest, origin) {
                        Some(t) if t <= now => {
                            latest = t;
                            count += 1;
                        }
                        _ => break,
                    }
                }
                (latest, count)
            }
        }
    }

    /// How late `tick` may be reached and still run: a quarter of the time to the following
    /// tick, at most [`MISFIRE_GRACE`].
    fn grace(&self, tick: DateTime<Utc>, origin: DateTime<Utc>) -> Duration {
        self.next_from(tick, origin)
            .and_then(|next| (next - tick).to_std().ok())
            .map_or(MISFIRE_GRACE, |gap| (gap / 4).min(MISFIRE_GRACE))
    }
}

/// Runs `schedule` on `client` until `token` fires or the runtime stops.
pub(super) async fn run<J: Job, F: FnMut() -> J>(
    client: Client,
    slot: Arc<Slot>,
    schedule: Schedule,
    mut make: F,
    token: CancellationToken,
) {
    Board::list_on(&client, &slot, &schedule);
    let _listed = Listed(&client, &slot);
    let shared = client.ticks_are_shared();
    if client.inner.schedules.has_other_named(&slot) {
        tracing::warn!(schedule = %slot.name, "two schedules of this runtime have this name: on a store that shares ticks they enqueue one job per tick between them; give one of them another name (Schedule::named)");
    }
    if !shared && let Some(backend) = client.backend_name() {
        tracing::warn!(schedule = %slot.name, backend, "this backend cannot tell a job id it already stores: the schedule enqueues its ticks in every process that runs it");
    }
    // Shared ticks are on a grid every process agrees on (counted from the Unix epoch, on
    // the wall clock); a process's own `every` is counted from its start, on tokio's clock.
    let every = matches!(schedule.when, When::Every(_));
    let clock = if shared || !every {
        Clock::Wall
    } else {
        Clock::Tokio {
            wall: Utc::now(),
            at: tokio::time::Instant::now(),
        }
    };
    let start = clock.now();
    let origin = if shared { DateTime::UNIX_EPOCH } else { start };
    let mut after = start;
    if schedule.first_at_start {
        // Shared: the latest tick at or before the start, whose id every process agrees on.
        let tick = if shared {
            match &schedule.when {
                When::Every(p) => grid_at_or_before(start, origin, *p),
                When::Cron(c) => c.latest_at_or_before_in(start, schedule.zone),
            }
            .unwrap_or(start)
        } else {
            start
        };
        if !fire(&client, &slot, make(), tick, shared, &token).await {
            return;
        }
    }
    loop {
        let Some(due) = schedule.next_from(after, origin) else {
            tracing::info!(schedule = %slot.name, "the schedule has no more times");
            return;
        };
        slot.state().next_run = Some(due);
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            _ = clock.sleep_until(due) => {}
        }
        if client.is_stopping() {
            return;
        }
        let now = clock.now();
        let late = (now - due).to_std().unwrap_or(Duration::ZERO);
        let tick = if late > schedule.grace(due, origin) {
            let (latest, count) = schedule.latest(due, now, origin);
            let on_time = (now - latest)
                .to_std()
                .is_ok_and(|l| l <= schedule.grace(latest, origin));
            // When the latest tick is on time, only the ones before it were missed, and it
            // runs as any tick on time does (under either policy: it is the one run).
            let missed = if on_time { count - 1 } else { count };
            slot.state().missed += missed;
            match schedule.misfire {
                _ if on_time => latest,
                Misfire::Skip => {
                    tracing::warn!(schedule = %slot.name, missed, late = ?late, "the schedule fell behind: missed ticks are skipped (misfire policy skip)");
                    after = now;
                    continue;
                }
                Misfire::RunOnce => {
                    tracing::warn!(schedule = %slot.name, missed, late = ?late, "the schedule fell behind: one run for the missed ticks (misfire policy run_once)");
                    latest
                }
            }
        } else {
            due
        };
        if !fire(&client, &slot, make(), tick, shared, &token).await {
            return;
        }
        after = tick;
    }
}

/// Enqueues `job` for `tick`; false when the schedule should end (stopped, or the runtime
/// is shutting down).
async fn fire<J: Job>(
    client: &Client,
    slot: &Slot,
    job: J,
    tick: DateTime<Utc>,
    shared: bool,
    token: &CancellationToken,
) -> bool {
    let enqueue = async {
        if shared {
            client
                .enqueue_tick(job, JobId::for_tick(&slot.name, millis(tick)))
                .await
        } else {
            client.enqueue(job).await
        }
    };
    let result = tokio::select! {
        biased;
        _ = token.cancelled() => return false,
        r = enqueue => r,
    };
    match result {
        Ok(id) => {
            let mut st = slot.state();
            st.last_run = Some(tick);
            st.runs += 1;
            drop(st);
            tracing::debug!(schedule = %slot.name, job = J::NAME, job_id = %id, tick = %tick, "scheduled job enqueued");
            true
        }
        Err(e) if e.is_shutting_down() => false,
        Err(e) => {
            tracing::error!(schedule = %slot.name, job = J::NAME, tick = %tick, error = %e, "scheduled enqueue failed: this tick does not run");
            true
        }
    }
}
